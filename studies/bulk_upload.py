"""The bulk upload API's ingest: many staged files and zip archives from one request, each through
`services.ingest` (one Outcome per file or archive member, in request order)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import nullcontext

from dicomcore import sources
from dicomcore.constants import DICM, PREAMBLE_LENGTH

from . import services
from .errors import ServiceError
from .importer import not_imported, zip_limits
from .outcome import Outcome, Reason
from .uploads import as_staged, stage_stream


def ingest_uploads(*, owner, uploads: list) -> list[Outcome]:
    """Ingest staged uploads; zip archives (by content) are expanded member by member, within limits."""
    outcomes: list[Outcome] = []
    for upload in uploads:
        name = getattr(upload, "original_name", "") or upload.name or "upload"
        try:
            upload.seek(0)
            head = upload.read(4)
            upload.seek(0)
            if head in (sources.ZIP_MAGIC, sources.EMPTY_ZIP_MAGIC):
                outcomes.extend(_ingest_zip(owner, upload, name))
            else:
                outcomes.append(services.ingest(owner=owner, staged=as_staged(upload), label=name))
        finally:
            upload.close()
    return outcomes


def _ingest_zip(owner, upload, name: str) -> Iterator[Outcome]:
    members = list(sources.zip_members(upload.file, label=name, limits=zip_limits()))
    has_members = any(isinstance(m, sources.Source) for m in members)
    with zipfile.ZipFile(upload.file) if has_members else nullcontext() as archive:
        for item in members:
            if not isinstance(item, sources.Source):
                yield not_imported(item)
                continue
            assert archive is not None and item.member is not None  # a Source here is a member of this archive
            try:
                with archive.open(item.member) as stream:
                    staged = stage_stream(stream, os.path.basename(item.member))
            except ServiceError as exc:
                yield services.refusal(exc, label=item.label, size=item.size)
                continue
            except Exception as exc:  # noqa: BLE001 - a broken member (bad CRC, truncated) is that member's problem
                reason = f"the archive member cannot be read ({type(exc).__name__})"
                yield Outcome(Reason.UNREADABLE, reason, label=item.label, size=item.size)
                continue
            staged.seek(0)
            reason = sources.classify(staged.read(PREAMBLE_LENGTH + len(DICM)), item.member.rsplit("/", 1)[-1])
            staged.seek(0)
            if reason:  # README.TXT, a JPEG...: skipped as import_dicom does, not an error
                staged.close()
                yield Outcome(Reason.NOT_AN_INSTANCE, reason, label=item.label, size=item.size)
                continue
            yield services.ingest(owner=owner, staged=staged, label=item.label)
