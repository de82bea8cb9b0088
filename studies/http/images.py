"""Rendered images over HTTP (REST /image, /thumbnail; DICOMweb /rendered, /thumbnail): strong
ETags from the content hash and parameters, 304 on revalidation, private caching."""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseNotModified

from dicomcore import rendering

from .. import imaging


def image_response(request, instance, options: rendering.RenderOptions) -> HttpResponse:
    """The rendered image, or 304 when the client's If-None-Match already names it."""
    tag = imaging.etag(instance, options)
    headers = {"ETag": tag, "Cache-Control": "private, max-age=86400", "Vary": "Accept, Authorization, Cookie"}
    matches = if_none_match(request.META.get("HTTP_IF_NONE_MATCH", ""))
    if tag in matches or ("*" in matches and instance.has_pixel_data):
        return HttpResponseNotModified(headers=headers)
    image = imaging.rendered_image(instance, options)
    return HttpResponse(image.content, content_type=image.media_type, headers=headers)


def if_none_match(header: str) -> set[str]:
    """The entity tags an If-None-Match header names (weak ones compared as strong: RFC 9110 13.1.2)."""
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
