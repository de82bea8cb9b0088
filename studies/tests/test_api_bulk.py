"""The bulk endpoints: many files and zip archives in one upload, tag values across many instances
(JSON and CSV), and study / series downloads as streamed zip archives."""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import struct
import uuid
import zipfile
from pathlib import Path

import pydicom
import pytest
from django.core.files.storage import default_storage
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from studies.models import Instance

from .conftest import CT_SMALL, assert_error, assert_storage_consistent, client_for, dicom_bytes, stored_bytes, stored_files, upload

# Every test here stages uploads or zip members in its own temp folder, checked for leftovers.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("upload_temp_dir")]

BULK = "/api/instances/bulk/"
LOOKUP = "/api/tags/lookup/"
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
DICOMDIR = Path(get_testdata_file("DICOMDIR"))
SKIP_DICOMDIR = "DICOMDIR: the media index, not an image; the files it lists are imported themselves"
# A top-level part that is not an instance (a DICOMDIR, a text file) is "refused"; inside a zip the same
# file is "skipped" (as import_dicom skips it on disk). Hostile or unreadable members are "refused".



def named(data: bytes, name: str) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def post_bulk(client, *parts: tuple[str, bytes], field: str = "file"):
    return client.post(BULK, {field: [named(data, name) for name, data in parts]}, format="multipart")


