"""The ingest service itself (services.ingest / ingest_batch / delete_instance), called directly:
one Outcome per file, with the reason every channel maps; nothing half-stored."""

from __future__ import annotations

import io

import pydicom
import pytest
from django.test import override_settings

from dicomcore import sources
from studies import services
from studies.errors import InvalidUpload, SeriesConflict
from studies.models import Instance, Series, Study
from studies.outcome import Outcome, Reason, Status, counts
from studies.uploads import stage_stream

from .conftest import CT_SMALL, dicom_bytes, stored_files

pytestmark = pytest.mark.django_db


def staged(data: bytes, name: str = "scan.dcm"):
    return stage_stream(io.BytesIO(data), name)


def prepared(tmp_path, data: bytes, name: str) -> sources.Prepared:
    path = tmp_path / name
    path.write_bytes(data)
    (source,) = sources.walk([path])
    item = sources.prepare(source, max_bytes=2**31, max_inflated_bytes=2**31)
    assert isinstance(item, sources.Prepared)
    return item


def same_uids_other_bytes(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = "Other^Content"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def series_moved_to_another_study(data: bytes) -> bytes:
    """A new instance in `data`'s series, but naming another study."""
    series_uid = pydicom.dcmread(io.BytesIO(data)).SeriesInstanceUID
    return dicom_bytes(SeriesInstanceUID=series_uid)


# --- ingest(): one file -----------------------------------------------------------------------------


def test_a_new_file_is_created_with_the_instance_and_its_label(owner, media_root):
    outcome = services.ingest(owner=owner, staged=staged(dicom_bytes(), "a.dcm"))
    assert (outcome.status, outcome.reason, outcome.label) == (Status.CREATED, Reason.STORED, "a.dcm")
    assert outcome.stored and outcome.error is None
    assert outcome.instance == Instance.objects.get() and outcome.id == str(outcome.instance.pk)
    assert outcome.size == outcome.instance.size == len(stored_files(media_root)[0].read_bytes())


def test_the_same_bytes_again_are_a_duplicate_of_the_first_instance(owner, media_root):
    data = dicom_bytes()
    first = services.ingest(owner=owner, staged=staged(data))
    again = services.ingest(owner=owner, staged=staged(data))
    assert (again.status, again.reason, again.id) == (Status.DUPLICATE, Reason.SAME_BYTES, first.id)
    assert again.instance.pk == first.instance.pk
    assert Instance.objects.count() == 1 and len(stored_files(media_root)) == 1


def test_same_sop_instance_uid_with_other_bytes_is_a_conflict_naming_the_instance(owner, media_root):
    data = dicom_bytes()
    first = services.ingest(owner=owner, staged=staged(data))
    clash = services.ingest(owner=owner, staged=staged(same_uids_other_bytes(data)))
    assert (clash.status, clash.reason) == (Status.CONFLICT, Reason.SAME_UID)
    assert (clash.object_type, clash.id) == ("instance", first.id)
    assert clash.error.status == 409 and "different content" in clash.message
    assert len(stored_files(media_root)) == 1


def test_a_series_under_another_study_is_a_conflict_naming_the_series(owner, media_root):
    data = dicom_bytes()
    first = services.ingest(owner=owner, staged=staged(data))
    clash = services.ingest(owner=owner, staged=staged(series_moved_to_another_study(data)))
    assert (clash.status, clash.reason) == (Status.CONFLICT, Reason.SERIES_IN_OTHER_STUDY)
    assert (clash.object_type, clash.id) == ("series", str(first.instance.series_id))
    assert isinstance(clash.error, SeriesConflict) and "different study" in clash.message
    assert Study.objects.count() == 1 and Series.objects.count() == 1  # no empty study left behind
    assert len(stored_files(media_root)) == 1


def test_another_owner_may_store_the_same_bytes(owner, other):
    data = dicom_bytes()
    mine = services.ingest(owner=owner, staged=staged(data))
    theirs = services.ingest(owner=other, staged=staged(data))
    assert mine.reason is theirs.reason is Reason.STORED and mine.id != theirs.id


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"", Reason.INVALID, "empty"),
        (b"not a dicom file at all" * 10, Reason.INVALID, ""),
        (dicom_bytes(SeriesInstanceUID=None), Reason.INVALID, "Series Instance UID"),
    ],
    ids=["empty", "not-dicom", "no-series-instance-uid"],
)
def test_invalid_input_is_refused_with_the_sentence_and_nothing_is_stored(owner, media_root, data, reason, words):
    outcome = services.ingest(owner=owner, staged=staged(data))
    assert (outcome.status, outcome.reason) == (Status.REFUSED, reason)
    assert isinstance(outcome.error, InvalidUpload) and outcome.error.status == 400
    assert words in outcome.message and outcome.id is None
    assert stored_files(media_root) == [] and Instance.objects.count() == 0


