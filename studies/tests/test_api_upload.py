"""Upload: both request forms, re-upload rules, refusals that store nothing, size limit, races."""

from __future__ import annotations

import hashlib

import pytest

from studies.models import Instance, Series, Study

from .conftest import CT_SMALL, assert_storage_consistent, client_for, dicom_bytes, race, stored_files, upload

pytestmark = pytest.mark.django_db


def test_multipart_upload_creates_instance_and_stores_file_under_server_key(api, media_root):
    response = upload(api, CT_SMALL.read_bytes(), "Doe^John CT_small.dcm")
    assert response.status_code == 201
    body = response.json()
    assert body["duplicate"] is False
    assert body["sop_instance_uid"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert body["original_filename"] == "Doe^John CT_small.dcm"
    files = stored_files(media_root)
    assert len(files) == 1
    key = body["storage"]["key"]
    assert key.endswith(f"{body['id'].replace('-', '')}.dcm")
    assert "Doe" not in key and "CT_small" not in key and "CompressedSamples" not in key


def test_raw_application_dicom_body_is_accepted(api, media_root):
    response = upload(api, CT_SMALL.read_bytes(), raw=True)
    assert response.status_code == 201, response.content
    assert response.json()["modality"] == "CT"
    assert len(stored_files(media_root)) == 1


def test_raw_body_takes_original_filename_from_content_disposition(api):
    response = api.post(
        "/api/instances/",
        data=CT_SMALL.read_bytes(),
        content_type="application/dicom",
        HTTP_CONTENT_DISPOSITION='attachment; filename="../../etc/ct.dcm"',
    )
    assert response.status_code == 201
    assert response.json()["original_filename"] == "ct.dcm"


def test_stored_file_has_zeroed_preamble_and_sha256_of_stored_bytes(api, media_root):
    data = bytearray(CT_SMALL.read_bytes())
    data[:4] = b"MZ\x90\x00"  # a Windows-executable polyglot preamble
    body = upload(api, bytes(data)).json()
    (stored,) = stored_files(media_root)
    content = stored.read_bytes()
    assert content[:128] == bytes(128)
    assert content[128:] == bytes(data[128:])
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size"] == len(content)


def test_same_owner_same_bytes_is_a_duplicate_without_second_copy(api, media_root):
    first = upload(api, CT_SMALL.read_bytes())
    second = upload(api, CT_SMALL.read_bytes(), raw=True)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["duplicate"] is True
    assert second.json()["id"] == first.json()["id"]
    assert Instance.objects.count() == 1
    assert len(stored_files(media_root)) == 1


def test_same_sop_uid_with_other_bytes_is_a_conflict_naming_the_existing_instance(api, media_root):
    first = upload(api, CT_SMALL.read_bytes()).json()
    changed = dicom_bytes(new_uids=False, StudyDescription="changed")
    response = upload(api, changed)
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "conflict"
    assert body["id"] == first["id"]
    assert body["error"]
    assert Instance.objects.count() == 1
    assert len(stored_files(media_root)) == 1


def test_different_owners_keep_separate_copies_of_the_same_file(api, other, media_root, django_capture_on_commit_callbacks):
    mine = upload(api, CT_SMALL.read_bytes())
    theirs = upload(client_for(other), CT_SMALL.read_bytes())
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert Study.objects.count() == 2 and Series.objects.count() == 2
    assert len(stored_files(media_root)) == 2
    # Deleting one owner's copy leaves the other's row and file.
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/instances/{mine.json()['id']}/").status_code == 204
    assert Instance.objects.filter(owner=other).count() == 1
    assert len(stored_files(media_root)) == 1


def test_instances_of_one_series_share_study_and_series_rows(api):
    base = dicom_bytes()
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(base))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 2
    second = io.BytesIO()
    ds.save_as(second, enforce_file_format=True)
    a = upload(api, base).json()
    b = upload(api, second.getvalue()).json()
    assert a["study"] == b["study"] and a["series"] == b["series"]
    assert Study.objects.count() == 1 and Series.objects.count() == 1 and Instance.objects.count() == 2


REFUSED = {
    "empty": b"",
    "text": b"patient list\nDoe^John,12345\n" * 10,
    "png": b"\x89PNG\r\n\x1a\n" + bytes(200),
    "truncated-header": CT_SMALL.read_bytes()[:300],
    "preamble-only": bytes(128) + b"DICM",
}


