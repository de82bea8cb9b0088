"""Shared fixtures: users of every role, authenticated API clients, real DICOM files, temp media."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pydicom
import pytest
from django.contrib.auth.models import Permission
from django.db import connections
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
PYDICOM_TEST_FILES = CT_SMALL.parent


def pydicom_data_dir() -> Path:
    """pydicom-data's folder of extra test files (no network needed)."""
    import data_store  # installed by the pydicom-data package

    return Path(data_store.__file__).parent / "data"


# --- test tiers: `make test` runs everything, `make test-fast` runs -m "not slow and not e2e" -------------------
# Measured with `pytest --durations=0` on the 2-core dev machine (whole suite ~130 s on SQLite): a test is `slow`
# when it takes 1.5 s or more on its own, or runs a fuzzer or a whole corpus; `e2e` when it drives a real peer
# (browser, live HTTP server, gunicorn, dcmtk, a DIMSE association). Seconds below are those measurements.

E2E_MODULES = {
    "test_admin_browser.py": "real Chromium through playwright (23 s)",
    "test_viewer_browser.py": "the real OHIF build in real Chromium against a live server",
    "test_sqlite_concurrency.py": "gunicorn and runserver on their own SQLite file, 8 parallel uploaders x 200 files (32 s)",
    "test_serve_front.py": "real nginx in front of real gunicorn (deploy/serve.py)",
    "test_readme.py": "the README's tour in bash against runserver on a fresh database (4 s)",
    "test_two_servers.py": "two gunicorn app servers on one PostgreSQL, one SeaweedFS bucket and one Redis",
    "test_dicom_node.py": "the DICOM node's associations with dcmtk findscu/getscu/movescu/storescp and pynetdicom (23 s)",
    "test_dicom_send.py": "outbound C-STORE to dcmtk's storescp and pynetdicom Storage SCPs (4 s)",
}
SLOW_MODULES = {
    "test_rendering_reference.py": "every corpus file rendered by the service and by dcmtk (6 s)",
    "test_api_schema_fuzz.py": "schemathesis over every API operation (12 s)",
    "test_devenv.py": "manage.py in a subprocess, three times (20 s)",
    "test_render_lut.py": "every grey frame of both corpora rendered two ways, five option sets (3.2 s)",
    "test_deid_core.py": "both corpora de-identified twice and byte-searched, 15 files decoded (5 s)",
}
E2E_FIXTURES = {
    "live_server": "a live HTTP server (dicomweb-client, OHIF request sequence)",
    "scp": "a listening DIMSE server, and dcmtk's storescu/echoscu as peers (0.4 s teardown each, 15 s in all)",
}
SLOW_FIXTURES = {
    "external_db": "manage.py import_dicom as a subprocess on its own migrated database (2 s setup, up to 5 s a test)",
}
E2E_TESTS = {
    "test_a_panicking_codec_does_not_crash_the_gunicorn_worker": "gunicorn on a loopback port (3.6 s)",
    "test_command_serves_until_ctrl_c": "manage.py storescp with dcmtk's echoscu/storescu as peers",
    "test_a_real_worker_prerenders_into_the_shared_cache_and_the_first_get_decodes_nothing": "manage.py import_dicom and rqworker on Redis",
    "test_a_failing_job_is_retried_up_to_the_bound_then_left_failed_and_a_deleted_instance_is_a_no_op": "manage.py rqworker on Redis",
    "test_a_recycled_worker_and_a_clean_shutdown_write_every_event": "gunicorn recycling its worker on its own SQLite file",
    "test_a_power_cut_loses_the_events_since_the_last_flush": "gunicorn killed with SIGKILL",
    "test_a_power_cut_keeps_every_event_older_than_the_flush_interval": "gunicorn killed with SIGKILL",
}
SLOW_TESTS = {
    "test_importing_the_pydicom_corpora_is_consistent_and_rerun_adds_nothing": "imports both corpora twice (2.9 s)",
    "test_stopping_an_import_midway_leaves_whole_records_and_no_temporary_copies": "two batches through spawn workers (2 s)",
}


