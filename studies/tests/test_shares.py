"""Share links: one study, for someone without an account, in the viewer and as a zip, until expiry or revocation;
every use audited as the link's; nothing else opened by it."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import pydicom
import pytest
from django.test import Client
from django.utils import timezone

from studies.audit.models import AuditEvent
from studies.http import viewer
from studies.models import Instance, ShareLink

from .conftest import assert_error, client_for, dicom_bytes, drain, stored_instance, upload

pytestmark = pytest.mark.django_db
JSON = {"HTTP_ACCEPT": "application/dicom+json"}


@pytest.fixture
def shared(api):
    """The owner's study (two instances of one series) and another study of theirs."""
    first = stored_instance(api, PatientName="Doe^Jane", PatientID="PID-SECRET-1")
    second = stored_instance(api, StudyInstanceUID=first.study.study_instance_uid, SeriesInstanceUID=first.series.series_instance_uid)
    other = stored_instance(api)
    return {"study": first.study, "instances": [first, second], "other": other}


def _share(api, study, **body):
    response = api.post(f"/api/studies/{study.pk}/share/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _secret(link: dict) -> str:
    return link["link"].rstrip("/").rsplit("/", 1)[1]


def test_a_link_opens_its_study_without_an_account(api, shared):
    study = shared["study"]
    link = _share(api, study)
    secret = _secret(link)
    assert link["study_instance_uid"] == study.study_instance_uid and link["live"] and not link["deidentify"]
    stored = ShareLink.objects.get(pk=link["id"])
    assert secret not in (stored.token_digest, stored.deid_secret)  # only a digest of the secret is kept
    assert "link" not in api.get(f"/api/shares/{link['id']}/").json()  # shown once, at creation

    anyone = Client()
    landing = anyone.get(f"/share/{secret}/").json()
    assert landing["study_instance_uid"] == study.study_instance_uid and landing["viewer"].endswith(f"StudyInstanceUIDs={study.study_instance_uid}")
    found = anyone.get(f"/share/{secret}/dicomweb/studies", **JSON).json()
    assert [s["0020000D"]["Value"][0] for s in found] == [study.study_instance_uid]
    assert found[0]["00081190"]["Value"][0].startswith(f"http://testserver/share/{secret}/dicomweb/studies/")  # RetrieveURL under the link
    instances = anyone.get(f"/share/{secret}/dicomweb/studies/{study.study_instance_uid}/instances", **JSON).json()
    assert len(instances) == 2
    one = shared["instances"][0]
    base = f"/share/{secret}/dicomweb/studies/{study.study_instance_uid}/series/{one.series.series_instance_uid}"
    metadata = anyone.get(f"{base}/metadata", **JSON)
    assert metadata.status_code == 200 and len(json.loads(b"".join(metadata.streaming_content))) == 2
    frames = anyone.get(f"{base}/instances/{one.sop_instance_uid}/frames/1", HTTP_ACCEPT='multipart/related; type="application/octet-stream"')
    assert frames.status_code == 200
    drain(frames)
    rendered = anyone.get(f"{base}/instances/{one.sop_instance_uid}/rendered", HTTP_ACCEPT="image/png")
    assert rendered.status_code == 200 and rendered["Content-Type"] == "image/png"

    archive = anyone.get(f"/share/{secret}/zip")
    assert archive.status_code == 200 and archive["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(b"".join(archive.streaming_content))).namelist()
    assert sorted(names) == sorted(f"{i.series.series_instance_uid}/{i.sop_instance_uid}.dcm" for i in shared["instances"])
    assert ShareLink.objects.get(pk=link["id"]).uses == 2  # the landing and the zip; the DICOMweb reads are audited only


def test_a_link_grants_nothing_else(api, shared):
    study, other = shared["study"], shared["other"]
    secret = _secret(_share(api, study))
    anyone = Client()
    # Another study of the same owner: not through the link's routes, not found by a search under it.
    assert_error(anyone.get(f"/share/{secret}/dicomweb/studies/{other.study.study_instance_uid}/series", **JSON), 404, "not_found")
    assert_error(anyone.get(f"/share/{secret}/dicomweb/studies/{other.study.study_instance_uid}/metadata", **JSON), 404, "not_found")
    assert anyone.get(f"/share/{secret}/dicomweb/studies", {"StudyInstanceUID": other.study.study_instance_uid}, **JSON).json() == []
    assert len(anyone.get(f"/share/{secret}/dicomweb/instances", **JSON).json()) == 2  # not the other study's
    # No writes: STOW-RS, labels.
    stow = anyone.post(f"/share/{secret}/dicomweb/studies", data=b"x", content_type='multipart/related; type="application/dicom"; boundary=b')
    assert_error(stow, 405, "method_not_allowed")
    assert_error(anyone.put(f"/share/{secret}/dicomweb/studies/{study.study_instance_uid}/labels/x"), 404, "not_found")
    # The secret is not a credential anywhere else.
    for path in ("/api/studies/", f"/api/studies/{study.pk}/", "/dicomweb/studies", "/api/me/"):
        assert_error(anyone.get(path, HTTP_AUTHORIZATION=f"Token {secret}"), 401, "authentication_failed")
        assert anyone.get(path).status_code == 401
    assert_error(anyone.get("/share/not-a-secret/"), 404, "not_found")
    assert_error(anyone.get("/share/not-a-secret/dicomweb/studies", **JSON), 404, "not_found")


def test_the_link_sees_the_owners_rows_only_whatever_their_permissions(superuser, shared):
    """A superuser's link does not open other owners' copies of the same study."""
    study, superuser_api = shared["study"], client_for(superuser)
    theirs = upload(superuser_api, dicom_bytes(StudyInstanceUID=study.study_instance_uid))
    assert theirs.status_code == 201
    secret = _secret(_share(superuser_api, Instance.objects.get(pk=theirs.json()["id"]).study))
    instances = Client().get(f"/share/{secret}/dicomweb/studies/{study.study_instance_uid}/instances", **JSON).json()
    assert [i["00080018"]["Value"][0] for i in instances] == [theirs.json()["sop_instance_uid"]]


def test_revoked_and_expired_links_open_nothing(api, shared):
    study = shared["study"]
    revoked, expired = _share(api, study), _share(api, study, expires_in_hours=1)
    assert api.delete(f"/api/shares/{revoked['id']}/").status_code == 204
    assert api.get(f"/api/shares/{revoked['id']}/").json()["live"] is False  # the record stays
    ShareLink.objects.filter(pk=expired["id"]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    anyone = Client()
    for link in (revoked, expired):
        secret = _secret(link)
        for path in ("/", "/zip", "/viewer", "/dicomweb/studies", f"/dicomweb/studies/{study.study_instance_uid}/metadata"):
            assert_error(anyone.get(f"/share/{secret}{path}", **JSON), 410, "share_expired")


def test_a_deidentified_link_offers_a_deidentified_zip_only(api, shared):
    study = shared["study"]
    link = _share(api, study, deidentify=True, options=["retain_patient_characteristics"])
    assert link["deidentify"] and link["options"] == ["retain_patient_characteristics"] and link["viewer"] is None
    secret = _secret(link)
    anyone = Client()
    assert anyone.get(f"/share/{secret}/").json()["study_instance_uid"] is None  # not even the original UID

    def members():
        archive = anyone.get(f"/share/{secret}/zip")
        assert archive.status_code == 200
        with zipfile.ZipFile(io.BytesIO(b"".join(archive.streaming_content))) as zf:
            return {name: pydicom.dcmread(io.BytesIO(zf.read(name))) for name in zf.namelist()}

    first, again = members(), members()
    assert len(first) == 2 and sorted(first) == sorted(again)  # the same new UIDs at every download
    originals = {i.sop_instance_uid for i in shared["instances"]}
    for ds in first.values():
        assert ds.SOPInstanceUID not in originals
        assert ds.StudyInstanceUID != study.study_instance_uid
        assert str(ds.PatientName) != "Doe^Jane" and ds.PatientID != "PID-SECRET-1"
    for path in ("/viewer", "/dicomweb/studies", f"/dicomweb/studies/{study.study_instance_uid}/metadata"):
        assert_error(anyone.get(f"/share/{secret}{path}", **JSON), 409, "share_zip_only")


@pytest.mark.parametrize(
    "body, code",
    [({"expires_in_hours": 0}, "invalid"), ({"expires_in_hours": 721}, "invalid_parameter"), ({"expires_in": 5}, "invalid"),
     ({"options": ["retain_uids"]}, "invalid"), ({"deidentify": True, "options": ["keep_everything"]}, "invalid_parameter")],
)  # fmt: skip
def test_bad_share_requests_are_400(api, shared, body, code):
    assert_error(api.post(f"/api/studies/{shared['study'].pk}/share/", body, format="json"), 400, code)
    assert not ShareLink.objects.exists()


def test_only_the_owner_shares(api, shared, other, viewer):
    study = shared["study"]
    assert_error(client_for(other).post(f"/api/studies/{study.pk}/share/", {}, format="json"), 404, "not_found")
    assert_error(client_for(viewer).post(f"/api/studies/{study.pk}/share/", {}, format="json"), 403, "permission_denied")
    link = _share(api, study)
    assert client_for(other).get("/api/shares/").json()["results"] == []
    assert_error(client_for(other).delete(f"/api/shares/{link['id']}/"), 404, "not_found")


def test_every_use_is_audited_as_the_links_never_with_its_secret(api, shared):
    link = _share(api, shared["study"])
    secret = _secret(link)
    anyone = Client()
    anyone.get(f"/share/{secret}/")
    anyone.get(f"/share/{secret}/dicomweb/studies", **JSON)
    drain(anyone.get(f"/share/{secret}/zip"))
    anyone.get(f"/share/{secret}/dicomweb/studies/{shared['other'].study.study_instance_uid}/metadata", **JSON)
    uses = AuditEvent.objects.filter(object_type="share", object_id=link["id"]).order_by("at", "id")
    assert [(e.action, e.outcome, e.user_id, e.username) for e in uses] == [
        ("share-landing", "success", None, ""),
        ("share-dicomweb-studies", "success", None, ""),
        ("share-zip", "success", None, ""),
        ("share-dicomweb-study-metadata", "not_found", None, ""),
    ]
    for event in AuditEvent.objects.all():
        assert secret not in " ".join(str(v) for v in event.__dict__.values())


def test_the_viewer_page_is_configured_for_the_link(api, shared):
    study = shared["study"]
    secret = _secret(_share(api, study))
    config = Client().get(f"/share/{secret}/app-config.js").content.decode()
    assert f'"routerBasename": "/share/{secret}"' in config and '"showStudyList": false' in config
    assert f'window.location.origin + "/share/{secret}/dicomweb"' in config
    page = Client().get(f"/share/{secret}/viewer", {"StudyInstanceUIDs": study.study_instance_uid})
    assert viewer.viewer_root() is not None, "make test installs the viewer's build (make viewer)"
    assert page.status_code == 200 and f"/share/{secret}/app-config.js".encode() in page.content
    assert b"/viewer/app-config.js" not in page.content


def test_a_link_goes_with_its_study(api, shared):
    """Deleting the study's last instance deletes the study, and its links with it: the link then opens nothing."""
    study = shared["study"]
    secret = _secret(_share(api, study))
    for instance in shared["instances"]:
        assert api.delete(f"/api/instances/{instance.pk}/").status_code == 204
    assert not ShareLink.objects.filter(study_id=study.pk).exists()
    assert_error(Client().get(f"/share/{secret}/"), 404, "not_found")
    assert_error(Client().get(f"/share/{secret}/dicomweb/studies", **JSON), 404, "not_found")
