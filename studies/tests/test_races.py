"""Races and faults: real threads against PostgreSQL, real database errors (triggers), real storage failures.

The invariant after every one: no row without a file, no file without a row, every stored file's sha256 is
its row's, nothing left in the upload staging folder. The storage faults need no concurrency and run on
SQLite too; the races and database faults need PostgreSQL (concurrent writers, triggers).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
from django.db import connection
from pydicom.uid import generate_uid
from rest_framework.test import APIClient

from studies.models import Instance, Series, Study

from .conftest import assert_storage_consistent, client_for, dicom_bytes, race, stored_files, upload

ROUNDS = 12
POSTGRES_ONLY = "races and database faults need concurrent writers and triggers: they run in the PostgreSQL pass of make test / CI"


@pytest.fixture(autouse=True)
def staging(settings, tmp_path) -> Path:
    """Uploads are staged in a folder of the test's own, so a leaked temporary file is seen."""
    folder = tmp_path / "staging"
    folder.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    return folder


@pytest.fixture
def postgres():
    if connection.vendor != "postgresql":
        pytest.skip(POSTGRES_ONLY)


def status(result) -> int:
    if isinstance(result, BaseException):
        raise AssertionError(f"a request raised {type(result).__name__}: {result}") from result
    return result.status_code


def same_series(template: bytes) -> bytes:
    """Another instance of the template's series (new SOP Instance UID, same study and series)."""
    ds = pydicom.dcmread(io.BytesIO(template))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = int(ds.get("InstanceNumber") or 0) + 1
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- upload racing delete ---------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_reupload_racing_delete_leaves_no_row_without_a_file_and_no_file_without_a_row(postgres, owner, media_root, staging):
    """The same bytes uploaded again while their instance is deleted, ROUNDS times with free interleaving."""
    deleter, uploader = client_for(owner), client_for(owner)
    for _ in range(ROUNDS):
        data = dicom_bytes()
        existing = upload(deleter, data).json()["id"]
        deleted, uploaded = race(lambda: deleter.delete(f"/api/instances/{existing}/"), lambda: upload(uploader, data))
        assert status(deleted) == 204
        # 200: the identical bytes were still there (the delete had not committed); 201: stored anew.
        assert status(uploaded) in (200, 201), uploaded.content
        assert not Instance.objects.filter(pk=existing).exists()
        if status(uploaded) == 201:
            assert Instance.objects.filter(pk=uploaded.json()["id"]).exists()
        assert_storage_consistent(media_root, staging=staging)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_upload_into_a_series_whose_last_instance_is_being_deleted_survives(postgres, owner, media_root, staging):
    """A deterministic interleaving: the upload runs and commits in the moment between delete_instance's
    "is the series empty?" check and its delete of the series. The pause is a pre_delete receiver on
    Series (Django sends it between collecting and deleting), not a mock: both requests run for real."""
    from django.db.models.signals import pre_delete

    deleter, uploader = client_for(owner), client_for(owner)
    first = dicom_bytes()
    existing = upload(deleter, first).json()["id"]
    second = same_series(first)
    upload_may_start, upload_done = threading.Event(), threading.Event()
    uploaded: list = []

    def pause_series_delete(sender, **kwargs):
        upload_may_start.set()
        upload_done.wait(timeout=5)  # a fixed service may hold a lock the upload waits for: then go on

    def upload_in_the_gap():
        upload_may_start.wait(timeout=30)
        try:
            return upload(uploader, second)
        finally:
            upload_done.set()

    pre_delete.connect(pause_series_delete, sender=Series, dispatch_uid="trust-race")
    try:
        deleted, uploaded = race(lambda: deleter.delete(f"/api/instances/{existing}/"), upload_in_the_gap)
    finally:
        pre_delete.disconnect(sender=Series, dispatch_uid="trust-race")
    assert status(deleted) == 204
    assert status(uploaded) in (201, 409), uploaded.content
    if status(uploaded) == 201:
        assert Instance.objects.filter(pk=uploaded.json()["id"]).exists(), "the 201 upload's row was deleted"
    assert_storage_consistent(media_root, staging=staging)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_deletes_of_one_instance_remove_it_once(postgres, owner, media_root, staging):
    a, b = client_for(owner), client_for(owner)
    for _ in range(ROUNDS):
        existing = upload(a, dicom_bytes()).json()["id"]
        statuses = sorted(status(r) for r in race(lambda: a.delete(f"/api/instances/{existing}/"), lambda: b.delete(f"/api/instances/{existing}/")))
        assert statuses in ([204, 204], [204, 404]), statuses
        assert Instance.objects.count() == 0
        assert_storage_consistent(media_root, staging=staging)


