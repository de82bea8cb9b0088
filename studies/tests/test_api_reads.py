"""Reads of the catalogue: metadata, lists and filters, the stored file, header tags, rendered
images, the study / series hierarchy, and what deleting does to it."""

from __future__ import annotations

import hashlib
import io
import uuid
import warnings

import pydicom
import pytest
from django.core.files.storage import default_storage
from django.core.paginator import UnorderedObjectListWarning
from django.db import connection
from django.test.utils import CaptureQueriesContext
from PIL import Image
from pydicom.uid import generate_uid

from studies.models import Instance

from .conftest import CT_SMALL, assert_error, client_for, dicom_bytes, drain, stored_files, upload

CT_PATIENT_NAME = "CompressedSamples^CT1"


def put(client, data: bytes, name: str = "scan.dcm") -> dict:
    """Upload and insist it was stored as a new instance."""
    response = upload(client, data, name)
    assert response.status_code == 201, response.content[:500]
    return response.json()


def ids(response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    return {row["id"] for row in response.json()["results"]}


def download(response) -> bytes:
    # Consume through the test client's wrapper; an explicit close() would re-send request_finished,
    # which closes the test transaction's connection on PostgreSQL.
    return b"".join(response.streaming_content)


# --- instance metadata ----------------------------------------------------------------


@pytest.mark.django_db
def test_metadata_describes_the_stored_file(api, media_root):
    original = dicom_bytes(PatientName="Secretive^Sam")
    ds = pydicom.dcmread(io.BytesIO(original))

    body = put(api, original, "Secretive^Sam-head-ct.dcm")

    with default_storage.open(body["storage"]["key"], "rb") as handle:  # the local folder or S3 alike
        stored = handle.read()
    assert body["sha256"] == hashlib.sha256(stored).hexdigest()
    assert body["size"] == len(original) == len(stored)
    assert body["sop_instance_uid"] == ds.SOPInstanceUID
    assert body["study_instance_uid"] == ds.StudyInstanceUID
    assert body["series_instance_uid"] == ds.SeriesInstanceUID
    assert body["sop_class_uid"] == ds.SOPClassUID
    assert body["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
    assert (body["rows"], body["columns"], body["number_of_frames"]) == (128, 128, 1)
    assert body["modality"] == "CT"
    assert body["patient_name"] == "Secretive^Sam"
    assert body["has_pixel_data"] is True
    assert body["original_filename"] == "Secretive^Sam-head-ct.dcm"
    assert body["owner"] == "owner"


@pytest.mark.django_db
def test_storage_key_is_made_from_the_id_not_the_filename_or_patient(api):
    body = put(api, dicom_bytes(PatientName="Secretive^Sam"), "Secretive^Sam-head-ct.dcm")

    key = body["storage"]["key"]
    hex_id = uuid.UUID(body["id"]).hex
    assert key == f"dicom/{hex_id[:2]}/{hex_id[2:4]}/{hex_id}.dcm"
    for leak in ("Secretive", "Sam", "head-ct", "Secretive^Sam-head-ct"):
        assert leak not in key


@pytest.mark.django_db
def test_detail_returns_the_same_metadata_as_the_upload(api, uploaded):
    detail = api.get(f"/api/instances/{uploaded['id']}/")
    assert detail.status_code == 200
    expected = {k: v for k, v in uploaded.items() if k != "duplicate"}
    assert detail.json() == expected


@pytest.mark.django_db
def test_links_are_absolute_urls_that_resolve(api, uploaded):
    links = uploaded["links"]
    assert set(links) == {"file", "tags", "study", "series", "image"}
    assert uploaded["url"] == f"http://testserver/api/instances/{uploaded['id']}/"
    assert links["study"] == f"http://testserver/api/studies/{uploaded['study']}/"
    assert links["series"] == f"http://testserver/api/series/{uploaded['series']}/"
    for name, url in links.items():
        assert url.startswith("http://testserver/api/"), name
        response = api.get(url)
        assert response.status_code == 200, name
        drain(response)


# --- list pagination ----------------------------------------------------------------------


@pytest.mark.django_db
def test_list_pages_with_count_next_and_page_size(api):
    uploaded_ids = [put(api, dicom_bytes())["id"] for _ in range(5)]

    first = api.get("/api/instances/", {"page_size": 2})
    assert first.status_code == 200
    assert first.json()["count"] == 5
    assert len(first.json()["results"]) == 2
    assert first.json()["previous"] is None
    assert first.json()["next"].startswith("http://testserver/api/instances/?")
    assert "page=2" in first.json()["next"] and "page_size=2" in first.json()["next"]

    seen, url = [], "/api/instances/?page_size=2"
    while url:
        page = api.get(url).json()
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    assert seen == list(reversed(uploaded_ids))  # newest first, each once

    whole = api.get("/api/instances/").json()
    assert whole["count"] == 5 and len(whole["results"]) == 5 and whole["next"] is None


@pytest.mark.django_db
def test_page_size_is_capped_at_500(api, uploaded, owner):
    template = Instance.objects.get(pk=uploaded["id"])
    clones = []
    for n in range(501):
        clone = Instance.objects.get(pk=template.pk)
        clone.pk = uuid.uuid4()
        clone.sop_instance_uid = f"{template.sop_instance_uid}.{n}"
        clone.sha256 = hashlib.sha256(str(n).encode()).hexdigest()
        clones.append(clone)
    Instance.objects.bulk_create(clones)

    response = api.get("/api/instances/", {"page_size": 1000})
    assert response.status_code == 200
    assert response.json()["count"] == 502
    assert len(response.json()["results"]) == 500
    assert response.json()["next"] is not None

    assert len(api.get("/api/instances/").json()["results"]) == 50  # the default page


# --- list filters -------------------------------------------------------------------------


@pytest.fixture
def several(api, other) -> dict:
    """Four of the owner's uploads over two studies, plus one of `other`'s that must never show."""
    s1, s2 = generate_uid(), generate_uid()
    s1a, s1b, s2a = generate_uid(), generate_uid(), generate_uid()
    spec = {
        "jane": dict(PatientName="Doe^Jane", PatientID="P-1", Modality="MR", AccessionNumber="ACC100",
                     StudyInstanceUID=s1, SeriesInstanceUID=s1a),
        "john": dict(PatientName="Doe^John", PatientID="P-2", Modality="CT", AccessionNumber="ACC200",
                     StudyInstanceUID=s1, SeriesInstanceUID=s1b),
        "richard": dict(PatientName="Roe^Richard", PatientID="P-1", Modality="CT", AccessionNumber="ACC300",
                        StudyInstanceUID=s2, SeriesInstanceUID=s2a),
        "edgar": dict(PatientName="Poe^Edgar", PatientID="P-3", Modality="CT", AccessionNumber="XYZ9",
                      StudyInstanceUID=s2, SeriesInstanceUID=s2a, InstanceNumber=2),
    }  # fmt: skip
    made = {name: put(api, dicom_bytes(**attrs)) for name, attrs in spec.items()}
    made["stranger"] = put(
        client_for(other), dicom_bytes(PatientName="Doe^Stranger", PatientID="P-1", Modality="CT", AccessionNumber="ACC100")
    )
    made["uids"] = {"s1": s1, "s2": s2, "s1a": s1a, "s1b": s1b, "s2a": s2a}
    return made


def expect(several: dict, *names: str) -> set[str]:
    return {several[name]["id"] for name in names}


@pytest.mark.django_db
def test_unfiltered_list_holds_only_the_users_own_uploads(api, several):
    assert ids(api.get("/api/instances/")) == expect(several, "jane", "john", "richard", "edgar")


@pytest.mark.django_db
def test_filter_by_study_uid(api, several):
    assert ids(api.get("/api/instances/", {"study": several["uids"]["s1"]})) == expect(several, "jane", "john")
    assert ids(api.get("/api/instances/", {"study": several["uids"]["s2"]})) == expect(several, "richard", "edgar")
    assert ids(api.get("/api/instances/", {"study": generate_uid()})) == set()


@pytest.mark.django_db
def test_filter_by_series_uid(api, several):
    assert ids(api.get("/api/instances/", {"series": several["uids"]["s2a"]})) == expect(several, "richard", "edgar")
    assert ids(api.get("/api/instances/", {"series": several["uids"]["s1b"]})) == expect(several, "john")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("modality", "names"),
    [("CT", ("john", "richard", "edgar")), ("ct", ("john", "richard", "edgar")), ("mR", ("jane",)), ("US", ())],
)
def test_filter_by_modality_ignores_case(api, several, modality, names):
    assert ids(api.get("/api/instances/", {"modality": modality})) == expect(several, *names)


@pytest.mark.django_db
def test_filter_by_patient_id_is_exact(api, several):
    assert ids(api.get("/api/instances/", {"patient_id": "P-1"})) == expect(several, "jane", "richard")
    assert ids(api.get("/api/instances/", {"patient_id": "P-"})) == set()


@pytest.mark.django_db
def test_filters_combine(api, several):
    assert ids(api.get("/api/instances/", {"modality": "ct", "patient_id": "P-1"})) == expect(several, "richard")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("term", "names"),
    [
        ("doe", ("jane", "john")),  # patient name substring, any case
        ("ROE^RICH", ("richard",)),
        ("ACC200", ("john",)),  # accession number
        ("ACC", ("jane", "john", "richard")),
        ("XYZ9", ("edgar",)),
        ("nobody-matches-this", ()),
    ],
)
def test_search_matches_patient_name_and_accession_number(api, several, term, names):
    assert ids(api.get("/api/instances/", {"search": term})) == expect(several, *names)


