"""Operations: readiness and liveness, per-user throttles, security headers, production settings,
and the `check_storage` scrub of storage against the catalogue."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from studies.api.views import ScopedUserThrottle
from studies.models import Instance

from .conftest import CT_SMALL, assert_storage_consistent, client_for, dicom_bytes, drain, stored_files, upload

pytestmark = pytest.mark.django_db

PROJECT = Path(__file__).resolve().parents[2]


# --- /readyz and /healthz ---------------------------------------------------------------------------------


def test_readyz_is_200_when_database_storage_and_cache_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "storage": "ok", "cache": "ok"}


def test_readyz_is_503_naming_storage_when_the_media_root_is_unusable(client, settings, tmp_path):
    # Tests run as root, so chmod cannot make a folder unwritable; a MEDIA_ROOT below a regular file
    # really is unusable for everyone (every mkdir/open under it fails with ENOTDIR).
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    settings.MEDIA_ROOT = blocker / "media"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "storage": "down", "cache": "ok"}


def test_readyz_is_503_naming_the_cache_when_it_does_not_answer(client, settings):
    # A Redis on a port nothing listens on (loopback only): connection refused at once.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}}
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["cache"], body["database"], body["storage"]) == ("unavailable", "down", "ok", "ok")


def test_readyz_and_healthz_need_no_login_and_reveal_nothing_else(client):
    for path in ("/readyz", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
    assert client.get("/healthz").json() == {"status": "ok"}


# --- throttling ---------------------------------------------------------------------------------------------


@pytest.fixture
def low_rates(settings, monkeypatch):
    """Per-user rates of 2 uploads and 3 renders a minute.

    Setting REST_FRAMEWORK through the `settings` fixture makes DRF reload `api_settings` (it listens to
    setting_changed), but that is not enough: SimpleRateThrottle.THROTTLE_RATES is a class attribute bound
    to the dict of DEFAULT_THROTTLE_RATES when rest_framework.throttling is imported, so the throttles keep
    the old rates (checked by test_settings_alone_do_not_change_the_rates_drf_throttles_use). The class
    attribute is therefore patched as well; DICOM_THROTTLE_* in production are read before that import.
    """
    rates = {"upload": "2/min", "render": "3/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    monkeypatch.setattr(ScopedUserThrottle, "THROTTLE_RATES", rates)
    return rates


def test_settings_alone_do_not_change_the_rates_drf_throttles_use(settings):
    from rest_framework.settings import api_settings

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"upload": "2/min", "render": "3/min"}}
    assert api_settings.DEFAULT_THROTTLE_RATES["upload"] == "2/min"  # reloaded through setting_changed
    assert ScopedUserThrottle("upload").get_rate() != "2/min"  # ...but the throttle's class attribute is stale


def assert_throttled(response) -> int:
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "throttled"
    assert body["error"]
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 60
    return retry_after


def test_uploads_over_the_rate_are_429_json_with_retry_after_and_store_nothing(api, other, media_root, low_rates):
    assert [upload(api, dicom_bytes()).status_code for _ in range(2)] == [201, 201]
    assert_throttled(upload(api, dicom_bytes()))
    assert_throttled(upload(api, dicom_bytes(), raw=True))
    assert len(assert_storage_consistent(media_root)) == 2
    # Per user: another user still uploads.
    assert upload(client_for(other), dicom_bytes()).status_code == 201


def test_renders_over_the_rate_are_429_json_with_retry_after_per_user(api, other, low_rates):
    mine = upload(api, dicom_bytes()).json()["id"]
    theirs = upload(client_for(other), dicom_bytes()).json()["id"]
    for _ in range(3):
        assert api.get(f"/api/instances/{mine}/image/").status_code == 200
    assert_throttled(api.get(f"/api/instances/{mine}/image/"))
    assert_throttled(api.get(f"/api/instances/{mine}/thumbnail/"))  # the same "render" scope
    # Another user is not throttled, and the throttled user's other reads are not either.
    assert client_for(other).get(f"/api/instances/{theirs}/image/").status_code == 200
    assert api.get(f"/api/instances/{mine}/").status_code == 200
    assert api.get(f"/api/instances/{mine}/tags/").status_code == 200


def test_the_upload_and_render_scopes_are_counted_separately(api, low_rates):
    ids = [upload(api, dicom_bytes()).json()["id"] for _ in range(2)]
    assert_throttled(upload(api, dicom_bytes()))
    assert api.get(f"/api/instances/{ids[0]}/image/").status_code == 200


# --- security headers ---------------------------------------------------------------------------------------


@pytest.fixture
def instance_id(api) -> str:
    return upload(api, CT_SMALL.read_bytes()).json()["id"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/instances/", 200),
        ("/api/instances/{id}/", 200),
        ("/api/instances/{id}/image/", 200),
        ("/api/instances/{id}/file/", 200),
        ("/api/instances/?format=api", 200),
        ("/api/no-such-route/", 404),
        ("/admin/login/", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/api/docs/", 200),
    ],
)
def test_security_headers_on_every_kind_of_response(api, instance_id, path, status):
    response = api.get(path.format(id=instance_id))
    drain(response)
    assert response.status_code == status
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    # drf-spectacular's Swagger UI view sets COOP unsafe-none itself (for its OAuth2 redirect popup).
    assert response["Cross-Origin-Opener-Policy"] == ("unsafe-none" if path == "/api/docs/" else "same-origin")


def test_security_headers_on_error_responses(api, low_rates):
    assert upload(api, b"not dicom").status_code == 400
    upload(api, dicom_bytes())
    upload(api, dicom_bytes())
    # Past the (low) upload rate the owner is throttled, even for a bad file; an anonymous read is refused.
    for response, status in ((upload(api, b"not dicom"), 429), (client_for().get("/api/instances/"), 401)):
        assert response.status_code == status
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"


# --- production settings (subprocesses: settings are read once, at import) -----------------------------------


def _env(**overrides: str) -> dict[str, str]:
    """The environment without any DJANGO_*/DICOM_*/database variables, plus `overrides`."""
    keep = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DICOM_", "DATABASE_", "REDIS_", "PYTEST_", "LOG_"))
    }
    return {**keep, **overrides}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)


PRINT_SETTINGS = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.DEBUG, settings.SESSION_COOKIE_SECURE, settings.SECURE_SSL_REDIRECT, settings.SECURE_HSTS_SECONDS)"
)


def production_env() -> dict[str, str]:
    """The documented production environment: HTTPS on, a long random key, one host, DJANGO_DEBUG unset."""
    return _env(
        DJANGO_HTTPS="1",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),  # 86 characters, many unique
        DJANGO_ALLOWED_HOSTS="dicom.example.org",
        DJANGO_SETTINGS_MODULE="dicomsite.settings",
    )


def test_check_deploy_passes_with_no_warnings_in_the_documented_production_environment():
    env = production_env()
    assert len(env["DJANGO_SECRET_KEY"]) >= 50 and "DJANGO_DEBUG" not in env
    done = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert "WARNING" not in output and "?: (security." not in output, output


def test_production_settings_turn_debug_off_and_https_protections_on():
    done = _run(["-c", PRINT_SETTINGS], production_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "31536000"]


def test_debug_is_off_when_django_debug_is_unset():
    done = _run(["-c", PRINT_SETTINGS], _env(DJANGO_SECRET_KEY="x", DJANGO_SETTINGS_MODULE="dicomsite.settings"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False"


def test_importing_the_settings_fails_without_django_secret_key():
    done = _run(["-c", PRINT_SETTINGS], _env(DJANGO_SETTINGS_MODULE="dicomsite.settings"))
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "DJANGO_SECRET_KEY must be set" in done.stderr


def test_a_malformed_boolean_fails_loudly_instead_of_meaning_false():
    done = _run(["-c", PRINT_SETTINGS], _env(DJANGO_SECRET_KEY="x", DJANGO_DEBUG="maybe", DJANGO_SETTINGS_MODULE="dicomsite.settings"))
    assert done.returncode != 0
    assert "DJANGO_DEBUG='maybe' is not a boolean" in done.stderr


# --- check_storage ---------------------------------------------------------------------------------------------


def scrub(*args: str) -> tuple[str, CommandError | None]:
    """Run check_storage; its output and the CommandError it ended with (None when it succeeded)."""
    out = io.StringIO()
    try:
        call_command("check_storage", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def orphan(media_root: Path, *, age_minutes: float = 0) -> str:
    """A stored-looking file no row refers to, `age_minutes` old; its storage key."""
    hex_id = uuid.uuid4().hex
    key = f"dicom/{hex_id[:2]}/{hex_id[2:4]}/{hex_id}.dcm"
    path = media_root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(128) + b"DICM" + b"orphan")
    if age_minutes:
        then = time.time() - age_minutes * 60
        os.utime(path, (then, then))
    return key


@pytest.fixture
def two_instances(api) -> list[Instance]:
    ids = [upload(api, dicom_bytes(PatientName="Secret^Patient")).json()["id"] for _ in range(2)]
    return [Instance.objects.get(pk=pk) for pk in ids]


def test_check_storage_succeeds_on_a_consistent_catalogue(two_instances):
    output, error = scrub()
    assert error is None, output
    assert "2 rows, 2 files: 0 without row, 0 rows without file, 0 sha256 mismatches" in output


def test_check_storage_reports_a_file_without_a_row(two_instances, media_root):
    key = orphan(media_root)
    output, error = scrub()
    assert f"file without row: {key}" in output
    assert "1 without row" in output
    assert str(error) == "1 problem(s) left"


def test_check_storage_reports_a_row_without_a_file(two_instances, media_root):
    gone = two_instances[0]
    (media_root / gone.file.name).unlink()
    output, error = scrub()
    assert f"row without file: instance {gone.pk} ({gone.file.name})" in output
    assert "1 rows without file" in output
    assert str(error) == "1 problem(s) left"


def test_check_storage_reports_a_sha256_mismatch(two_instances, media_root):
    changed = two_instances[1]
    path = media_root / changed.file.name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one bit of pixel data rotted
    path.write_bytes(bytes(data))
    output, error = scrub()
    assert f"sha256 mismatch: instance {changed.pk} ({changed.file.name})" in output
    assert "1 sha256 mismatches" in output
    assert str(error) == "1 problem(s) left"
    output, error = scrub("--no-hash")
    assert error is None and "not checked sha256 mismatches" in output


def test_check_storage_reports_a_stored_preamble_that_is_no_longer_zero(two_instances, media_root):
    changed = two_instances[0]
    path = media_root / changed.file.name
    data = bytearray(path.read_bytes())
    assert hashlib.sha256(data).hexdigest() == changed.sha256  # the row's sha256 is of the stored bytes
    data[:4] = b"MZ\x90\x00"
    path.write_bytes(bytes(data))
    output, error = scrub()
    assert f"sha256 mismatch: instance {changed.pk}" in output
    assert error is not None


def test_check_storage_reports_all_three_kinds_together_and_counts_them(two_instances, media_root):
    key = orphan(media_root)
    (media_root / two_instances[0].file.name).unlink()
    (media_root / two_instances[1].file.name).write_bytes(bytes(128) + b"DICM")
    output, error = scrub()
    assert f"file without row: {key}" in output
    assert f"row without file: instance {two_instances[0].pk}" in output
    assert f"sha256 mismatch: instance {two_instances[1].pk}" in output
    assert "2 rows, 2 files: 1 without row, 1 rows without file, 1 sha256 mismatches" in output
    assert str(error) == "3 problem(s) left"


def test_check_storage_output_names_keys_and_ids_never_patient_data(two_instances, media_root):
    orphan(media_root)
    (media_root / two_instances[0].file.name).unlink()
    output, _ = scrub()
    assert "Secret" not in output and "Patient" not in output


def test_check_storage_fix_removes_only_orphans_older_than_the_grace_period(two_instances, media_root):
    old = orphan(media_root, age_minutes=120)
    young = orphan(media_root, age_minutes=5)
    missing = two_instances[0]
    (media_root / missing.file.name).unlink()

    output, error = scrub("--fix", "--grace-minutes", "60")
    assert not (media_root / old).exists()
    assert (media_root / young).exists()
    assert f"left alone (younger than 60 min): {young}" in output
    assert "2 without row (1 removed)" in output
    # A row without a file is reported, never "fixed" by deleting the row.
    assert Instance.objects.filter(pk=missing.pk).exists()
    assert str(error) == "2 problem(s) left"  # the young orphan and the row without a file
    # Files that rows refer to are never touched.
    assert (media_root / two_instances[1].file.name).exists()

    output, error = scrub("--fix", "--grace-minutes", "10")
    assert (media_root / young).exists()  # 5 minutes old: still inside a 10-minute grace period
    output, error = scrub("--fix", "--grace-minutes", "1")
    assert not (media_root / young).exists()
    assert str(error) == "1 problem(s) left"


def test_check_storage_fix_succeeds_when_only_old_orphans_were_found(two_instances, media_root):
    orphan(media_root, age_minutes=90)
    output, error = scrub("--fix")  # default grace: 60 minutes
    assert error is None, output
    assert "1 without row (1 removed)" in output
    assert len(stored_files(media_root)) == 2


@pytest.fixture
def logging_restored():
    """ManagementUtility.execute() runs django.setup(), which configures logging again: its console
    handler would write to this test's captured stderr, closed once the test ends (later tests would
    then log "I/O operation on closed file"). Put the handlers and levels back as they were."""
    import logging

    loggers = [logging.root] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate, logger.disabled) for logger in loggers]
    yield
    for logger, handlers, level, propagate, disabled in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


@pytest.mark.django_db(transaction=True)  # run_from_argv closes every connection when it ends
def test_check_storage_exits_with_status_1_from_the_command_line(two_instances, media_root, capsys, logging_restored):
    """Through ManagementUtility (what manage.py runs): a CommandError becomes exit status 1."""
    from django.core.management import ManagementUtility

    ManagementUtility(["manage.py", "check_storage", "--no-hash"]).execute()  # success: returns, no exit
    orphan(media_root)
    with pytest.raises(SystemExit) as exited:
        ManagementUtility(["manage.py", "check_storage"]).execute()
    assert exited.value.code == 1
    assert "1 problem(s) left" in capsys.readouterr().err


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/api/instances/?study=a%00b",
        "/api/instances/?search=%00",
        "/api/instances/?patient_id=x%00",
        "/api/studies/?page=1&x%00=1",
    ],
)
def test_a_nul_in_a_query_parameter_is_400_not_a_database_error(api, url):
    # Found by the schema fuzz on PostgreSQL, which refuses NUL in any string comparison (it was a 500).
    response = api.get(url)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"


@pytest.mark.django_db
def test_a_nul_in_an_admin_search_is_400(make_user):
    from django.test import Client

    browser = Client()
    browser.force_login(make_user("nurse", staff=True))
    assert browser.get("/admin/studies/instance/?q=x%00y").status_code == 400


@pytest.mark.django_db
def test_readyz_is_ready_before_the_media_folder_exists(client, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "not-yet" / "media"  # created by the first upload
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["storage"] == "ok"