# --- database errors after the file is saved: real faults from a trigger -----------------------------------------

TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION trust_test_refuse_instance() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'fault injected by test_races' USING ERRCODE = TG_ARGV[0];
END
$$ LANGUAGE plpgsql
"""
TRIGGERS = {
    # Fires on the INSERT itself, after the file was stored.
    "on-insert": "CREATE TRIGGER trust_test_fault BEFORE INSERT ON studies_instance FOR EACH ROW EXECUTE FUNCTION trust_test_refuse_instance('{code}')",
    # Deferred: fires at COMMIT, the last moment before the row would be durable.
    "at-commit": (
        "CREATE CONSTRAINT TRIGGER trust_test_fault AFTER INSERT ON studies_instance DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION trust_test_refuse_instance('{code}')"
    ),
}


@pytest.fixture
def failing_insert(postgres):
    """Install a trigger that makes every INSERT into studies_instance fail (SQLSTATE `code`); dropped after."""
    installed = []

    def install(when: str, code: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(TRIGGER_FUNCTION)
            cursor.execute(TRIGGERS[when].format(code=code))
        installed.append(when)

    yield install
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS trust_test_fault ON studies_instance")
        cursor.execute("DROP FUNCTION IF EXISTS trust_test_refuse_instance()")


def failing_upload(owner, data: bytes):
    client = client_for(owner)
    client.raise_request_exception = False
    response = upload(client, data)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error; it has been logged", "code": "server_error"}
    assert (Instance.objects.count(), Series.objects.count(), Study.objects.count()) == (0, 0, 0)
    return response


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_database_error_after_the_file_is_saved_removes_the_file(failing_insert, owner, media_root, staging):
    failing_insert("on-insert", "XX000")  # internal_error: not a constraint the service could resolve by retrying
    failing_upload(owner, dicom_bytes())
    assert stored_files(media_root) == []
    assert_storage_consistent(media_root, staging=staging)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_commit_that_fails_leaves_at_most_an_orphan_that_check_storage_reports(failing_insert, owner, media_root, staging):
    """COMMIT itself fails. services._store_and_catalogue counts the file as catalogued just before COMMIT (an
    interrupt after a successful commit must never delete a catalogued file), so a failed commit may leave the
    file as an orphan by design: no row, and check_storage reports it (and --fix removes it after the grace)."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    failing_insert("at-commit", "XX000")
    failing_upload(owner, dicom_bytes())
    leftover = [path.relative_to(media_root).as_posix() for path in stored_files(media_root)]
    assert len(leftover) <= 1
    assert list(staging.iterdir()) == []
    if leftover:
        out = io.StringIO()
        with pytest.raises(CommandError):
            call_command("check_storage", stdout=out)
        assert f"file without row: {leftover[0]}" in out.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("when", ["on-insert", "at-commit"])
def test_an_integrity_error_that_persists_is_a_409_and_removes_the_file(failing_insert, owner, media_root, staging, when):
    failing_insert(when, "23514")  # check_violation: an IntegrityError, which the service retries, then gives up
    response = upload(client_for(owner), dicom_bytes())
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "try again" in response.json()["error"]
    assert (Instance.objects.count(), Series.objects.count(), Study.objects.count()) == (0, 0, 0)
    assert stored_files(media_root) == []
    assert_storage_consistent(media_root, staging=staging)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_fault_ends_with_the_trigger(failing_insert, owner, media_root, staging):
    """The same upload succeeds once the trigger is gone: the failure left nothing that gets in the way."""
    data = dicom_bytes()
    failing_insert("on-insert", "XX000")
    failing_upload(owner, data)
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER trust_test_fault ON studies_instance")
    assert upload(client_for(owner), data).status_code == 201
    assert_storage_consistent(media_root, staging=staging)