def test_a_file_over_the_upload_limit_is_refused_as_too_large(owner, media_root):
    data = CT_SMALL.read_bytes()
    with override_settings(DICOM_MAX_UPLOAD_BYTES=len(data) - 1):
        outcome = services.ingest(owner=owner, staged=stage_stream(io.BytesIO(data), "x.dcm", max_bytes=len(data)))
    assert (outcome.status, outcome.reason, outcome.error.status) == (Status.REFUSED, Reason.TOO_LARGE, 413)
    assert stored_files(media_root) == []


def test_ingest_consumes_the_staged_file(owner):
    upload = staged(dicom_bytes())
    path = upload.temporary_file_path()
    services.ingest(owner=owner, staged=upload)
    assert upload.closed
    assert not __import__("os").path.exists(path)


# --- ingest_batch(): import_dicom's path -------------------------------------------------------------


def test_a_batch_answers_every_reason_a_single_upload_does(owner, tmp_path, media_root):
    data = dicom_bytes()
    services.ingest(owner=owner, staged=staged(data))
    new = dicom_bytes()
    files = [
        prepared(tmp_path, new, "new.dcm"),
        prepared(tmp_path, data, "dup.dcm"),
        prepared(tmp_path, same_uids_other_bytes(data), "clash.dcm"),
        prepared(tmp_path, series_moved_to_another_study(data), "moved.dcm"),
        prepared(tmp_path, new, "dup-in-batch.dcm"),
    ]
    outcomes = services.ingest_batch(owner=owner, files=files)
    assert [o.reason for o in outcomes] == [
        Reason.STORED, Reason.SAME_BYTES, Reason.SAME_UID, Reason.SERIES_IN_OTHER_STUDY, Reason.SAME_BYTES,
    ]
    assert [o.label for o in outcomes] == [f.label for f in files]
    assert outcomes[4].id == outcomes[0].id
    assert outcomes[3].object_type == "series"
    assert Instance.objects.count() == 2 and len(stored_files(media_root)) == 2


def test_a_dry_run_batch_classifies_like_the_real_one_and_stores_nothing(owner, tmp_path, media_root):
    data = dicom_bytes()
    services.ingest(owner=owner, staged=staged(data))
    new = dicom_bytes()
    files = [
        prepared(tmp_path, new, "new.dcm"),
        prepared(tmp_path, data, "dup.dcm"),
        prepared(tmp_path, same_uids_other_bytes(data), "clash.dcm"),
        prepared(tmp_path, new, "again.dcm"),
    ]
    planned: dict[str, set] = {"sha256": set(), "uid": set()}
    dry = services.ingest_batch(owner=owner, files=files, dry_run=True, planned=planned)
    assert Instance.objects.count() == 1 and len(stored_files(media_root)) == 1
    # A later dry-run batch sees what the earlier one would have stored.
    later = services.ingest_batch(owner=owner, files=[prepared(tmp_path, new, "later.dcm")], dry_run=True, planned=planned)
    real = services.ingest_batch(owner=owner, files=files)
    assert [o.status for o in dry] == [o.status for o in real] == ["created", "duplicate", "conflict", "duplicate"]
    assert [o.message for o in dry] == [o.message for o in real]
    assert later[0].status == "duplicate"


# --- refusal() and counts() --------------------------------------------------------------------------


def test_refusal_carries_the_errors_reason_sentence_and_what_it_names():
    outcome = services.refusal(SeriesConflict("in another study", series="s-1"), label="x.dcm", size=3)
    assert (outcome.reason, outcome.message, outcome.id, outcome.object_type) == (
        Reason.SERIES_IN_OTHER_STUDY, "in another study", "s-1", "series",
    )
    assert outcome.report_row() == {"filename": "x.dcm", "status": "conflict", "id": "s-1", "error": "in another study", "size": 3}


def test_counts_name_every_status_even_when_none_happened():
    assert counts([Outcome(Reason.STORED), Outcome(Reason.NOT_AN_INSTANCE), Outcome(Reason.STORED)]) == {
        "created": 2, "duplicate": 0, "conflict": 0, "refused": 0, "skipped": 1,
    }


# --- delete_instance() -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_delete_removes_the_row_its_empty_series_and_study_and_the_file_after_commit(owner, media_root):
    outcome = services.ingest(owner=owner, staged=staged(dicom_bytes()))
    services.delete_instance(instance=outcome.instance)
    assert Instance.objects.count() == Series.objects.count() == Study.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.django_db(transaction=True)
def test_delete_keeps_a_series_that_still_has_instances(owner, media_root):
    first = services.ingest(owner=owner, staged=staged(dicom_bytes()))
    series_uid = first.instance.series.series_instance_uid
    study_uid = first.instance.study.study_instance_uid
    second = services.ingest(
        owner=owner, staged=staged(dicom_bytes(SeriesInstanceUID=series_uid, StudyInstanceUID=study_uid))
    )
    services.delete_instance(instance=first.instance)
    assert list(Instance.objects.values_list("pk", flat=True)) == [second.instance.pk]
    assert Series.objects.count() == Study.objects.count() == 1
    assert len(stored_files(media_root)) == 1
