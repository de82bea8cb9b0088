"""De-identified copies (PS3.15 Annex E, dicomcore.deid) of a study, a series or files on disk.

Into the caller's catalogue (`to_catalogue`: every copy goes through the one ingest service, owned by the caller)
or as a zip streamed as it is written (`zip_stream`). The original is never changed: each stored file is copied to
a temporary file, read there, de-identified and written to another one. Before anything is stored every file is
de-identified, so a file that cannot be (masks on undecodable pixels) refuses the whole request; if the catalogue
refuses one copy, the copies this request created are deleted again. Every de-identification is recorded
(`Deidentification`: source, result, options, and the UID map only when asked) and audited twice with one request
id: `deidentify-source` on what was copied, `deidentify-result` on what was made.

Burned-in text: an image that says it has some (Burned In Annotation YES), or an ultrasound or secondary capture
that does not say, is refused unless the caller masks rectangles or confirms; the refusal names every such file.
"""

from __future__ import annotations

import filecmp
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydicom
from django.conf import settings
from django.db import transaction

from dicomcore import deid, sources, zipstream
from dicomcore.parsing import InvalidDicom, NotAnInstance, parse_dicom

from . import importer, services
from .audit.events import write_event
from .errors import QuotaExceeded, ServiceError
from .models import Deidentification, Instance, Study
from .outcome import Outcome, Reason
from .uploads import stage_stream

logger = logging.getLogger(__name__)

DEFER_SIZE = "256 KB"  # values larger than this (pixel data) are copied from the source file, never held in memory


class BurnedInText(ServiceError):
    """Some images may show patient identity in their pixels; `files` says which and why."""

    status = 422
    code = "burned_in_annotation"


class CannotDeidentify(ServiceError):
    """A file cannot be de-identified as asked (e.g. masks on pixel data that cannot be decoded)."""

    status = 422
    code = "cannot_deidentify"


@dataclass(frozen=True)
class Choices:
    """What the caller asked for, as the API, the admin and the command take it."""

    options: frozenset[str] = frozenset()
    masks: tuple[deid.Rect, ...] = ()
    secret: str = ""
    keep_mapping: bool = False
    confirm_burned_in: bool = False

    def deidentifier(self) -> deid.Deidentifier:
        """A de-identifier keyed by the project secret (the same UIDs and shifts across requests), else a random key."""
        key = hashlib.sha256(b"dicom-deid\x00" + self.secret.encode()).digest() if self.secret else os.urandom(32)
        return deid.Deidentifier(deid.Options(self.options, self.masks), key)

    def recorded(self) -> dict[str, Any]:
        """The choices as the record keeps them (the secret never)."""
        return {
            "options": sorted(self.options), "masks": [[r.x, r.y, r.width, r.height] for r in self.masks],
            "project_secret": bool(self.secret), "keep_mapping": self.keep_mapping, "confirm_burned_in": self.confirm_burned_in,
        }  # fmt: skip


@dataclass
class Result:
    """A de-identification into the catalogue: the record, the new study and one row per file."""

    record: Deidentification
    study: Study | None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _header_value(header: dict, tag: str) -> str | None:
    value = (header.get(tag) or {}).get("Value") or [None]
    return None if value[0] is None else str(value[0])


def check_burned_in(instances: Iterable[Instance], choices: Choices) -> None:
    """BurnedInText naming every image that may carry burned-in identity, unless masked or confirmed.
    Read from the catalogue (the stored header), not the files: nothing is opened before the answer."""
    if choices.masks or choices.confirm_burned_in:
        return
    flagged = []
    for inst in instances:
        reason = deid.burned_in_risk(burned_in=_header_value(inst.header, "00280301"), modality=inst.modality, sop_class_uid=inst.sop_class_uid)
        if reason:
            flagged.append({"id": str(inst.pk), "reason": reason})
    if flagged:
        raise BurnedInText(
            f"{len(flagged)} of the images may show patient identity in their pixels: mask rectangles (masks) or "
            "confirm that they show none (confirm_burned_in)",
            files=flagged,
        )


@contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="deid-", dir=settings.FILE_UPLOAD_TEMP_DIR or None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def deidentify_file(source: Path, target: Path, deidentifier: deid.Deidentifier, *, has_pixels: bool) -> pydicom.Dataset:
    """De-identify the Part-10 file at `source` into `target`; CannotDeidentify with the reason when it cannot be.
    `has_pixels`: the source has pixel data (as ingest parsed it); a copy that lost them is refused, not made."""
    try:
        ds = pydicom.dcmread(source, defer_size=DEFER_SIZE)
        deidentifier.apply(ds)
        ds.save_as(target, enforce_file_format=True)
    except deid.DeidError as exc:
        raise CannotDeidentify(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a stored file pydicom cannot rewrite: say so, store nothing
        raise CannotDeidentify(f"the file cannot be rewritten de-identified ({type(exc).__name__})") from None
    if has_pixels and not any(tag in ds for tag in deid.PIXEL_TAGS):
        # pydicom drops a pixel data element that ends early (a truncated file) that ingest still accepted
        raise CannotDeidentify("the pixel data cannot be read whole (the file is truncated): a copy would have no image")
    return ds


def _copy_stored(inst: Instance, target: Path) -> None:
    with inst.file.open("rb") as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)