@pytest.mark.django_db
def test_search_by_sop_instance_uid_is_exact(api, several):
    uid = several["richard"]["sop_instance_uid"]
    assert ids(api.get("/api/instances/", {"search": uid})) == expect(several, "richard")
    assert ids(api.get("/api/instances/", {"search": uid[:-3]})) == set()


# --- query count --------------------------------------------------------------------------


def list_queries(client) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/instances/")
    assert response.status_code == 200
    return len(captured)


@pytest.mark.django_db
def test_instance_list_query_count_does_not_grow_with_rows(api):
    put(api, dicom_bytes())
    with_one = list_queries(api)
    for _ in range(19):
        put(api, dicom_bytes())
    assert api.get("/api/instances/").json()["count"] == 20

    assert list_queries(api) == with_one
    assert with_one <= 6  # token, user and group permissions (view_all check), count, page, audit event


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["/api/studies/", "/api/series/"])
def test_study_and_series_list_query_counts_do_not_grow_with_rows(api, route):
    put(api, dicom_bytes())
    with CaptureQueriesContext(connection) as one:
        api.get(route)
    for _ in range(9):
        put(api, dicom_bytes())
    with CaptureQueriesContext(connection) as ten:
        assert api.get(route).json()["count"] == 10
    assert len(ten) == len(one)


