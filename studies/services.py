"""Writes to the catalogue: ingest DICOM files, delete an instance.

Every way in (REST upload, bulk upload, admin, DICOMweb STOW-RS, C-STORE) calls `ingest()`;
`import_dicom` calls `ingest_batch()`. Both answer with `outcome.Outcome`, one per file. Every
delete goes through `delete_instance`. Each instance created is queued for pre-rendering once its
transaction commits (`prerender.after_commit`; only with REDIS_URL). Logs carry ids, sizes and
hashes only, never patient data or client filenames.
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import cast

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Q

from dicomcore.constants import PREAMBLE_LENGTH
from dicomcore.parsing import InvalidDicom, ParsedDicom, StoredBytesHasher, parse_dicom, zero_preamble

from . import prerender, quotas
from .errors import (
    CatalogueBusy,
    Conflict,
    InvalidUpload,
    QuotaExceeded,
    SeriesConflict,
    ServiceError,
    StorageFailure,
    UnreadableSource,
    UploadTooLarge,
)
from .models import Instance, Series, Study, instance_file_key
from .outcome import Outcome, Reason
from .uploads import StagedFile

logger = logging.getLogger(__name__)

# Attempts at the catalogue transaction when it loses a race that is neither a duplicate nor a
# conflict (e.g. the series it joined was deleted meanwhile); each retry re-reads the hierarchy.
MAX_ATTEMPTS = 3
CONFLICT_MESSAGE = "an instance with this SOP Instance UID but different content is already in your catalogue"


def ingest(*, owner, staged: StagedFile, label: str | None = None) -> Outcome:
    """Validate, store and catalogue one staged file for `owner`; the one way in for single files.

    Same owner + same bytes → duplicate (the existing instance), nothing stored twice. Same owner +
    same SOP Instance UID with other bytes → conflict. Anything the catalogue cannot hold → refused,
    with the reason. Never raises for the file's own problems: every channel maps the Outcome to its
    own terms. The stored file is removed again if the catalogue transaction does not commit. The
    staged file is consumed: it is closed (and its temporary file removed) before this returns.
    """
    label = staged.original_name if label is None else label
    size = staged.size
    try:
        if size == 0:
            raise InvalidUpload("the file is empty")
        instance, created = _ingest(owner, staged)
    except ServiceError as exc:
        return refusal(exc, label=label, size=size)
    finally:
        staged.close()
    return _stored(instance, created, label=label, size=size)


def refusal(exc: ServiceError, *, label: str = "", size: int = 0) -> Outcome:
    """The Outcome of a file the service refused (or found in conflict) with `exc`."""
    series = exc.extra.get("series")
    return Outcome(
        exc.reason,
        exc.message,
        object_id=exc.extra.get("id") or series,
        object_type="series" if series else "instance",
        label=label,
        size=size,
        error=exc,
    )


def _stored(instance: Instance, created: bool, *, label: str, size: int) -> Outcome:
    reason = Reason.STORED if created else Reason.SAME_BYTES
    return Outcome(reason, instance=instance, object_id=str(instance.pk), label=label, size=size)


def _ingest(owner, staged: StagedFile) -> tuple[Instance, bool]:
    if staged.size > settings.DICOM_MAX_UPLOAD_BYTES:
        raise UploadTooLarge(settings.DICOM_MAX_UPLOAD_BYTES)
    try:
        # The open file itself: tempfile's wrapper adds a Python call to each of pydicom's many small reads.
        parsed = parse_dicom(getattr(staged.file, "file", staged.file), max_inflated_bytes=settings.DICOM_MAX_INFLATED_BYTES)
    except InvalidDicom as exc:
        raise InvalidUpload(str(exc)) from exc
    sha256 = staged.sha256
    existing = _existing(owner, sha256, parsed.sop_instance_uid)
    if existing is not None:
        return existing

    zero_preamble(staged.file)
    return _store_and_catalogue(owner, parsed, staged, sha256=sha256, size=staged.size, original_name=staged.original_name)


def _ingest_prepared(owner, item) -> tuple[Instance, bool]:
    """Store and catalogue one file already validated and hashed by an import worker (a sources.Prepared).

    The file at `item.path` is copied (never moved or changed) with a zeroed preamble; its bytes are
    hashed again while copying, so a file that changed after it was checked is refused, not stored.
    """
    if item.size > settings.DICOM_MAX_UPLOAD_BYTES:
        raise UploadTooLarge(settings.DICOM_MAX_UPLOAD_BYTES)
    existing = _existing(owner, item.sha256, item.parsed.sop_instance_uid)
    if existing is not None:
        return existing
    with _source_copy(item.path, item.size) as (content, reader):
        return _store_and_catalogue(
            owner, item.parsed, content, sha256=item.sha256, size=item.size,
            original_name=os.path.basename(item.label), verify=reader,
        )


@dataclass(frozen=True)
class _SameAs:
    """A batch file whose answer is that of an earlier file of the same batch (settled after commit)."""

    index: int
    reason: Reason


def ingest_batch(*, owner, files: list, dry_run: bool = False, planned: dict[str, set] | None = None) -> list[Outcome]:
    """Store and catalogue many checked files (sources.Prepared: label, path, sha256, size, parsed)
    in one transaction: one lookup for duplicates and conflicts, one bulk insert; one Outcome each.

    The rules are those of a single upload, also between files of the same batch. Stored copies
    are removed unless the transaction commits. If a concurrent writer gets in the way (a unique
    constraint fires), the batch falls back to one file at a time, which settles each race.

    `dry_run` stores nothing and answers with the same classification ("created" means it would
    be); `planned` carries the hashes and UIDs of earlier dry-run batches ({"sha256", "uid"} sets),
    which this call extends, so a whole dry run answers as the real run would.
    """
    outcomes: list = [None] * len(files)
    fresh = _classify_batch(owner, files, outcomes, planned or {})
    if dry_run:
        for index in fresh:
            item = files[index]
            outcomes[index] = Outcome(Reason.STORED, label=item.label, size=item.size)
            if planned is not None:
                planned.setdefault("sha256", set()).add(item.sha256)
                planned.setdefault("uid", set()).add(item.parsed.sop_instance_uid)
        return _settle(files, outcomes)
    stored: dict[int, tuple[uuid.UUID, str]] = {}
    committed = False
    fresh = _within_quota(owner, files, fresh, outcomes)
    try:
        for index in fresh:
            item = files[index]
            instance_id = uuid.uuid4()
            try:
                with _source_copy(item.path, item.size) as (content, reader):
                    key = instance_file_key(Instance(id=instance_id))
                    stored[index] = (instance_id, _save_checked(key, content, size=item.size, sha256=item.sha256, reader=reader))
            except ServiceError as exc:
                outcomes[index] = refusal(exc, label=item.label, size=item.size)
        try:
            with transaction.atomic():
                rows = _catalogue_batch(owner, files, stored, outcomes)
                Instance.objects.bulk_create(rows, batch_size=200)
                if rows:
                    quotas.charge(owner, size=sum(row.size for row in rows), files=len(rows))  # last, as in _catalogue
                prerender.after_commit(row.id for row in rows)
                committed = True  # before COMMIT, as in _store_and_catalogue
        except (IntegrityError, QuotaExceeded):  # a concurrent writer: each file settles on its own
            committed = False
            for _, name in stored.values():
                default_storage.delete(name)
            stored.clear()
            for index in fresh:
                if outcomes[index] is None or outcomes[index].reason is Reason.STORED:
                    outcomes[index] = _one_at_a_time(owner, files[index])
            return _settle(files, outcomes)
        for row in rows:
            logger.info("instance created id=%s sha256=%s size=%d", row.id, row.sha256, row.size)
    finally:
        if not committed:
            for _, name in stored.values():
                default_storage.delete(name)
    return _settle(files, outcomes)


def _within_quota(owner, files: list, fresh: list[int], outcomes: list) -> list[int]:
    """The files of `fresh` that fit in the owner's free quota, in order; the others refused before being stored.
    An estimate read without a lock: the catalogue transaction's charge is what decides."""
    free_bytes, free_instances = quotas.room(owner)
    if free_bytes is None and free_instances is None:
        return fresh
    fitting = []
    for index in fresh:
        size = files[index].size
        if (free_bytes is not None and size > free_bytes) or free_instances == 0:
            outcomes[index] = refusal(quotas.exceeded(owner, size=size, files=1), label=files[index].label, size=size)
            continue
        free_bytes = None if free_bytes is None else free_bytes - size
        free_instances = None if free_instances is None else free_instances - 1
        fitting.append(index)
    return fitting


