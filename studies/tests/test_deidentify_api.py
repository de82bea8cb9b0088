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


def test_series_copy_and_options_in_the_record(api):
    source = Instance.objects.get(pk=upload(api, CT_SMALL)).series
    response = api.post(f"/api/series/{source.pk}/deidentify/", {"retain_patient_characteristics": True}, format="json")
    assert response.status_code == 201, response.content
    record = Deidentification.objects.get(pk=response.json()["id"])
    assert (record.source_level, record.source_id, record.options["options"]) == ("series", str(source.pk), ["retain_patient_characteristics"])
    ds = pydicom.dcmread(Study.objects.get(pk=response.json()["study"]["id"]).instances.get().file.open("rb"))
    assert ds.PatientSex == "O" and [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113108"]


def test_a_whole_study_shares_one_new_study_and_one_pseudonym(api):
    from .conftest import dicom_bytes

    study_uid = pydicom.uid.generate_uid()
    ids = []
    for n in range(3):
        data = dicom_bytes(CT_SMALL, StudyInstanceUID=study_uid, InstanceNumber=n + 1)
        response = api.post("/api/instances/", {"file": io.BytesIO(data)}, format="multipart")
        ids.append(response.json()["id"])
    source = study_of(ids[0])
    body = api.post(f"/api/studies/{source.pk}/deidentify/", {}, format="json").json()
    new = Study.objects.get(pk=body["study"]["id"])
    assert new.instances.count() == 3 and {r["source"] for r in body["results"]} == set(ids)
    assert len(set(new.instances.values_list("patient_id", flat=True))) == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"retain_dates": True}, "retain_dates"),
        ({"masks": [[1, 2, 3]]}, "masks"),
        ({"masks": [[1, 2, 3, -4]]}, "masks"),
        ({"project_secret": "short"}, "project_secret"),
        ({"clean_descriptors": "maybe"}, "clean_descriptors"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(api, body, field):
    source = study_of(upload(api, CT_SMALL))
    error = assert_error(api.post(f"/api/studies/{source.pk}/deidentify/", body, format="json"), 400, "invalid")
    assert field in error["fields"]
    assert Study.objects.count() == 1 and not Deidentification.objects.exists()


def test_bad_delivery_is_400(api):
    source = study_of(upload(api, CT_SMALL))
    assert_error(api.post(f"/api/studies/{source.pk}/deidentify/?as=tar", {}, format="json"), 400, "invalid_parameter")


def test_same_secret_other_options_is_a_conflict_and_stores_nothing(api):
    source = study_of(upload(api, CT_SMALL))
    first = api.post(f"/api/studies/{source.pk}/deidentify/", {"project_secret": SECRET}, format="json")
    assert first.status_code == 201
    before = Instance.objects.count()
    body = assert_error(
        api.post(f"/api/studies/{source.pk}/deidentify/", {"project_secret": SECRET, "retain_device_identity": True}, format="json"),
        409, "cannot_deidentify",
    )  # fmt: skip
    assert body["files"][0]["id"] == str(source.instances.get().pk) and Instance.objects.count() == before


def one_bit_image() -> bytes:
    ds = pydicom.dcmread(CT_SMALL)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.Rows = ds.Columns = 16
    ds.PixelData = bytes(32)
    del ds.RescaleIntercept, ds.RescaleSlope, ds.PixelPaddingValue
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_masks_on_pixels_that_cannot_be_masked_refuse_the_whole_request(api):
    response = api.post("/api/instances/", {"file": io.BytesIO(one_bit_image())}, format="multipart")
    assert response.status_code == 201, response.content
    source = study_of(response.json()["id"])
    body = assert_error(api.post(f"/api/studies/{source.pk}/deidentify/", {"masks": [[0, 0, 4, 4]]}, format="json"), 422, "cannot_deidentify")
    assert "8, 16 and 32 bits" in body["error"] and Study.objects.count() == 1


def test_view_all_user_gets_the_copy_in_their_own_catalogue(api, viewer):
    source = study_of(upload(api, CT_SMALL))
    response = client_for(viewer).post(f"/api/studies/{source.pk}/deidentify/", {}, format="json")
    assert response.status_code == 201, response.content
    assert Study.objects.get(pk=response.json()["study"]["id"]).owner == viewer


def test_zip_with_retained_uids_and_a_kept_mapping(api):
    source = study_of(upload(api, CT_SMALL))
    inst = source.instances.get()
    response = api.post(f"/api/studies/{source.pk}/deidentify/?as=zip", {"retain_uids": True, "keep_mapping": True}, format="json")
    data = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [f"{inst.series.series_instance_uid}/{inst.sop_instance_uid}.dcm"]
    record = Deidentification.objects.get(pk=response["X-Deidentification-ID"])
    assert record.delivered_as == "zip" and record.uid_map == {}  # every UID kept: nothing was mapped
    assert AuditEvent.objects.filter(action="deidentify-result", object_type="deidentification", object_id=str(record.pk)).exists()
