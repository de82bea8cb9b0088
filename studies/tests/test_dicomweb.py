"""DICOMweb (/dicomweb/) through Django's test client: STOW-RS, QIDO-RS, WADO-RS, rendered, CORS.

The same service is driven by a real DICOMweb client in test_dicomweb_client.py.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from studies.models import AuditEvent, Instance

from .conftest import CT_SMALL, assert_error, assert_storage_consistent, client_for, dicom_bytes, drain

pytestmark = pytest.mark.django_db

MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
JPEG_BASELINE = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
J2K_MULTIFRAME = Path(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
RLE_MULTIFRAME = Path(get_testdata_file("emri_small_RLE.dcm"))
DEFLATED = Path(get_testdata_file("image_dfl.dcm"))
BIG_ENDIAN = Path(get_testdata_file("MR_small_bigendian.dcm"))
RTPLAN = Path(get_testdata_file("rtplan.dcm"))
DICOM_JSON = "application/dicom+json"


# --- helpers: multipart bodies both ways -------------------------------------------------------


def stow_body(files: list[bytes], boundary: str = "stow-boundary-1") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client, files: list[bytes], path: str = "/dicomweb/studies", **extra):
    body, content_type = stow_body(files)
    return client.post(path, data=body, content_type=content_type, HTTP_ACCEPT=DICOM_JSON, **extra)


def multipart_parts(response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related response into (headers, content) pairs."""
    content_type = response["Content-Type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary="))
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert body.endswith(f"--{boundary}--\r\n".encode())
    parts = []
    for chunk in body.split(f"--{boundary}".encode())[1:-1]:
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        parts.append((headers, content[:-2]))
    return parts


def value(dataset: dict, tag: str):
    element = dataset.get(tag, {})
    values = element.get("Value")
    return values[0] if values else None