NOT_PART_10 = "not a DICOM Part-10 file: File is missing DICOM File Meta Information header or the 'DICM' prefix is missing from the header."
# kind: (code, error) of the 400, the same for both request forms unless keyed by form.
REFUSAL = {
    "empty": {
        "multipart": ("invalid_dicom", "the file is empty"),
        # An empty application/dicom body is no file at all to DRF.
        "raw": ("missing_file", "no file: send it as multipart field 'file' or as the body with Content-Type: application/dicom"),
    },
    "text": ("invalid_dicom", NOT_PART_10),
    "png": ("invalid_dicom", NOT_PART_10),
    # The cut (byte 300) is inside the 192-byte file meta group, before the data set: truncated, as a cut
    # inside the data set is.
    "truncated-header": ("invalid_dicom", "the file ends inside a value: it is truncated"),
    "preamble-only": ("invalid_dicom", "the file meta information has no Transfer Syntax UID (0002,0010)"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw"])
def test_non_dicom_is_refused_with_400_and_nothing_is_stored(api, media_root, kind, raw):
    response = upload(api, REFUSED[kind], raw=raw)
    assert response.status_code == 400, response.content
    expected = REFUSAL[kind]
    code, error = expected["raw" if raw else "multipart"] if isinstance(expected, dict) else expected
    assert response.json() == {"error": error, "code": code}
    assert Instance.objects.count() == 0 and Study.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.parametrize("cut", [200, 300])
def test_a_file_cut_inside_its_file_meta_group_is_refused_as_truncated(api, media_root, cut):
    """CT_small's file meta group runs to byte 336 (its group length says so): a file ending before that
    is truncated, and the answer says so, as it does for a cut inside the data set."""
    response = upload(api, CT_SMALL.read_bytes()[:cut])
    assert response.status_code == 400
    assert response.json() == {"error": "the file ends inside a value: it is truncated", "code": "invalid_dicom"}


def test_a_file_cut_inside_its_pixel_data_is_refused_as_truncated(api, media_root):
    """CT_small ends with 32768 bytes of native Pixel Data; cut in half, the element claims more than the file
    holds: refused like a cut inside any earlier value (it used to be stored, and only a render found out)."""
    data = CT_SMALL.read_bytes()
    response = upload(api, data[: len(data) - 32768 // 2])
    assert response.status_code == 400, response.json()
    assert response.json() == {"error": "the file ends inside a value: it is truncated", "code": "invalid_dicom"}
    assert stored_files(media_root) == []


def test_file_without_sop_instance_uid_is_refused(api, media_root):
    import io

    import pydicom

    ds = pydicom.dcmread(CT_SMALL)
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    response = upload(api, buffer.getvalue())
    assert response.status_code == 400
    assert response.json() == {"error": "the file has no SOP Instance UID (SOPInstanceUID)", "code": "invalid_dicom"}
    assert stored_files(media_root) == []


def test_missing_file_field_is_a_clear_400(api):
    response = api.post("/api/instances/", {"upload": "x"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["code"] == "missing_file"


def test_two_file_parts_are_refused(api, media_root):
    import io

    parts = [io.BytesIO(CT_SMALL.read_bytes()), io.BytesIO(dicom_bytes())]
    for i, part in enumerate(parts):
        part.name = f"{i}.dcm"
    response = api.post("/api/instances/", {"file": parts}, format="multipart")
    assert response.status_code == 400
    assert stored_files(media_root) == []


def test_unsupported_content_type_is_415_json(api):
    response = api.post("/api/instances/", data=CT_SMALL.read_bytes(), content_type="image/png")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw"])
def test_upload_over_the_size_limit_is_413_and_stores_nothing(api, media_root, settings, raw):
    settings.DICOM_MAX_UPLOAD_BYTES = 10_000  # CT_small is 39 KB
    response = upload(api, CT_SMALL.read_bytes(), raw=raw)
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert stored_files(media_root) == []
    assert Instance.objects.count() == 0


def test_streaming_cap_applies_even_when_content_length_is_small(owner, media_root, settings):
    """The handler counts bytes as they stream, so a lying/absent Content-Length cannot bypass the cap."""
    import io

    from studies.errors import UploadTooLarge
    from studies.uploads import stage_stream

    with pytest.raises(UploadTooLarge):
        stage_stream(io.BytesIO(CT_SMALL.read_bytes()), "x.dcm", max_bytes=1000)


def test_catalogue_failure_after_the_file_is_stored_removes_the_file(owner, media_root, monkeypatch):
    """A database error after the storage write (a fault we cannot cause for real in SQLite, hence the patch)."""
    import io

    from django.db import IntegrityError

    from studies import services
    from studies.outcome import Reason
    from studies.uploads import stage_stream

    def broken(*args, **kwargs):
        raise IntegrityError("simulated failure after the file was written")

    monkeypatch.setattr(services, "_catalogue", broken)
    staged = stage_stream(io.BytesIO(dicom_bytes()), "x.dcm")
    outcome = services.ingest(owner=owner, staged=staged)
    assert outcome.reason is Reason.CATALOGUE_BUSY and outcome.status == "conflict"
    assert stored_files(media_root) == []
    assert Instance.objects.count() == 0


@pytest.mark.postgres  # the race needs concurrent writers: conftest skips it unless DATABASE_URL is PostgreSQL
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_identical_uploads_make_one_row_and_one_file(owner, media_root):
    data = dicom_bytes()
    responses = race(*[lambda client=client_for(owner): upload(client, data) for _ in range(20)])
    assert not [r for r in responses if isinstance(r, BaseException)], responses
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Study.objects.count() == 1 and Series.objects.count() == 1
    assert len(assert_storage_consistent(media_root)) == 1


@pytest.mark.postgres  # the race needs concurrent writers: conftest skips it unless DATABASE_URL is PostgreSQL
@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_of_one_series_share_one_study_and_series(owner, media_root):
    import io

    import pydicom
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    files = []
    for number in range(10):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = number
        buffer = io.BytesIO()
        template.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    responses = race(*[lambda client=client_for(owner), data=data: upload(client, data) for data in files])
    assert not [r for r in responses if isinstance(r, BaseException)], responses
    assert [r.status_code for r in responses] == [201] * 10
    assert Study.objects.count() == 1 and Series.objects.count() == 1
    assert len(assert_storage_consistent(media_root)) == 10
