"""Search on any header attribute, undeclared: QIDO-RS and the REST lists match every keyword or tag that has no
column at the queried level in the stored header JSON (studies.header_search), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest
from django.db import connection
from pydicom.uid import generate_uid

from studies.dicomweb import protocol as web
from studies.models import Instance

from .conftest import assert_error, client_for, dicom_bytes, stored_instance, upload

pytestmark = pytest.mark.django_db
JSON = {"HTTP_ACCEPT": "application/dicom+json"}


@pytest.fixture
def stored(api):
    """Two studies of the owner with different header values (CT_small.dcm: ImageType ORIGINAL\\PRIMARY\\AXIAL)."""
    head = stored_instance(
        api, ProtocolName="HEAD ROUTINE", SliceThickness="5.0", AcquisitionDate="20200105", PerformingPhysicianName="Doe^Jane",
        AcquisitionDateTime="20200105101500", ContentTime="101500.25", ImageComments="50% [dose] re_done",
    )  # fmt: skip
    chest = stored_instance(
        api, ProtocolName="CHEST ROUTINE", SliceThickness="2.50", AcquisitionDate="20210301", PerformingPhysicianName="Roe^Rick",
        ImageType=["DERIVED", "SECONDARY"], ContentTime="235959", ImageComments="plain",
    )  # fmt: skip
    return {"head": head, "chest": chest}


def _qido(api, path: str, **params) -> list[str]:
    response = api.get(path, params, **JSON)
    assert response.status_code == 200, response.content
    return sorted(r["00080018"]["Value"][0] for r in response.json()) if "instances" in path else response.json()


def _uids(api, **params) -> list[str]:
    return _qido(api, "/dicomweb/instances", **params)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"SliceThickness": "5"}, ["head"]),  # DS: a number, matched as one (stored 5.0)
        ({"SliceThickness": "2.5"}, ["chest"]),
        ({"00180050": "5.0"}, ["head"]),  # by tag
        ({"SliceThickness": "3"}, []),
        ({"KVP": "120"}, ["chest", "head"]),
        ({"ProtocolName": "CHEST ROUTINE"}, ["chest"]),
        ({"ProtocolName": "chest routine"}, []),  # text other than names: exact, with case
        ({"ProtocolName": "*ROUTINE"}, ["chest", "head"]),
        ({"ProtocolName": "H?AD*"}, ["head"]),
        ({"ProtocolName": "h*"}, []),
        ({"ImageType": "AXIAL"}, ["head"]),  # any value of a multi-valued element
        ({"ImageType": "SECOND*"}, ["chest"]),
        ({"PerformingPhysicianName": "doe^jane"}, ["head"]),  # person names ignore case, as their columns do
        ({"PerformingPhysicianName": "r*"}, ["chest"]),
        ({"AcquisitionDate": "20200101-20201231"}, ["head"]),
        ({"AcquisitionDate": "20210301"}, ["chest"]),
        ({"AcquisitionDate": "-20201231"}, ["head"]),
        ({"AcquisitionDate": "20200106-"}, ["chest"]),
        ({"ContentTime": "1015-1016"}, ["head"]),  # TM: the high bound takes in seconds and fractions
        ({"ContentTime": "235959"}, ["chest"]),
        ({"ContentTime": "2359"}, []),  # a single time is that time (23:59:00), as for StudyTime
        ({"AcquisitionDateTime": "2020-2020"}, ["head"]),
        ({"ImageComments": "50% [dose] re_done"}, ["head"]),  # SQL's own wildcards are plain characters
        ({"ImageComments": "50% [dose]*"}, ["head"]),
        ({"ImageComments": "5_%*"}, []),
        ({"ProtocolName": "CHEST ROUTINE", "SliceThickness": "2.5"}, ["chest"]),
        ({"ProtocolName": "CHEST ROUTINE", "SliceThickness": "5"}, []),
        ({"ProtocolName": ""}, ["chest", "head"]),  # universal: returned, not matched
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, ["chest", "head"]),  # a column still matches its column
    ],
)
def test_qido_instances_match_any_header_attribute(api, stored, params, expected):
    assert _uids(api, **params) == sorted(stored[name].sop_instance_uid for name in expected)


def test_the_matched_attribute_is_returned(api, stored):
    (result,) = api.get("/dicomweb/instances", {"ProtocolName": "HEAD*"}, **JSON).json()
    assert result["00181030"] == {"vr": "LO", "Value": ["HEAD ROUTINE"]}
    (study,) = api.get("/dicomweb/studies", {"SliceThickness": "2.5"}, **JSON).json()
    assert study["0020000D"]["Value"] == [stored["chest"].study.study_instance_uid]
    assert study["00180050"] == {"vr": "DS", "Value": [2.5]}


def test_studies_and_series_match_when_one_of_their_instances_matches_every_key(api, stored):
    head = stored["head"]
    # A second instance in the head study's series, with other values.
    other = stored_instance(api, StudyInstanceUID=head.study.study_instance_uid, SeriesInstanceUID=head.series.series_instance_uid,
                   ProtocolName="HEAD ROUTINE", SliceThickness="1")  # fmt: skip
    assert other.series_id == head.series_id

    def studies(**params):
        return [r["0020000D"]["Value"][0] for r in api.get("/dicomweb/studies", params, **JSON).json()]

    def series(**params):
        return [r["0020000E"]["Value"][0] for r in api.get("/dicomweb/series", params, **JSON).json()]

    assert studies(SliceThickness="1") == [head.study.study_instance_uid]
    assert studies(ProtocolName="HEAD ROUTINE", SliceThickness="1") == [head.study.study_instance_uid]
    assert studies(AcquisitionDate="20200105", SliceThickness="1") == []  # no one instance has both
    assert series(SliceThickness="2.5") == [stored["chest"].series.series_instance_uid]
    assert series(Modality="CT", SliceThickness="1") == [head.series.series_instance_uid]  # a column and a header key
    # A lower level's column is matched in the headers at a higher level (Modality at the study level).
    assert len(studies(Modality="CT")) == 2 and studies(Modality="MR") == []
    assert _qido(api, f"/dicomweb/studies/{head.study.study_instance_uid}/series", SliceThickness="2.5") == []


def test_other_owners_matching_rows_are_not_found(api, stored, other):
    theirs = client_for(other)
    assert upload(theirs, dicom_bytes(ProtocolName="HEAD ROUTINE")).status_code == 201
    assert _uids(api, ProtocolName="HEAD ROUTINE") == [stored["head"].sop_instance_uid]
    assert len(_qido(theirs, "/dicomweb/instances", ProtocolName="HEAD ROUTINE")) == 1


@pytest.mark.parametrize("key", ["PixelData", "ReferencedSeriesSequence", "7FE00010", "00091001", "NumberOfStudyRelatedInstances"])
def test_keys_that_cannot_be_matched_are_ignored_with_a_warning(api, stored, key):
    response = api.get("/dicomweb/instances", {key: "1"}, **JSON)
    assert response.status_code == 200
    assert len(response.json()) == 2
    assert "is not supported" in response["Warning"]


@pytest.mark.parametrize(
    "params",
    [{"SliceThickness": "thick"}, {"InstanceNumber": "1.5"}, {"AcquisitionDate": "2020-13"}, {"ContentTime": "25h"},
     {"AcquisitionDateTime": "20201"}, {"NoSuchKeyword": "1"}, {"ReferencedSOPInstanceUID": "1.2.x"}],
)  # fmt: skip
def test_bad_values_are_400(api, stored, params):
    assert_error(api.get("/dicomweb/instances", params, **JSON), 400, "invalid_parameter")


def test_rest_lists_take_keywords_and_tags(api, stored):
    head, chest = stored["head"], stored["chest"]
    assert [r["id"] for r in api.get("/api/instances/", {"SliceThickness": "5"}).json()["results"]] == [str(head.pk)]
    assert [r["id"] for r in api.get("/api/studies/", {"ProtocolName": "CHEST*"}).json()["results"]] == [str(chest.study_id)]
    assert [r["id"] for r in api.get("/api/series/", {"00181030": "HEAD ROUTINE"}).json()["results"]] == [str(head.series_id)]
    # Column keys work the same way, alongside the list's own parameters.
    found = api.get("/api/instances/", {"PatientName": head.patient_name.lower(), "modality": "CT", "KVP": "120"}).json()
    assert found["count"] == 2
    assert api.get("/api/studies/", {"StudyInstanceUID": head.study.study_instance_uid}).json()["count"] == 1


@pytest.mark.parametrize("params", [{"PixelData": "1"}, {"SliceThickness": "thick"}, {"00091001": "x"}, {"NumberOfFrames": "x"}])
def test_rest_lists_refuse_keys_they_cannot_match(api, stored, params):
    """A list must not answer as if unfiltered: a key it cannot match, or a malformed value, is a 400."""
    assert_error(api.get("/api/instances/", params), 400, "invalid_parameter")


def test_values_longer_than_the_index_holds_still_match(api, stored):
    long = "x" * 129 + " comment"  # over the 128 characters dicom_search_terms() indexes: matched by reading the headers
    tagged = stored_instance(api, ImageComments=long)
    assert _uids(api, ImageComments=long) == [tagged.sop_instance_uid]
    assert _uids(api, ImageComments=long[:-1]) == []


def test_many_uids_in_one_key(api, stored):
    head, chest = stored["head"], stored["chest"]
    # ReferencedSOPInstanceUID is not in CT_small; a UID-valued header key is matched as a list.
    uid = generate_uid()
    tagged = stored_instance(api, FrameOfReferenceUID=uid)
    assert _uids(api, FrameOfReferenceUID=f"{uid},{generate_uid()}") == [tagged.sop_instance_uid]
    assert _qido(api, "/dicomweb/studies", FrameOfReferenceUID=uid)[0]["0020000D"]["Value"] == [tagged.study.study_instance_uid]
    assert head.pk and chest.pk


def test_parse_query_routes_keys_to_columns_or_headers():
    query = web.parse_query("study", [("PatientID", "X"), ("Modality", "CT"), ("SliceThickness", "5"), ("ProtocolName", "")])
    assert [(m.attribute.keyword, m.in_header) for m in query.matches] == [("PatientID", False), ("Modality", True), ("SliceThickness", True)]
    assert {"00080060", "00180050", "00181030"} <= query.include
    series = web.parse_query("series", [("Modality", "CT")])
    assert [(m.attribute.column, m.in_header) for m in series.matches] == [("modality", False)]


@pytest.mark.postgres
def test_postgresql_answers_exact_keys_from_the_gin_index(api, stored):
    """The containment the exact matches compile to is one the jsonb_path_ops index answers (the planner is told
    to avoid a scan: on a table this small it would rightly prefer one)."""
    from studies import header_search

    queryset = Instance.objects.order_by()  # no owner or order: an index on those would do as well here

    query = web.parse_query("instance", [("SliceThickness", "5"), ("ProtocolName", "HEAD ROUTINE")])
    sql, params = header_search.matching(queryset, "instance", query.matches).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "instance_header_terms" in plan, plan