def to_catalogue(*, user, level: str, source_id: str, instances: list[Instance], choices: Choices) -> Result:
    """De-identified copies of `instances` in `user`'s catalogue (one new study per source study)."""
    check_burned_in(instances, choices)
    deidentifier = choices.deidentifier()
    with _workdir() as work:
        prepared = []
        for n, inst in enumerate(instances):
            source, target = work / f"{n}.src", work / f"{n}.dcm"
            _copy_stored(inst, source)
            try:
                deidentify_file(source, target, deidentifier, has_pixels=inst.has_pixel_data)
            except CannotDeidentify as exc:
                raise CannotDeidentify(exc.message, files=[{"id": str(inst.pk), "reason": exc.message}]) from None
            source.unlink()
            prepared.append((inst, target))
        rows: list[dict[str, Any]] = []
        created: list[str] = []
        for inst, target in prepared:
            with open(target, "rb") as handle:
                staged = stage_stream(handle, f"{inst.pk}.dcm")
            outcome = services.ingest(owner=user, staged=staged, label=str(inst.pk))
            if outcome.reason is Reason.QUOTA_EXCEEDED:
                _undo(created)
                raise QuotaExceeded(outcome.message, files=[{"id": str(inst.pk), "reason": outcome.message}])
            if not outcome.stored:
                _undo(created)
                refused = CannotDeidentify(
                    f"the de-identified copy could not be stored: {outcome.message}",
                    files=[{"id": str(inst.pk), "reason": outcome.message}],
                )
                refused.status = outcome.error.status if outcome.error else 422  # a conflict stays a 409
                raise refused
            if outcome.status == "created":
                created.append(str(outcome.id))
            rows.append({"source": str(inst.pk), "id": outcome.id, "status": str(outcome.status)})
    study = Study.objects.filter(instances__pk=str(rows[0]["id"])).first() if rows else None
    record = _record(user, level, source_id, choices, deidentifier, len(instances), study=study, delivered_as="catalogue")
    return Result(record=record, study=study, rows=rows)


def _undo(created: list[str]) -> None:
    for inst in Instance.objects.filter(pk__in=created):
        services.delete_instance(instance=inst)


def zip_stream(*, user, level: str, source_id: str, instances: list[Instance], choices: Choices) -> tuple[Deidentification, Iterator[bytes]]:
    """The record (made now, before the answer starts) and the zip's chunks: <new series UID>/<new SOP UID>.dcm.
    New UIDs are a function of the key, so the names are known before any file is read. A file that cannot be
    de-identified once streaming has begun is left out and named (by its source id) in MISSING.txt."""
    check_burned_in(instances, choices)
    deidentifier = choices.deidentifier()
    record = _record(user, level, source_id, choices, deidentifier, len(instances), study=None, delivered_as="zip")
    work = Path(tempfile.mkdtemp(prefix="deid-", dir=settings.FILE_UPLOAD_TEMP_DIR or None))

    def opener(inst: Instance, n: int) -> Callable[[], IO[bytes]]:
        def open_copy() -> IO[bytes]:
            source, target = work / f"{n}.src", work / f"{n}.dcm"
            try:
                _copy_stored(inst, source)
                deidentify_file(source, target, deidentifier, has_pixels=inst.has_pixel_data)
            except (CannotDeidentify, OSError) as exc:
                logger.warning("deidentify: left out of a zip id=%s reason=%s", inst.pk, type(exc).__name__)
                raise OSError(str(inst.pk)) from None
            finally:
                source.unlink(missing_ok=True)
            handle = open(target, "rb")  # noqa: SIM115 - stream_zip closes it after copying it
            target.unlink()  # the open handle keeps the bytes until the zip has read them
            return handle

        return open_copy

    def members() -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
        for n, inst in enumerate(instances):
            series_uid = inst.series.series_instance_uid
            if "retain_uids" not in choices.options:
                series_uid = deidentifier.new_uid(series_uid)
            sop_uid = inst.sop_instance_uid if "retain_uids" in choices.options else deidentifier.new_uid(inst.sop_instance_uid)
            yield f"{series_uid}/{sop_uid}.dcm", opener(inst, n)

    def chunks() -> Iterator[bytes]:
        try:
            yield from zipstream.stream_zip(members())
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if choices.keep_mapping:
                Deidentification.objects.filter(pk=record.pk).update(uid_map=deidentifier.uid_map)

    return record, chunks()


