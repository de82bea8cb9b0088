"""Health probes, no login needed: /healthz (liveness and database) and /readyz (database, file
storage and cache all answer)."""

from __future__ import annotations

import logging
import os
import uuid

from django.core.cache import cache
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def readyz(request):
    """Readiness: the database, the file storage and the cache all answer (503 naming what does not)."""
    checks = {"database": _check_database, "storage": _check_storage, "cache": _check_cache}
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception:
            logger.exception("readiness check failed: %s", name)
            results[name] = "down"
    ready = all(value == "ok" for value in results.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", **results}, status=200 if ready else 503)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_storage() -> None:
    check_bucket = getattr(default_storage, "check_bucket", None)
    if check_bucket is not None:  # object storage: the bucket exists and the credentials may use it
        check_bucket()
        return
    default_storage.exists("dicom")  # a round trip to the storage backend
    if isinstance(default_storage, FileSystemStorage):  # the lazy proxy passes isinstance through
        location = default_storage.location
        # The folder is created by the first save: until then, the nearest existing ancestor must take it.
        existing = os.path.abspath(location)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not (os.path.isdir(existing) and os.access(existing, os.W_OK)):
            raise OSError("the media folder is not writable")


def _check_cache() -> None:
    key = f"readyz-{uuid.uuid4().hex}"
    cache.set(key, "1", 10)
    if cache.get(key) != "1":
        raise OSError("the cache did not return what was stored")
    cache.delete(key)


def healthz(request):
    """Liveness and database check, no login needed."""
    try:
        connection.ensure_connection()
    except Exception:  # noqa: BLE001 - any database failure means "not healthy"
        return JsonResponse({"status": "unavailable", "database": "down"}, status=503)
    return JsonResponse({"status": "ok"})
