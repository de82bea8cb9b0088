"""Writing one audit event: the single place every channel (HTTP middleware, C-STORE) records one.

An event is buffered in its process and written, with the others waiting, in one transaction by a background
thread every `AUDIT_FLUSH_MS` (see `EventBuffer`), so that an audited read does not wait for the database's
commit. Every clean exit of the process (gunicorn shutdown or worker recycle, the end of a management command)
writes what is left; a power cut or SIGKILL loses at most the last interval's events of the process.
`AUDIT_FLUSH_MS = 0` writes each event in its request, as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from functools import cache

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .models import AuditEvent

logger = logging.getLogger(__name__)

# The columns one event fills, in the order of the INSERT below.
COLUMNS = ("at", "user", "username", "action", "method", "object_type", "object_id", "outcome", "status", "client_address", "request_id")


@cache
def _insert(vendor: str) -> tuple[str, tuple]:
    """The INSERT for one event on this database, and the fields whose adapters prepare its values."""
    quote_name = connection.ops.quote_name
    concrete = {field.name: field for field in AuditEvent._meta.concrete_fields}
    fields = tuple(concrete[name] for name in COLUMNS)
    columns = ", ".join(quote_name(str(field.column)) for field in fields)
    sql = f"INSERT INTO {quote_name(AuditEvent._meta.db_table)} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
    return sql, fields


def _write(rows: list[tuple]) -> None:
    """INSERT these events (values in COLUMNS order) on this thread's connection, in one transaction.

    One plain INSERT, its SQL built once per database: the ORM's `objects.create()` (a model instance, signals,
    a query compiled per call) cost twice as much. The values go through each field's own `get_db_prep_save`, as
    the ORM's would, so the row is the same."""
    sql, fields = _insert(connection.vendor)
    prepared = [[field.get_db_prep_save(value, connection) for field, value in zip(fields, row, strict=True)] for row in rows]
    if len(prepared) == 1:  # no transaction around one statement: BEGIN and COMMIT would be two more round trips
        with connection.cursor() as cursor:
            cursor.execute(sql, prepared[0])
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, prepared)


class EventBuffer:
    """The events of this process not yet written, and the daemon thread that writes them.

    Started by the first event of a process (after a fork too: the child starts empty, its parent writes what it
    had); `flush()` writes everything waiting, in order, one flush at a time, and is registered with `atexit`, which
    gunicorn's workers run on every clean exit (SIGTERM, max_requests recycle, the timeout's SIGABRT). A flush that
    fails (the database is down) puts its events back and logs; past `AUDIT_BUFFER_MAX` waiting events, `add()`
    writes in the caller instead, so a failure there reaches the caller as it did before buffering."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _rows and _thread
        self._flushing = threading.Lock()  # one flush at a time, so that events are written in order
        self._rows: list[tuple] = []
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget)
        atexit.register(self.close)

    def add(self, row: tuple) -> None:
        with self._lock:
            if len(self._rows) >= settings.AUDIT_BUFFER_MAX:
                overflow = True
            else:
                overflow = False
                self._rows.append(row)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                    self._thread.start()
        if overflow:
            _write([row])

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def flush(self) -> int:
        """Write every event waiting; how many were written (0 when the write failed: they wait for the next)."""
        with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                _write(rows)
            except Exception:
                logger.exception("audit: %d events could not be written; kept for the next attempt", len(rows))
                with self._lock:
                    self._rows[:0] = rows
                connection.close()  # a broken connection is opened again by the next attempt
                return 0
            return len(rows)

    def close(self) -> None:
        """At exit: write what is left, on the exiting thread (the writer thread may be stopped at any moment now)."""
        if self.flush():
            connection.close()

    def _run(self) -> None:
        while True:
            time.sleep(settings.AUDIT_FLUSH_MS / 1000)
            self.flush()

    def _forget(self) -> None:
        """In a forked child: the parent's events are the parent's to write, its writer thread is not running here."""
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._rows = []
        self._thread = None


BUFFER = EventBuffer()


def write_event(
    *, user, action: str, method: str, object_type: str, object_id: str, outcome: str, status: int,
    client_address: str | None, request_id: str,
) -> None:
    """Record one read or change of patient data (ids only, never patient data); fields are cut to
    their column sizes so that an event is never lost to a long value."""
    row = (
        timezone.now(),
        user.pk if user is not None else None,
        user.get_username() if user is not None else "",
        action[:64],
        method[:8],
        object_type if object_id else "",
        object_id[:64],
        outcome,
        status,
        client_address or None,
        request_id[:64],
    )
    if settings.AUDIT_FLUSH_MS:
        BUFFER.add(row)
    else:
        _write([row])
