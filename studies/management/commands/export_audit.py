"""Export the audit trail of a date range as CSV (to a file or standard output)."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from ...audit.export import write_csv


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {text!r}") from None


class Command(BaseCommand):
    help = "Write audit events from --since to --until (inclusive days, server time zone) as CSV."

    def add_arguments(self, parser):
        parser.add_argument("--since", required=True, help="first day, YYYY-MM-DD")
        parser.add_argument("--until", required=True, help="last day, YYYY-MM-DD")
        parser.add_argument("--output", "-o", help="CSV file (default: standard output)")

    def handle(self, *args, since, until, output, **options):
        first, last = _date(since), _date(until)
        if last < first:
            raise CommandError("--until is before --since")
        if not output:
            write_csv(self.stdout, first, last)
            return
        with open(output, "w", newline="", encoding="utf-8") as handle:
            count = write_csv(handle, first, last)
        self.stdout.write(self.style.SUCCESS(f"{count} event(s) written to {output}"))
