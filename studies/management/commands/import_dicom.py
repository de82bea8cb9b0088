"""Bulk import from folders, zip archives and DICOMDIR media through the ingest service.

    python manage.py import_dicom /media/cdrom export.zip --owner alice --workers 4 --report report.csv

Safe to re-run (a second run reports duplicates and stores nothing); Ctrl-C leaves only whole
records (each file is stored and catalogued in one step, its file removed if that step does
not finish). Output names counts and reasons, never patient data; per-file lines (with the
paths given) appear at --verbosity 2 and in the --report file.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ... import importer
from ...outcome import Outcome, Status
from .. import logger_level

REPORT_FIELDS = ["filename", "status", "id", "error", "size"]


class Command(BaseCommand):
    help = "Import DICOM files from folders (recursively), zip archives and DICOMDIR media for one owner."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", help="files, folders, zip archives or DICOMDIR files")
        parser.add_argument("--owner", required=True, help="username that will own the imported instances")
        parser.add_argument(
            "--workers", type=int, default=importer.default_workers(), help="processes hashing and parsing files (default: CPU count)"
        )
        parser.add_argument("--dry-run", action="store_true", help="read and check everything, store nothing")
        parser.add_argument("--report", help="write one line per file to this .csv or .json file")
        parser.add_argument("--strict", action="store_true", help="exit non-zero if any file was refused or conflicted")
        parser.add_argument("--progress", choices=["auto", "bar", "lines", "none"], default="auto")

    def handle(self, *args, verbosity, **options):
        # One INFO line per stored file is for the server's log; here the summary and --report say it.
        with logger_level("studies", logging.WARNING if verbosity < 3 else None):
            return self._import(verbosity=verbosity, **options)

    def _import(self, *, paths, owner, workers, dry_run, report, strict, progress, verbosity, **options):
        try:
            user = get_user_model().objects.get(username=owner)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named '{owner}'") from None
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        if progress == "auto":
            progress = "bar" if self.stdout.isatty() and verbosity >= 1 else ("lines" if verbosity >= 1 else "none")

        counts: Counter[str] = Counter()
        started = time.monotonic()
        total_bytes = 0
        writer = _ReportWriter(report) if report else None
        bar = _bar() if progress == "bar" else None
        interrupted = False
        results = importer.import_paths(owner=user, paths=paths, workers=workers, dry_run=dry_run)
        try:
            for result in results:
                counts[str(result.status)] += 1
                total_bytes += result.size if result.stored else 0
                if writer:
                    writer.write(result)
                if verbosity >= 2:
                    detail = f" {result.message}" if result.message else ""
                    self.stdout.write(f"{result.status:9} {result.label}{detail}")
                if bar is not None:
                    bar.update(1)
                    elapsed = max(time.monotonic() - started, 1e-9)
                    bar.set_postfix_str(f"{total_bytes / elapsed / 1e6:.1f} MB/s, {counts['created']} new")
                elif progress == "lines" and sum(counts.values()) % 500 == 0:
                    self.stdout.write(self._line(counts, started, total_bytes))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            results.close()  # stops the workers and removes this run's temporary copies, now
            if bar is not None:
                bar.close()
            if writer:
                writer.close()

        summary = self._line(counts, started, total_bytes)
        if dry_run:
            summary += " (dry run: nothing was stored; 'created' means it would be)"
        if interrupted:
            self.stderr.write(self.style.WARNING("Interrupted: " + summary))
            sys.exit(130)
        failed = counts["refused"] + counts["conflict"]
        self.stdout.write((self.style.WARNING if failed else self.style.SUCCESS)(summary))
        if strict and failed:
            raise CommandError(f"{failed} file(s) were refused or conflicted (--strict)")

    @staticmethod
    def _line(counts: Counter, started: float, total_bytes: int) -> str:
        elapsed = max(time.monotonic() - started, 1e-9)
        files = sum(counts.values())
        parts = ", ".join(f"{counts[status]} {status}" for status in Status)
        return f"{files} files in {elapsed:.1f} s ({files / elapsed:.1f} files/s, {total_bytes / elapsed / 1e6:.1f} MB/s): {parts}"


def _bar():
    from tqdm import tqdm

    return tqdm(unit=" files", dynamic_ncols=True, file=sys.stderr)


class _ReportWriter:
    """Writes each result as it comes (CSV, or JSON when the name ends in .json): memory stays flat."""

    def __init__(self, name: str) -> None:
        self.json = Path(name).suffix.lower() == ".json"
        self.handle = open(name, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.first = True
        if self.json:
            self.handle.write("[\n")
        else:
            self.csv = csv.DictWriter(self.handle, REPORT_FIELDS)
            self.csv.writeheader()

    def write(self, result: Outcome) -> None:
        row = result.report_row()
        if self.json:
            self.handle.write(("" if self.first else ",\n") + json.dumps(row))
            self.first = False
        else:
            self.csv.writerow({**row, "id": row["id"] or ""})

    def close(self) -> None:
        if self.json:
            self.handle.write("\n]\n")
        self.handle.close()
