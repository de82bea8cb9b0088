"""Per-user storage quotas: bytes and instances, charged in the same transaction as the catalogue write.

`charge` is one UPDATE that adds a file's size to its owner's usage only if the result stays within their limits;
it runs last in the transaction that inserts the instance. The row stays locked from that UPDATE until the commit,
so concurrent uploads of one owner are counted one after the other (PostgreSQL re-checks the condition on the row it
waited for; SQLite runs one writer at a time): however many arrive at once, the usage never passes the limit.
A refused charge raises QuotaExceeded, which rolls the whole transaction back, so nothing is half-stored.
`refund` gives the space back in the transaction that deletes an instance. Every channel stores through
services.ingest()/ingest_batch(), so every channel is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from .errors import QuotaExceeded
from .models import Quota


@dataclass(frozen=True)
class Usage:
    """What a user may store and stores now (limits 0: none)."""

    max_bytes: int
    max_instances: int
    used_bytes: int
    used_instances: int

    def as_dict(self) -> dict[str, int | None]:
        """For the API: a limit of 0 (none) is null."""
        return {
            "max_bytes": self.max_bytes or None, "max_instances": self.max_instances or None,
            "used_bytes": self.used_bytes, "used_instances": self.used_instances,
        }  # fmt: skip


def limits(quota: Quota | None) -> tuple[int, int]:
    """The effective (bytes, instances) limits: the user's own, else the settings' defaults; 0 is no limit."""
    own_bytes = quota.max_bytes if quota is not None else None
    own_instances = quota.max_instances if quota is not None else None
    return (
        settings.DICOM_QUOTA_BYTES if own_bytes is None else own_bytes,
        settings.DICOM_QUOTA_INSTANCES if own_instances is None else own_instances,
    )


def usage(user) -> Usage:
    """The user's limits and usage, as shown in /api/me/ and the admin."""
    quota = Quota.objects.filter(user=user).first()
    max_bytes, max_instances = limits(quota)
    return Usage(max_bytes, max_instances, quota.used_bytes if quota else 0, quota.used_instances if quota else 0)


def _update_sql() -> str:
    table = connection.ops.quote_name(Quota._meta.db_table)
    return (
        f"UPDATE {table} SET used_bytes = used_bytes + %s, used_instances = used_instances + %s WHERE user_id = %s"
        " AND (COALESCE(max_bytes, %s) = 0 OR used_bytes + %s <= COALESCE(max_bytes, %s))"
        " AND (COALESCE(max_instances, %s) = 0 OR used_instances + %s <= COALESCE(max_instances, %s))"
    )


def charge(owner, *, size: int, files: int = 1) -> None:
    """Add `files` instances of `size` bytes in all to `owner`'s usage, or raise QuotaExceeded (in the caller's
    transaction, as its last write: the row is locked until the commit)."""
    default_bytes, default_instances = settings.DICOM_QUOTA_BYTES, settings.DICOM_QUOTA_INSTANCES
    params = (size, files, owner.pk, default_bytes, size, default_bytes, default_instances, files, default_instances)
    for _attempt in range(2):
        with connection.cursor() as cursor:
            cursor.execute(_update_sql(), params)
            if cursor.rowcount == 1:
                return
        if Quota.objects.filter(user=owner).exists():
            break
        try:
            with transaction.atomic():  # a savepoint: a concurrent first upload may create the row first
                Quota.objects.create(user=owner)
        except IntegrityError:
            pass
    raise exceeded(owner, size=size, files=files)


def exceeded(owner, *, size: int, files: int) -> QuotaExceeded:
    now = usage(owner)
    if now.max_instances and now.used_instances + files > now.max_instances:
        what = f"{now.used_instances} of your {now.max_instances} instances are used"
    else:
        what = f"{now.used_bytes} of your {now.max_bytes} bytes are used; this needs {size} more"
    return QuotaExceeded(f"storage quota exceeded: {what}", quota=now.as_dict())


def room(owner) -> tuple[int | None, int | None]:
    """(bytes, instances) still free for `owner` (None: no limit), read without a lock: a batch's estimate."""
    now = usage(owner)
    free_bytes = max(now.max_bytes - now.used_bytes, 0) if now.max_bytes else None
    free_instances = max(now.max_instances - now.used_instances, 0) if now.max_instances else None
    return free_bytes, free_instances


def refund(owner_id, *, size: int, files: int = 1) -> None:
    """Give back what a deleted instance used (in the deleting transaction)."""
    table = connection.ops.quote_name(Quota._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET used_bytes = used_bytes - %s, used_instances = used_instances - %s WHERE user_id = %s",
            (size, files, owner_id),
        )