# --- file download ------------------------------------------------------------------------


@pytest.mark.django_db
def test_file_download_is_the_upload_with_a_zeroed_preamble(api, uploaded):
    original = CT_SMALL.read_bytes()
    assert original[:128] != bytes(128)  # CT_small carries a TIFF header in its preamble

    response = api.get(f"/api/instances/{uploaded['id']}/file/")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom"
    disposition = response["Content-Disposition"]
    assert disposition.startswith("attachment")
    assert f'filename="{uploaded["sop_instance_uid"]}.dcm"' in disposition
    body = download(response)
    assert len(body) == len(original)
    assert body[:128] == bytes(128)
    assert body[128:] == original[128:]
    assert hashlib.sha256(body).hexdigest() == uploaded["sha256"]


@pytest.mark.django_db
def test_raw_body_upload_downloads_the_same_bytes(api):
    original = dicom_bytes()
    response = upload(api, original, raw=True)
    assert response.status_code == 201
    body = download(api.get(f"/api/instances/{response.json()['id']}/file/"))
    assert body[128:] == original[128:]


# --- header tags ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_tags_return_the_whole_header_as_dicom_json(api, uploaded):
    response = api.get(f"/api/instances/{uploaded['id']}/tags/")
    assert response.status_code == 200
    header = response.json()
    assert header["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": CT_PATIENT_NAME}]}
    assert header["00080018"] == {"vr": "UI", "Value": [uploaded["sop_instance_uid"]]}
    assert header["00280010"] == {"vr": "US", "Value": [128]}