# --- storage write failures: no row --------------------------------------------------------------------------------


def refusing_client(user) -> APIClient:
    client = client_for(user)
    client.raise_request_exception = False
    return client


@pytest.mark.django_db(transaction=True)
def test_a_media_root_that_cannot_be_created_stores_no_row(owner, media_root, staging, settings, tmp_path):
    """Tests run as root, so chmod cannot block a write; a MEDIA_ROOT below a regular file fails for
    everyone (mkdir: ENOTDIR), a real storage failure on the first write of the upload."""
    blocker = tmp_path / "a-regular-file"
    blocker.write_bytes(b"")
    settings.MEDIA_ROOT = blocker / "media"
    response = upload(refusing_client(owner), dicom_bytes())
    # A MEDIA_ROOT that cannot exist is a deployment fault (/readyz reports it): the storage is unavailable.
    assert response.status_code == 503
    assert response.json() == {
        "error": "the file could not be stored (storage full or failing); nothing was kept",
        "code": "storage_unavailable",
    }
    assert (Instance.objects.count(), Series.objects.count(), Study.objects.count()) == (0, 0, 0)
    assert list(staging.iterdir()) == []


@pytest.fixture
def tiny_disk(settings, tmp_path):
    """A factory: MEDIA_ROOT on a 256 KiB tmpfs filled up to its last `free` bytes (a real ENOSPC).

    A real full disk needs a mount, so root with CAP_SYS_ADMIN (as make test and CI run here); skipped
    otherwise. The staging folder stays on the main filesystem, so the staged file is copied onto the tmpfs
    (django.core.files.move.file_move_safe), not renamed.
    """
    mounted = []

    def make(free: int) -> Path:
        mount_point = tmp_path / f"tiny-disk-{len(mounted)}"
        mount_point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(mount_point)
        media = mount_point / "media"
        (media / "dicom").mkdir(parents=True)
        (mount_point / "filler").write_bytes(bytes(shutil.disk_usage(mount_point).free - free))
        assert shutil.disk_usage(mount_point).free == free
        settings.MEDIA_ROOT = media
        return media

    yield make
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.django_db(transaction=True)
def test_a_disk_that_fills_up_midway_never_acknowledges_a_truncated_file(owner, staging, tiny_disk):
    media = tiny_disk(free=16 * 1024)
    data = dicom_bytes()  # ~39 KB into 16 KiB of free space
    response = upload(refusing_client(owner), data)
    assert response.status_code == 503, f"{response.status_code}: stored {[p.stat().st_size for p in stored_files(media)]} of {len(data)} bytes"
    assert response.json() == {
        "error": "the file could not be stored completely (storage full or failing); nothing was kept",
        "code": "storage_unavailable",
    }
    assert (Instance.objects.count(), Series.objects.count(), Study.objects.count()) == (0, 0, 0)
    assert list(staging.iterdir()) == []
    assert stored_files(media) == [], "a partial file was left in storage"


@pytest.mark.django_db(transaction=True)
def test_a_full_disk_is_503_storage_unavailable_like_a_disk_that_fills_midway(owner, staging, tiny_disk):
    """The same cause, a full disk, gets the same answer whether the write fails at once or midway."""
    tiny_disk(free=0)
    response = upload(refusing_client(owner), dicom_bytes())
    assert response.status_code == 503
    assert response.json() == {
        "error": "the file could not be stored (storage full or failing); nothing was kept",
        "code": "storage_unavailable",
    }
    assert (Instance.objects.count(), Series.objects.count(), Study.objects.count()) == (0, 0, 0)
    assert list(staging.iterdir()) == []
