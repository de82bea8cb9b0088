"""Export the audit trail of a date range as CSV (to a file or standard output)."""

from __future__ import annotations

import csv
import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ...models import AuditEvent

FIELDS = ["at", "username", "action", "method", "object_type", "object_id", "outcome", "status", "client_address", "request_id"]


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
        zone = timezone.get_current_timezone()
        start = dt.datetime.combine(first, dt.time.min, tzinfo=zone)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
        events = AuditEvent.objects.filter(at__gte=start, at__lt=end).order_by("at", "id").values_list(*FIELDS)
        handle = open(output, "w", newline="", encoding="utf-8") if output else self.stdout  # noqa: SIM115
        try:
            writer = csv.writer(handle)
            writer.writerow(FIELDS)
            count = 0
            for row in events.iterator(chunk_size=2000):
                writer.writerow([value.isoformat() if isinstance(value, dt.datetime) else value for value in row])
                count += 1
        finally:
            if output:
                handle.close()
        if output:
            self.stdout.write(self.style.SUCCESS(f"{count} event(s) written to {output}"))