@pytest.mark.django_db
def test_tags_summarise_pixel_data_instead_of_inlining_bytes(api, uploaded):
    response = api.get(f"/api/instances/{uploaded['id']}/tags/")
    pixel = response.json()["7FE00010"]
    assert pixel["vr"] == "OW"  # 16-bit native pixel data in Explicit VR Little Endian
    assert pixel["BulkData"]["length"] == 128 * 128 * 2
    assert not {"Value", "InlineBinary"} & set(pixel)
    assert len(response.content) < 128 * 128 * 2  # the pixels themselves are not in the body


@pytest.mark.django_db
@pytest.mark.parametrize(
    "expr", ["(0010,0010)", "0010,0010", "00100010", "0x00100010", "PatientName", "patientname", "PATIENTNAME"]
)
@pytest.mark.parametrize("via", ["path", "query"])
def test_tag_lookup_forms_all_name_patient_name(api, uploaded, expr, via):
    base = f"/api/instances/{uploaded['id']}/tags/"
    response = api.get(f"{base}{expr}/") if via == "path" else api.get(base, {"tag": expr})

    assert response.status_code == 200, response.content
    assert response.json() == {
        "tag": "(0010,0010)",
        "keyword": "PatientName",
        "name": "Patient's Name",
        "vr": "PN",
        "value": CT_PATIENT_NAME,
        "path": "PatientName",
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("OtherPatientIDsSequence[0].PatientID", "ABCD1234"),
        ("OtherPatientIDsSequence%5B1%5D.PatientID", "1234ABCD"),  # brackets percent-encoded
        ("(0010,1002)[1].(0010,0020)", "1234ABCD"),
        ("ImageType[2]", "AXIAL"),
    ],
)
def test_tag_path_reaches_into_sequences_and_values(api, uploaded, path, value):
    response = api.get(f"/api/instances/{uploaded['id']}/tags/{path}/")
    assert response.status_code == 200, response.content
    assert response.json()["value"] == value


@pytest.mark.django_db
def test_nested_tag_answer_names_the_path(api, uploaded):
    body = api.get(f"/api/instances/{uploaded['id']}/tags/(0010,1002)[0].(0010,0020)/").json()
    assert body["path"] == "OtherPatientIDsSequence[0].PatientID"
    assert body["tag"] == "(0010,0020)"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("expr", "named"),
    [
        ("ProtocolName", "(0018,1030)"),
        ("(0018,1030)", "ProtocolName"),
        ("OtherPatientIDsSequence[5].PatientID", "OtherPatientIDsSequence"),
        ("OtherPatientIDsSequence[0].PatientSex", "(0010,0040)"),
    ],
)
def test_absent_element_is_404_naming_it(api, uploaded, expr, named):
    body = assert_error(api.get(f"/api/instances/{uploaded['id']}/tags/{expr}/"), 404, "element_not_found")
    assert named in body["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "expr",
    ["(0010,00", "0010-0010", "NotAKeyword", "PatientName..PatientID", "PatientName[-1]", "PatientName.PatientID",
     "OtherPatientIDsSequence.PatientID", "12345"],
)  # fmt: skip
def test_malformed_tag_expression_is_400(api, uploaded, expr):
    assert_error(api.get(f"/api/instances/{uploaded['id']}/tags/", {"tag": expr}), 400, "invalid_tag_expression")