def with_uids(source: Path, *, study: str | None = None, series: str | None = None, **attributes) -> bytes:
    """A copy of a test file with a fresh SOP Instance UID (and the given study/series UIDs)."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    for keyword, item in attributes.items():
        setattr(ds, keyword, item)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def study_uid() -> str:
    return generate_uid()


@pytest.fixture
def stored(api, study_uid) -> dict:
    """Two CT instances in one series and one MR series of the same study, stored by `owner`."""
    series_ct, series_mr = generate_uid(), generate_uid()
    files = [
        with_uids(CT_SMALL, study=study_uid, series=series_ct, InstanceNumber=1, PatientName="Doe^Jane", StudyDate="20240105"),
        with_uids(CT_SMALL, study=study_uid, series=series_ct, InstanceNumber=2, PatientName="Doe^Jane", StudyDate="20240105"),
        with_uids(MR_SMALL, study=study_uid, series=series_mr, InstanceNumber=1, PatientName="Doe^Jane", StudyDate="20240105"),
    ]
    response = stow(api, files)
    assert response.status_code == 200, response.content
    return {"study": study_uid, "series_ct": series_ct, "series_mr": series_mr, "files": files}


# --- STOW-RS -----------------------------------------------------------------------------------


def test_stow_stores_every_part_and_answers_with_referenced_sops(api, owner, study_uid):
    files = [with_uids(CT_SMALL, study=study_uid), with_uids(MR_SMALL, study=study_uid)]
    response = stow(api, files)
    assert response.status_code == 200
    assert response["Content-Type"] == DICOM_JSON
    body = response.json()
    assert value(body, "00081190").endswith(f"/dicomweb/studies/{study_uid}")
    referenced = body["00081199"]["Value"]
    uids = [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files]
    assert [value(r, "00081155") for r in referenced] == uids
    assert all("/instances/" in value(r, "00081190") for r in referenced)
    assert "00081198" not in body
    assert Instance.objects.filter(owner=owner, sop_instance_uid__in=uids).count() == 2


def test_stow_single_part_application_dicom_body(api, owner):
    response = api.post("/dicomweb/studies", data=dicom_bytes(), content_type="application/dicom", HTTP_ACCEPT=DICOM_JSON)
    assert response.status_code == 200
    assert Instance.objects.filter(owner=owner).count() == 1


def test_stow_partial_failure_is_202_with_failed_sop_sequence(api, owner):
    good = dicom_bytes()
    not_dicom = b"this is not a DICOM file" * 20
    response = stow(api, [good, not_dicom])
    assert response.status_code == 202
    body = response.json()
    failed = body["00081198"]["Value"]
    assert len(failed) == 1 and value(failed[0], "00081197") == 0xC000
    assert len(body["00081199"]["Value"]) == 1
    assert Instance.objects.filter(owner=owner).count() == 1


def test_stow_all_failed_is_409_and_nothing_is_stored(api, owner, media_root):
    response = stow(api, [b"garbage" * 50, b"more garbage" * 30])
    assert response.status_code == 409
    assert [value(f, "00081197") for f in response.json()["00081198"]["Value"]] == [0xC000, 0xC000]
    assert not Instance.objects.exists()
    assert assert_storage_consistent(media_root) == []


def test_stow_into_a_study_refuses_instances_of_another_study(api, owner, study_uid):
    inside, outside = with_uids(CT_SMALL, study=study_uid), with_uids(CT_SMALL)
    response = stow(api, [inside, outside], path=f"/dicomweb/studies/{study_uid}")
    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    assert value(failed[0], "00081155") == pydicom.dcmread(io.BytesIO(outside)).SOPInstanceUID
    assert value(failed[0], "00081197") == 0xA900
    assert list(Instance.objects.values_list("study__study_instance_uid", flat=True)) == [study_uid]


def test_stow_same_uid_other_bytes_is_a_duplicate_uid_failure_and_same_bytes_succeed(api, owner):
    data = dicom_bytes()
    assert stow(api, [data]).status_code == 200
    assert stow(api, [data]).status_code == 200  # identical bytes: already stored, success
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = "Changed^Name"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    response = stow(api, [buffer.getvalue()])
    assert response.status_code == 409
    assert value(response.json()["00081198"]["Value"][0], "00081197") == 0x0111
    assert Instance.objects.count() == 1


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("application/json", 415, "unsupported_media_type"),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415, "unsupported_media_type"),
        ('multipart/related; type="application/dicom"', 400, "invalid_parameter"),
    ],
)
def test_stow_refuses_other_media_types(api, content_type, status, code):
    response = api.post("/dicomweb/studies", data=b"--x\r\n\r\nabc\r\n--x--\r\n", content_type=content_type)
    assert_error(response, status, code)


def test_stow_malformed_multipart_bodies_are_400_and_nothing_is_kept(api, upload_temp_dir):
    _, content_type = stow_body([])
    for body in (b"no boundary anywhere", b"--stow-boundary-1\r\nContent-Type: application/dicom\r\n\r\n" + dicom_bytes()):
        response = api.post("/dicomweb/studies", data=body, content_type=content_type)
        assert_error(response, 400, "invalid_parameter")
    assert not Instance.objects.exists()
    assert not list(upload_temp_dir.iterdir())


def test_stow_part_of_another_type_is_415(api):
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
    response = api.post("/dicomweb/studies", data=body, content_type='multipart/related; type="application/dicom"; boundary=b')
    assert_error(response, 415, "unsupported_media_type")


def test_stow_limits_parts_and_bytes(api, settings):
    settings.DICOM_BULK_MAX_FILES = 2
    assert_error(stow(api, [dicom_bytes(), dicom_bytes(), dicom_bytes()]), 413, "too_many_files")
    settings.DICOM_BULK_MAX_FILES = 100
    settings.DICOM_BULK_MAX_BYTES = 10_000
    assert_error(stow(api, [dicom_bytes()] * 2), 413, "too_large")
    assert not Instance.objects.exists()


def test_stow_needs_authentication():
    response = stow(client_for(None), [dicom_bytes()])
    assert response.status_code == 401
    assert not Instance.objects.exists()


# --- QIDO-RS -----------------------------------------------------------------------------------


def test_search_studies_answers_from_the_catalogue(api, stored):
    response = api.get("/dicomweb/studies", HTTP_ACCEPT=DICOM_JSON)
    assert response.status_code == 200
    assert response["Content-Type"] == DICOM_JSON
    [study] = response.json()
    assert value(study, "0020000D") == stored["study"]
    assert value(study, "00100010") == {"Alphabetic": "Doe^Jane"}
    assert value(study, "00080020") == "20240105"
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert value(study, "00201206") == 2
    assert value(study, "00201208") == 3
    assert value(study, "00080056") == "ONLINE"
    assert value(study, "00081190").endswith(f"/dicomweb/studies/{stored['study']}")


@pytest.mark.parametrize(
    ("params", "found"),
    [
        ("PatientName=*oe*", True),
        ("PatientName=doe^jane", True),  # person names match regardless of case
        ("PatientName=D%3Fe*", True),  # "?" escaped: the test client splits the URL at every "?"
        ("PatientName=Smith*", False),
        ("00100010=Doe*", True),
        ("StudyDate=20240105", True),
        ("StudyDate=20240101-20240131", True),
        ("StudyDate=-20231231", False),
        ("StudyDate=20240106-", False),
        ("ModalitiesInStudy=MR", True),
        ("ModalitiesInStudy=US,MR", True),
        ("ModalitiesInStudy=US", False),
        ("StudyInstanceUID=1.2.3,{study}", True),
        ("StudyInstanceUID=1.2.3", False),
        ("PatientID=*", True),
        ("PatientName=", True),
    ],
)
def test_search_studies_matching(api, stored, params, found):
    response = api.get("/dicomweb/studies?" + params.format(study=stored["study"]))
    assert response.status_code == 200, response.content
    assert len(response.json()) == (1 if found else 0)


def test_search_series_and_instances_at_every_level(api, stored):
    study = stored["study"]
    series = api.get(f"/dicomweb/studies/{study}/series").json()
    assert sorted(value(s, "00080060") for s in series) == ["CT", "MR"]
    ct = next(s for s in series if value(s, "00080060") == "CT")
    assert value(ct, "00201209") == 2
    assert value(ct, "0020000E") == stored["series_ct"]
    assert len(api.get("/dicomweb/series?Modality=CT").json()) == 1
    assert len(api.get(f"/dicomweb/series?StudyInstanceUID={study}&Modality=MR").json()) == 1
    instances = api.get(f"/dicomweb/studies/{study}/series/{stored['series_ct']}/instances").json()
    assert [value(i, "00200013") for i in instances] == [1, 2]
    assert value(instances[0], "00280010") == 128
    assert value(instances[0], "00083002") == "1.2.840.10008.1.2.1"
    assert value(instances[0], "00081190").endswith(f"/instances/{value(instances[0], '00080018')}")
    assert len(api.get(f"/dicomweb/studies/{study}/instances").json()) == 3
    assert len(api.get("/dicomweb/instances?SOPInstanceUID=" + value(instances[1], "00080018")).json()) == 1
    assert len(api.get("/dicomweb/instances?InstanceNumber=2").json()) == 1


def test_search_includefield_reads_the_stored_header_and_all(api, stored):
    [study] = api.get("/dicomweb/studies?includefield=00080060,Manufacturer&includefield=00181030").json()
    # The first instance's Modality, from its stored header: by instance number, then upload time (CT 1 and
    # MR 1 tie on number; the CT was stored first).
    assert value(study, "00080060") == "CT"
    assert "00080070" in study  # Manufacturer
    assert study["00181030"] == {"vr": "LO"}  # Protocol Name absent from the header: returned empty
    # includefield=all: the level's attributes (and those of the levels above it), never a deeper level's.
    [everything] = api.get("/dicomweb/studies?includefield=all").json()
    assert {"00101010", "00101030", "001021B0"} <= everything.keys()  # PatientAge, PatientWeight, history: header only
    series_tags = {"00080021", "00080070", "00081010", "00185100", "00200052"}  # SeriesDate .. FrameOfReferenceUID
    instance_tags = {"00080018", "00080008", "00180050", "00200032", "00280030", "00204000"}  # SOP UID .. ImageComments
    assert not everything.keys() & (series_tags | instance_tags)
    all_series = api.get(f"/dicomweb/studies/{stored['study']}/series?includefield=all").json()
    ct_series = next(one for one in all_series if value(one, "00080060") == "CT")
    assert series_tags <= ct_series.keys() and "00101010" in ct_series and not ct_series.keys() & instance_tags
    all_instances = api.get(f"/dicomweb/studies/{stored['study']}/instances?includefield=all").json()
    ct_instance = next(one for one in all_instances if value(one, "00080060") == "CT")
    assert instance_tags | series_tags | {"00101010"} <= ct_instance.keys()
    for result in (everything, *all_series, *all_instances):
        assert not any(tag.startswith("0002") for tag in result)
        assert not any("BulkData" in element for element in result.values())


def test_search_limit_offset_and_warnings(api, stored):
    study = stored["study"]
    page1 = api.get(f"/dicomweb/studies/{study}/instances?limit=2").json()
    page2 = api.get(f"/dicomweb/studies/{study}/instances?limit=2&offset=2").json()
    assert len(page1) == 2 and len(page2) == 1
    assert "offset=2" in api.get(f"/dicomweb/studies/{study}/instances?limit=2")["Warning"]
    assert "Warning" not in api.get(f"/dicomweb/studies/{study}/instances?limit=2&offset=2")
    assert {value(i, "00080018") for i in page1}.isdisjoint({value(i, "00080018") for i in page2})
    response = api.get("/dicomweb/studies?ReferencedSeriesSequence=1.2&fuzzymatching=true")
    assert response.status_code == 200
    assert "ReferencedSeriesSequence" in response["Warning"]


@pytest.mark.parametrize(
    "params",
    ["limit=abc", "limit=0", "offset=-1", "NotAKeyword=1", "StudyDate=2024", "StudyDate=20240201-20240101",
     "StudyInstanceUID=abc", "InstanceNumber=x", "fuzzymatching=maybe", "StudyTime=25x"],
)
def test_search_refuses_malformed_parameters(api, stored, params):
    level = "instances" if "InstanceNumber" in params else "studies"
    assert_error(api.get(f"/dicomweb/{level}?{params}"), 400, "invalid_parameter")


def test_search_xml_is_not_acceptable(api, stored):
    assert_error(api.get("/dicomweb/studies", HTTP_ACCEPT="application/dicom+xml"), 406, "not_acceptable")


def test_each_user_searches_only_their_own_and_view_all_sees_all(stored, other, viewer):
    assert client_for(other).get("/dicomweb/studies").json() == []
    assert client_for(other).get(f"/dicomweb/studies/{stored['study']}/instances").json() == []
    assert len(client_for(viewer).get("/dicomweb/studies").json()) == 1
    assert client_for(None).get("/dicomweb/studies").status_code == 401


def test_view_all_sees_one_study_series_and_instance_per_uid_whoever_stored_copies(stored, other, viewer, study_uid):
    # `other` stores the same CT instance (the same bytes), and a third CT instance of the study's CT series.
    extra = with_uids(CT_SMALL, study=study_uid, series=stored["series_ct"], InstanceNumber=3, PatientName="Doe^Jane", StudyDate="20240105")
    assert stow(client_for(other), [stored["files"][0], extra]).status_code == 200
    everyone = client_for(viewer)
    [study] = everyone.get("/dicomweb/studies").json()
    assert (value(study, "0020000D"), value(study, "00201206"), value(study, "00201208")) == (study_uid, 2, 4)
    assert study["00080061"]["Value"] == ["CT", "MR"]
    series = everyone.get(f"/dicomweb/studies/{study_uid}/series").json()
    assert sorted((value(s, "0020000E"), value(s, "00201209")) for s in series) == sorted([(stored["series_ct"], 3), (stored["series_mr"], 1)])
    instances = everyone.get(f"/dicomweb/studies/{study_uid}/instances").json()
    assert len(instances) == len({value(i, "00080018") for i in instances}) == 4
    metadata = json.loads(b"".join(everyone.get(f"/dicomweb/studies/{study_uid}/metadata").streaming_content))
    assert sorted(value(i, "00080018") for i in metadata) == sorted(value(i, "00080018") for i in instances)
    # Each owner still sees their own copy only.
    assert [value(s, "00201208") for s in client_for(other).get("/dicomweb/studies").json()] == [2]


def test_view_all_finds_a_study_by_the_one_copy_that_matches_and_counts_them_all(stored, make_user, viewer, study_uid):
    third = make_user("third")
    new_series = generate_uid()
    alone = with_uids(MR_SMALL, study=study_uid, series=new_series, InstanceNumber=1, PatientName="Roe^Richard", StudyDate="20240105")
    assert stow(client_for(third), [alone]).status_code == 200
    everyone = client_for(viewer)
    # Only the third owner's copy has this name; the owner's copy was stored first but does not match.
    [study] = everyone.get("/dicomweb/studies?PatientName=Roe*").json()
    assert (value(study, "0020000D"), value(study, "00201206"), value(study, "00201208")) == (study_uid, 3, 4)
    # A series only the third owner has: its row's study is that owner's copy, the study counts are still all copies'.
    [series] = everyone.get(f"/dicomweb/series?SeriesInstanceUID={new_series}").json()
    assert (value(series, "00201209"), value(series, "00201206"), value(series, "00201208")) == (1, 3, 4)
    # The study's series come from two owners' study rows; each carries the same study counts.
    all_series = everyone.get(f"/dicomweb/studies/{study_uid}/series").json()
    assert sorted(value(s, "00201209") for s in all_series) == [1, 1, 2]
    assert {(value(s, "00201206"), value(s, "00201208")) for s in all_series} == {(3, 4)}


def test_search_query_count_does_not_grow_with_results(api, stored):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = api.get("/dicomweb/studies?includefield=00080060")
        assert response.status_code == 200
        return len(captured)

    one = queries()
    for _ in range(5):
        stow(api, [dicom_bytes()])
    assert queries() == one
    assert len(api.get("/dicomweb/studies").json()) == 6


# --- WADO-RS: instances and metadata -----------------------------------------------------------


def test_retrieve_instance_as_stored_with_transfer_syntax_star(api, stored):
    study, series = stored["study"], stored["series_ct"]
    uid = pydicom.dcmread(io.BytesIO(stored["files"][0])).SOPInstanceUID
    response = api.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{uid}",
        HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    assert response.status_code == 200
    [(headers, content)] = multipart_parts(response)
    assert headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert content[128:] == stored["files"][0][128:]  # the stored bytes (preamble zeroed)


def test_retrieve_study_and_series_give_every_instance(api, stored):
    study = stored["study"]
    parts = multipart_parts(api.get(f"/dicomweb/studies/{study}"))
    assert len(parts) == 3
    parts = multipart_parts(api.get(f"/dicomweb/studies/{study}/series/{stored['series_mr']}"))
    assert len(parts) == 1
    assert pydicom.dcmread(io.BytesIO(parts[0][1])).Modality == "MR"


@pytest.mark.parametrize("source", [JPEG_BASELINE, J2K_MULTIFRAME, RLE_MULTIFRAME, DEFLATED])
def test_retrieve_default_is_explicit_little_endian_decompressed(api, source):
    data = with_uids(source)
    assert stow(api, [data]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    response = api.get(f"/dicomweb/studies/{ds.StudyInstanceUID}", HTTP_ACCEPT='multipart/related; type="application/dicom"')
    [(headers, content)] = multipart_parts(response)
    assert headers["Content-Type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    got = pydicom.dcmread(io.BytesIO(content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_retrieve_in_a_transfer_syntax_that_cannot_be_made_is_406(api):
    data = with_uids(BIG_ENDIAN)
    stow(api, [data])
    study = pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    response = api.get(f"/dicomweb/studies/{study}", HTTP_ACCEPT='multipart/related; type="application/dicom"')
    assert_error(response, 406, "not_acceptable")
    response = api.get(
        f"/dicomweb/studies/{study}", HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    )
    assert_error(response, 406, "not_acceptable")
    ok = api.get(f"/dicomweb/studies/{study}", HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert len(multipart_parts(ok)) == 1


def test_metadata_at_every_level_from_stored_headers_with_bulkdata_uris(api, stored):
    study, series = stored["study"], stored["series_ct"]
    metadata = api.get(f"/dicomweb/studies/{study}/metadata", HTTP_ACCEPT=DICOM_JSON)
    assert metadata["Content-Type"] == DICOM_JSON
    items = json.loads(b"".join(metadata.streaming_content))
    assert len(items) == 3
    first = items[0]
    assert value(first, "0020000D") == study
    assert not any(tag.startswith("0002") for tag in first)
    pixel_uri = first["7FE00010"]["BulkDataURI"]
    assert pixel_uri.endswith(f"/instances/{value(first, '00080018')}/bulkdata/7FE00010")
    series_items = json.loads(b"".join(api.get(f"/dicomweb/studies/{study}/series/{series}/metadata").streaming_content))
    assert len(series_items) == 2
    uid = value(first, "00080018")
    path = f"/dicomweb/studies/{study}/series/{value(first, '0020000E')}/instances/{uid}/metadata"
    [one] = json.loads(b"".join(api.get(path).streaming_content))
    assert value(one, "00080018") == uid


def test_bulkdata_serves_a_large_value_and_pixel_data(api):
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    blob = bytes(range(256)) * 16  # 4 KiB in a private OB element: over the inline limit
    ds.add_new(0x00091010, "LO", "ACME")
    ds.add_new(0x00091000 | 0x10 << 8 | 0x01, "OB", blob)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert stow(api, [buffer.getvalue()]).status_code == 200
    base = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    [meta] = json.loads(b"".join(api.get(base + "/metadata").streaming_content))
    uri = meta["00091001"]["BulkDataURI"]
    response = api.get(uri.split("testserver", 1)[1])
    [(headers, content)] = multipart_parts(response)
    assert content == blob
    [(_, pixels)] = multipart_parts(api.get(meta["7FE00010"]["BulkDataURI"].split("testserver", 1)[1]))
    assert pixels == ds.PixelData
    assert_error(api.get(base + "/bulkdata/00091099"), 404, "not_found")
    assert_error(api.get(base + "/bulkdata/nothex"), 400, "invalid_parameter")


# --- WADO-RS: frames ---------------------------------------------------------------------------


def _frames(api, source: Path, numbers: str, accept: str | None = None):
    data = with_uids(source)
    assert stow(api, [data]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/{numbers}"
    return ds, api.get(url, **({"HTTP_ACCEPT": accept} if accept else {}))


@pytest.mark.parametrize("source", [CT_SMALL, J2K_MULTIFRAME, RLE_MULTIFRAME, JPEG_BASELINE, DEFLATED, BIG_ENDIAN])
def test_frames_default_octet_stream_are_the_pixels_pydicom_reads(api, source):
    ds, response = _frames(api, source, "1", 'multipart/related; type="application/octet-stream"')
    assert response.status_code == 200
    assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    [(headers, content)] = multipart_parts(response)
    expected = ds.pixel_array[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    got = np.frombuffer(content, expected.dtype.newbyteorder("<")).reshape(expected.shape)
    assert np.array_equal(got, expected)


def test_frames_list_in_the_order_asked(api):
    ds, response = _frames(api, RLE_MULTIFRAME, "3,1,10")
    parts = multipart_parts(response)
    assert [h["Content-Location"].rsplit("/", 1)[1] for h, _ in parts] == ["3", "1", "10"]
    for (_, content), index in zip(parts, (2, 0, 9)):
        assert np.array_equal(np.frombuffer(content, "<u2").reshape(64, 64), ds.pixel_array[index])


@pytest.mark.parametrize("source", [CT_SMALL, J2K_MULTIFRAME, RLE_MULTIFRAME, JPEG_BASELINE])
@pytest.mark.parametrize("accept", [OCTETS := 'multipart/related; type="application/octet-stream"', f"{OCTETS}; transfer-syntax=*"])
def test_frames_from_the_rows_pixel_offset_are_the_frames_read_through_the_header(api, source, accept):
    """Rows stored before the pixel_offset column (NULL) take the header path: both answer the same parts."""
    ds, response = _frames(api, source, "1", accept)
    instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    assert instance.pixel_offset is not None and instance.pixel_offset > 132
    by_offset = multipart_parts(response)
    Instance.objects.filter(pk=instance.pk).update(pixel_offset=None)
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"
    assert multipart_parts(api.get(url, HTTP_ACCEPT=accept)) == by_offset


def test_frames_with_transfer_syntax_star_keep_the_compressed_bytes(api):
    ds, response = _frames(api, J2K_MULTIFRAME, "2", 'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    [(headers, content)] = multipart_parts(response)
    assert headers["Content-Type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=10))
    assert content == frames[1]


def test_frames_out_of_range_or_malformed_are_400(api):
    ds, response = _frames(api, CT_SMALL, "2")
    assert_error(response, 400, "invalid_frame")
    base = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/"
    assert_error(api.get(base + "0"), 400, "invalid_parameter")
    assert_error(api.get(base + "1,x"), 400, "invalid_parameter")
    assert_error(api.get(base + "1", HTTP_ACCEPT="image/gif"), 406, "not_acceptable")


def test_frames_of_an_instance_without_pixels_is_404(api):
    ds, response = _frames(api, RTPLAN, "1")
    assert_error(response, 404, "no_pixel_data")


# --- WADO-RS: rendered and thumbnail -----------------------------------------------------------


def test_rendered_instance_defaults_to_jpeg_and_honours_parameters(api, stored):
    study, series = stored["study"], stored["series_ct"]
    uid = pydicom.dcmread(io.BytesIO(stored["files"][0])).SOPInstanceUID
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{uid}"
    response = api.get(base + "/rendered")
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (128, 128)
    png = api.get(base + "/rendered?accept=image/png&viewport=64,64&window=40,400,linear")
    assert png["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    wide = api.get(base + "/rendered?accept=image/png&window=40,4000")
    assert wide.content != api.get(base + "/rendered?accept=image/png&window=40,40").content
    assert api.get(base + "/frames/1/rendered", HTTP_ACCEPT="image/png")["Content-Type"] == "image/png"
    thumb = api.get(base + "/thumbnail")
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_rendered_study_and_series_show_their_first_image(api, stored):
    study = stored["study"]
    for path in (f"/dicomweb/studies/{study}/rendered", f"/dicomweb/studies/{study}/series/{stored['series_mr']}/thumbnail"):
        response = api.get(path)
        assert response.status_code == 200
        assert Image.open(io.BytesIO(response.content)).format == "JPEG"


def test_rendered_multiframe_frame(api):
    data = with_uids(RLE_MULTIFRAME)
    stow(api, [data])
    ds = pydicom.dcmread(io.BytesIO(data))
    base = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    first = api.get(base + "/frames/1/rendered?accept=image/png").content
    last = api.get(base + "/frames/10/rendered?accept=image/png").content
    assert first != last
    assert_error(api.get(base + "/frames/11/rendered"), 400, "invalid_frame")
    assert_error(api.get(base + "/frames/1,2/rendered"), 400, "invalid_parameter")


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("viewport=0,10", 400, "invalid_parameter"),
        ("viewport=10,10,0,0,5,5", 400, "invalid_parameter"),
        ("quality=101", 400, "invalid_parameter"),
        ("window=a,b", 400, "invalid_parameter"),
        ("annotation=patient", 400, "invalid_parameter"),
        ("accept=application/pdf", 406, "not_acceptable"),
    ],
)
def test_rendered_refuses_bad_parameters(api, stored, query, status, code):
    uid = pydicom.dcmread(io.BytesIO(stored["files"][0])).SOPInstanceUID
    path = f"/dicomweb/studies/{stored['study']}/series/{stored['series_ct']}/instances/{uid}/rendered?{query}"
    assert_error(api.get(path), status, code)


# --- ownership, audit, CORS --------------------------------------------------------------------


def test_another_users_objects_are_404_everywhere(stored, other):
    client = client_for(other)
    uid = pydicom.dcmread(io.BytesIO(stored["files"][0])).SOPInstanceUID
    base = f"/dicomweb/studies/{stored['study']}"
    instance = f"{base}/series/{stored['series_ct']}/instances/{uid}"
    for path in (base, f"{base}/metadata", f"{base}/rendered", instance, f"{instance}/frames/1", f"{instance}/metadata",
                 f"{instance}/rendered", f"{instance}/thumbnail", f"{instance}/bulkdata/7FE00010"):
        response = client.get(path)
        assert response.status_code == 404, path
        drain(response)


def test_unknown_study_is_404_json(api):
    assert_error(api.get("/dicomweb/studies/1.2.3/metadata"), 404, "not_found")
    assert_error(api.get("/dicomweb/studies/not-a-uid"), 404, "not_found")


def test_dicomweb_requests_are_audited_by_uid(api, stored, owner):
    uid = pydicom.dcmread(io.BytesIO(stored["files"][0])).SOPInstanceUID
    drain(api.get(f"/dicomweb/studies/{stored['study']}/series/{stored['series_ct']}/instances/{uid}/frames/1"))
    event = AuditEvent.objects.filter(action="dicomweb-frames").get()
    assert (event.user, event.object_type, event.object_id, event.outcome) == (owner, "instance", uid, "success")
    assert AuditEvent.objects.filter(action="dicomweb-studies-post", outcome="success").exists()


def test_another_users_dicomweb_request_is_audited_as_denied(stored, other):
    assert client_for(other).get(f"/dicomweb/studies/{stored['study']}/metadata").status_code == 404
    event = AuditEvent.objects.filter(action="dicomweb-study-metadata").get()
    assert (event.user, event.object_type, event.object_id, event.outcome) == (other, "study", stored["study"], "denied")
    assert client_for(other).get("/dicomweb/studies/1.2.3/metadata").status_code == 404
    assert AuditEvent.objects.filter(action="dicomweb-study-metadata", object_id="1.2.3").get().outcome == "not_found"


def test_cors_is_off_by_default_and_on_for_configured_origins(api, stored, settings):
    response = api.get("/dicomweb/studies", HTTP_ORIGIN="https://viewer.example")
    assert "Access-Control-Allow-Origin" not in response
    settings.CORS_ALLOWED_ORIGINS = ["https://viewer.example"]
    preflight = api.options(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://viewer.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    assert preflight.status_code == 200
    assert preflight["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert "authorization" in preflight["Access-Control-Allow-Headers"]
    response = api.get("/dicomweb/studies", HTTP_ORIGIN="https://viewer.example")
    assert response["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert "Warning" in response["Access-Control-Expose-Headers"]
    elsewhere = api.get("/api/instances/", HTTP_ORIGIN="https://viewer.example")
    assert "Access-Control-Allow-Origin" not in elsewhere  # the REST API stays same-origin
    other_origin = api.get("/dicomweb/studies", HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other_origin


def test_urls_use_the_configured_public_root(api, stored, settings):
    settings.DICOMWEB_BASE_URL = "https://pacs.example.org/dicomweb"
    [study] = api.get("/dicomweb/studies").json()
    assert value(study, "00081190") == f"https://pacs.example.org/dicomweb/studies/{stored['study']}"
    items = json.loads(b"".join(api.get(f"/dicomweb/studies/{stored['study']}/metadata").streaming_content))
    assert items[0]["7FE00010"]["BulkDataURI"].startswith("https://pacs.example.org/dicomweb/studies/")


# --- fuzz: any query string gets an answer or the service's own refusal, never a 500 --------------

QUERY_KEYS = [
    "PatientName", "00100010", "StudyDate", "StudyTime", "StudyInstanceUID", "ModalitiesInStudy", "Modality",
    "SeriesNumber", "InstanceNumber", "Rows", "includefield", "limit", "offset", "fuzzymatching", "orderby",
    "window", "viewport", "quality", "accept", "annotation", "iccprofile", "0020000D", "SOPClassUID", "Nonsense",
]
VALUES = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30),
    st.sampled_from(["*", "?", "-", "20240101-", "-1", "0", "1,2", "all", "1.2.3", "40,400", "64,64", "a*b?c", "\\", "%", "_"]),
)


@hypothesis_settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    derandomize=os.environ.get("FUZZ_RANDOM") is None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    level=st.sampled_from(["studies", "series", "instances", "studies/{study}/series", "studies/{study}/rendered",
                           "studies/{study}/series/{series}/instances/{instance}/frames/1/rendered"]),
    params=st.lists(st.tuples(st.sampled_from(QUERY_KEYS), VALUES), max_size=4),
)
def test_fuzz_query_parameters_never_crash_dicomweb(api, fuzz_target, level, params):
    path = "/dicomweb/" + level.format(**fuzz_target)
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params)
    response = api.get(f"{path}?{query}")
    assert response.status_code in (200, 400, 404, 406), (path, query, response.content[:300])
    if response.status_code != 200:
        assert response.json()["code"]


@pytest.fixture
def fuzz_target(api) -> dict:
    ds = pydicom.dcmread(io.BytesIO(data := with_uids(CT_SMALL)))
    assert stow(api, [data]).status_code == 200
    return {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "instance": ds.SOPInstanceUID}


def test_stow_without_content_length_reads_a_dechunked_body_or_asks_for_a_length(api, owner):
    """A chunked upload reaches Django without CONTENT_LENGTH. Under gunicorn (wsgi.input_terminated: it
    de-chunks the body) the part is read from wsgi.input; a server that does not (runserver) gets a clear 411."""
    body, content_type = stow_body([dicom_bytes()])
    headers = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "HTTP_ACCEPT": DICOM_JSON}
    refused = api.generic("POST", "/dicomweb/studies", b"x", content_type, **headers, **{"wsgi.input": io.BytesIO(body)})
    assert_error(refused, 411, "length_required")
    stored = api.generic(
        "POST", "/dicomweb/studies", b"x", content_type, **headers,
        **{"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True},
    )
    assert stored.status_code == 200, stored.content
    assert Instance.objects.filter(owner=owner).count() == 1


def test_frame_a_codec_cannot_decode_is_422_but_still_served_as_stored(api):
    from .test_hostile_input import rle_16bit_8x8

    data = rle_16bit_8x8(bytes([0xC0, 0]))  # a run overrunning the segment: pylibjpeg-rle panics (a BaseException)
    assert stow(api, [data]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"
    assert_error(api.get(url, HTTP_ACCEPT='multipart/related; type="application/octet-stream"'), 422, "cannot_render")
    as_stored = api.get(url, HTTP_ACCEPT='multipart/related; type="application/octet-stream"; transfer-syntax=*')
    [(headers, _)] = multipart_parts(as_stored)
    assert headers["Content-Type"].startswith("image/dicom-rle")


def test_conversion_over_the_limit_is_406_and_the_stored_encoding_still_served(api, settings):
    settings.DICOMWEB_MAX_CONVERT_BYTES = 10_000
    data = with_uids(J2K_MULTIFRAME)
    stow(api, [data])
    study = pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    assert_error(api.get(f"/dicomweb/studies/{study}", HTTP_ACCEPT='multipart/related; type="application/dicom"'), 406, "not_acceptable")
    parts = multipart_parts(api.get(f"/dicomweb/studies/{study}", HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*'))
    assert parts[0][1][128:] == data[128:]
