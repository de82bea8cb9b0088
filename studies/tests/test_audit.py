"""Audit trail (every read/change of patient data and every denied attempt), request ids, PHI-free logs."""

from __future__ import annotations

import csv
import io
import json
import logging

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dicomsite.logging import JsonFormatter, RequestIdFilter
from studies.models import AuditEvent

from .conftest import client_for, dicom_bytes, drain, upload

SECRET_NAME = "Secretary^Patricia^Q"
SECRET_ID = "PHI-ID-55501"
SECRET_FILENAME = "Patricia_Secretary_MRN55501.dcm"


def events() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("id"))


def last() -> AuditEvent:
    return AuditEvent.objects.order_by("-id").first()


@pytest.fixture
def instance_id(api) -> str:
    response = upload(api, dicom_bytes(PatientName=SECRET_NAME, PatientID=SECRET_ID), SECRET_FILENAME)
    assert response.status_code == 201
    return response.json()["id"]


# --- one event per read or change, with who, what, outcome ------------------------------------


@pytest.mark.django_db
def test_upload_is_audited_with_user_object_and_address(api, owner):
    response = upload(api, dicom_bytes())
    event = last()
    assert (event.action, event.method, event.outcome, event.status) == ("instance-list-post", "POST", "success", 201)
    assert event.user == owner and event.username == "owner"
    assert event.client_address == "127.0.0.1"
    assert event.request_id == response["X-Request-ID"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "action"),
    [
        ("", "instance-detail"),
        ("tags/", "instance-tags"),
        ("tags/PatientName/", "instance-tag"),
        ("image/", "instance-image"),
        ("thumbnail/", "instance-thumbnail"),
        ("file/", "instance-file"),
    ],
)
def test_every_read_of_an_instance_is_audited(api, instance_id, path, action):
    before = AuditEvent.objects.count()
    drain(api.get(f"/api/instances/{instance_id}/{path}"))
    assert AuditEvent.objects.count() == before + 1
    event = last()
    assert (event.action, event.object_type, event.object_id, event.outcome) == (action, "instance", instance_id, "success")


@pytest.mark.django_db
def test_lists_searches_archives_lookups_and_deletes_are_audited(api, instance_id):
    study = api.get("/api/studies/").json()["results"][0]["id"]
    api.get("/api/instances/?search=Secretary")
    drain(api.get(f"/api/studies/{study}/archive/"))
    api.post("/api/tags/lookup/", {"study": study, "tags": ["PatientID"]}, format="json")
    api.delete(f"/api/instances/{instance_id}/")
    actions = [(e.action, e.object_id, e.outcome) for e in events()]
    assert ("study-list", "", "success") in actions
    assert ("instance-list", "", "success") in actions
    assert ("study-archive", study, "success") in actions
    assert ("tag-lookup-post", "", "success") in actions
    assert ("instance-detail-delete", instance_id, "success") in actions


@pytest.mark.django_db
def test_another_users_object_is_404_to_them_but_denied_in_the_audit(instance_id, other):
    response = client_for(other).get(f"/api/instances/{instance_id}/image/")
    assert response.status_code == 404
    event = last()
    assert (event.username, event.object_id, event.status, event.outcome) == ("other", instance_id, 404, "denied")


@pytest.mark.django_db
def test_an_unknown_object_is_not_found_and_anonymous_access_is_denied(api, instance_id):
    api.get("/api/instances/00000000-0000-0000-0000-000000000000/")
    assert (last().outcome, last().status) == ("not_found", 404)
    Client().get(f"/api/instances/{instance_id}/tags/")
    event = last()
    assert (event.user, event.username, event.outcome, event.status, event.object_id) == (None, "", "denied", 401, instance_id)


@pytest.mark.django_db
def test_bad_input_is_audited_as_refused(api, instance_id):
    api.get(f"/api/instances/{instance_id}/image/?window=abc")
    assert (last().outcome, last().status) == ("refused", 400)
    upload(api, b"not dicom")
    assert (last().action, last().outcome) == ("instance-list-post", "refused")


@pytest.mark.django_db
def test_admin_views_of_the_catalogue_are_audited(make_user, instance_id):
    staff = make_user("nurse", staff=True)
    browser = Client()
    browser.force_login(staff)
    browser.get(reverse("admin:studies_instance_changelist"))
    assert (last().action, last().username, last().outcome) == ("admin-instance-changelist", "nurse", "success")
    browser.get(reverse("admin:studies_instance_change", args=[instance_id]))
    # The owner's instance does not exist for this staff user: the admin redirects; the attempt is recorded.
    event = last()
    assert (event.action, event.object_id) == ("admin-instance-change", instance_id)


@pytest.mark.django_db
def test_requests_outside_patient_data_are_not_audited(api):
    api.get("/healthz")
    api.get("/api/schema/")
    assert AuditEvent.objects.count() == 0


# --- append-only ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_audit_events_cannot_be_changed_or_deleted(api, instance_id):
    event = last()
    event.outcome = "success-edited"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.update(outcome="x")
    assert AuditEvent.objects.filter(outcome="success-edited").count() == 0