@pytest.mark.django_db
def test_empty_tag_query_is_400(api, uploaded):
    assert_error(api.get(f"/api/instances/{uploaded['id']}/tags/?tag="), 400, "invalid_tag_expression")


# --- image --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["", "?frame=1"])
def test_image_is_a_128_pixel_square_png(api, uploaded, query):
    response = api.get(f"/api/instances/{uploaded['id']}/image/{query}")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    assert image.size == (128, 128)
    image.load()
    low, high = image.convert("L").getextrema()
    assert low < high  # an actual picture, not a blank square


@pytest.mark.django_db
def test_image_frame_beyond_a_single_frame_is_400(api, uploaded):
    body = assert_error(api.get(f"/api/instances/{uploaded['id']}/image/?frame=2"), 400, "invalid_frame")
    assert "2" in body["error"]


@pytest.mark.django_db
@pytest.mark.parametrize("frame", ["abc", "0", "-1", "1.5", " 1"])
def test_image_frame_that_is_not_a_positive_whole_number_is_400(api, uploaded, frame):
    response = api.get(f"/api/instances/{uploaded['id']}/image/", {"frame": frame})
    assert response.status_code == 400
    assert set(response.json()) >= {"error", "code"}


@pytest.mark.django_db
def test_image_frame_with_a_superscript_digit_is_400_not_500(api, uploaded):
    api.raise_request_exception = False
    response = api.get(f"/api/instances/{uploaded['id']}/image/", {"frame": "²"})
    assert response.status_code == 400


@pytest.mark.django_db
def test_image_of_an_instance_without_pixel_data_is_404_no_pixel_data(api):
    body = put(api, dicom_bytes(PixelData=None))
    assert body["has_pixel_data"] is False
    assert "image" not in body["links"]

    assert_error(api.get(f"/api/instances/{body['id']}/image/"), 404, "no_pixel_data")
    assert api.get(f"/api/instances/{body['id']}/tags/").json().get("7FE00010") is None


# --- studies and series -----------------------------------------------------------------------


@pytest.fixture
def hierarchy(api) -> dict:
    """Study A with series A1 (instances 2 and 1) and A2 (one instance); study B with one instance."""
    a, b = generate_uid(), generate_uid()
    a1, a2 = generate_uid(), generate_uid()
    made = {
        "a1_second": put(api, dicom_bytes(StudyInstanceUID=a, SeriesInstanceUID=a1, SeriesNumber=1, InstanceNumber=2)),
        "a1_first": put(api, dicom_bytes(StudyInstanceUID=a, SeriesInstanceUID=a1, SeriesNumber=1, InstanceNumber=1)),
        "a2_only": put(api, dicom_bytes(StudyInstanceUID=a, SeriesInstanceUID=a2, SeriesNumber=2, InstanceNumber=1)),
        "b_only": put(api, dicom_bytes(StudyInstanceUID=b)),
    }
    return made


@pytest.mark.django_db
def test_studies_list_counts_series_and_instances(api, hierarchy):
    response = api.get("/api/studies/")
    assert response.status_code == 200
    counts = {row["id"]: (row["series_count"], row["instance_count"]) for row in response.json()["results"]}
    assert counts == {hierarchy["a1_first"]["study"]: (2, 3), hierarchy["b_only"]["study"]: (1, 1)}


@pytest.mark.django_db
def test_series_list_counts_instances(api, hierarchy):
    response = api.get("/api/series/")
    counts = {row["id"]: row["instance_count"] for row in response.json()["results"]}
    assert counts == {
        hierarchy["a1_first"]["series"]: 2,
        hierarchy["a2_only"]["series"]: 1,
        hierarchy["b_only"]["series"]: 1,
    }


@pytest.mark.django_db
def test_study_detail_lists_its_series(api, hierarchy):
    study = hierarchy["a1_first"]["study"]
    response = api.get(f"/api/studies/{study}/")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == study
    assert (body["series_count"], body["instance_count"]) == (2, 3)
    assert [(s["id"], s["series_number"], s["instance_count"]) for s in body["series"]] == [
        (hierarchy["a1_first"]["series"], 1, 2),
        (hierarchy["a2_only"]["series"], 2, 1),
    ]
    assert body["series"][0]["url"] == f"http://testserver/api/series/{hierarchy['a1_first']['series']}/"


