"""The one render-parameter parser: query parameters (and Accept) → `rendering.RenderOptions`.

Two dialects share every field validator here: the REST API's `/image` and `/thumbnail`
(`frame`, `window`, `preset`, `size`/`width`/`height`, `format`, `quality`, `bits`) and DICOMweb's
rendered resources (PS3.18 Table 8.3.5-1: `window`, `viewport`, `quality`, `accept`, with
`annotation` and `iccprofile` refused). Every bad value raises `rendering.InvalidRenderParameter`
(400 invalid_parameter) with a sentence naming the parameter; an Accept that nothing satisfies
raises `NotAcceptable` (406). Plain functions: no Django.
"""

from __future__ import annotations

from collections.abc import Mapping

from dicomcore import rendering
from dicomcore.rendering import InvalidRenderParameter, RenderOptions, Window

from .negotiation import NotAcceptable, choose, parse_accept

# Media type → format name, in the order offered when the client accepts several.
IMAGE_MEDIA_TYPES = {media: name for name, (_, media) in rendering.FORMATS.items()}
DEFAULT_QUALITY = 90


# --- field validators shared by both dialects ------------------------------------------------------


def whole_number(params: Mapping[str, str], name: str, maximum: int, default: int | None = None) -> int | None:
    """A whole number from 1 to `maximum`, or `default` when the parameter is absent or empty."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidRenderParameter(f"{name} must be a whole number from 1 to {maximum}, not '{raw[:20]}'")
    return int(raw)


def window(params: Mapping[str, str]) -> Window | None:
    """`window=center,width[,linear|linear-exact|sigmoid]` → Window (None when absent)."""
    raw = params.get("window")
    if not raw:
        return None
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidRenderParameter(f"window must be 'center,width[,linear|linear-exact|sigmoid]', not '{raw[:40]}'")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidRenderParameter(f"window center and width must be numbers, not '{raw[:40]}'") from None
    function = rendering.WINDOW_FUNCTIONS.get(parts[2].lower()) if len(parts) == 3 else "LINEAR"
    if function is None:
        raise InvalidRenderParameter(
            f"window function must be one of {', '.join(rendering.WINDOW_FUNCTIONS)}, not '{parts[2][:20]}'"
        )
    # Bounds keep the float arithmetic of the VOI functions meaningful (no 0/0, no overflow).
    limit, narrowest = rendering.MAX_WINDOW_VALUE, rendering.MIN_WINDOW_WIDTH
    if not (abs(center) <= limit and narrowest <= width <= limit) or (function == "LINEAR" and width < 1):
        raise InvalidRenderParameter(
            f"window center must be within ±{limit:g} and width between {narrowest:g} (1 for linear) and {limit:g}"
        )
    return Window(center, width, function)


def quality(params: Mapping[str, str]) -> int:
    return whole_number(params, "quality", 100, DEFAULT_QUALITY) or DEFAULT_QUALITY


# --- the REST API's /image and /thumbnail -----------------------------------------------------------


def image_format(params: Mapping[str, str], accept: str, default: str) -> str:
    """`format=` wins; else the first supported type the Accept header names (in the client's
    order); else `default` when the header is empty or takes any image; else NotAcceptable (406)."""
    requested = (params.get("format") or "").strip().lower()
    if requested:
        requested = "jpeg" if requested == "jpg" else requested
        if requested not in rendering.FORMATS:
            raise InvalidRenderParameter(f"format must be one of {', '.join(rendering.FORMATS)}, not '{requested[:20]}'")
        return requested
    accepts = parse_accept(accept, default="")
    media = choose(accepts, IMAGE_MEDIA_TYPES, wildcards=False)
    if media:
        return IMAGE_MEDIA_TYPES[media]
    if not (accept or "").strip() or any(a.media_type in ("*/*", "*", "image/*") for a in accepts):
        return default  # the client said nothing, or takes any image: the route's own default
    raise NotAcceptable(
        f"images are {', '.join(IMAGE_MEDIA_TYPES)} (Accept, or format={'|'.join(rendering.FORMATS)}), not {accept.strip()[:60]}"
    )


def rest_options(
    params: Mapping[str, str], *, accept: str = "", default_format: str = "png", default_size: int | None = None
) -> RenderOptions:
    """RenderOptions from the REST API's query parameters (frame is 1-based there)."""
    frame = whole_number(params, "frame", 2**31 - 1, 1) or 1
    preset = (params.get("preset") or "").strip().lower() or None
    if preset is not None and preset not in rendering.PRESET_NAMES:
        raise InvalidRenderParameter(f"preset must be one of {', '.join(rendering.PRESET_NAMES)}, not '{preset[:20]}'")
    chosen_window = window(params)
    if chosen_window is not None and preset is not None:
        raise InvalidRenderParameter("give either window or preset, not both")
    size = whole_number(params, "size", rendering.MAX_OUTPUT_SIDE)
    width = whole_number(params, "width", rendering.MAX_OUTPUT_SIDE)
    height = whole_number(params, "height", rendering.MAX_OUTPUT_SIDE)
    if size and (width or height):
        raise InvalidRenderParameter("give either size or width/height, not both")
    if not (size or width or height):
        size = default_size
    bits_raw = params.get("bits") or "8"
    # A 16-bit request negotiates PNG unless a lossy format was asked for by name (then 400 below).
    chosen_format = image_format(params, "" if bits_raw == "16" else accept, "png" if bits_raw == "16" else default_format)
    chosen_quality = quality(params)
    if bits_raw not in ("8", "16"):
        raise InvalidRenderParameter(f"bits must be 8 or 16, not '{bits_raw[:20]}'")
    bits = int(bits_raw)
    if bits == 16 and chosen_format != "png":
        raise InvalidRenderParameter("bits=16 needs format=png (JPEG and WebP are 8-bit)")
    return RenderOptions(
        frame=frame - 1, window=chosen_window, preset=None if preset == "default" else preset,
        size=size, width=width, height=height, image_format=chosen_format, quality=chosen_quality, bits=bits,
    )


