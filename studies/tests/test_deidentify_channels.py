"""De-identification through the admin's study actions and `manage.py deidentify` (folders, zips, a catalogue)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from pydicom.data import get_testdata_file

from studies import services
from studies.audit.models import AuditEvent
from studies.models import Deidentification, Instance, Study
from studies.uploads import stage_stream

from .conftest import CT_SMALL, dicom_bytes

pytestmark = pytest.mark.django_db

US = Path(get_testdata_file("US1_J2KR.dcm"))


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def stored_study(user, source: Path = CT_SMALL, **attributes) -> Study:
    outcome = services.ingest(owner=user, staged=stage_stream(io.BytesIO(dicom_bytes(source, **attributes)), "x.dcm"))
    assert outcome.stored, outcome.message
    return Instance.objects.get(pk=outcome.id).study


@pytest.fixture
def staff_user(make_user):
    return make_user("alice", staff=True)


def test_admin_action_makes_a_copy_owned_by_the_admin_user(staff_user, make_user):
    source = stored_study(staff_user)
    response = browser(staff_user).post(
        reverse("admin:studies_study_changelist"), {"action": "deidentify_modified_dates", "_selected_action": [str(source.pk)]}
    )
    assert response.status_code == 302
    copy = Study.objects.exclude(pk=source.pk).get()
    assert copy.owner == staff_user and copy.patient_name.startswith("ANON")
    assert copy.study_date is not None and copy.study_date < source.study_date  # shifted back, not removed
    record = Deidentification.objects.get()
    assert (record.source_id, record.result_study_id, record.options["options"]) == (str(source.pk), copy.pk, ["retain_modified_dates"])


def test_admin_action_refuses_burned_in_and_says_so(staff_user):
    source = stored_study(staff_user, US)
    response = browser(staff_user).post(
        reverse("admin:studies_study_changelist"), {"action": "deidentify_basic", "_selected_action": [str(source.pk)]}, follow=True
    )
    assert "not de-identified" in response.content.decode() and "Burned In Annotation" in response.content.decode()
    assert Study.objects.count() == 1 and not Deidentification.objects.exists()


def run(*args, report: Path) -> list[dict]:
    call_command("deidentify", *map(str, args), "--report", str(report), verbosity=0)
    return json.loads(report.read_text())


def test_command_into_a_folder_with_the_import_report_shape(tmp_path, superuser):
    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes(dicom_bytes(CT_SMALL, PatientName="Secret^Person"))
    (src / "us.dcm").write_bytes(dicom_bytes(US))
    (src / "notes.txt").write_text("not dicom")
    rows = run(src, "--out", tmp_path / "out", report=tmp_path / "r.json")
    by_name = {Path(r["filename"]).name: r for r in rows}
    assert set(by_name) == {"ct.dcm", "us.dcm", "notes.txt"}
    assert set(rows[0]) == {"filename", "status", "id", "error", "size"}
    assert by_name["ct.dcm"]["status"] == "created" and by_name["us.dcm"]["status"] == "refused"
    assert "Burned In Annotation" in by_name["us.dcm"]["error"] and by_name["notes.txt"]["status"] == "skipped"
    written = tmp_path / "out" / by_name["ct.dcm"]["id"]
    assert b"Secret" not in written.read_bytes() and pydicom.dcmread(written).PatientIdentityRemoved == "YES"
    assert Deidentification.objects.get().delivered_as == "folder"
    assert AuditEvent.objects.filter(action="deidentify-result", object_type="deidentification").count() == 1


def test_command_rerun_with_a_secret_gives_duplicates(tmp_path, superuser):
    (tmp_path / "secret").write_text("a-secret-long-enough-for-this\n")
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/ct.dcm", dicom_bytes(CT_SMALL))
    args = (archive, "--out", tmp_path / "out", "--project-secret-file", tmp_path / "secret")
    first = run(*args, report=tmp_path / "1.json")
    second = run(*args, report=tmp_path / "2.json")
    assert [r["status"] for r in first] == ["created"] and [r["status"] for r in second] == ["duplicate"]
    assert first[0]["id"] == second[0]["id"]


def test_command_into_a_catalogue_with_masks(tmp_path, owner):
    src = tmp_path / "us.dcm"
    src.write_bytes(dicom_bytes(US))
    rows = run(src, "--owner", owner.username, "--mask", "0,0,50,20", report=tmp_path / "r.json")
    assert [r["status"] for r in rows] == ["created"]
    inst = Instance.objects.get(pk=rows[0]["id"])
    assert inst.owner == owner and inst.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    ds = pydicom.dcmread(inst.file.open("rb"))
    assert not ds.pixel_array[:20, :50].any()
    assert "113101" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "/tmp/x", "--owner", "nobody"], "not allowed with"),
        (["--owner", "nobody"], "no user named"),
        (["--out", "{tmp}/o", "--mask", "1,2,3"], "X,Y,WIDTH,HEIGHT"),
        (["--out", "{tmp}/o", "--project-secret-file", "{tmp}/missing"], "cannot read the project secret"),
    ],
)
def test_command_bad_arguments_are_clear_errors(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(CommandError, match=message):
        call_command("deidentify", str(CT_SMALL), *args, verbosity=0)


def test_admin_lists_only_your_own_copies_read_only_and_never_the_uid_map(staff_user, make_user):
    other_staff = make_user("bob", staff=True)
    mine = Deidentification.objects.create(owner=staff_user, source_id="a", uid_map={"1.2.3": "2.25.99999"})
    Deidentification.objects.create(owner=other_staff, source_id="b")
    client = browser(staff_user)
    listing = client.get(reverse("admin:studies_deidentification_changelist")).content.decode()
    assert '<td class="field-source_id">a</td>' in listing and 'class="field-source_id">b<' not in listing
    page = client.get(reverse("admin:studies_deidentification_change", args=[mine.pk]))
    assert page.status_code == 200 and "2.25.99999" not in page.content.decode()
    assert client.post(reverse("admin:studies_deidentification_change", args=[mine.pk]), {}).status_code == 403
    assert client.get(reverse("admin:studies_deidentification_add")).status_code == 403
