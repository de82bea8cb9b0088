"""Bulk ingest: many files from folders, zips and DICOMDIR media (import_dicom) or one request
(the bulk upload API), each through the same ingest service as a single upload.

Hashing and header parsing run in worker processes (pure code from `studies.dicom.sources`);
the main process stores files and writes the catalogue, one transaction per file, so an
interrupted import leaves whole records only. At most a few files per worker are in flight,
so memory does not grow with the number of files.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import tempfile
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial

from django.conf import settings

from . import services
from .dicom import sources
from .errors import Conflict, ServiceError
from .models import Instance
from .uploads import stage_stream

IN_FLIGHT_PER_WORKER = 4
# Files catalogued per transaction by import_dicom (one duplicate lookup, one bulk insert): measured
# with bench/import_bench.py, the per-file transaction was the import's bottleneck.
BATCH_SIZE = 50
# Files handed to the workers ahead of the one being waited for. At least two batches: while the main
# process stores and catalogues one batch, the workers prepare the next (with only a few files ahead they
# sat idle half the time while the main process catalogued, and it waited for them the other half:
# bench/import_bench.py --py-spy). Bounded, so memory does not grow with the number of files.
IN_FLIGHT = 2 * BATCH_SIZE
STATUSES = ("created", "duplicate", "conflict", "refused", "skipped")


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: created / duplicate / conflict / refused / skipped."""

    filename: str
    status: str
    id: str | None = None
    error: str = ""
    size: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def zip_limits() -> sources.ZipLimits:
    return sources.ZipLimits(
        max_members=settings.DICOM_ZIP_MAX_MEMBERS,
        max_total_bytes=settings.DICOM_ZIP_MAX_TOTAL_BYTES,
        max_ratio=settings.DICOM_ZIP_MAX_RATIO,
        max_member_bytes=settings.DICOM_MAX_UPLOAD_BYTES,
    )


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def import_paths(*, owner, paths: Iterable[str], workers: int = 1, dry_run: bool = False) -> Iterator[FileResult]:
    """Import every DICOM file under `paths` for `owner`; one FileResult per file found, in walk order."""
    # This run's own temporary folder (zip members are copied there by the workers): removed whole
    # at the end, so no copy of patient data outlives the run, however it ends (Ctrl-C included).
    temp_dir = tempfile.mkdtemp(prefix="import-", dir=settings.FILE_UPLOAD_TEMP_DIR)
    prepare = partial(
        sources.prepare,
        max_bytes=settings.DICOM_MAX_UPLOAD_BYTES,
        max_inflated_bytes=settings.DICOM_MAX_INFLATED_BYTES,
        temp_dir=temp_dir,
    )
    found = sources.walk(paths, zip_limits=zip_limits())
    planned: dict[str, set] = {"sha256": set(), "uid": set()}  # dry run: what earlier files would have stored
    prepared = _prepared(found, prepare, workers)
    batch: list[sources.Prepared] = []
    try:
        for item in prepared:
            if isinstance(item, sources.Prepared) and not dry_run:
                batch.append(item)
                if len(batch) >= BATCH_SIZE:
                    yield from _catalogue_batch(owner, batch)
                    batch = []
                continue
            yield from _catalogue_batch(owner, batch)  # results stay in walk order
            batch = []
            yield _catalogue(owner, item, dry_run=dry_run, planned=planned)
        yield from _catalogue_batch(owner, batch)
        batch = []
    finally:
        for item in batch:  # interrupted before they were catalogued
            _discard(item)
        prepared.close()  # stops the workers first, so nothing writes into the folder after this
        shutil.rmtree(temp_dir, ignore_errors=True)


def _prepared(found: Iterator, prepare, workers: int) -> Iterator:
    """Skipped and Refused items as they are; Sources prepared (in worker processes when workers > 1), in order."""
    if workers <= 1:
        for item in found:
            yield prepare(item) if isinstance(item, sources.Source) else item
        return
    # Workers import only the pure studies.dicom package (no Django).
    # spawn, not fork: the parent holds database connections and threads that a fork would copy.
    context = multiprocessing.get_context("spawn")
    pending: deque = deque()
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=sources.worker_init) as pool:
        try:
            for item in found:
                pending.append(pool.submit(prepare, item) if isinstance(item, sources.Source) else item)
                while len(pending) >= max(workers * IN_FLIGHT_PER_WORKER, IN_FLIGHT):
                    yield _take(pending)
            while pending:
                yield _take(pending)
        finally:
            # Interrupted (Ctrl-C, error): drop queued work and remove temporary copies already made.
            pool.shutdown(wait=True, cancel_futures=True)
            for entry in pending:
                if isinstance(entry, concurrent.futures.Future) and entry.done() and not entry.cancelled() and entry.exception() is None:
                    _discard(entry.result())


def _take(pending: deque):
    """The first pending result. It leaves `pending` only once it is in hand, so a Ctrl-C while
    waiting for it still finds it there (and removes its temporary copy) in the cleanup above."""
    result = _result(pending[0])
    pending.popleft()
    return result


def _result(entry):
    if isinstance(entry, concurrent.futures.Future):
        return entry.result()
    return entry


def _discard(item) -> None:
    if isinstance(item, sources.Prepared) and item.temporary:
        sources._remove(item.path)