# --- DICOMweb's rendered resources (PS3.18 Table 8.3.5-1) -------------------------------------------

# Offered for rendered resources; a wildcard takes the first (image/jpeg is DICOMweb's default, 8.3.5.1.2).
RENDERED_OFFER = ("image/jpeg", *(m for m in IMAGE_MEDIA_TYPES if m != "image/jpeg"))


def rendered_format(accept: str) -> str:
    """The rendered image's format for an Accept value; jpeg when the client names none."""
    media = choose(parse_accept(accept, default=""), RENDERED_OFFER)
    if media:
        return IMAGE_MEDIA_TYPES[media]
    if accept and accept.strip():
        raise NotAcceptable(f"rendered images are {', '.join(IMAGE_MEDIA_TYPES)}")
    return "jpeg"


def viewport(params: Mapping[str, str]) -> tuple[int | None, int | None] | None:
    """`viewport=vw,vh` → (width, height) to fit in (either may be empty); the cropping form is refused."""
    raw = params.get("viewport")
    if not raw:
        return None
    pieces = [p.strip() for p in raw.split(",")]
    if len(pieces) == 6:
        raise InvalidRenderParameter("viewport cropping (vw,vh,sx,sy,sw,sh) is not supported; give viewport=vw,vh")
    if len(pieces) != 2:
        raise InvalidRenderParameter(f"viewport must be 'vw,vh', not '{raw[:40]}'")
    side = rendering.MAX_OUTPUT_SIDE
    for piece in pieces:
        if piece and not (piece.isascii() and piece.isdigit() and 1 <= int(piece) <= side):
            raise InvalidRenderParameter(f"viewport sizes must be whole numbers from 1 to {side}")
    return (int(pieces[0]) if pieces[0] else None, int(pieces[1]) if pieces[1] else None)


def rendered_options(
    params: Mapping[str, str], accept_header: str, *, frame: int = 1, thumbnail_size: int | None = None
) -> RenderOptions:
    """RenderOptions from DICOMweb's rendered query parameters; `accept=` overrides the Accept header."""
    if params.get("annotation"):
        raise InvalidRenderParameter("annotation is not supported: rendered images carry no burnt-in text")
    if (params.get("iccprofile") or "no").lower() not in ("no", ""):
        raise InvalidRenderParameter("iccprofile is not supported (only iccprofile=no)")
    chosen_format = rendered_format(params.get("accept") or accept_header)
    box = viewport(params)
    width, height = box if box else (None, None)
    return RenderOptions(
        frame=frame - 1, window=window(params), size=None if box else thumbnail_size, width=width, height=height,
        image_format=chosen_format, quality=quality(params),
    )