def _classify_batch(owner, files: list, outcomes: list, planned: dict[str, set]) -> list[int]:
    """Fill in duplicates, conflicts and refusals known before storing; the indexes left to store."""
    shas = {item.sha256 for item in files}
    uids = {item.parsed.sop_instance_uid for item in files}
    known_sha: dict[str, str | None] = dict.fromkeys(set(planned.get("sha256", ())) & shas)
    known_uid: dict[str, str | None] = dict.fromkeys(set(planned.get("uid", ())) & uids)
    for pk, sha, uid in (
        Instance.objects.filter(owner=owner)
        .filter(Q(sha256__in=shas) | Q(sop_instance_uid__in=uids))
        .values_list("id", "sha256", "sop_instance_uid")
    ):
        known_sha[sha] = str(pk)
        known_uid[uid] = str(pk)
    fresh: list[int] = []
    batch_sha: dict[str, int] = {}
    batch_uid: dict[str, int] = {}
    for index, item in enumerate(files):
        uid = item.parsed.sop_instance_uid
        if item.size > settings.DICOM_MAX_UPLOAD_BYTES:
            outcomes[index] = refusal(UploadTooLarge(settings.DICOM_MAX_UPLOAD_BYTES), label=item.label, size=item.size)
        elif item.sha256 in known_sha:
            outcomes[index] = Outcome(Reason.SAME_BYTES, object_id=known_sha[item.sha256], label=item.label, size=item.size)
        elif uid in known_uid:
            outcomes[index] = Outcome(Reason.SAME_UID, CONFLICT_MESSAGE, object_id=known_uid[uid], label=item.label, size=item.size)
        elif item.sha256 in batch_sha:
            outcomes[index] = _SameAs(batch_sha[item.sha256], Reason.SAME_BYTES)
        elif uid in batch_uid:
            outcomes[index] = _SameAs(batch_uid[uid], Reason.SAME_UID)
        else:
            batch_sha[item.sha256] = batch_uid[uid] = index
            fresh.append(index)
    return fresh


