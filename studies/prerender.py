"""Background pre-rendering: after an upload commits, an RQ job renders the instance's thumbnail and
default image into the shared cache (imaging.rendered_image), so the admin's first list view and a
viewer's first look cost no decode.

`after_commit(ids)` is called by the ingest service (every channel goes through it) inside the catalogue
transaction; the jobs are queued once it commits. A job carries one instance id and nothing else (no
patient data). Queuing needs REDIS_URL and DICOM_PRERENDER; when Redis cannot be reached the failure is
logged and ignored: the upload stands and images render lazily, as without a queue. The worker is
`manage.py rqworker prerender --with-scheduler` (django-rq; the scheduler runs the delayed retries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

from dicomcore import rendering

from . import imaging
from .http import params
from .models import Instance

logger = logging.getLogger(__name__)

QUEUE = "prerender"
# Retries of a failed job (then it stays in RQ's failed registry, logged); the waits are DICOM_PRERENDER_RETRY_INTERVALS.
MAX_RETRIES = 3
# Enqueuing happens after the upload's commit, on the request's thread: a Redis that does not answer costs this at most.
REDIS_TIMEOUT_SECONDS = 2
# What a browser's <img> sends (Chromium, Firefox and Safari all name WebP before any wildcard): the admin's
# list thumbnails and its viewer negotiate WebP, scripts and the API's defaults get JPEG thumbnails and PNG images.
BROWSER_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


def variants() -> list[rendering.RenderOptions]:
    """The renders worth having before anyone asks: thumbnail and default image, as the API and as a browser get them."""
    size = settings.DICOM_THUMBNAIL_SIZE
    chosen = [
        params.rest_options({}, default_format="jpeg", default_size=size),  # as the API's /thumbnail
        params.rest_options({}, accept=BROWSER_ACCEPT, default_format="jpeg", default_size=size),
        params.rest_options({}),  # as the API's /image
        params.rest_options({}, accept=BROWSER_ACCEPT),
    ]
    return list(dict.fromkeys(chosen))  # the same options once (RenderOptions is a frozen dataclass)


def enabled() -> bool:
    return bool(settings.REDIS_URL and settings.DICOM_PRERENDER)


def after_commit(instance_ids: Iterable) -> None:
    """Queue a pre-render job per instance once the current transaction commits (nothing if it rolls back)."""
    if not enabled():
        return
    ids = [str(pk) for pk in instance_ids]
    if ids:
        transaction.on_commit(lambda: enqueue(ids))


def enqueue(instance_ids: list[str]) -> None:
    """Queue the jobs now; a Redis failure is logged, never raised (the upload has already succeeded)."""
    import django_rq
    import redis
    from rq import Queue, Retry

    try:
        connection = redis.Redis.from_url(
            str(settings.RQ_QUEUES[QUEUE]["URL"]), socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
        )
        queue = django_rq.get_queue(QUEUE, connection=connection, commit_mode="auto")
        retry = Retry(max=MAX_RETRIES, interval=settings.DICOM_PRERENDER_RETRY_INTERVALS or 0)
        jobs = [Queue.prepare_data(render_instance, args=(pk,), retry=retry, description=f"prerender {pk}") for pk in instance_ids]
        queue.enqueue_many(jobs)
        connection.close()
    except (redis.RedisError, OSError) as exc:
        logger.warning(
            "prerender not queued (%s) instances=%d first=%s: images render on first request", type(exc).__name__, len(instance_ids), instance_ids[0]
        )


def render_instance(instance_id: str) -> str:
    """The job: render the instance's variants into the cache; reads only, never changes a row or a file.

    A deleted instance, or one without pixel data, is a no-op. Any other failure (a corrupt or missing
    file, storage down) raises, so RQ retries it up to MAX_RETRIES times and then leaves it failed.
    """
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None:
        logger.info("prerender skipped id=%s: the instance is gone", instance_id)
        return "gone"
    if not instance.has_pixel_data:
        return "no pixel data"
    for options in variants():
        try:
            imaging.rendered_image(instance, options)
        except rendering.NoPixelData:
            return "no pixel data"
        except Exception as exc:
            logger.warning("prerender failed id=%s (%s): retried up to %d times", instance_id, type(exc).__name__, MAX_RETRIES)
            raise
    logger.info("prerendered id=%s variants=%d", instance_id, len(variants()))
    return "rendered"
