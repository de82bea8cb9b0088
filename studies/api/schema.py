"""OpenAPI helpers shared by the API views: error responses in the one error shape."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse

from .serializers import ErrorSerializer


def errors(*statuses: int, **described: str) -> dict:
    """OpenAPI responses for error statuses, all with the one error shape."""
    texts = {
        400: "Invalid input.",
        401: "Not authenticated.",
        403: "You may see this object but not do this to it.",
        404: "No such object in your catalogue.",
        409: "Conflict.",
        413: "Upload too large.",
        415: "Unsupported media type.",
        422: "The image cannot be rendered.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=described.get(f"e{code}", texts[code])) for code in statuses}