def _catalogue_batch(owner, files: list, stored: dict, outcomes: list) -> list[Instance]:
    hierarchy: dict[tuple[str, str], tuple[Study, Series]] = {}
    rows = []
    for index, (instance_id, name) in list(stored.items()):
        item = files[index]
        key = (item.parsed.study_instance_uid, item.parsed.series_instance_uid)
        try:
            if key not in hierarchy:
                with transaction.atomic():  # a savepoint: a refused file leaves no new empty study behind
                    hierarchy[key] = _study_and_series(owner, item.parsed)
        except Conflict as exc:
            outcomes[index] = refusal(exc, label=item.label, size=item.size)
            del stored[index]
            default_storage.delete(name)  # no row will refer to this copy
            continue
        study, series = hierarchy[key]
        row = _new_instance(
            owner, item.parsed, instance_id, name, study, series,
            sha256=item.sha256, size=item.size, original_name=os.path.basename(item.label),
        )
        rows.append(row)
        outcomes[index] = _stored(row, True, label=item.label, size=item.size)
    return rows


def _settle(files: list, outcomes: list) -> list[Outcome]:
    """Resolve answers that pointed at another file of the batch, now that it has its outcome."""
    settled = []
    for item, outcome in zip(files, outcomes, strict=True):
        if isinstance(outcome, _SameAs):
            first = outcomes[outcome.index]
            if first.reason is not Reason.STORED:
                outcome = replace(first, label=item.label, size=item.size)  # the first copy fared badly: so does this one
            elif outcome.reason is Reason.SAME_BYTES:
                outcome = Outcome(Reason.SAME_BYTES, instance=first.instance, object_id=first.object_id, label=item.label, size=item.size)
            else:
                outcome = Outcome(Reason.SAME_UID, CONFLICT_MESSAGE, object_id=first.object_id, label=item.label, size=item.size)
        settled.append(outcome)
    return settled


def _one_at_a_time(owner, item) -> Outcome:
    try:
        instance, created = _ingest_prepared(owner, item)
    except ServiceError as exc:
        return refusal(exc, label=item.label, size=item.size)
    return _stored(instance, created, label=item.label, size=item.size)