def _record(user, level: str, source_id: str, choices: Choices, deidentifier, count: int, *, study, delivered_as: str):
    with transaction.atomic():
        record = Deidentification.objects.create(
            owner=user, source_level=level, source_id=source_id[:64], result_study=study, delivered_as=delivered_as,
            options=choices.recorded(), instance_count=count, uid_map=deidentifier.uid_map if choices.keep_mapping else None,
        )  # fmt: skip
    request_id = _request_id()
    for action, object_type, object_id in (
        ("deidentify-source", level if level in ("study", "series") else "", source_id if level in ("study", "series") else ""),
        ("deidentify-result", "study", str(study.pk)) if study else ("deidentify-result", "deidentification", str(record.pk)),
    ):
        write_event(
            user=user, action=action, method="POST", object_type=object_type, object_id=object_id, outcome="success",
            status=200, client_address=None, request_id=request_id or f"deid-{record.pk}",
        )  # fmt: skip
    logger.info("deidentify level=%s files=%d as=%s record=%s", level, count, delivered_as, record.pk)
    return record


def _request_id() -> str:
    from dicomsite.logging import request_id_var

    value = request_id_var.get()
    return "" if value == "-" else value


def from_sources(*, paths: Iterable[str], choices: Choices, owner=None, out: Path | None = None, user=None) -> Iterator[Outcome]:
    """De-identify every DICOM file under `paths` (folders, zips, DICOMDIR media) into `owner`'s catalogue or into
    the folder `out` (<new series UID>/<new SOP UID>.dcm); one Outcome per file found, as import_dicom reports them.
    `user` is who asked (the record's owner: `owner`, or the first superuser for a folder run)."""
    deidentifier = choices.deidentifier()
    count = 0
    with _workdir() as work:
        for item in sources.walk(paths, zip_limits=importer.zip_limits()):
            if not isinstance(item, sources.Source):
                yield importer.not_imported(item)
                continue
            count += 1
            yield _one_source(item, work, deidentifier, choices, owner=owner, out=out)
    if user is not None:
        _record(user, "files", "", choices, deidentifier, count, study=None, delivered_as="catalogue" if owner else "folder")


def _one_source(item: sources.Source, work: Path, deidentifier: deid.Deidentifier, choices: Choices, *, owner, out) -> Outcome:
    source, target = work / "source.dcm", work / "target.dcm"
    try:
        with item.open() as src, open(source, "wb") as copy:
            shutil.copyfileobj(src, copy, 1024 * 1024)
        with open(source, "rb") as handle:  # the same checks as ingest: hostile input is refused here too
            parsed = parse_dicom(handle, max_inflated_bytes=settings.DICOM_MAX_INFLATED_BYTES)
    except InvalidDicom as exc:
        source.unlink(missing_ok=True)
        why = Reason.NOT_AN_INSTANCE if isinstance(exc, NotAnInstance) else Reason.INVALID  # a DICOMDIR: skipped
        return Outcome(why, str(exc), label=item.label, size=item.size)
    except OSError as exc:
        source.unlink(missing_ok=True)
        return Outcome(Reason.UNREADABLE, f"the file cannot be read ({exc.strerror or type(exc).__name__})", label=item.label, size=item.size)
    if not (choices.masks or choices.confirm_burned_in):
        reason = deid.burned_in_risk(
            burned_in=_header_value(parsed.header, "00280301"), modality=parsed.modality, sop_class_uid=parsed.sop_class_uid
        )
        if reason:
            return Outcome(Reason.INVALID, f"{reason}: mask rectangles (--mask) or confirm (--confirm-burned-in)", label=item.label, size=item.size)
    try:
        ds = deidentify_file(source, target, deidentifier, has_pixels=parsed.pixel_data is not None)
    except CannotDeidentify as exc:
        return Outcome(Reason.INVALID, exc.message, label=item.label, size=item.size)
    finally:
        source.unlink(missing_ok=True)
    size = target.stat().st_size
    if out is None:
        with open(target, "rb") as handle:
            staged = stage_stream(handle, "deidentified.dcm")
        target.unlink()
        return services.ingest(owner=owner, staged=staged, label=item.label)
    name = Path(str(ds.SeriesInstanceUID)) / f"{ds.SOPInstanceUID}.dcm"
    (out / name.parent).mkdir(parents=True, exist_ok=True)
    if (out / name).exists():  # an earlier run with the same secret, or the same file twice
        same = filecmp.cmp(target, out / name, shallow=False)
        target.unlink()
        if same:
            return Outcome(Reason.SAME_BYTES, object_id=str(name), label=item.label, size=size)
        return Outcome(Reason.SAME_UID, f"{name} is already in the folder with other content", label=item.label, size=size)
    shutil.move(target, out / name)
    return Outcome(Reason.STORED, object_id=str(name), label=item.label, size=size)
