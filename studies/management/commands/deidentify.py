"""De-identified copies of DICOM files on disk (PS3.15 Annex E), into a folder or into a user's catalogue.

    python manage.py deidentify /media/cdrom export.zip --out /srv/share/trial-7 --retain-modified-dates
    python manage.py deidentify export.zip --owner alice --project-secret-file ~/.trial7-secret --report report.csv

The originals are only read. The report (--report, .csv or .json) has import_dicom's shape: filename, status, id
(the new instance, or the file written under --out), error, size. Safe to re-run with the same project secret: the
same files give the same bytes, reported as duplicates.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from dicomcore import deid

from ... import deidentify
from .. import logger_level
from .import_dicom import Command as ImportCommand
from .import_dicom import _ReportWriter


class Command(BaseCommand):
    help = "De-identify DICOM files from folders, zips and DICOMDIR media into a folder (--out) or a user's catalogue (--owner)."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", help="files, folders, zip archives or DICOMDIR files")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--out", help="folder to write <SeriesInstanceUID>/<SOPInstanceUID>.dcm into")
        where.add_argument("--owner", help="username whose catalogue receives the copies")
        for option in deid.OPTIONS:
            code, meaning = deid.OPTION_CODES[option]
            parser.add_argument(f"--{option.replace('_', '-')}", action="store_true", help=f"{meaning} ({code})")
        parser.add_argument("--project-secret-file", help="file holding the project secret: the same UIDs, pseudonyms and date shifts across runs")
        parser.add_argument("--mask", action="append", default=[], metavar="X,Y,W,H", help="rectangle of pixels set to 0 in every frame (repeatable)")
        parser.add_argument("--confirm-burned-in", action="store_true", help="you checked: no image shows identity in its pixels")
        parser.add_argument("--report", help="write one line per file to this .csv or .json file")
        parser.add_argument("--strict", action="store_true", help="exit non-zero if any file was refused or conflicted")

    def handle(self, *args, verbosity, **options):
        with logger_level("studies", logging.WARNING if verbosity < 3 else None):
            return self._run(verbosity=verbosity, **options)

    def _run(self, *, paths, out, owner, project_secret_file, mask, confirm_burned_in, report, strict, verbosity, **options):
        user = None
        if owner:
            try:
                user = get_user_model().objects.get(username=owner)
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user named '{owner}'") from None
        folder = Path(out) if out else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        choices = deidentify.Choices(
            options=frozenset(o for o in deid.OPTIONS if options.get(o)), masks=tuple(_rect(m) for m in mask),
            secret=_secret(project_secret_file), confirm_burned_in=confirm_burned_in,
        )  # fmt: skip
        recorder = user or get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        counts: Counter[str] = Counter()
        total_bytes = 0
        started = time.monotonic()
        writer = _ReportWriter(report) if report else None
        try:
            for result in deidentify.from_sources(paths=paths, choices=choices, owner=user, out=folder, user=recorder):
                counts[str(result.status)] += 1
                total_bytes += result.size if result.stored else 0
                if writer:
                    writer.write(result)
                if verbosity >= 2:
                    detail = f" {result.message}" if result.message else ""
                    self.stdout.write(f"{result.status:9} {result.label}{detail}")
        except KeyboardInterrupt:
            self.stderr.write(self.style.WARNING("Interrupted: " + ImportCommand._line(counts, started, total_bytes)))
            sys.exit(130)
        finally:
            if writer:
                writer.close()
        summary = ImportCommand._line(counts, started, total_bytes)
        failed = counts["refused"] + counts["conflict"]
        self.stdout.write((self.style.WARNING if failed else self.style.SUCCESS)(summary))
        if strict and failed:
            raise CommandError(f"{failed} file(s) were refused or conflicted (--strict)")


def _rect(text: str) -> deid.Rect:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise CommandError(f"--mask must be X,Y,WIDTH,HEIGHT in pixels, not '{text[:30]}'") from None
    if min(x, y, w, h) < 0:
        raise CommandError("--mask values must not be negative")
    return deid.Rect(x, y, w, h)


def _secret(path: str | None) -> str:
    if not path:
        return ""
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CommandError(f"cannot read the project secret file: {exc.strerror}") from None
    if len(secret) < 16:
        raise CommandError("the project secret must be at least 16 characters")
    return secret