class _StoredCopyReader:
    """Reads a source file as it is to be stored (preamble zeroed), hashing what was read."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.hasher = StoredBytesHasher()

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise OSError("only a rewind is supported")
        self.hasher = StoredBytesHasher()
        return self._handle.seek(0)

    def tell(self) -> int:
        return self._handle.tell()

    def seekable(self) -> bool:
        return False  # read once, in order (the hash): object storage uploads it as a stream, part by part

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def read(self, n: int = -1) -> bytes:
        start = self._handle.tell()
        try:
            chunk = self._handle.read(n)
        except OSError as exc:  # the source (a bad disk or CD), not the storage: that file's refusal
            raise UnreadableSource(f"the file could not be read ({exc.strerror or type(exc).__name__}); nothing was stored") from exc
        if start < PREAMBLE_LENGTH and chunk:
            keep = max(0, min(len(chunk), PREAMBLE_LENGTH - start))
            chunk = bytes(keep) + chunk[keep:]
        self.hasher.update(chunk)
        return chunk

    def close(self) -> None:
        self._handle.close()


@contextmanager
def _source_copy(path, size: int):
    """(content, reader) for storing a checked file: read with a zeroed preamble, hashed as it is read."""
    with open(path, "rb") as handle:
        reader = _StoredCopyReader(handle)
        content = File(reader, name="upload.dcm")  # type: ignore[arg-type]  # File wraps any file-like; the stubs want an IO
        content.size = size
        yield content, reader


def _save_checked(key: str, content, *, size: int, sha256: str, reader=None) -> str:
    """Save `content` under a fresh key and check what was stored; on any failure nothing is left there.

    The key holds a new UUID, so removing it is safe, including a file save() left half-written
    when reading the content failed (I/O error, Ctrl-C).
    """
    try:
        try:
            name = default_storage.save(key, content)
        except OSError as exc:
            # ENOSPC on the first write, a folder that cannot be created, a storage backend down: the same
            # answer as a disk that fills midway (below), and nothing is kept.
            logger.error("storage write failed key=%s errno=%s", key, exc.errno)
            raise StorageFailure("the file could not be stored (storage full or failing); nothing was kept") from None
        if reader is not None and reader.hasher.hexdigest() != sha256:
            raise InvalidUpload("the file changed while it was being imported; nothing was stored")
        # file_move_safe() ignores a short os.write() (a disk that fills up midway): check what was stored.
        if default_storage.size(name) != size:
            logger.error("short write to storage key=%s expected=%d", name, size)
            raise StorageFailure("the file could not be stored completely (storage full or failing); nothing was kept")
        return name
    except BaseException:
        _delete_stored_file(key)  # a storage that failed the write may fail the delete too: the refusal stands
        raise


def _store_and_catalogue(owner, parsed: ParsedDicom, content, *, sha256: str, size: int, original_name: str, verify=None) -> tuple[Instance, bool]:
    instance_id = uuid.uuid4()
    key = instance_file_key(Instance(id=instance_id))
    stored_name = _save_checked(key, content, size=size, sha256=sha256, reader=verify)
    committed = False
    try:
        for _attempt in range(MAX_ATTEMPTS):
            try:
                with transaction.atomic():
                    instance = _catalogue(owner, parsed, instance_id, stored_name, sha256=sha256, size=size, original_name=original_name)
                    prerender.after_commit([instance.id])
                    # Set before COMMIT: an interrupt right after the commit must not delete a catalogued
                    # file. If the commit itself fails, the file stays as an orphan that check_storage reports.
                    committed = True
                logger.info("instance created id=%s sha256=%s size=%d", instance.id, sha256, size)
                return instance, True
            except IntegrityError:
                committed = False
                existing = _existing(owner, sha256, parsed.sop_instance_uid)
                if existing is not None:
                    return existing
        raise CatalogueBusy("the catalogue changed while this file was being stored; try again")
    finally:
        if not committed:
            default_storage.delete(stored_name)


def _existing(owner, sha256: str, sop_instance_uid: str) -> tuple[Instance, bool] | None:
    """The duplicate answer, or a Conflict, when the owner already holds this file or UID.

    One query for both keys: two separate queries would let a concurrent upload of the same
    bytes commit between them and turn a duplicate into a false conflict.
    """
    # Ids and hashes only: a new file (the common case) then costs one narrow query, not a three-way join.
    matches = list(
        Instance.objects.filter(owner=owner)
        .filter(Q(sha256=sha256) | Q(sop_instance_uid=sop_instance_uid))
        .values_list("id", "sha256")[:2]
    )
    for match_id, match_sha256 in matches:
        if match_sha256 == sha256:
            match = Instance.objects.select_related("study", "series", "owner").filter(pk=match_id).first()
            if match is not None:  # else deleted since: the caller stores the file as new
                return match, False
    if matches and matches[0][1] != sha256:
        raise Conflict(
            CONFLICT_MESSAGE,
            id=str(matches[0][0]),
        )
    return None


def _catalogue(owner, parsed: ParsedDicom, instance_id: uuid.UUID, stored_name: str, *, sha256: str, size: int, original_name: str) -> Instance:
    study, series = _study_and_series(owner, parsed)
    instance = _new_instance(owner, parsed, instance_id, stored_name, study, series, sha256=sha256, size=size, original_name=original_name)
    instance.save(force_insert=True)
    quotas.charge(owner, size=size)  # last: the owner's quota row stays locked until COMMIT
    return instance


def _study_and_series(owner, parsed: ParsedDicom) -> tuple[Study, Series]:
    """The owner's Study and Series for this file, created when new (inside the caller's transaction)."""
    study = _locked(Study, owner=owner, study_instance_uid=parsed.study_instance_uid) or Study.objects.create(
        owner=owner, **_copied(parsed, STUDY_FIELDS)
    )
    series = _locked(Series, owner=owner, series_instance_uid=parsed.series_instance_uid) or Series.objects.create(
        owner=owner, study=study, **_copied(parsed, SERIES_FIELDS)
    )
    if series.study_id != study.id:
        raise SeriesConflict(
            "this file's series is already in your catalogue under a different study",
            reason="series_in_other_study",
            series=str(series.id),
        )
    return study, series


# Catalogue columns copied from the parsed header; ParsedDicom and the models use the same names.
STUDY_FIELDS = (
    "study_instance_uid", "patient_name", "patient_id", "patient_birth_date", "patient_sex", "study_date",
    "study_time", "study_id", "accession_number", "study_description", "referring_physician_name",
)
SERIES_FIELDS = ("series_instance_uid", "modality", "series_number", "series_description", "body_part_examined")
INSTANCE_FIELDS = (
    "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "modality", "instance_number", "number_of_frames",
    "photometric_interpretation", "has_pixel_data", "patient_name", "patient_id", "study_date", "accession_number",
    "study_description", "series_description", "header",
)
# Instance columns narrower than a DICOM US/IS value: a value out of their range is stored as NULL.
BOUNDED_FIELDS = {
    "rows": 2**31 - 1, "columns": 2**31 - 1, "samples_per_pixel": 32767,
    "bits_allocated": 32767, "bits_stored": 32767, "pixel_representation": 32767,
}  # fmt: skip


def _copied(parsed: ParsedDicom, names: tuple[str, ...]) -> dict:
    return {name: getattr(parsed, name) for name in names}


def _new_instance(
    owner, parsed: ParsedDicom, instance_id, stored_name: str, study: Study, series: Series, *, sha256: str, size: int, original_name: str
) -> Instance:
    return Instance(
        id=instance_id,
        owner=owner,
        study=study,
        series=series,
        file=stored_name,
        original_filename=original_name,
        sha256=sha256,
        size=size,
        **_copied(parsed, INSTANCE_FIELDS),
        **{name: _unsigned(getattr(parsed, name), maximum) for name, maximum in BOUNDED_FIELDS.items()},
        pixel_offset=parsed.pixel_data.value_offset if parsed.pixel_data else None,
    )


def _unsigned(value: int | None, maximum: int) -> int | None:
    return value if value is not None and 0 <= value <= maximum else None


def _locked(model, **lookup):
    """The row, held until COMMIT (SELECT ... FOR NO KEY UPDATE), or None.

    Uploads joining a study or series hold it like this: delete_instance locks them before deciding
    they are empty, so it waits for this transaction. A row created here instead is this
    transaction's own; a concurrent upload creating the same one makes the INSERT raise
    IntegrityError, and _store_and_catalogue tries again (then finding the row).
    """
    return model.objects.select_for_update(no_key=True).filter(**lookup).first()


def _lock(model, pk, *, no_key: bool = False) -> bool:
    """SELECT ... FOR [NO KEY] UPDATE of one row; False when it no longer exists."""
    return bool(list(model.objects.select_for_update(no_key=no_key).filter(pk=pk).values_list("pk", flat=True)))


def delete_instance(*, instance: Instance) -> None:
    """Delete an instance, then its series and study if they became empty; the file goes after commit."""
    stored_name = cast(str, instance.file.name)  # a catalogued instance always has its stored file
    with transaction.atomic():
        # Lock the study and series first (uploads joining them lock them too, in _catalogue): no upload
        # can commit an instance into them between "is it empty?" and the delete below.
        _lock(Study, instance.study_id)
        _lock(Series, instance.series_id)
        deleted, _ = Instance.objects.filter(pk=instance.pk).delete()
        if deleted:  # a concurrent delete of the same row gives the space back once
            quotas.refund(instance.owner_id, size=instance.size)
        if not Instance.objects.filter(series_id=instance.series_id).exists():
            Series.objects.filter(pk=instance.series_id).delete()
        if not Series.objects.filter(study_id=instance.study_id).exists():
            Study.objects.filter(pk=instance.study_id).delete()
        transaction.on_commit(lambda: _delete_stored_file(stored_name))
    logger.info("instance deleted id=%s", instance.pk)


def _delete_stored_file(name: str) -> None:
    try:
        default_storage.delete(name)
    except OSError:
        # The row is gone either way; `check_storage` reports files without rows.
        logger.exception("stored file could not be deleted key=%s", name)
