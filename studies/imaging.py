"""Rendered images with caching: Django glue around the pure `dicom.rendering` engine.

Rendered bytes are cached in Django's cache (Redis when REDIS_URL is set) under the stored
file's SHA-256 and the normalised render options, so nothing ever needs invalidating: other
bytes have another key. The same key gives a strong ETag, so a client revalidating with
If-None-Match gets 304 without any rendering or cache read.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.core.cache import cache

from dicomcore import rendering

from .models import Instance

logger = logging.getLogger(__name__)

# Bump when the pipeline's output changes, so old cached images and ETags are not reused.
PIPELINE_VERSION = "2"
# Images above this size are rendered each time rather than filling the cache.
MAX_CACHED_BYTES = 8 * 1024 * 1024


def cache_key(instance: Instance, options: rendering.RenderOptions) -> str:
    """The cache key (and ETag body) for this file's bytes rendered with these options."""
    digest = hashlib.sha256(f"{PIPELINE_VERSION}|{instance.sha256}|{options.key()}".encode()).hexdigest()
    return f"render:{digest[:40]}"


def etag(instance: Instance, options: rendering.RenderOptions) -> str:
    """A strong ETag: the same stored bytes and options always give the same image."""
    return f'"{cache_key(instance, options).split(":", 1)[1]}"'


def open_stored(instance: Instance):
    """The stored file, opened for reading; a RenderError (422) if storage has lost it."""
    try:
        return instance.file.open("rb")
    except OSError:
        raise rendering.RenderError("the stored file is missing; an administrator has to restore it") from None


def rendered_image(instance: Instance, options: rendering.RenderOptions) -> rendering.RenderedImage:
    """The rendered image from the cache, or rendered from the stored file and cached."""
    key = cache_key(instance, options)
    cached = cache.get(key)
    if cached is not None:
        content, media_type, width, height = cached
        return rendering.RenderedImage(content, media_type, width, height)
    if not instance.has_pixel_data:
        raise rendering.NoPixelData("this instance has no pixel data")
    with open_stored(instance) as handle:
        image = rendering.render(handle, options, max_frame_bytes=settings.DICOM_MAX_FRAME_PIXELS)
    if len(image.content) <= MAX_CACHED_BYTES:
        cache.set(key, (image.content, image.media_type, image.width, image.height), settings.DICOM_RENDER_CACHE_SECONDS)
    return image
