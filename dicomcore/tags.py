"""Tag expressions and lookups over a stored DICOM JSON header.

An expression names one element, possibly inside sequences:

    (0010,0010)   0010,0010   00100010   0x00100010   PatientName   patientname
    ReferencedImageSequence[0].ReferencedSOPInstanceUID
    (0008,1140)[0].(0008,1155)
    ImageType[1]                       (index into a multi-valued element)

Pure module: works on the DICOM JSON dict produced by `parsing.dataset_to_json`, no
file I/O and no Django.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.datadict import DicomDictionary, get_private_entry, keyword_for_tag

MAX_EXPRESSION_LENGTH = 512
MAX_STEPS = 16

_STEP = re.compile(
    r"""
    (?:
        \(\s*(?P<g1>[0-9A-Fa-f]{4})\s*,\s*(?P<e1>[0-9A-Fa-f]{4})\s*\)   # (0010,0010)
      | (?P<g2>[0-9A-Fa-f]{4}),(?P<e2>[0-9A-Fa-f]{4})                      # 0010,0010
      | (?:0[xX])?(?P<hex>[0-9A-Fa-f]{8})(?![0-9A-Za-z])                    # 00100010
      | (?P<kw>[A-Za-z][A-Za-z0-9]*)                                         # PatientName
    )
    (?:\[\s*(?P<idx>-?\d+)\s*\])?                                             # [0]
    """,
    re.VERBOSE,
)


class TagExpressionError(ValueError):
    """The expression is malformed or names no known attribute; `str()` says why."""


class ElementNotFound(LookupError):
    """The expression is valid but the header has no such element or item; `str()` says which."""


@dataclass(frozen=True)
class Step:
    """One element of a path, with an optional item (sequence) or value (multi-valued) index."""

    tag: int
    index: int | None = None


@dataclass(frozen=True)
class TagValue:
    """The answer to a lookup: where the element is, what it is, and its value."""

    tag: str
    keyword: str
    name: str
    vr: str
    value: Any
    path: str
    private_creator: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {
            "tag": self.tag,
            "keyword": self.keyword,
            "name": self.name,
            "vr": self.vr,
            "value": self.value,
            "path": self.path,
        }
        if self.private_creator is not None:
            data["private_creator"] = self.private_creator
        return data


@lru_cache(maxsize=1)
def _keywords_by_lower() -> dict[str, int]:
    return {entry[4].lower(): tag for tag, entry in DicomDictionary.items() if entry[4]}


def _tag_for_keyword(word: str) -> int:
    tag = _keywords_by_lower().get(word.lower())
    if tag is None:
        raise TagExpressionError(f"'{word}' is not a DICOM keyword; use a keyword such as PatientName or a tag such as (0010,0010)")
    return tag


def parse_expression(expr: str) -> tuple[Step, ...]:
    """Parse an expression into steps, raising TagExpressionError with a clear reason."""
    text = (expr or "").strip()
    if not text:
        raise TagExpressionError("the tag expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise TagExpressionError(f"the tag expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    steps: list[Step] = []
    pos = 0
    while True:
        match = _STEP.match(text, pos)
        if not match:
            raise TagExpressionError(
                f"cannot read a tag at position {pos + 1} of '{text}'; expected (gggg,eeee), gggg,eeee, ggggeeee or a keyword"
            )
        if match.group("kw"):
            tag = _tag_for_keyword(match.group("kw"))
        elif match.group("hex"):
            tag = int(match.group("hex"), 16)
        else:
            group = match.group("g1") or match.group("g2")
            element = match.group("e1") or match.group("e2")
            tag = int(group + element, 16)
        index = match.group("idx")
        if index is not None and int(index) < 0:
            raise TagExpressionError(f"index [{index}] is negative; items are numbered from 0")
        steps.append(Step(tag=tag, index=int(index) if index is not None else None))
        if len(steps) > MAX_STEPS:
            raise TagExpressionError(f"the path is deeper than {MAX_STEPS} elements")
        pos = match.end()
        if pos == len(text):
            break
        if text[pos] != ".":
            raise TagExpressionError(f"unexpected '{text[pos]}' at position {pos + 1} of '{text}'; separate path steps with '.'")
        pos += 1
    return tuple(steps)


def format_tag(tag: int) -> str:
    """(gggg,eeee) with upper-case hex."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def json_key(tag: int) -> str:
    """The DICOM JSON key of a tag: 8 upper-case hex digits."""
    return f"{tag:08X}"