@pytest.mark.django_db
def test_series_detail_lists_its_instances_in_instance_number_order(api, hierarchy):
    series = hierarchy["a1_first"]["series"]
    response = api.get(f"/api/series/{series}/")
    assert response.status_code == 200
    body = response.json()
    assert body["study"] == hierarchy["a1_first"]["study"]
    assert body["instance_count"] == 2
    assert [(i["id"], i["instance_number"]) for i in body["instances"]] == [
        (hierarchy["a1_first"]["id"], 1),
        (hierarchy["a1_second"]["id"], 2),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["/api/studies/", "/api/series/"])
def test_study_and_series_lists_are_paginated_in_a_stable_order(api, route):
    made = [put(api, dicom_bytes(SeriesNumber=number)) for number in (3, 1, 2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = api.get(route)
    assert not [w for w in caught if issubclass(w.category, UnorderedObjectListWarning)]
    listed = [row["id"] for row in response.json()["results"]]
    if route == "/api/studies/":
        assert listed == [m["study"] for m in reversed(made)]  # Study.Meta.ordering: newest first
    else:
        assert listed == [m["series"] for m in reversed(made)]  # across studies: newest first, like studies


# --- deleting ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_deleting_the_last_instance_removes_its_series_study_and_file(api, uploaded, media_root):
    assert len(stored_files(media_root)) == 1

    assert api.delete(f"/api/instances/{uploaded['id']}/").status_code == 204

    assert_error(api.get(f"/api/instances/{uploaded['id']}/"), 404, "not_found")
    assert_error(api.get(f"/api/series/{uploaded['series']}/"), 404, "not_found")
    assert_error(api.get(f"/api/studies/{uploaded['study']}/"), 404, "not_found")
    assert stored_files(media_root) == []
    assert api.get("/api/studies/").json()["count"] == 0


@pytest.mark.django_db(transaction=True)
def test_deleting_one_of_two_instances_keeps_the_series_and_the_other_file(api, media_root):
    study, series = generate_uid(), generate_uid()
    gone = put(api, dicom_bytes(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=1))
    kept = put(api, dicom_bytes(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=2))

    assert api.delete(f"/api/instances/{gone['id']}/").status_code == 204

    series_body = api.get(f"/api/series/{kept['series']}/").json()
    assert series_body["instance_count"] == 1
    assert [i["id"] for i in series_body["instances"]] == [kept["id"]]
    assert api.get(f"/api/studies/{kept['study']}/").json()["instance_count"] == 1
    assert stored_files(media_root) == [media_root / kept["storage"]["key"]]


@pytest.mark.django_db(transaction=True)
def test_deleting_the_only_instance_of_one_series_keeps_the_study_with_its_other_series(api, media_root):
    study = generate_uid()
    gone = put(api, dicom_bytes(StudyInstanceUID=study))
    kept = put(api, dicom_bytes(StudyInstanceUID=study))

    assert api.delete(f"/api/instances/{gone['id']}/").status_code == 204

    assert api.get(f"/api/series/{gone['series']}/").status_code == 404
    assert kept["study"] == gone["study"]
    study_body = api.get(f"/api/studies/{kept['study']}/").json()
    assert [s["id"] for s in study_body["series"]] == [kept["series"]]
    assert stored_files(media_root) == [media_root / kept["storage"]["key"]]


# --- unknown and malformed ids ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "route",
    [
        "/api/instances/{id}/",
        "/api/instances/{id}/file/",
        "/api/instances/{id}/tags/",
        "/api/instances/{id}/tags/PatientName/",
        "/api/instances/{id}/image/",
        "/api/studies/{id}/",
        "/api/series/{id}/",
    ],
)
@pytest.mark.parametrize("ident", ["unknown-uuid", "not-a-uuid", "almost-a-uuid"])
def test_unknown_or_malformed_id_is_404_json(api, uploaded, route, ident):
    value = {
        "unknown-uuid": str(uuid.uuid4()),
        "not-a-uuid": "not-a-uuid",
        "almost-a-uuid": uploaded["id"][:-1] + "g",
    }[ident]
    assert_error(api.get(route.format(id=value)), 404, "not_found")


@pytest.mark.django_db
def test_delete_of_an_unknown_uuid_is_404_and_touches_nothing(api, uploaded, media_root):
    assert_error(api.delete(f"/api/instances/{uuid.uuid4()}/"), 404, "not_found")
    assert Instance.objects.filter(pk=uploaded["id"]).exists()
    assert len(stored_files(media_root)) == 1


# --- tag reads fetch only the elements they need -----------------------------------------


def _private_and_nested_file() -> bytes:
    """CT_small with an ACME private block in group 0009 and a 2-item ReferencedImageSequence."""
    ds = pydicom.dcmread(CT_SMALL)
    for element in list(ds.group_dataset(0x0009)):
        del ds[element.tag]
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "secret")
    items = []
    for _ in range(2):
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = generate_uid()
        items.append(item)
    ds.ReferencedImageSequence = pydicom.Sequence(items)
    ds.SOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


