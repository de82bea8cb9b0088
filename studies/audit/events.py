"""Writing one audit event: the single place every channel (HTTP middleware, C-STORE) records one."""

from __future__ import annotations

from functools import cache

from django.db import connection
from django.utils import timezone

from .models import AuditEvent

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


def write_event(
    *, user, action: str, method: str, object_type: str, object_id: str, outcome: str, status: int,
    client_address: str | None, request_id: str,
) -> None:
    """Record one read or change of patient data (ids only, never patient data); fields are cut to
    their column sizes so that an event is never lost to a long value.

    One plain INSERT, its SQL built once per database: every audited read pays for this, and the
    ORM's `objects.create()` (a model instance, signals, a query compiled per call) cost twice as
    much (0.96 ms against 0.50 ms in-process on PostgreSQL, a round trip included). The values go
    through each field's own `get_db_prep_save`, as the ORM's would, so the row is the same.
    """
    sql, fields = _insert(connection.vendor)
    values = (
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
    with connection.cursor() as cursor:
        cursor.execute(sql, [field.get_db_prep_save(value, connection) for field, value in zip(fields, values, strict=True)])