def header_keys(*paths: tuple[Step, ...]) -> tuple[str, ...]:
    """The top-level header keys that `lookup` reads for these paths: each path's first element and,
    for a private element at the top level, its private creator. Enough to fetch only those elements."""
    keys: dict[str, None] = {}
    for steps in paths:
        first = steps[0].tag
        keys[json_key(first)] = None
        group, element = first >> 16, first & 0xFFFF
        if len(steps) == 1 and group % 2 == 1 and element >= 0x1000:
            keys[json_key((group << 16) | (element >> 8))] = None
    return tuple(keys)


def _private_creator(dataset: dict[str, Any], tag: int) -> str | None:
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 0 or element < 0x1000:
        return None
    creator = dataset.get(json_key((group << 16) | (element >> 8)), {})
    values = creator.get("Value") or []
    return str(values[0]).strip() if values else ""


def describe(tag: int, private_creator: str | None = None) -> tuple[str, str]:
    """(keyword, name) from the standard or, for private tags, the private dictionary."""
    if private_creator:
        try:
            return "", get_private_entry(tag, private_creator)[2]
        except KeyError:
            return "", f"Private tag ({private_creator})"
    if private_creator is not None:
        return "", "Private tag"
    if (tag & 0xFFFF) == 0 and tag >> 16 != 0xFFFE:
        return "", "Group Length"
    entry = DicomDictionary.get(tag)
    if entry is None:
        if (tag >> 16) % 2 == 1:
            return "", "Private Creator" if 0x10 <= (tag & 0xFFFF) <= 0xFF else "Private tag"
        return keyword_for_tag(tag) or "", "Unknown element"
    return entry[4], entry[2]


def _path_text(steps: tuple[Step, ...]) -> str:
    parts = []
    for step in steps:
        keyword = keyword_for_tag(step.tag) or format_tag(step.tag)
        parts.append(keyword + (f"[{step.index}]" if step.index is not None else ""))
    return ".".join(parts)


