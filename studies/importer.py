"""import_dicom's importer: every file under folders, zips and DICOMDIR media, through `services.ingest_batch`.

Hashing and header parsing run in worker processes (pure code from `dicomcore.sources`);
the main process stores files and writes the catalogue, one transaction per batch of files, so an
interrupted import leaves whole records only. At most a few files per worker are in flight,
so memory does not grow with the number of files.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from functools import partial

from django.conf import settings

from dicomcore import sources

from . import services
from .outcome import Outcome, Reason

IN_FLIGHT_PER_WORKER = 4
# Files catalogued per transaction by import_dicom (one duplicate lookup, one bulk insert): measured
# with python -m bench run import, the per-file transaction was the import's bottleneck.
BATCH_SIZE = 50
# Files handed to the workers ahead of the one being waited for. At least two batches: while the main
# process stores and catalogues one batch, the workers prepare the next (with only a few files ahead they
# sat idle half the time while the main process catalogued, and it waited for them the other half:
# python -m bench run import --py-spy). Bounded, so memory does not grow with the number of files.
IN_FLIGHT = 2 * BATCH_SIZE


def zip_limits() -> sources.ZipLimits:
    return sources.ZipLimits(
        max_members=settings.DICOM_ZIP_MAX_MEMBERS,
        max_total_bytes=settings.DICOM_ZIP_MAX_TOTAL_BYTES,
        max_ratio=settings.DICOM_ZIP_MAX_RATIO,
        max_member_bytes=settings.DICOM_MAX_UPLOAD_BYTES,
    )


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def import_paths(*, owner, paths: Iterable[str], workers: int = 1, dry_run: bool = False) -> Iterator[Outcome]:
    """Import every DICOM file under `paths` for `owner`; one Outcome per file found, in walk order.

    A dry run stores nothing and answers through the same classification as a real run.
    """
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
    # Dry run: the hashes and UIDs earlier files would have stored (memory grows with the run).
    planned: dict[str, set] | None = {"sha256": set(), "uid": set()} if dry_run else None
    prepared = _prepared(found, prepare, workers)
    batch: list[sources.Prepared] = []
    try:
        for item in prepared:
            if isinstance(item, sources.Prepared):
                batch.append(item)
                if len(batch) >= BATCH_SIZE:
                    yield from _catalogue_batch(owner, batch, planned)
                    batch = []
                continue
            yield from _catalogue_batch(owner, batch, planned)  # results stay in walk order
            batch = []
            yield not_imported(item)
        yield from _catalogue_batch(owner, batch, planned)
        batch = []
    finally:
        for item in batch:  # interrupted before they were catalogued
            _discard(item)
        prepared.close()  # stops the workers first, so nothing writes into the folder after this
        shutil.rmtree(temp_dir, ignore_errors=True)


def not_imported(item: sources.Skipped | sources.Refused) -> Outcome:
    """The Outcome of a source that never reached the ingest service (not an instance, or unreadable)."""
    if isinstance(item, sources.Skipped) or item.skipped:
        return Outcome(Reason.NOT_AN_INSTANCE, item.reason, label=item.label)
    return Outcome(Reason.UNREADABLE, item.reason, label=item.label)


def _prepared(
    found: Iterator[sources.Source | sources.Skipped | sources.Refused], prepare, workers: int
) -> Generator[sources.Prepared | sources.Skipped | sources.Refused, None, None]:
    """Skipped and Refused items as they are; Sources prepared (in worker processes when workers > 1), in order."""
    if workers <= 1:
        for item in found:
            yield prepare(item) if isinstance(item, sources.Source) else item
        return
    # Workers import only the pure dicomcore package (no Django).
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


def _catalogue_batch(owner, batch: list[sources.Prepared], planned: dict[str, set] | None) -> list[Outcome]:
    if not batch:
        return []
    try:
        return services.ingest_batch(owner=owner, files=batch, dry_run=planned is not None, planned=planned)
    finally:
        for item in batch:
            _discard(item)
