"""Writing one audit event: the single place every channel (HTTP middleware, C-STORE) records one."""

from __future__ import annotations

from .models import AuditEvent


def write_event(
    *, user, action: str, method: str, object_type: str, object_id: str, outcome: str, status: int,
    client_address: str | None, request_id: str,
) -> AuditEvent:
    """Record one read or change of patient data (ids only, never patient data); fields are cut to
    their column sizes so that an event is never lost to a long value."""
    return AuditEvent.objects.create(
        user=user,
        username=user.get_username() if user is not None else "",
        action=action[:64],
        method=method[:8],
        object_type=object_type if object_id else "",
        object_id=object_id[:64],
        outcome=outcome,
        status=status,
        client_address=client_address or None,
        request_id=request_id[:64],
    )
