"""Scrub storage against the catalogue: files without rows, rows without files, content that changed.

    python manage.py check_storage [--fix] [--no-hash] [--grace-minutes 60]

--fix removes stored files no row refers to (older than the grace period, so an upload that has
saved its file but not yet committed its row is left alone). Rows without files and hash
mismatches are only reported: they need a human (restore from backup), never silent deletion.
Exit status 1 when anything was found (after --fix: when anything is left). Output names
storage keys and instance ids only.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dicomcore.constants import CHUNK_SIZE

from ...models import Instance

ROOT = "dicom"


def stored_keys(storage, folder: str = ROOT):
    """Every file key under `folder`, walking the storage's own listing (filesystem or object store)."""
    try:
        dirs, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        yield f"{folder}/{name}"
    for name in dirs:
        yield from stored_keys(storage, f"{folder}/{name}")


def file_sha256(storage, key: str) -> str:
    hasher = hashlib.sha256()  # the row's sha256 is of the stored bytes, preamble included
    with storage.open(key, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


class Command(BaseCommand):
    help = "Report stored files without rows, rows without files and sha256 mismatches; --fix removes orphan files."

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="delete orphan files older than the grace period")
        parser.add_argument("--no-hash", action="store_true", help="skip re-hashing every file (faster, no corruption check)")
        parser.add_argument("--grace-minutes", type=int, default=60, help="orphans younger than this are left alone")

    def handle(self, *args, fix, no_hash, grace_minutes, **options):
        storage = default_storage
        rows = dict(Instance.objects.values_list("file", "id").iterator(chunk_size=5000))
        hashes = {} if no_hash else dict(Instance.objects.values_list("id", "sha256").iterator(chunk_size=5000))
        seen: set[str] = set()
        orphans, mismatched = [], []
        for key in stored_keys(storage):
            if key not in rows:
                orphans.append(key)
                continue
            seen.add(key)
            if not no_hash and file_sha256(storage, key) != hashes[rows[key]]:
                mismatched.append((rows[key], key))
        missing = [(pk, key) for key, pk in rows.items() if key not in seen]

        for key in orphans:
            self.stdout.write(f"file without row: {key}")
        for pk, key in missing:
            self.stdout.write(f"row without file: instance {pk} ({key})")
        for pk, key in mismatched:
            self.stdout.write(f"sha256 mismatch: instance {pk} ({key})")

        removed = 0
        if fix and orphans:
            cutoff = timezone.now() - dt.timedelta(minutes=grace_minutes)
            for key in orphans:
                try:
                    modified = storage.get_modified_time(key)
                except (NotImplementedError, OSError):
                    modified = None
                if modified is not None and modified > cutoff:
                    self.stdout.write(f"left alone (younger than {grace_minutes} min): {key}")
                    continue
                storage.delete(key)
                removed += 1
        summary = (
            f"{len(rows)} rows, {len(seen) + len(orphans)} files: {len(orphans)} without row"
            f"{f' ({removed} removed)' if fix else ''}, {len(missing)} rows without file, "
            f"{'not checked' if no_hash else len(mismatched)} sha256 mismatches"
        )
        problems = len(orphans) - removed + len(missing) + len(mismatched)
        if problems:
            self.stdout.write(self.style.WARNING(summary))
            raise CommandError(f"{problems} problem(s) left")
        self.stdout.write(self.style.SUCCESS(summary))
