"""docs/api.md's table of error codes is complete and true: it names exactly the codes the service can send,
collected from the code itself (service errors, the pure core's errors, DRF's errors the views can raise,
the middleware, and nginx's own answers under `make serve`)."""

from __future__ import annotations

import re
from pathlib import Path

from rest_framework import exceptions

from studies import errors
from studies.dicomweb import stow  # noqa: F401 - defines STOW's ServiceErrors (411, 413, 415)
from studies.http import errors as http_errors
from studies.http import middleware

PROJECT = Path(__file__).resolve().parents[2]
API_DOC = PROJECT / "docs" / "api.md"
NGINX_TEMPLATE = PROJECT / "deploy" / "nginx.conf.template"


def documented_codes() -> set[str]:
    """The codes of the table: in each cell, the backticked words outside parentheses and before a colon
    (what follows a colon, or stands in parentheses, explains the code)."""
    text = API_DOC.read_text()
    table = text[text.index("## Statuses and error codes") :].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| status", "| 200"))]
    codes = set()
    for row in rows:
        for part in row.split("|")[2].split(";"):
            named = re.sub(r"\([^)]*\)", "", part.split(":")[0])
            codes |= set(re.findall(r"`([a-z_]+)`", named))
    return codes


def service_error_codes() -> set[str]:
    found, todo = set(), [errors.ServiceError]
    while todo:
        kind = todo.pop()
        found.add(kind.code)
        todo.extend(kind.__subclasses__())
    return found


def drf_codes() -> set[str]:
    """DRF's errors the framework raises on its own (parsing, authentication, permissions, routing, negotiation,
    throttling, validation): every APIException subclass DRF defines."""
    kinds = [k for k in vars(exceptions).values() if isinstance(k, type) and issubclass(k, exceptions.APIException)]
    return {k.default_code for k in kinds if k is not exceptions.APIException}


def produced_codes() -> set[str]:
    nginx = set(re.findall(r'"code": "([a-z_]+)"', NGINX_TEMPLATE.read_text()))
    page = {code for _, code in middleware.PAGE_ERRORS.values()} | {middleware.FALLBACK[1], "invalid_parameter"}
    handlers = {"not_found", "server_error", "too_many_files"}  # http/errors.py: not_found(), server_error(), the handler
    return service_error_codes() | {code for _, _, code in http_errors.DICOM_ERRORS} | drf_codes() | page | handlers | nginx


def test_the_table_names_every_code_the_service_can_send():
    assert sorted(produced_codes() - documented_codes()) == []


def test_the_table_names_no_code_the_service_cannot_send():
    assert sorted(documented_codes() - produced_codes()) == []


def test_the_collection_sees_what_it_should():
    # A guard on the collectors themselves: a few codes from each source.
    assert {"too_large", "conflict", "length_required", "storage_unavailable"} <= service_error_codes()
    assert {"not_authenticated", "throttled", "parse_error", "invalid"} <= drf_codes()
    assert "unavailable" in produced_codes()
