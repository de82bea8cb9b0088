"""The one Accept parser (RFC 9110 12.5.1, with PS3.18's `type=` and `transfer-syntax=` parameters)
and the choice of an offered media type from it. Plain functions: no Django, tested directly.

Every HTTP interface negotiates through here: DICOMweb's instances, frames, metadata and rendered
images, and the REST API's images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class NotAcceptable(ValueError):
    """Nothing the client accepts can be sent (406)."""


@dataclass(frozen=True)
class Acceptable:
    """One acceptable media type: `multipart/related; type=<media_type>; transfer-syntax=<ts>` or single part."""

    media_type: str
    transfer_syntax: str | None  # None: not given; "*": any
    multipart: bool


def parse_accept(header: str, *, default: str) -> list[Acceptable]:
    """An Accept header → acceptable types in the client's order (q=0 entries dropped).

    An empty header (or one whose every entry is q=0) accepts `default` as multipart (DICOMweb's
    default); callers that need "the client said nothing" pass `default=""` and check for it.
    """
    found: list[Acceptable] = []
    for part in _split_outside_quotes(header or "", ","):
        pieces = _split_outside_quotes(part, ";")
        media = pieces[0].strip().lower()
        if not media:
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        if _is_zero(params.get("q", "1")):
            continue
        if media == "multipart/related":
            found.append(Acceptable(params.get("type", default).lower(), params.get("transfer-syntax"), True))
        else:
            found.append(Acceptable(media, params.get("transfer-syntax"), False))
    return found or [Acceptable(default, None, True)]


def _is_zero(q: str) -> bool:
    """`q=0` (or 0.0, 0.000) marks a media type as not acceptable (RFC 9110 12.4.2)."""
    try:
        return float(q) == 0
    except ValueError:
        return False


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def matches_type(accepted: str, offered: str) -> bool:
    """Whether an accepted media type (possibly `*/*` or `image/*`) covers an offered one."""
    if accepted in ("*/*", "*", offered):
        return True
    return accepted.endswith("/*") and offered.startswith(accepted[:-1])


def choose(accepts: list[Acceptable], offered: Iterable[str], *, wildcards: bool = True) -> str | None:
    """The first offered media type the client accepts, in the client's order; None when none.

    With wildcards, `*/*` and `image/*` take the first offered type that they cover; without, only
    types named exactly count (the REST API's images, whose default is the caller's to pick).
    """
    offered = list(offered)
    for accept in accepts:
        for candidate in offered:
            if accept.media_type == candidate or (wildcards and matches_type(accept.media_type, candidate)):
                return candidate
    return None