def _catalogue(owner, item, *, dry_run: bool = False, planned: dict | None = None) -> FileResult:
    if isinstance(item, sources.Skipped):
        return FileResult(item.label, "skipped", error=item.reason)
    if isinstance(item, sources.Refused):
        return FileResult(item.label, "skipped" if item.skipped else "refused", error=item.reason)
    try:
        if dry_run:
            return _would_be(owner, item, planned if planned is not None else {"sha256": set(), "uid": set()})
        try:
            outcome = services.ingest_prepared(
                owner=owner,
                path=item.path,
                sha256=item.sha256,
                size=item.size,
                parsed=item.parsed,
                original_name=os.path.basename(item.label),
            )
        except Conflict as exc:
            return FileResult(item.label, "conflict", exc.extra.get("id"), str(exc), item.size)
        except ServiceError as exc:
            return FileResult(item.label, "refused", error=str(exc), size=item.size)
        status = "created" if outcome.created else "duplicate"
        return FileResult(item.label, status, str(outcome.instance.pk), size=item.size)
    finally:
        _discard(item)


def _catalogue_batch(owner, batch: list[sources.Prepared]) -> list[FileResult]:
    if not batch:
        return []
    try:
        outcomes = services.ingest_prepared_batch(owner=owner, files=batch)
    finally:
        for item in batch:
            _discard(item)
    return [
        FileResult(item.label, outcome.status, outcome.id, outcome.error, item.size)
        for item, outcome in zip(batch, outcomes, strict=True)
    ]


def _would_be(owner, item: sources.Prepared, planned: dict) -> FileResult:
    """The dry-run answer: what importing this file would do, given the catalogue and the files
    before it in this run (their hashes and UIDs are remembered: memory grows with the run)."""
    same = Instance.objects.filter(owner=owner, sha256=item.sha256).values_list("id", flat=True).first()
    if same or item.sha256 in planned["sha256"]:
        return FileResult(item.label, "duplicate", str(same) if same else None, size=item.size)
    uid = item.parsed.sop_instance_uid
    other = Instance.objects.filter(owner=owner, sop_instance_uid=uid).values_list("id", flat=True).first()
    if other or uid in planned["uid"]:
        reason = "same SOP Instance UID, different content"
        return FileResult(item.label, "conflict", str(other) if other else None, reason, item.size)
    planned["sha256"].add(item.sha256)
    planned["uid"].add(uid)
    return FileResult(item.label, "created", size=item.size)


# --- the bulk upload API: files and zip archives already staged by the request parser -----------


def ingest_uploads(*, owner, uploads: list) -> list[FileResult]:
    """Ingest staged uploads; zip archives (by content) are expanded member by member, within limits."""
    results: list[FileResult] = []
    for upload in uploads:
        name = getattr(upload, "original_name", "") or upload.name or "upload"
        try:
            upload.seek(0)
            head = upload.read(4)
            upload.seek(0)
            if head in (sources.ZIP_MAGIC, sources.EMPTY_ZIP_MAGIC):
                results.extend(_ingest_zip(owner, upload, name))
            else:
                results.append(_ingest_one(owner, upload, name))
        finally:
            upload.close()
    return results


def _ingest_zip(owner, upload, name: str) -> Iterator[FileResult]:
    members = list(sources.zip_members(upload.file, label=name, limits=zip_limits()))
    has_members = any(isinstance(m, sources.Source) for m in members)
    with zipfile.ZipFile(upload.file) if has_members else nullcontext() as archive:
        for item in members:
            if isinstance(item, sources.Skipped):
                yield FileResult(item.label, "skipped", error=item.reason)
                continue
            if isinstance(item, sources.Refused):
                yield FileResult(item.label, "refused", error=item.reason)
                continue
            try:
                with archive.open(item.member) as stream:
                    staged = stage_stream(stream, os.path.basename(item.member))
            except ServiceError as exc:
                yield FileResult(item.label, "refused", error=str(exc), size=item.size)
                continue
            except Exception as exc:  # noqa: BLE001 - a broken member (bad CRC, truncated) is that member's problem
                reason = f"the archive member cannot be read ({type(exc).__name__})"
                yield FileResult(item.label, "refused", error=reason, size=item.size)
                continue
            staged.seek(0)
            reason = sources.classify(staged.read(sources.PREAMBLE_LENGTH + 4), item.member.rsplit("/", 1)[-1])
            staged.seek(0)
            if reason:  # README.TXT, a JPEG...: skipped as import_dicom does, not an error
                staged.close()
                yield FileResult(item.label, "skipped", error=reason, size=item.size)
                continue
            yield _ingest_one(owner, staged, item.label)


def _ingest_one(owner, staged, label: str) -> FileResult:
    if not hasattr(staged, "sha256"):  # not staged by our upload handler (e.g. a small in-memory part)
        staged = stage_stream(staged, label)
    size = staged.size
    if size == 0:
        staged.close()
        return FileResult(label, "refused", error="the file is empty")
    try:
        outcome = services.ingest_instance(owner=owner, staged=staged)
    except Conflict as exc:
        return FileResult(label, "conflict", exc.extra.get("id"), str(exc), size)
    except ServiceError as exc:
        return FileResult(label, "refused", error=str(exc), size=size)
    return FileResult(label, "created" if outcome.created else "duplicate", str(outcome.instance.pk), size=size)
