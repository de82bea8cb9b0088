"""The tag route's lean path (studies/api/lean.py) answers exactly as the DRF view it stands in front of."""

from __future__ import annotations

import pytest
from django.test import Client

from studies.audit.models import AuditEvent

from .conftest import CT_SMALL, client_for

pytestmark = pytest.mark.django_db

REF = "MR-SIEMENS-DICOM-WithOverlays.dcm"


@pytest.fixture
def ids(api):
    from pydicom.data import get_testdata_file

    found = []
    for path in (CT_SMALL, get_testdata_file(REF)):
        with open(path, "rb") as fh:
            found.append(api.post("/api/instances/", {"file": fh}, format="multipart").json()["id"])
    return found


def both(client, url: str, **headers):
    """The answer through the lean path, and DRF's answer to the same request (the lean path switched off)."""
    from unittest import mock

    from studies.api import lean as module

    lean = client.get(url, **headers)
    with mock.patch.object(module, "_lean", return_value=False):
        drf = client.get(url, **headers)
    return lean, drf


def same(lean, drf) -> None:
    assert (lean.status_code, lean.content, lean["Content-Type"]) == (drf.status_code, drf.content, drf["Content-Type"])
    for header in ("Vary", "Allow", "WWW-Authenticate"):
        assert lean.get(header) == drf.get(header), header


@pytest.mark.parametrize(
    "expr",
    [
        "PatientName", "(0010,0010)", "00100010", "0010,0010", "ImageType", "ImageType[1]", "patientname",
        "ReferencedImageSequence[0].ReferencedSOPInstanceUID", "PixelData", "(0029,0010)",
        "NoSuchKeyword", "(0010,00", "ImageType[9]", "PatientName[0].Foo", "AcquisitionContextSequence", "ReferencedImageSequence",
    ],
)  # fmt: skip
def test_every_answer_matches_drfs(api, ids, expr):
    for pk in ids:
        same(*both(api, f"/api/instances/{pk}/tags/{expr}/"))


def test_the_lean_path_answers_the_common_case(api, ids, monkeypatch):
    from studies.api import lean

    calls = []
    monkeypatch.setattr(lean, "_RENDERER", type("R", (), {"render": lambda self, v: calls.append(v) or b"{}"})())
    assert api.get(f"/api/instances/{ids[0]}/tags/PatientName/").status_code == 200
    assert calls and calls[0]["value"] == "CompressedSamples^CT1"  # answered here, not by DRF
    api.get(f"/api/instances/{ids[0]}/tags/PatientName/?format=json")
    api.get(f"/api/instances/{ids[0]}/tags/NoSuchKeyword/")
    assert len(calls) == 1  # format= and errors: DRF's answer


@pytest.mark.parametrize(
    "accept, status",
    [("", 406), ("*/*", 200), ("application/json", 200), ("text/html", 200), ("application/json; indent=4", 200), ("text/csv", 406)],
)
def test_accept_headers(api, ids, accept, status):
    lean, drf = both(api, f"/api/instances/{ids[0]}/tags/PatientName/", HTTP_ACCEPT=accept)
    if accept == "text/html":  # DRF's browsable API page: its CSRF token differs between two answers
        assert (lean.status_code, lean["Content-Type"]) == (drf.status_code, drf["Content-Type"]) == (200, "text/html; charset=utf-8")
    else:
        same(lean, drf)
    assert lean.status_code == status


def test_strangers_bad_tokens_and_no_tokens_get_drfs_errors(ids, other):
    url = f"/api/instances/{ids[0]}/tags/PatientName/"
    same(*both(client_for(other), url))
    assert client_for(other).get(url).status_code == 404
    bad = Client(HTTP_AUTHORIZATION="Token nosuchtoken")
    same(*both(bad, url))
    assert bad.get(url).status_code == 401
    same(*both(Client(), url))
    assert Client().get(url)["WWW-Authenticate"] == "Token"


def test_session_and_head_go_to_drf(ids, owner):
    browser = Client()
    browser.force_login(owner)
    url = f"/api/instances/{ids[0]}/tags/PatientName/"
    assert browser.get(url, HTTP_ACCEPT="application/json").json()["value"] == "CompressedSamples^CT1"
    assert client_for(owner).head(url).status_code == 200


def test_the_audit_trail_names_the_reader(api, ids, owner, other):
    url = f"/api/instances/{ids[0]}/tags/PatientName/"
    api.get(url)
    client_for(other).get(url)
    events = list(AuditEvent.objects.filter(action="instance-tag").order_by("id").values_list("user", "outcome", "object_id"))
    assert events == [(owner.pk, "success", ids[0]), (other.pk, "denied", ids[0])]
