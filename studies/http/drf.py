"""DRF glue every HTTP interface shares: content negotiation for byte answers, per-scope throttles."""

from __future__ import annotations

from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.throttling import UserRateThrottle


class FirstRendererNegotiation(BaseContentNegotiation):
    """For views that make their own answer (image bytes, a file, a zip, CSV) from the request's
    Accept header or parameters: DRF always picks the view's first renderer (JSON), so errors are
    JSON whatever the Accept header says, and no Accept value is ever a 406 from DRF itself."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ScopedUserThrottle(UserRateThrottle):
    """A per-user (per-address when anonymous) rate for one scope of DEFAULT_THROTTLE_RATES."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__()