@pytest.mark.django_db
def test_admin_shows_events_read_only_even_to_superusers(superuser, api, instance_id):
    browser = Client()
    browser.force_login(superuser)
    event = AuditEvent.objects.first()
    assert browser.get(reverse("admin:studies_auditevent_changelist")).status_code == 200
    page = browser.get(reverse("admin:studies_auditevent_change", args=[event.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert browser.post(reverse("admin:studies_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert browser.get(reverse("admin:studies_auditevent_add")).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.django_db
def test_staff_without_superuser_cannot_read_the_audit_trail(make_user):
    browser = Client()
    browser.force_login(make_user("nurse", staff=True))
    assert browser.get(reverse("admin:studies_auditevent_changelist")).status_code == 403


# --- export ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_audit_writes_the_date_range_as_csv(api, instance_id, tmp_path):
    api.get(f"/api/instances/{instance_id}/")
    today = timezone.localdate(last().at).isoformat()
    AuditEvent.objects.create(action="old", method="GET", outcome="success", status=200, at="2020-01-01T12:00:00Z")
    target = tmp_path / "audit.csv"
    call_command("export_audit", since=today, until=today, output=str(target), stdout=io.StringIO())
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == AuditEvent.objects.exclude(action="old").count() >= 2
    assert {"instance-list-post", "instance-detail"} <= {r["action"] for r in rows}
    old = io.StringIO()
    call_command("export_audit", since="2020-01-01", until="2020-01-01", stdout=old)
    assert [r["action"] for r in csv.DictReader(io.StringIO(old.getvalue()))] == ["old"]


# --- request ids and logs ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_valid_incoming_request_id_is_kept_and_a_hostile_one_replaced(api):
    assert api.get("/api/instances/", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    replaced = api.get("/api/instances/", HTTP_X_REQUEST_ID="bad\nid <script>")["X-Request-ID"]
    assert len(replaced) == 32 and replaced.isalnum()


def test_json_log_lines_carry_the_request_id():
    record = logging.LogRecord("studies", logging.INFO, __file__, 1, "instance created id=%s", ("x",), None)
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "instance created id=x" and line["request_id"] == "-" and line["level"] == "INFO"


@pytest.mark.django_db
def test_logs_never_hold_patient_names_ids_or_client_filenames(api, other, caplog):
    """Every kind of request a user can make about a patient's file, with the log captured at DEBUG."""
    caplog.set_level(logging.DEBUG)
    data = dicom_bytes(PatientName=SECRET_NAME, PatientID=SECRET_ID, AccessionNumber="ACC-PHI-9")
    created = upload(api, data, SECRET_FILENAME).json()["id"]
    upload(api, data, SECRET_FILENAME)  # duplicate
    upload(api, dicom_bytes(PatientName=SECRET_NAME, PatientID=SECRET_ID), SECRET_FILENAME)  # new UIDs: created
    upload(api, b"garbage " + SECRET_NAME.encode(), SECRET_FILENAME)  # refused
    for path in ("", "tags/", "tags/PatientName/", "image/", "image/?window=abc", "thumbnail/", "file/"):
        drain(api.get(f"/api/instances/{created}/{path}"))
        drain(client_for(other).get(f"/api/instances/{created}/{path}"))
    api.get(f"/api/instances/?search={SECRET_NAME}&patient_id={SECRET_ID}")
    api.delete(f"/api/instances/{created}/")
    assert caplog.records, "the requests above log something; an empty capture would prove nothing"
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in (SECRET_NAME, "Secretary", SECRET_ID, "ACC-PHI-9", SECRET_FILENAME, "MRN55501"):
        assert secret not in text


@pytest.mark.django_db
def test_write_event_stores_the_row_the_orm_would(make_user):
    """write_event is one hand-built INSERT (for speed); its row must equal an ORM-created one, adapters included
    (an IPv6 address in its canonical form, the time zone-aware timestamp, the user and the cut lengths)."""
    from studies.audit.events import write_event

    user = make_user("auditor")
    fields = {"action": "x" * 80, "method": "GET", "object_type": "instance", "object_id": "1" * 70, "outcome": "success",
              "status": 200, "request_id": "r" * 70}  # fmt: skip
    before = timezone.now()
    write_event(user=user, client_address="2001:DB8:0:0::1", **fields)
    written = last()
    assert written.at >= before and written.at.tzinfo is not None
    expected = AuditEvent.objects.create(user=user, username="auditor", action="x" * 64, method="GET", object_type="instance",
                                         object_id="1" * 64, outcome="success", status=200, client_address="2001:db8::1",
                                         request_id="r" * 64)  # fmt: skip
    expected.refresh_from_db()
    columns = [f.attname for f in AuditEvent._meta.concrete_fields if f.attname not in ("id", "at")]
    assert {c: getattr(written, c) for c in columns} == {c: getattr(expected, c) for c in columns}
    assert written.client_address == "2001:db8::1"

    write_event(user=None, client_address=None, **{**fields, "object_id": ""})
    anonymous = last()
    assert (anonymous.user_id, anonymous.username, anonymous.object_type, anonymous.client_address) == (None, "", "", None)
