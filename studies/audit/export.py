"""The audit trail of a date range as CSV rows (for `manage.py export_audit`)."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from typing import TextIO

from django.utils import timezone

from .models import AuditEvent

FIELDS = ["at", "username", "action", "method", "object_type", "object_id", "outcome", "status", "client_address", "request_id"]


def events_between(first: dt.date, last: dt.date) -> Iterator[tuple]:
    """Events from the start of `first` to the end of `last` (server time zone), oldest first, streamed."""
    zone = timezone.get_current_timezone()
    start = dt.datetime.combine(first, dt.time.min, tzinfo=zone)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
    events = AuditEvent.objects.filter(at__gte=start, at__lt=end).order_by("at", "id").values_list(*FIELDS)
    return events.iterator(chunk_size=2000)


def write_csv(handle: TextIO, first: dt.date, last: dt.date) -> int:
    """Write the header and one row per event; the number of events written."""
    writer = csv.writer(handle)
    writer.writerow(FIELDS)
    count = 0
    for row in events_between(first, last):
        writer.writerow([value.isoformat() if isinstance(value, dt.datetime) else value for value in row])
        count += 1
    return count