def _tier_reasons(item) -> dict[str, str]:
    """{"slow" | "e2e" | "postgres": why} for one collected test."""
    module, name = item.path.name, getattr(item, "originalname", item.name)
    fixtures = set(getattr(item, "fixturenames", ()))
    reasons = {}
    for marker, modules, by_fixture, tests in (
        ("e2e", E2E_MODULES, E2E_FIXTURES, E2E_TESTS),
        ("slow", SLOW_MODULES, SLOW_FIXTURES, SLOW_TESTS),
    ):
        why = modules.get(module) or tests.get(name) or next((by_fixture[f] for f in sorted(fixtures & by_fixture.keys())), None)
        if why:
            reasons[marker] = why
    if "slow" not in reasons and getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
        reasons["slow"] = "a hypothesis fuzz"
    if {"postgres", "failing_insert"} & fixtures or item.get_closest_marker("postgres"):
        reasons["postgres"] = "concurrent writers or triggers"
    return reasons


def pytest_collection_modifyitems(config, items):
    """Mark each test slow / e2e / postgres by module, fixture or name (the tables above); postgres tests are
    skipped, with the reason shown, unless DATABASE_URL points at PostgreSQL."""
    from django.conf import settings

    on_postgres = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    for item in items:
        for marker, why in _tier_reasons(item).items():
            if not item.get_closest_marker(marker):
                item.add_marker(getattr(pytest.mark, marker)(reason=why))
            if marker == "postgres" and not on_postgres:
                item.add_marker(pytest.mark.skip(reason=POSTGRES_ONLY))


POSTGRES_ONLY = "needs concurrent writers or triggers: runs when DATABASE_URL=postgres://... (the PostgreSQL pass of CI)"


# --- storage: the local folder (default) or S3 (DICOM_TEST_STORAGE=s3: a session's SeaweedFS, a prefix per test) --
TEST_STORAGE = os.environ.get("DICOM_TEST_STORAGE", "file")
if TEST_STORAGE not in ("file", "s3"):
    raise pytest.UsageError(f"DICOM_TEST_STORAGE={TEST_STORAGE!r}: use file (the default) or s3")
S3_TEST_BUCKET = "dicom-tests"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the whole session, with the test bucket; stopped at the end."""
    from . import s3server

    server = s3server.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.client().create_bucket(Bucket=S3_TEST_BUCKET)
        yield server
    finally:
        server.stop()


def use_s3(settings, server, prefix: str | None = None) -> str:
    """Point default storage at the session's S3 server under a fresh prefix (what DICOM_STORAGE_URL=s3://...
    configures, with the test server's keys); returns the prefix."""
    from dicomsite.storage_url import storage_from_url

    from . import s3server

    prefix = prefix or f"t-{uuid.uuid4().hex}"
    entry, _ = storage_from_url(f"s3://{S3_TEST_BUCKET}/{prefix}?endpoint_url={server.endpoint_url}&region={s3server.REGION}")
    entry["OPTIONS"] |= {"access_key": s3server.ACCESS_KEY, "secret_key": s3server.SECRET_KEY}
    settings.STORAGES = {**settings.STORAGES, "default": entry}
    return prefix


def storage_env(media_root: Path) -> dict[str, str]:
    """The variables a `manage.py` subprocess needs to store where this test stores: its folder, or its S3 prefix."""
    if not on_s3():
        return {"DICOM_MEDIA_ROOT": str(media_root)}
    from django.core.files.storage import default_storage

    from . import s3server

    url = (
        f"s3://{default_storage.bucket_name}/{default_storage.location}"  # type: ignore[attr-defined]
        f"?endpoint_url={default_storage.endpoint_url}&region={s3server.REGION}"  # type: ignore[attr-defined]
    )
    return {"DICOM_STORAGE_URL": url, "AWS_ACCESS_KEY_ID": s3server.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3server.SECRET_KEY}