PARTIAL_EXPRESSIONS = [
    "PatientName", "(0010,0010)", "ImageType[1]", "(0009,1001)", "00091001", "(0009,0010)",
    "ReferencedImageSequence[1].ReferencedSOPInstanceUID", "(0008,1140)[0].(0008,1150)", "PixelData",
    "Rows", "SOPInstanceUID", "TransferSyntaxUID",
]  # fmt: skip


@pytest.mark.parametrize("expr", PARTIAL_EXPRESSIONS)
def test_a_tag_read_of_some_elements_answers_as_a_lookup_in_the_whole_header(api, expr):
    from dicomcore import tags

    instance = put(api, _private_and_nested_file())
    header = Instance.objects.get(pk=instance["id"]).header
    with CaptureQueriesContext(connection) as queries:
        response = api.get(f"/api/instances/{instance['id']}/tags/{expr}/")
    assert response.status_code == 200, response.content[:300]
    assert response.json() == tags.lookup(header, tags.parse_expression(expr)).as_dict()
    reads = [q["sql"] for q in queries.captured_queries if 'FROM "studies_instance"' in q["sql"]]
    column = '"studies_instance"."header"'
    element_reads = (f"JSON_EXTRACT({column},", f"({column} ->")  # SQLite, PostgreSQL
    assert reads and not any(column in _without(sql, element_reads) for sql in reads)


def _without(text: str, parts: tuple[str, ...]) -> str:
    for part in parts:
        text = text.replace(part, "")
    return text


def test_the_private_tag_answer_names_its_creator_and_a_missing_element_is_404(api):
    instance = put(api, _private_and_nested_file())
    body = api.get(f"/api/instances/{instance['id']}/tags/(0009,1001)/").json()
    assert body["private_creator"] == "ACME 1.0" and body["value"] == "secret"
    assert_error(api.get(f"/api/instances/{instance['id']}/tags/(0009,1002)/"), 404, "element_not_found")
    assert_error(api.get(f"/api/instances/{instance['id']}/tags/ReferencedImageSequence[2].ReferencedSOPInstanceUID/"), 404, "element_not_found")


def test_the_bulk_lookup_reads_the_same_values_as_the_whole_header(api):
    from dicomcore import tags

    first, second = put(api, _private_and_nested_file()), put(api, _private_and_nested_file())
    response = api.post("/api/tags/lookup/", {"instances": [first["id"], second["id"]], "tags": PARTIAL_EXPRESSIONS}, format="json")
    assert response.status_code == 200, response.content[:300]
    for row in response.json()["results"]:
        header = Instance.objects.get(pk=row["id"]).header
        for expr in PARTIAL_EXPRESSIONS:
            assert row["values"][expr] == tags.lookup_value(header, tags.parse_expression(expr)), expr
