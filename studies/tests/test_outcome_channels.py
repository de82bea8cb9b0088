"""Every channel's mapping of the one ingest outcome, checked against every reason, and the
series-in-another-study conflict end to end through each channel (it used to be mistranslated)."""

from __future__ import annotations

import io

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from studies import dimse
from studies.admin import admin_row
from studies.dicomweb import stow
from studies.http.status import HTTP_STATUS
from studies.outcome import STATUS_OF, Outcome, Reason, Status

from .conftest import dicom_bytes, upload

# What each reason means, per channel, written out here (not derived from the tables under test).
EXPECTED = {
    #  reason                        status              HTTP  DIMSE   STOW failure
    Reason.STORED:                (Status.CREATED,    201, 0x0000, None),
    Reason.SAME_BYTES:            (Status.DUPLICATE,  200, 0x0000, None),
    Reason.SAME_UID:              (Status.CONFLICT,   409, 0xC409, 0x0111),
    Reason.SERIES_IN_OTHER_STUDY: (Status.CONFLICT,   409, 0xC409, 0x0110),
    Reason.CATALOGUE_BUSY:        (Status.CONFLICT,   409, 0xA700, 0x0110),
    Reason.INVALID:               (Status.REFUSED,    400, 0xC000, 0xC000),
    Reason.UNREADABLE:            (Status.REFUSED,    400, 0xC000, 0xC000),
    Reason.WRONG_STUDY:           (Status.REFUSED,    400, 0xC000, 0xA900),
    Reason.TOO_LARGE:             (Status.REFUSED,    413, 0xA700, 0xA700),
    Reason.QUOTA_EXCEEDED:        (Status.REFUSED,    413, 0xA700, 0xA700),
    Reason.STORAGE_FAILED:        (Status.REFUSED,    503, 0xA700, 0xA700),
    Reason.NOT_AN_INSTANCE:       (Status.SKIPPED,    400, 0xC000, 0xC000),
}  # fmt: skip


def test_every_reason_is_written_out_here():
    assert set(EXPECTED) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason))
def test_every_table_maps_every_reason(reason):
    status, http, dimse_status, stow_failure = EXPECTED[reason]
    assert STATUS_OF[reason] is status
    assert HTTP_STATUS[reason] == http
    assert dimse.DIMSE_STATUS[reason][0] == dimse_status
    assert stow.STOW_FAILURE[reason][0] == stow_failure


def test_the_tables_have_no_other_keys():
    for table in (STATUS_OF, HTTP_STATUS, dimse.DIMSE_STATUS, stow.STOW_FAILURE):
        assert set(table) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason))
def test_dimse_answer_for_every_reason_has_a_comment_only_when_it_failed(reason):
    answer = dimse.store_answer(Outcome(reason, "the service's sentence", object_id="x", size=7))
    assert answer.status == EXPECTED[reason][2]
    assert answer.audit_status == EXPECTED[reason][1]
    assert bool(answer.comment) == (answer.status != dimse.SUCCESS)
    assert answer.size == 7


@pytest.mark.django_db
@pytest.mark.parametrize("reason", list(Reason))
def test_stow_comment_fits_an_lo_for_every_reason(reason):
    comment = stow.STOW_FAILURE[reason][1]
    assert comment is None or len(comment) <= 64


@pytest.mark.django_db
@pytest.mark.parametrize("reason", list(Reason))
def test_report_and_admin_rows_for_every_reason(reason):
    row = Outcome(reason, "why", label="a.dcm", size=3).report_row()
    assert row == {"filename": "a.dcm", "status": str(EXPECTED[reason][0]), "id": None, "error": "why", "size": 3}
    assert admin_row(Outcome(reason, label="a.dcm"))["url"] == ""


@pytest.mark.django_db
def test_admin_rows_link_to_the_instance_or_the_series_they_name():
    assert admin_row(Outcome(Reason.SAME_UID, object_id="0c1b5e33-5d0b-4c1e-9bd2-57dfe8fa0b71"))["url"].startswith(
        "/admin/studies/instance/0c1b5e33"
    )
    row = admin_row(Outcome(Reason.SERIES_IN_OTHER_STUDY, object_id="0c1b5e33-5d0b-4c1e-9bd2-57dfe8fa0b71", object_type="series"))
    assert row["url"].startswith("/admin/studies/series/0c1b5e33")


# --- the series-in-another-study conflict, through each channel -------------------------------------------


@pytest.fixture
def series_clash(api):
    """(first file's upload response, a file whose series is the first's but whose study is another)."""
    first_bytes = dicom_bytes()
    first = upload(api, first_bytes).json()
    series_uid = pydicom.dcmread(io.BytesIO(first_bytes)).SeriesInstanceUID
    return first, dicom_bytes(SeriesInstanceUID=series_uid)


def _series_id(api, first) -> str:
    return api.get(f"/api/instances/{first['id']}/").json()["series"]


@pytest.mark.django_db
def test_rest_upload_answers_409_naming_the_series(api, series_clash):
    first, clash = series_clash
    response = upload(api, clash)
    assert response.status_code == 409
    body = response.json()
    assert (body["code"], body["reason"]) == ("conflict", "series_in_other_study")
    assert body["series"] == _series_id(api, first)


@pytest.mark.django_db
def test_bulk_upload_row_names_the_series(api, series_clash):
    first, clash = series_clash
    response = api.post("/api/instances/bulk/", {"file": [io.BytesIO(clash)]}, format="multipart")
    (row,) = response.json()["results"]
    assert (row["status"], row["id"]) == ("conflict", _series_id(api, first))
    assert "different study" in row["error"]


@pytest.mark.django_db
def test_stow_reports_a_processing_failure_not_a_duplicate_uid(api, series_clash):
    _, clash = series_clash
    response = api.generic("POST", "/dicomweb/studies", clash, content_type="application/dicom")
    assert response.status_code == 409
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0110]
    assert failed["00000902"]["Value"] == ["Series Instance UID already stored under another study"]


@pytest.mark.django_db
def test_admin_upload_links_the_series(owner, api, series_clash, client):
    first, clash = series_clash
    owner.is_staff = True
    owner.save()
    client.force_login(owner)
    handle = io.BytesIO(clash)
    handle.name = "clash.dcm"
    response = client.post("/admin/studies/instance/upload/", {"files": [handle]})
    (row,) = response.context["results"]
    series_id = _series_id(api, first)
    assert (row["status"], row["id"]) == ("conflict", series_id)
    assert row["url"] == f"/admin/studies/series/{series_id}/change/"


@pytest.mark.django_db(transaction=True)
def test_c_store_answers_c409_with_the_series_comment(owner, series_clash):
    _, clash = series_clash
    server = dimse.start_server(owner=owner, port=0, ae_title="DICOMSITE", host="127.0.0.1", block=False)
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, pydicom.dcmread(io.BytesIO(clash)).file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="DICOMSITE")
        assert assoc.is_established
        status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(clash)))
        assoc.release()
    finally:
        dimse.stop_server(server)
    assert status.Status == 0xC409
    assert status.ErrorComment == "Series Instance UID already stored under another study"