def _label(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"{format_tag(tag)} {keyword}" if keyword else format_tag(tag)


def lookup(header: dict[str, Any], steps: tuple[Step, ...]) -> TagValue:
    """Find the element the steps name in a DICOM JSON header."""
    dataset = header
    for number, step in enumerate(steps):
        last = number == len(steps) - 1
        element = dataset.get(json_key(step.tag))
        if element is None:
            where = f" in item {steps[number - 1].index} of {_label(steps[number - 1].tag)}" if number else ""
            raise ElementNotFound(f"element {_label(step.tag)} is not present{where}")
        vr = element.get("vr", "UN")
        if not last:
            if vr != "SQ":
                raise TagExpressionError(f"{_label(step.tag)} is not a sequence, so the path cannot go inside it")
            if step.index is None:
                raise TagExpressionError(f"{_label(step.tag)} is a sequence: say which item, e.g. [0]")
            dataset = _item(element, step)
            continue
        creator = _private_creator(dataset, step.tag)
        keyword, name = describe(step.tag, creator)
        value = element_value(element)
        if step.index is not None:
            items = value if isinstance(value, list) else ([] if value is None else [value])
            if step.index >= len(items):
                raise ElementNotFound(
                    f"{_label(step.tag)} has no {'item' if vr == 'SQ' else 'value'} [{step.index}] (it has {len(items)})"
                )
            value = items[step.index]
        return TagValue(
            tag=format_tag(step.tag),
            keyword=keyword,
            name=name,
            vr=vr,
            value=value,
            path=_path_text(steps),
            private_creator=creator,
        )
    raise AssertionError("unreachable: steps is never empty")  # pragma: no cover


def lookup_value(header: dict[str, Any], steps: tuple[Step, ...]) -> Any:
    """The value an expression names, or None when the header has no such element or item."""
    try:
        return lookup(header, steps).value
    except ElementNotFound:
        return None


def _item(element: dict[str, Any], step: Step) -> dict[str, Any]:
    items = element.get("Value") or []
    if step.index is None or step.index >= len(items):
        raise ElementNotFound(f"{_label(step.tag)} has no item [{step.index}] (it has {len(items)})")
    return items[step.index]


def person_name_text(value: dict[str, Any]) -> str:
    """A PN JSON object as its DICOM string form: Alphabetic=Ideographic=Phonetic."""
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    return "=".join(groups).rstrip("=")


def element_value(element: dict[str, Any]) -> Any:
    """A friendly value for one DICOM JSON element.

    Single values come back as scalars, multiple as lists, absent as None; person names as
    strings; sequences as a list of DICOM JSON items; summarised bulk data as its summary.
    """
    if "BulkData" in element:
        return element["BulkData"]
    if "InlineBinary" in element:
        return {"InlineBinary": element["InlineBinary"]}
    if "BulkDataURI" in element:
        return {"BulkDataURI": element["BulkDataURI"]}
    values = element.get("Value")
    if not values:
        return [] if element.get("vr") == "SQ" else None
    if element.get("vr") == "SQ":
        return values
    if element.get("vr") == "PN":
        values = [person_name_text(v) if isinstance(v, dict) else v for v in values]
    return values[0] if len(values) == 1 else values


# --- a browsable view of the whole header ------------------------------------------------------

MAX_BROWSE_DEPTH = 12
MAX_DISPLAY_CHARS = 300


@dataclass(frozen=True)
class HeaderRow:
    """One element of a header as a person reads it: tag, keyword, VR, value text, nested items."""

    tag: str
    keyword: str
    name: str
    vr: str
    value: str
    private: bool
    items: tuple[tuple[HeaderRow, ...], ...] = ()

    @property
    def search_text(self) -> str:
        """What a filter box matches against (lower case)."""
        return f"{self.tag} {self.tag[1:5]}{self.tag[6:10]} {self.keyword} {self.name} {self.vr} {self.value}".lower()


def header_rows(header: dict[str, Any], *, depth: int = 0) -> tuple[HeaderRow, ...]:
    """Every element of a DICOM JSON header in tag order, sequences as nested item rows.

    Values are plain text (the caller escapes them for HTML); long values are shortened and
    bulk data appears as its summary. Nesting deeper than MAX_BROWSE_DEPTH is summarised.
    """
    rows = []
    for key in sorted(header):
        try:
            tag = int(key, 16)
        except ValueError:
            continue
        element = header[key] if isinstance(header[key], dict) else {}
        creator = _private_creator(header, tag)
        keyword, name = describe(tag, creator)
        vr = str(element.get("vr", ""))
        items: tuple[tuple[HeaderRow, ...], ...] = ()
        if vr == "SQ" and "BulkData" not in element:
            sequence = [item for item in element.get("Value") or [] if isinstance(item, dict)]
            if depth + 1 < MAX_BROWSE_DEPTH:
                items = tuple(header_rows(item, depth=depth + 1) for item in sequence)
                value = f"{len(sequence)} item(s)"
            else:
                value = f"{len(sequence)} item(s), nested too deep to show"
        else:
            value = display_value(tag, element)
        rows.append(HeaderRow(format_tag(tag), keyword, name, vr, value, (tag >> 16) % 2 == 1, items))
    return tuple(rows)


def display_value(tag: int, element: dict[str, Any]) -> str:
    """A one-line text for an element's value: multiple values joined by a backslash, as DICOM writes them."""
    if "BulkData" in element:
        return _bulk_text(tag, element["BulkData"])
    if "InlineBinary" in element:
        return f"binary data ({len(str(element['InlineBinary'])) * 3 // 4} bytes)"
    if "BulkDataURI" in element:
        return "binary data (stored separately)"
    values = element.get("Value") or []
    if element.get("vr") == "PN":
        values = [person_name_text(v) if isinstance(v, dict) else v for v in values]
    text = "\\".join("" if v is None else str(v) for v in values)
    return text if len(text) <= MAX_DISPLAY_CHARS else text[:MAX_DISPLAY_CHARS] + f"… ({len(text)} characters)"


def _bulk_text(tag: int, summary: dict[str, Any]) -> str:
    if "items" in summary:
        return f"sequence of {summary['items']} item(s), too large to keep"
    length = summary.get("length", 0)
    if "frames" in summary:
        shape = f"{summary.get('rows')} x {summary.get('columns')}, {summary.get('frames')} frame(s), {summary.get('bits_allocated')} bits allocated"
        kind = "encapsulated (compressed)" if summary.get("encapsulated") else "native"
        return f"pixel data: {shape}, {length} bytes, {kind}"
    return f"binary data ({length} bytes)"
