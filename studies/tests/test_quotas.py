"""Per-user storage quotas: every channel refuses past the limit in its own terms, nothing is half-stored, usage
follows uploads and deletes, and 20 parallel uploads never overshoot (PostgreSQL)."""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from django.core.management import call_command
from django.db import connection
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from studies import dimse
from studies.models import Instance, Quota, Series, Study

from .conftest import assert_error, assert_storage_consistent, client_for, dicom_bytes, race, upload
from .test_dicomweb import stow

pytestmark = pytest.mark.django_db

# Each file's fresh UIDs vary its length by a few bytes: usage is compared with the stored rows' sizes.
CT_SIZE = len(dicom_bytes())


def stored_bytes_of(owner) -> int:
    return sum(Instance.objects.filter(owner=owner).values_list("size", flat=True))


def limit(user, *, instances=None, size=None) -> None:
    Quota.objects.update_or_create(user=user, defaults={"max_instances": instances, "max_bytes": size})


def test_an_upload_past_the_instance_limit_is_413_and_leaves_nothing(api, owner, media_root):
    limit(owner, instances=1)
    assert upload(api, dicom_bytes()).status_code == 201
    body = assert_error(upload(api, dicom_bytes()), 413, "quota_exceeded")
    assert "1 of your 1 instances" in body["error"] and body["quota"]["used_instances"] == 1
    assert Instance.objects.count() == Study.objects.count() == Series.objects.count() == 1  # no empty study left
    assert_storage_consistent(media_root)


def test_the_byte_limit_and_duplicates_which_cost_nothing(api, owner):
    limit(owner, size=CT_SIZE + 10)
    data = dicom_bytes()
    assert upload(api, data).status_code == 201
    assert upload(api, data).status_code == 200  # the same bytes again: a duplicate, no charge
    assert_error(upload(api, dicom_bytes()), 413, "quota_exceeded")


def test_the_settings_default_applies_to_users_without_limits_and_me_shows_usage(api, owner, settings):
    settings.DICOM_QUOTA_INSTANCES = 2
    assert api.get("/api/me/").json() == {
        "username": owner.username, "quota": {"max_bytes": None, "max_instances": 2, "used_bytes": 0, "used_instances": 0},
    }  # fmt: skip
    ids = [upload(api, dicom_bytes()).json()["id"] for _ in range(2)]
    assert_error(upload(api, dicom_bytes()), 413, "quota_exceeded")
    used = stored_bytes_of(owner)
    assert api.get("/api/me/").json()["quota"] == {"max_bytes": None, "max_instances": 2, "used_bytes": used, "used_instances": 2}
    assert api.delete(f"/api/instances/{ids[0]}/").status_code == 204  # deleting gives the space back
    assert upload(api, dicom_bytes()).status_code == 201
    limit(owner, instances=0)  # 0: no limit for this user, whatever the default
    assert upload(api, dicom_bytes()).status_code == 201


def test_bulk_upload_stores_what_fits_and_refuses_the_rest(api, owner):
    limit(owner, instances=2)
    files = [("file", (f"{n}.dcm", io.BytesIO(dicom_bytes()))) for n in range(3)]
    response = api.post("/api/instances/bulk/", {"file": [f[1][1] for f in files]}, format="multipart")
    assert response.status_code == 200, response.content
    statuses = [row["status"] for row in response.json()["results"]]
    assert statuses == ["created", "created", "refused"] and "quota exceeded" in response.json()["results"][2]["error"]


def test_stow_answers_out_of_resources_for_the_part_past_the_quota(api, owner):
    limit(owner, instances=1)
    response = stow(api, [dicom_bytes(), dicom_bytes()])
    assert response.status_code == 202, response.content
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xA700]
    assert Instance.objects.count() == 1


@pytest.mark.django_db(transaction=True)  # the receiver's thread writes in its own transactions
def test_c_store_past_the_quota_is_a700(owner):
    limit(owner, instances=1)
    server = dimse.start_server(owner=owner, port=0, ae_title="QUOTASCP", host="127.0.0.1", block=False)
    try:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="QUOTASCP")
        assert assoc.is_established
        statuses = [assoc.send_c_store(pydicom.dcmread(io.BytesIO(dicom_bytes()))).Status for _ in range(2)]
        assoc.release()
    finally:
        dimse.stop_server(server)
    assert statuses == [0x0000, 0xA700]


def test_import_dicom_reports_the_files_past_the_quota(owner, tmp_path):
    limit(owner, instances=2)
    source = tmp_path / "export"
    source.mkdir()
    for n in range(3):
        (source / f"{n}.dcm").write_bytes(dicom_bytes())
    report = tmp_path / "report.json"
    call_command("import_dicom", str(source), "--owner", owner.username, "--report", str(report), "--workers", "1", verbosity=0)
    rows = json.loads(report.read_text())
    assert sorted(row["status"] for row in rows) == ["created", "created", "refused"]
    assert all("quota exceeded" in row["error"] for row in rows if row["status"] == "refused")
    assert Quota.objects.get(user=owner).used_instances == Instance.objects.filter(owner=owner).count() == 2


def test_deidentify_past_the_quota_is_413_and_stores_nothing(api, owner):
    source = Instance.objects.get(pk=upload(api, dicom_bytes()).json()["id"]).study
    limit(owner, instances=1)
    body = assert_error(api.post(f"/api/studies/{source.pk}/deidentify/", {}, format="json"), 413, "quota_exceeded")
    assert body["files"][0]["id"] == str(source.instances.get().pk) and Study.objects.count() == 1


def test_only_superusers_manage_quotas_in_the_admin(make_user, superuser):
    from django.test import Client

    staff = make_user("clerk", staff=True)
    browser = Client()
    browser.force_login(staff)
    assert browser.get("/admin/studies/quota/").status_code == 403
    browser.force_login(superuser)
    response = browser.post("/admin/studies/quota/add/", {"user": staff.pk, "max_bytes": "1000", "max_instances": ""})
    assert response.status_code == 302, response.content.decode()[-1500:]
    assert (Quota.objects.get(user=staff).max_bytes, Quota.objects.get(user=staff).max_instances) == (1000, None)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_twenty_parallel_uploads_never_overshoot(owner, media_root):
    if connection.vendor != "postgresql":
        pytest.skip("needs concurrent writers: runs when DATABASE_URL=postgres://... (the PostgreSQL pass of CI)")
    limit(owner, instances=10)
    files = [dicom_bytes() for _ in range(20)]
    clients = [client_for(owner) for _ in files]
    results = race(*(lambda c=c, d=d: upload(c, d) for c, d in zip(clients, files, strict=True)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] * 10 + [413] * 10, statuses
    quota = Quota.objects.get(user=owner)
    assert quota.used_instances == Instance.objects.filter(owner=owner).count() == 10
    assert quota.used_bytes == sum(Instance.objects.filter(owner=owner).values_list("size", flat=True))
    assert_storage_consistent(media_root)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_parallel_uploads_within_the_byte_limit_of_several_series(owner, media_root):
    if connection.vendor != "postgresql":
        pytest.skip("needs concurrent writers: runs when DATABASE_URL=postgres://... (the PostgreSQL pass of CI)")
    limit(owner, size=5 * CT_SIZE + CT_SIZE // 2)
    results = race(*(lambda c=client_for(owner): upload(c, dicom_bytes()) for _ in range(12)))
    assert sorted(r.status_code for r in results) == [201] * 5 + [413] * 7
    assert Quota.objects.get(user=owner).used_bytes == stored_bytes_of(owner)
    assert Study.objects.filter(owner=owner).count() == 5  # the refused ones left no study behind