def bulk_ok(client, *parts: tuple[str, bytes]) -> dict:
    response = post_bulk(client, *parts)
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert set(body) == {"results", "counts"}
    for row in body["results"]:
        assert set(row) == {"filename", "status", "id", "error"}
    return body


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def zeros_zip(name: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(name, "w") as target:
        block = bytes(1024 * 1024)
        for _ in range(size // len(block)):
            target.write(block)
    return buffer.getvalue()


def counts(**given: int) -> dict[str, int]:
    return {"created": 0, "duplicate": 0, "conflict": 0, "refused": 0, "skipped": 0, **given}


# --- bulk upload ----------------------------------------------------------------------------------


def test_bulk_upload_of_files_and_a_zip_answers_one_result_per_file(api, media_root, upload_temp_dir):
    a, b, c, d = (dicom_bytes() for _ in range(4))
    archive = zip_bytes({"c.dcm": c, "sub/d": d, "README.TXT": b"exported by some PACS", "DICOMDIR": DICOMDIR.read_bytes()})

    body = bulk_ok(api, ("a.dcm", a), ("b.dcm", b), ("export.zip", archive))

    assert [(r["filename"], r["status"]) for r in body["results"]] == [
        ("a.dcm", "created"),
        ("b.dcm", "created"),
        ("export.zip/c.dcm", "created"),
        ("export.zip/sub/d", "created"),
        ("export.zip/README.TXT", "skipped"),
        ("export.zip/DICOMDIR", "skipped"),
    ]
    assert body["counts"] == counts(created=4, skipped=2)
    assert body["results"][4]["error"] == "not a DICOM Part-10 file (no DICM prefix)"
    assert body["results"][5]["error"] == SKIP_DICOMDIR
    created = [r for r in body["results"] if r["status"] == "created"]
    assert all(r["error"] == "" for r in created)
    for row, data in zip(created, (a, b, c, d), strict=True):
        detail = api.get(f"/api/instances/{row['id']}/")
        assert detail.status_code == 200
        assert detail.json()["sop_instance_uid"] == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    assert {i.original_filename for i in Instance.objects.all()} == {"a.dcm", "b.dcm", "c.dcm", "d"}
    assert_storage_consistent(media_root)
    assert list(upload_temp_dir.iterdir()) == []


def test_bulk_results_keep_the_order_of_the_parts(api):
    parts = [(f"{n:02}.dcm", dicom_bytes()) for n in range(12)]
    body = bulk_ok(api, *parts)
    assert [r["filename"] for r in body["results"]] == [name for name, _ in parts]
    assert body["counts"]["created"] == 12


def test_bulk_duplicates_within_and_across_requests(api, media_root):
    data = dicom_bytes()
    first = bulk_ok(api, ("a.dcm", data), ("again.dcm", data))
    assert [r["status"] for r in first["results"]] == ["created", "duplicate"]
    assert first["results"][0]["id"] == first["results"][1]["id"]

    second = bulk_ok(api, ("a.dcm", data), ("in.zip", zip_bytes({"a.dcm": data})))
    assert [r["status"] for r in second["results"]] == ["duplicate", "duplicate"]
    assert {r["id"] for r in second["results"]} == {first["results"][0]["id"]}
    assert second["counts"] == counts(duplicate=2)
    assert len(assert_storage_consistent(media_root)) == 1


def test_bulk_conflict_names_the_existing_instance_and_stores_nothing(api, media_root):
    original = dicom_bytes()
    existing = upload(api, original).json()["id"]
    edited = pydicom.dcmread(io.BytesIO(original))
    edited.StudyDescription = "edited"
    buffer = io.BytesIO()
    edited.save_as(buffer, enforce_file_format=True)

    body = bulk_ok(api, ("edited.dcm", buffer.getvalue()), ("new.dcm", dicom_bytes()))

    conflict, new = body["results"]
    assert conflict["status"] == "conflict" and conflict["id"] == existing
    assert "SOP Instance UID" in conflict["error"]
    assert new["status"] == "created"
    assert body["counts"] == counts(created=1, conflict=1)
    assert Instance.objects.count() == 2
    assert_storage_consistent(media_root)


def test_bulk_upload_is_per_owner(api, other, media_root):
    data = dicom_bytes()
    bulk_ok(api, ("a.dcm", data))
    body = bulk_ok(client_for(other), ("a.dcm", data))
    assert body["results"][0]["status"] == "created"
    assert Instance.objects.filter(owner=other).count() == 1


def test_refused_parts_are_reported_and_nothing_of_them_is_stored(api, media_root, upload_temp_dir):
    body = bulk_ok(
        api,
        ("notes.txt", b"hello"),
        ("empty.dcm", b""),
        ("truncated.dcm", CT_SMALL.read_bytes()[:400]),
        ("no-study.dcm", dicom_bytes(StudyInstanceUID=None)),
        ("DICOMDIR", DICOMDIR.read_bytes()),
        ("good.dcm", dicom_bytes()),
    )
    rows = body["results"]
    assert [r["status"] for r in rows[:4]] == ["refused"] * 4
    assert rows[1]["error"] == "the file is empty"
    assert "Study Instance UID" in rows[3]["error"]
    assert rows[4]["status"] == "refused" and rows[4]["error"] == "this is a DICOMDIR (a media index listing other files), not an image instance"
    assert all(r["error"] and r["id"] is None for r in rows[:5])
    assert rows[5]["status"] == "created"
    assert Instance.objects.count() == 1
    assert_storage_consistent(media_root)
    assert list(upload_temp_dir.iterdir()) == []


# --- bulk upload: zip guards ---------------------------------------------------------------------


def test_zip_bomb_member_is_refused_without_being_expanded(api, media_root, upload_temp_dir):
    bomb = zeros_zip("bomb.dcm", 50 * 1024 * 1024)
    assert len(bomb) < 100_000
    body = bulk_ok(api, ("bomb.zip", bomb))
    (row,) = body["results"]
    assert row["filename"] == "bomb.zip/bomb.dcm" and row["status"] == "refused"
    assert "compression ratio" in row["error"] and "zip bomb" in row["error"]
    assert stored_files(media_root) == []
    assert list(upload_temp_dir.iterdir()) == []


def test_zip_expanding_beyond_the_total_limit_is_refused_whole(api, settings, media_root):
    members = {f"{n}.dcm": dicom_bytes() for n in range(3)}
    settings.DICOM_ZIP_MAX_TOTAL_BYTES = sum(map(len, members.values())) - 1
    body = bulk_ok(api, ("big.zip", zip_bytes(members)), ("ok.dcm", dicom_bytes()))
    whole, ok = body["results"]
    assert whole["filename"] == "big.zip" and whole["status"] == "refused"
    assert whole["error"].startswith("the archive would expand to") and str(settings.DICOM_ZIP_MAX_TOTAL_BYTES) in whole["error"]
    assert ok["status"] == "created"
    assert len(assert_storage_consistent(media_root)) == 1


def test_zip_with_too_many_members_is_refused_whole(api, settings, media_root):
    settings.DICOM_ZIP_MAX_MEMBERS = 3
    body = bulk_ok(api, ("many.zip", zip_bytes({f"{n}.dcm": dicom_bytes() for n in range(4)})))
    (row,) = body["results"]
    assert row["filename"] == "many.zip" and row["status"] == "refused"
    assert row["error"] == "the archive has 4 members; the limit is 3"
    assert stored_files(media_root) == []
    assert bulk_ok(api, ("three.zip", zip_bytes({f"{n}.dcm": dicom_bytes() for n in range(3)})))["counts"]["created"] == 3


@pytest.mark.parametrize("name", ["../evil.dcm", "/abs.dcm", "C:\\x.dcm", "a/../../evil.dcm"])
def test_zip_members_with_unsafe_paths_are_not_imported(api, media_root, name):
    body = bulk_ok(api, ("a.zip", zip_bytes({name: dicom_bytes()})))
    (row,) = body["results"]
    assert row["status"] == "refused"
    assert row["error"] == "unsafe path in archive (absolute or '..')"
    assert stored_files(media_root) == []


def test_nested_zip_is_skipped(api, media_root):
    inner = zip_bytes({"a.dcm": dicom_bytes()})
    body = bulk_ok(api, ("outer.zip", zip_bytes({"inner.zip": inner})))
    assert body["results"] == [{"filename": "outer.zip/inner.zip", "status": "skipped", "id": None, "error": "nested archive (not expanded)"}]
    assert stored_files(media_root) == []


def test_encrypted_zip_member_is_refused(api, media_root):
    # zipfile cannot write encrypted members: the "encrypted" flag is set in the bytes it wrote.
    data = bytearray(zip_bytes({"a.dcm": dicom_bytes()}))
    struct.pack_into("<H", data, data.index(b"PK\x03\x04") + 6, 0x1)
    struct.pack_into("<H", data, data.rindex(b"PK\x01\x02") + 8, 0x1)
    body = bulk_ok(api, ("locked.zip", bytes(data)))
    assert body["results"][0]["error"] == "encrypted archive member"
    assert body["results"][0]["status"] == "refused"
    assert stored_files(media_root) == []


def test_truncated_zip_is_refused_with_a_clear_reason(api, media_root, upload_temp_dir):
    whole = zip_bytes({"a.dcm": dicom_bytes(), "b.dcm": dicom_bytes()})
    body = bulk_ok(api, ("broken.zip", whole[: len(whole) // 2]))
    (row,) = body["results"]
    assert row["filename"] == "broken.zip" and row["status"] == "refused"
    assert row["error"].startswith("not a readable zip archive")
    assert stored_files(media_root) == [] and list(upload_temp_dir.iterdir()) == []


def test_zip_member_with_a_bad_crc_is_refused(api, media_root, upload_temp_dir):
    data = dicom_bytes()
    archive = bytearray(zip_bytes({"a.dcm": data, "b.dcm": dicom_bytes()}, compression=zipfile.ZIP_STORED))
    archive[archive.index(data[300:340])] ^= 0xFF
    body = bulk_ok(api, ("a.zip", bytes(archive)))
    assert [r["status"] for r in body["results"]] == ["refused", "created"]
    assert body["results"][0]["error"] == "the archive member cannot be read (BadZipFile)"
    assert_storage_consistent(media_root)
    assert list(upload_temp_dir.iterdir()) == []


def test_zip_member_over_the_upload_limit_is_not_imported(api, settings, media_root):
    data = dicom_bytes(PixelData=bytes(128 * 128 * 2))  # zeros: the zip part is far smaller than its member
    archive = zip_bytes({"a.dcm": data})
    settings.DICOM_MAX_UPLOAD_BYTES = len(archive) + 100
    assert len(data) > settings.DICOM_MAX_UPLOAD_BYTES
    (row,) = bulk_ok(api, ("a.zip", archive))["results"]
    assert row["status"] == "refused"
    assert row["error"] == f"member expands to {len(data)} bytes; the limit is {settings.DICOM_MAX_UPLOAD_BYTES}"
    assert stored_files(media_root) == []


# --- bulk upload: request limits and errors ------------------------------------------------------


def test_more_parts_than_the_limit_is_413_and_stores_nothing(api, settings, media_root, upload_temp_dir):
    # DATA_UPLOAD_MAX_NUMBER_FILES is set from DICOM_BULK_MAX_FILES when settings load: set both.
    settings.DICOM_BULK_MAX_FILES = settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    response = post_bulk(api, *[(f"{n}.dcm", dicom_bytes()) for n in range(4)])
    body = assert_error(response, 413, "too_many_files")
    assert "3" in body["error"]
    assert Instance.objects.count() == 0 and stored_files(media_root) == []
    gc.collect()
    assert list(upload_temp_dir.iterdir()) == []
    assert bulk_ok(api, *[(f"{n}.dcm", dicom_bytes()) for n in range(3)])["counts"]["created"] == 3


def test_body_over_the_bulk_byte_limit_is_413_before_anything_is_read(api, settings, media_root, upload_temp_dir):
    parts = [(f"{n}.dcm", dicom_bytes()) for n in range(3)]
    settings.DICOM_BULK_MAX_BYTES = sum(len(d) for _, d in parts)  # the multipart framing goes over it
    body = assert_error(post_bulk(api, *parts), 413, "too_large")
    assert str(settings.DICOM_BULK_MAX_BYTES) in body["error"]
    assert Instance.objects.count() == 0 and stored_files(media_root) == []
    assert list(upload_temp_dir.iterdir()) == []


def test_a_part_over_the_per_file_limit_is_413(api, settings, media_root):
    data = dicom_bytes()
    settings.DICOM_MAX_UPLOAD_BYTES = len(data) - 1
    assert_error(post_bulk(api, ("small.dcm", b"x"), ("big.dcm", data)), 413, "too_large")
    assert stored_files(media_root) == []


def test_no_file_is_400(api):
    assert_error(api.post(BULK, {}, format="multipart"), 400, "missing_file")
    assert_error(post_bulk(api, ("a.dcm", dicom_bytes()), field="upload"), 400, "missing_file")
    assert Instance.objects.count() == 0


def test_json_body_is_415(api):
    assert_error(api.post(BULK, {"file": "x"}, format="json"), 415, "unsupported_media_type")


def test_bulk_upload_needs_authentication(db, media_root):
    response = post_bulk(client_for(None), ("a.dcm", dicom_bytes()))
    assert_error(response, 401, "not_authenticated")
    assert stored_files(media_root) == [] and Instance.objects.count() == 0


def test_bulk_is_post_only(api):
    assert_error(api.get(BULK), 405, "method_not_allowed")


# --- bulk tag lookup ---------------------------------------------------------------------------------


@pytest.fixture
def catalogue(api, other) -> dict:
    """owner: study A (series S1: CT 1, CT 2; series S2: MR) and study B (CT); other: one CT."""
    study_a, study_b, s1, s2 = (generate_uid() for _ in range(4))
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    reference.ReferencedSOPInstanceUID = "1.2.3.4.5"
    files = {
        "ct1": dicom_bytes(StudyInstanceUID=study_a, SeriesInstanceUID=s1, InstanceNumber=1, ReferencedImageSequence=[reference]),
        "ct2": dicom_bytes(StudyInstanceUID=study_a, SeriesInstanceUID=s1, InstanceNumber=2, PatientName="=HYPERLINK(\"http://x\")"),
        "mr": dicom_bytes(MR_SMALL, StudyInstanceUID=study_a, SeriesInstanceUID=s2),
        "b": dicom_bytes(),
    }
    body = bulk_ok(api, *[(f"{name}.dcm", data) for name, data in files.items()])
    ids = {name: row["id"] for name, row in zip(files, body["results"], strict=True)}
    theirs = upload(client_for(other), dicom_bytes()).json()
    instances = {i.pk: i for i in Instance.objects.all()}
    return {
        **ids,
        "study_a": str(instances[uuid.UUID(ids["ct1"])].study_id),
        "study_b": str(instances[uuid.UUID(ids["b"])].study_id),
        "s1": str(instances[uuid.UUID(ids["ct1"])].series_id),
        "s2": str(instances[uuid.UUID(ids["mr"])].series_id),
        "theirs": theirs["id"],
        "their_study": theirs["study"],
        "their_series": theirs["series"],
    }


def lookup(client, *, csv_format: bool = False, **payload):
    return client.post(LOOKUP + ("?format=csv" if csv_format else ""), payload, format="json")


def lookup_ok(client, **payload) -> dict:
    response = lookup(client, **payload)
    assert response.status_code == 200, response.content[:500]
    return response.json()


EXPRESSIONS = [
    "PatientName",
    "(0020,0013)",
    "00080060",
    "ImageType",
    "ImageType[1]",
    "PixelSpacing",
    "RescaleIntercept",
    "ReferencedImageSequence[0].ReferencedSOPInstanceUID",
    "WindowCenter",
    "PixelData",
]


def test_lookup_by_instances_gives_one_row_per_instance_with_the_single_lookup_values(api, catalogue):
    wanted = [catalogue["ct1"], catalogue["ct2"], catalogue["mr"], catalogue["b"]]
    body = lookup_ok(api, instances=wanted, tags=EXPRESSIONS)
    assert body["tags"] == EXPRESSIONS
    assert sorted(row["id"] for row in body["results"]) == sorted(wanted)
    for row in body["results"]:
        assert list(row["values"]) == EXPRESSIONS
        for expr, value in row["values"].items():
            single = api.get(f"/api/instances/{row['id']}/tags/{expr}/")
            if value is None:
                assert_error(single, 404, "element_not_found")
            else:
                assert single.status_code == 200 and single.json()["value"] == value, (expr, row["id"])
        detail = api.get(f"/api/instances/{row['id']}/").json()
        assert row["sop_instance_uid"] == detail["sop_instance_uid"]


def test_lookup_values_are_the_header_values(api, catalogue):
    rows = {r["id"]: r["values"] for r in lookup_ok(api, instances=[catalogue["ct1"], catalogue["mr"]], tags=EXPRESSIONS)["results"]}
    ct, mr = rows[catalogue["ct1"]], rows[catalogue["mr"]]
    assert ct["PatientName"] == "CompressedSamples^CT1"
    assert ct["(0020,0013)"] == 1
    assert ct["00080060"] == "CT"
    assert ct["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"] and ct["ImageType[1]"] == "PRIMARY"
    assert ct["RescaleIntercept"] == -1024
    assert ct["ReferencedImageSequence[0].ReferencedSOPInstanceUID"] == "1.2.3.4.5"
    assert ct["WindowCenter"] is None  # absent element → null
    assert mr["ReferencedImageSequence[0].ReferencedSOPInstanceUID"] is None
    assert mr["WindowCenter"] == 600
    assert ct["PixelData"]["length"] == 128 * 128 * 2


def test_lookup_by_study_covers_all_its_series_and_nothing_else(api, catalogue):
    body = lookup_ok(api, study=catalogue["study_a"], tags=["InstanceNumber", "Modality"])
    assert sorted(r["id"] for r in body["results"]) == sorted([catalogue["ct1"], catalogue["ct2"], catalogue["mr"]])
    assert [r["id"] for r in lookup_ok(api, study=catalogue["study_b"], tags=["Modality"])["results"]] == [catalogue["b"]]


def test_lookup_by_series_is_in_instance_number_order(api, catalogue):
    body = lookup_ok(api, series=catalogue["s1"], tags=["InstanceNumber"])
    assert [r["id"] for r in body["results"]] == [catalogue["ct1"], catalogue["ct2"]]
    assert [r["values"]["InstanceNumber"] for r in body["results"]] == [1, 2]


def test_repeated_ids_give_one_row(api, catalogue):
    body = lookup_ok(api, instances=[catalogue["ct1"], catalogue["ct1"]], tags=["Modality"])
    assert [r["id"] for r in body["results"]] == [catalogue["ct1"]]


@pytest.mark.parametrize(
    ("expr", "named"),
    [("(0010,001", "'(0010,001'"), ("NotAKeyword", "'NotAKeyword'"), ("PatientName.", "'PatientName.'"), ("ImageType[-1]", "[-1]")],
)
def test_malformed_expression_is_400_naming_it(api, catalogue, expr, named):
    response = lookup(api, instances=[catalogue["ct1"]], tags=["Modality", expr])
    body = assert_error(response, 400, "invalid_tag_expression")
    assert named in body["error"]


@pytest.mark.parametrize("expr", ["", "   "], ids=["empty", "blank"])
def test_a_blank_expression_is_400_from_the_request_validation(api, catalogue, expr):
    """A blank tag never reaches the expression parser: the request's own validation refuses it."""
    response = lookup(api, instances=[catalogue["ct1"]], tags=["Modality", expr])
    body = assert_error(response, 400, "invalid")
    assert body["error"] == "tags: 1: This field may not be blank."


@pytest.mark.parametrize(
    "csv_format",
    [
        False,
        True,
    ],
    ids=["json", "csv"],
)
def test_path_through_an_element_that_is_not_a_sequence_is_a_clean_answer(api, catalogue, csv_format):
    """PatientName is not a sequence, so the path cannot enter it: the expression is well formed, so no 400;
    the value is absent (JSON null, an empty CSV cell), as for an element the instance does not have."""
    response = lookup(api, csv_format=csv_format, instances=[catalogue["ct1"]], tags=["PatientName[0].PatientID"])
    failure = None
    try:
        if csv_format:
            assert csv_rows(response)[1][2] == ""
        else:
            assert response.json()["results"][0]["values"]["PatientName[0].PatientID"] is None
    except Exception as exc:  # noqa: BLE001 - re-raised below as a plain assertion
        failure = f"{type(exc).__name__}: {exc}"
    # The lookup stopped midway through a server-side cursor (PostgreSQL). The exception's traceback
    # holds the abandoned iterator: drop both and collect it now, inside this test's transaction,
    # rather than in whichever later test the garbage collector happens to run (whose transaction
    # the failed close of a cursor that no longer exists would abort).
    del response
    gc.collect()
    assert failure is None, failure


@pytest.mark.parametrize(
    "payload",
    [
        {"tags": ["Modality"]},
        {"instances": "ct1", "study": "study_a", "tags": ["Modality"]},
        {"study": "study_a", "series": "s1", "tags": ["Modality"]},
        {"instances": "ct1", "study": "study_a", "series": "s1", "tags": ["Modality"]},
    ],
    ids=["none", "instances+study", "study+series", "all-three"],
)
def test_exactly_one_of_instances_study_series(api, catalogue, payload):
    resolved = {k: ([catalogue[v]] if k == "instances" else catalogue[v]) if k != "tags" else v for k, v in payload.items()}
    body = assert_error(lookup(api, **resolved), 400, "invalid")
    assert "exactly one of instances, study or series" in body["error"]


@pytest.mark.parametrize(
    "payload",
    [
        {"instances": [], "tags": ["Modality"]},
        {"instances": ["not-a-uuid"], "tags": ["Modality"]},
        {"study": "nope", "tags": ["Modality"]},
        {"instances": "ct1"},
        {"instances": "ct1", "tags": []},
        {"instances": "ct1", "tags": "Modality"},
    ],
)
def test_invalid_lookup_bodies_are_400(api, catalogue, payload):
    if payload.get("instances") == "ct1":
        payload = {**payload, "instances": [catalogue["ct1"]]}
    assert_error(lookup(api, **payload), 400, "invalid")


def test_lookup_tag_count_is_limited(api, catalogue, settings):
    settings.DICOM_LOOKUP_MAX_TAGS = 3
    assert lookup_ok(api, instances=[catalogue["ct1"]], tags=["Modality", "PatientName", "PatientID"])
    body = assert_error(lookup(api, instances=[catalogue["ct1"]], tags=["Modality", "PatientName", "PatientID", "Rows"]), 400, "invalid")
    assert "at most 3 tags" in body["error"]


def test_lookup_instance_count_is_limited(api, catalogue, settings):
    settings.DICOM_LOOKUP_MAX_INSTANCES = 2
    assert len(lookup_ok(api, series=catalogue["s1"], tags=["Modality"])["results"]) == 2
    body = assert_error(lookup(api, study=catalogue["study_a"], tags=["Modality"]), 400, "invalid_parameter")
    assert "more than 2 instances" in body["error"]


@pytest.mark.parametrize("key", ["theirs", "their_study", "their_series", "mixed", "unknown"])
def test_other_users_ids_are_404_without_leaking_anything(api, catalogue, key):
    payload = {
        "theirs": {"instances": [catalogue["theirs"]]},
        "mixed": {"instances": [catalogue["ct1"], catalogue["theirs"]]},
        "their_study": {"study": catalogue["their_study"]},
        "their_series": {"series": catalogue["their_series"]},
        "unknown": {"instances": [str(uuid.uuid4())]},
    }[key]
    body = assert_error(lookup(api, tags=["PatientName"], **payload), 404, "not_found")
    assert "CompressedSamples" not in str(body)
    assert catalogue["ct1"] not in str(body)


def test_other_users_study_and_series_are_404_in_csv_too(api, catalogue):
    assert_error(lookup(api, csv_format=True, study=catalogue["their_study"], tags=["PatientName"]), 404, "not_found")


def test_viewer_with_view_all_may_look_up_other_users_instances(viewer, catalogue):
    client = client_for(viewer)
    body = lookup_ok(client, instances=[catalogue["theirs"], catalogue["ct1"]], tags=["Modality"])
    assert len(body["results"]) == 2
    assert len(lookup_ok(client, study=catalogue["study_a"], tags=["Modality"])["results"]) == 3
    assert len(lookup_ok(client, series=catalogue["their_series"], tags=["Modality"])["results"]) == 1


def test_staff_without_view_all_may_not(staff, catalogue):
    assert_error(lookup(client_for(staff), instances=[catalogue["ct1"]], tags=["Modality"]), 404, "not_found")


def test_lookup_needs_authentication(db, catalogue):
    assert_error(lookup(client_for(None), instances=[catalogue["ct1"]], tags=["Modality"]), 401, "not_authenticated")


def csv_rows(response) -> list[list[str]]:
    assert response.status_code == 200, response.content[:500] if not response.streaming else ""
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="tags.csv"'
    text = b"".join(response.streaming_content).decode("utf-8")
    return list(csv.reader(io.StringIO(text)))


def test_csv_has_a_header_row_and_one_row_per_instance(api, catalogue):
    exprs = ["PatientName", "InstanceNumber", "ImageType", "RescaleIntercept", "WindowCenter", "ReferencedImageSequence"]
    rows = csv_rows(lookup(api, csv_format=True, series=catalogue["s1"], tags=exprs))
    assert rows[0] == ["id", "sop_instance_uid", *exprs]
    assert [r[0] for r in rows[1:]] == [catalogue["ct1"], catalogue["ct2"]]
    ct1 = dict(zip(rows[0], rows[1], strict=True))
    assert ct1["sop_instance_uid"] == api.get(f"/api/instances/{catalogue['ct1']}/").json()["sop_instance_uid"]
    assert ct1["PatientName"] == "CompressedSamples^CT1"
    assert ct1["InstanceNumber"] == "1"
    assert ct1["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"  # multiple values joined by DICOM's backslash
    assert float(ct1["RescaleIntercept"]) == -1024  # a negative number is not mistaken for a formula
    assert ct1["WindowCenter"] == ""  # absent
    assert ct1["ReferencedImageSequence"].startswith("[{") and "1.2.3.4.5" in ct1["ReferencedImageSequence"]


def test_csv_guards_against_formula_injection(api, catalogue):
    rows = csv_rows(lookup(api, csv_format=True, instances=[catalogue["ct2"]], tags=["PatientName"]))
    assert rows[1][2] == "'=HYPERLINK(\"http://x\")"


@pytest.mark.parametrize("value", ["+SUM(A1)", "-1+2", "@cmd", "=1"])
def test_csv_quotes_every_formula_prefix(api, value):
    made = upload(api, dicom_bytes(PatientName=value)).json()
    rows = csv_rows(lookup(api, csv_format=True, instances=[made["id"]], tags=["PatientName"]))
    assert rows[1][2] == "'" + value


def test_csv_guards_multi_valued_elements_against_formula_injection(api):
    made = upload(api, dicom_bytes(ImageType=["=1+2", "PRIMARY"])).json()
    rows = csv_rows(lookup(api, csv_format=True, instances=[made["id"]], tags=["ImageType"]))
    assert rows[1][2] == "'=1+2\\PRIMARY"


def test_csv_is_also_chosen_by_the_accept_header(api, catalogue):
    response = api.post(LOOKUP, {"instances": [catalogue["b"]], "tags": ["Modality"]}, format="json", HTTP_ACCEPT="text/csv")
    assert csv_rows(response)[1][2] == "CT"


def test_unknown_format_is_400(api, catalogue):
    response = api.post(LOOKUP + "?format=xml", {"instances": [catalogue["b"]], "tags": ["Modality"]}, format="json")
    body = assert_error(response, 400, "invalid_parameter")
    assert "csv or json" in body["error"]


def test_csv_and_json_agree(api, catalogue):
    exprs = ["PatientName", "InstanceNumber", "Modality", "PixelSpacing"]
    as_json = lookup_ok(api, study=catalogue["study_a"], tags=exprs)["results"]
    as_csv = csv_rows(lookup(api, csv_format=True, study=catalogue["study_a"], tags=exprs))[1:]
    assert [r[0] for r in as_csv] == [r["id"] for r in as_json]
    for row, cells in zip(as_json, as_csv, strict=True):
        for expr, cell in zip(exprs, cells[2:], strict=True):
            value = row["values"][expr]
            expected = "\\".join(map(str, value)) if isinstance(value, list) else str(value)
            if (row["id"], expr) == (catalogue["ct2"], "PatientName"):  # "=HYPERLINK(...)": quoted as text
                expected = "'" + expected
            assert cell == expected


# --- archives ----------------------------------------------------------------------------------------


@pytest.fixture
def study(api) -> dict:
    """One study of the owner: series 1 with three CT instances, series 2 with one MR."""
    study_uid, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    files = [dicom_bytes(StudyInstanceUID=study_uid, SeriesInstanceUID=s1, InstanceNumber=n) for n in (3, 1, 2)]
    files.append(dicom_bytes(MR_SMALL, StudyInstanceUID=study_uid, SeriesInstanceUID=s2, SeriesNumber=2))
    rows = bulk_ok(api, *[(f"{n}.dcm", data) for n, data in enumerate(files)])["results"]
    instances = [Instance.objects.select_related("series").get(pk=row["id"]) for row in rows]
    return {"id": str(instances[0].study_id), "uid": study_uid, "instances": instances, "series": {i.series_id for i in instances}}


def archive_of(response) -> zipfile.ZipFile:
    assert response.status_code == 200
    assert response.streaming is True
    assert response["Content-Type"] == "application/zip"
    assert response["Cache-Control"] == "private, no-store"
    assert not response.has_header("Content-Length")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.testzip() is None
    return archive


def download(client, instance_id) -> bytes:
    response = client.get(f"/api/instances/{instance_id}/file/")
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def test_study_archive_holds_exactly_the_stored_files(api, study, media_root):
    response = api.get(f"/api/studies/{study['id']}/archive/")
    assert response["Content-Disposition"] == f'attachment; filename="study-{study["uid"]}.zip"'
    archive = archive_of(response)
    expected = {f"{i.series.series_instance_uid}/{i.sop_instance_uid}.dcm": i for i in study["instances"]}
    assert sorted(archive.namelist()) == sorted(expected)
    for name, instance in expected.items():
        data = archive.read(name)
        assert data == download(api, instance.pk) == stored_bytes(instance.file.name)
        assert hashlib.sha256(data).hexdigest() == instance.sha256
    assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())


def test_archive_members_are_in_series_then_instance_order(api, study):
    names = archive_of(api.get(f"/api/studies/{study['id']}/archive/")).namelist()
    ct = sorted((i for i in study["instances"] if i.modality == "CT"), key=lambda i: i.instance_number)
    mr = [i for i in study["instances"] if i.modality == "MR"]
    assert names == [f"{i.series.series_instance_uid}/{i.sop_instance_uid}.dcm" for i in [*ct, *mr]]


def test_archive_member_names_carry_no_patient_data(api):
    data = dicom_bytes(PatientName="Secretive^Sam", PatientID="PID-12345")
    made = upload(api, data, "Secretive^Sam.dcm").json()
    response = api.get(f"/api/studies/{made['study']}/archive/")
    archive = archive_of(response)
    for leak in ("Secretive", "Sam", "PID-12345"):
        assert all(leak not in name for name in archive.namelist())
        assert leak not in response["Content-Disposition"]


def test_series_archive_holds_only_that_series(api, study):
    instance = next(i for i in study["instances"] if i.modality == "MR")
    response = api.get(f"/api/series/{instance.series_id}/archive/")
    assert response["Content-Disposition"] == f'attachment; filename="series-{instance.series.series_instance_uid}.zip"'
    archive = archive_of(response)
    assert archive.namelist() == [f"{instance.series.series_instance_uid}/{instance.sop_instance_uid}.dcm"]
    assert archive.read(archive.namelist()[0]) == download(api, instance.pk)


def test_a_missing_stored_file_is_listed_in_missing_txt_not_a_500(api, study, media_root):
    gone = study["instances"][1]
    default_storage.delete(gone.file.name)
    archive = archive_of(api.get(f"/api/studies/{study['id']}/archive/"))
    gone_name = f"{gone.series.series_instance_uid}/{gone.sop_instance_uid}.dcm"
    assert gone_name not in archive.namelist()
    assert len(archive.namelist()) == len(study["instances"])  # the others plus MISSING.txt
    assert archive.namelist()[-1] == "MISSING.txt"
    assert gone_name in archive.read("MISSING.txt").decode().splitlines()


def test_a_large_member_is_streamed_in_several_chunks(api, media_root):
    data = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    data.Rows = data.Columns = 1024
    data.PixelData = bytes(1024 * 1024 * 2)  # a 2 MB frame: more than one 1 MB chunk of the stream
    buffer = io.BytesIO()
    data.save_as(buffer, enforce_file_format=True)
    made = upload(api, buffer.getvalue()).json()
    response = api.get(f"/api/series/{made['series']}/archive/")
    assert response.streaming
    chunks = [c for c in response.streaming_content if c]
    assert len(chunks) >= 3
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    assert archive.read(archive.namelist()[0]) == stored_bytes(made["storage"]["key"])


@pytest.mark.parametrize("kind", ["studies", "series"])
def test_other_users_archive_is_404(api, other, kind):
    theirs = upload(client_for(other), dicom_bytes()).json()
    ident = theirs["study"] if kind == "studies" else theirs["series"]
    assert_error(api.get(f"/api/{kind}/{ident}/archive/"), 404, "not_found")
    assert_error(api.get(f"/api/{kind}/{uuid.uuid4()}/archive/"), 404, "not_found")


@pytest.mark.parametrize("kind", ["studies", "series"])
def test_viewer_may_download_other_users_archives_and_anonymous_may_not(api, viewer, kind):
    made = upload(api, dicom_bytes()).json()
    ident = made["study"] if kind == "studies" else made["series"]
    archive = archive_of(client_for(viewer).get(f"/api/{kind}/{ident}/archive/"))
    assert len(archive.namelist()) == 1
    assert_error(client_for(None).get(f"/api/{kind}/{ident}/archive/"), 401, "not_authenticated")