def on_s3() -> bool:
    from django.core.files.storage import default_storage

    return hasattr(default_storage, "check_bucket")


@pytest.fixture(autouse=True)
def media_root(request, settings, tmp_path) -> Path:
    """Every test stores files in its own temporary MEDIA_ROOT, never in the real media/; with
    DICOM_TEST_STORAGE=s3, in its own prefix of the session's S3 bucket instead (the folder stays empty)."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    if TEST_STORAGE == "s3":
        use_s3(settings, request.getfixturevalue("s3_server"))
    return root


@pytest.fixture(autouse=True)
def no_prerender(settings):
    """No upload queues pre-render jobs (CI's Redis pass sets REDIS_URL); test_prerender.py turns it on, on its own Redis db."""
    settings.DICOM_PRERENDER = False


@pytest.fixture(autouse=True)
def audit_written_in_request(settings):
    """In-process tests read a request's audit event right after it: written in the request, not by the buffer's
    thread (whose own connection would commit outside the test's transaction). test_audit_buffer.py tests the buffer
    in-process and in real gunicorn workers."""
    settings.AUDIT_FLUSH_MS = 0


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Users are created in most tests; the production hasher's cost would only slow the suite."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def upload_temp_dir(settings, tmp_path) -> Path:
    """Staged uploads and zip members go here, so tests can see that none are left behind."""
    temp = tmp_path / "upload-temp"
    temp.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(temp)
    return temp


def assert_error(response, status: int, code: str) -> dict:
    """A refusal in the API's one error shape, with this status and code."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body


@pytest.fixture(autouse=True)
def empty_cache():
    """Rendered images are cached by content hash; each test starts with an empty cache."""
    from django.core.cache import cache

    cache.clear()
    yield


@functools.total_ordering
class StoredObject:
    """An object in S3 standing in for its would-be path under the media root (tests compare, sort, read it)."""

    def __init__(self, root: Path, key: str) -> None:
        self.path, self.key = root / key, key

    def read_bytes(self) -> bytes:
        from django.core.files.storage import default_storage

        with default_storage.open(self.key, "rb") as handle:
            return handle.read()

    def relative_to(self, root: Path) -> PurePosixPath:
        return PurePosixPath(self.key)

    @property
    def name(self) -> str:
        return self.path.name

    def _other(self, other) -> Path:
        return other.path if isinstance(other, StoredObject) else other

    def __eq__(self, other) -> bool:
        return self.path == self._other(other)

    def __lt__(self, other) -> bool:
        return self.path < self._other(other)

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"StoredObject({self.key!r})"


def stored_bytes(key: str) -> bytes:
    """The stored bytes under a storage key, read through the storage API (the local folder or S3 alike)."""
    from django.core.files.storage import default_storage

    with default_storage.open(key, "rb") as handle:
        return handle.read()


def stored_files(root: Path) -> list:
    """All files under the media root (what storage actually holds); on S3, every object listed through the
    storage API (as StoredObjects standing in for their paths under the root)."""
    if on_s3():
        from django.core.files.storage import default_storage

        from studies.management.commands.check_storage import stored_keys

        return sorted(StoredObject(root, key) for key in stored_keys(default_storage))
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_storage_consistent(media_root: Path, *, staging: Path | None = None, rows=None) -> list[Path]:
    """Nothing half-stored: every instance row's file exists with the row's sha256, no stored file lacks a row,
    no series or study is left without instances, and nothing is left in the upload staging folder (if given).
    The one check of the suite; returns the stored files (so `len(...) == n` counts rows and files at once).

    `rows`: (file key, sha256) pairs read elsewhere (a subprocess's own database) instead of the Instance table;
    the empty series/study check then does not apply.
    """
    from studies.models import Instance, Series, Study

    files = {path.relative_to(media_root).as_posix(): path for path in stored_files(media_root)}
    catalogue = dict(Instance.objects.values_list("file", "sha256") if rows is None else rows)
    assert sorted(set(catalogue) - set(files)) == [], "rows without a file"
    assert sorted(set(files) - set(catalogue)) == [], "files without a row"
    for key, sha256 in catalogue.items():
        assert hashlib.sha256(files[key].read_bytes()).hexdigest() == sha256, f"sha256 mismatch: {key}"
    if rows is None:
        assert not Series.objects.filter(instances__isnull=True).exists(), "an empty series was left behind"
        assert not Study.objects.filter(series__isnull=True).exists(), "an empty study was left behind"
    if staging is not None:
        assert list(staging.iterdir()) == [], "a staged upload was left behind"
    return sorted(files.values())


def race(*actions: Callable[[], object]) -> list:
    """Run the actions in threads released together (a barrier); each one's result, or the exception it raised.

    The suite's one way to race requests: each thread closes its own database connections when done.
    """
    barrier = threading.Barrier(len(actions))
    results: list = [None] * len(actions)

    def run(index: int, action: Callable[[], object]) -> None:
        try:
            barrier.wait()
            results[index] = action()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, action)) for i, action in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a raced action did not finish within 120 s"
    return results


def drain(response) -> None:
    """Read a streamed body to its end (the test client then closes it without touching the DB connection)."""
    if getattr(response, "streaming", False):
        b"".join(response.streaming_content)


@pytest.fixture
def make_user(django_user_model) -> Callable:
    def make(username: str, *, staff: bool = False, superuser: bool = False, view_all: bool = False):
        user = django_user_model.objects.create_user(
            username=username, password="pw-" + username, is_staff=staff or superuser, is_superuser=superuser
        )
        if view_all:
            user.user_permissions.add(Permission.objects.get(codename="view_all", content_type__app_label="studies"))
        return user

    return make


@pytest.fixture
def owner(make_user):
    return make_user("owner")


@pytest.fixture
def other(make_user):
    return make_user("other")


@pytest.fixture
def staff(make_user):
    """Staff without the view_all permission: sees only their own uploads."""
    return make_user("staff", staff=True)


@pytest.fixture
def viewer(make_user):
    """A user holding studies.view_all: sees every owner's uploads."""
    return make_user("viewer", view_all=True)


@pytest.fixture
def superuser(make_user):
    return make_user("root", superuser=True)


def client_for(user=None) -> APIClient:
    """An API client authenticated the way scripts do it: with a real token."""
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(owner) -> APIClient:
    return client_for(owner)


def dicom_bytes(source: Path = CT_SMALL, *, new_uids: bool = True, **attributes) -> bytes:
    """A real DICOM file (pydicom test data) with fresh UIDs and any attributes changed."""
    ds = pydicom.dcmread(source)
    if new_uids:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def upload(client: APIClient, data: bytes, name: str = "scan.dcm", *, raw: bool = False):
    """POST /api/instances/ as multipart field `file` (default) or as an application/dicom body."""
    if raw:
        return client.post("/api/instances/", data=data, content_type="application/dicom")
    return client.post("/api/instances/", {"file": io.BytesIO(data) if not name else _named(data, name)}, format="multipart")


def stored_instance(client: APIClient, **attributes):
    """A fresh copy of CT_small.dcm with these attributes uploaded by `client`: its catalogue row."""
    from studies.models import Instance

    response = upload(client, dicom_bytes(**attributes))
    assert response.status_code == 201, response.content
    return Instance.objects.get(pk=response.json()["id"])


def _named(data: bytes, name: str) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


@pytest.fixture
def uploaded(api) -> dict:
    """CT_small.dcm uploaded by `owner`; the 201 response body."""
    response = upload(api, CT_SMALL.read_bytes(), "CT_small.dcm")
    assert response.status_code == 201, response.content
    return response.json()
