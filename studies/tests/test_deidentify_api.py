"""POST /api/studies|series/{id}/deidentify/: a de-identified copy in the caller's catalogue or as a zip."""

from __future__ import annotations

import io
import zipfile

import pydicom
import pytest
from pydicom.data import get_testdata_file

from studies.audit.models import AuditEvent
from studies.models import Deidentification, Instance, Study

from .conftest import CT_SMALL, assert_error, client_for

pytestmark = pytest.mark.django_db

SECRET = "a-project-secret-of-some-length"


def upload(api, path) -> str:
    with open(path, "rb") as fh:
        response = api.post("/api/instances/", {"file": fh}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def study_of(instance_id: str) -> Study:
    return Instance.objects.get(pk=instance_id).study


def test_study_copy_lands_in_the_callers_catalogue(api, owner):
    source = study_of(upload(api, CT_SMALL))
    original = source.instances.get()
    before = original.file.open("rb").read()
    response = api.post(f"/api/studies/{source.pk}/deidentify/", {}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    new = Study.objects.get(pk=body["study"]["id"])
    assert new.pk != source.pk and new.owner == owner
    assert new.study_instance_uid.startswith("2.25.") and new.study_instance_uid == body["study"]["study_instance_uid"]
    inst = new.instances.get()
    ds = pydicom.dcmread(inst.file.open("rb"))
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert "CompressedSamples" not in str(ds.PatientName) and inst.patient_name == str(ds.PatientName)
    assert body["results"] == [{"source": str(source.instances.get().pk), "id": str(inst.pk), "status": "created"}]
    assert body["uid_map"] is None and Deidentification.objects.get(pk=body["id"]).uid_map is None
    original.refresh_from_db()
    assert original.file.open("rb").read() == before and original.patient_name == "CompressedSamples^CT1"  # never changed
    actions = set(AuditEvent.objects.filter(action__startswith="deidentify").values_list("action", "object_type", "object_id"))
    assert actions == {("deidentify-source", "study", str(source.pk)), ("deidentify-result", "study", str(new.pk))}


def test_zip(api):
    source = study_of(upload(api, CT_SMALL))
    response = api.post(f"/api/studies/{source.pk}/deidentify/?as=zip", {}, format="json")
    assert response.status_code == 200, response.content
    data = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert len(names) == 1 and names[0].startswith("2.25.")
        ds = pydicom.dcmread(io.BytesIO(archive.read(names[0])))
    assert ds.SOPInstanceUID in names[0] and ds.PatientIdentityRemoved == "YES"
    assert Study.objects.count() == 1


def test_burned_in_is_refused_without_masks_or_confirmation(api):
    source = study_of(upload(api, get_testdata_file("US1_J2KR.dcm")))
    body = assert_error(api.post(f"/api/studies/{source.pk}/deidentify/", {}, format="json"), 422, "burned_in_annotation")
    assert body["files"] == [{"id": str(source.instances.get().pk), "reason": body["files"][0]["reason"]}]
    assert Study.objects.count() == 1
    ok = api.post(f"/api/studies/{source.pk}/deidentify/", {"masks": [[0, 0, 100, 40]]}, format="json")
    assert ok.status_code == 201, ok.content


def test_secret_gives_the_same_uids_across_requests_and_mapping_only_for_owner(api, other):
    source = study_of(upload(api, CT_SMALL))
    first = api.post(f"/api/studies/{source.pk}/deidentify/?as=zip", {"project_secret": SECRET}, format="json")
    b"".join(first.streaming_content)
    second = api.post(f"/api/studies/{source.pk}/deidentify/", {"project_secret": SECRET, "keep_mapping": True}, format="json")
    assert second.status_code == 201, second.content
    mapping = second.json()["uid_map"]
    assert mapping[source.study_instance_uid] == second.json()["study"]["study_instance_uid"]
    record = second.json()["id"]
    assert client_for(other).get(f"/api/deidentifications/{record}/").status_code == 404
    assert api.get(f"/api/deidentifications/{record}/").json()["uid_map"] == mapping


def test_stranger_gets_404(api, other):
    source = study_of(upload(api, CT_SMALL))
    assert_error(client_for(other).post(f"/api/studies/{source.pk}/deidentify/", {}, format="json"), 404, "not_found")
