"""The embedded default (SQLite) holds concurrent writers: parallel uploaders under gunicorn and under
`manage.py runserver` (what `make run` serves), and uploads mixed with an `import_dicom` run, all on one real
SQLite file. Nothing answers 5xx; every file is catalogued exactly once."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import dicom_bytes
from .processes import free_port, stop, wait_until_up

PROJECT = Path(__file__).resolve().parents[2]
TOKEN = "c" * 40
UPLOADERS = 8
FILES = 200


def server_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "DICOM_", "GUNICORN_"))}
    env.update(
        DJANGO_SECRET_KEY="sqlite-concurrency-test-key",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DICOM_MEDIA_ROOT=str(tmp_path / "media"),
        DICOM_THROTTLE_UPLOAD="1000000/min",
    )
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=PROJECT, env=env, check=True, timeout=120)
    make_user = (
        "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
        f"Token.objects.create(user=User.objects.create_user('uploader'), key='{TOKEN}')"
    )
    subprocess.run([*manage, "shell", "-c", make_user], cwd=PROJECT, env=env, check=True, timeout=60, capture_output=True)
    return env


@contextlib.contextmanager
def serving(kind: str, env: dict[str, str], tmp_path: Path):
    """The service under gunicorn (gunicorn.conf.py) or runserver on a free port; its base URL."""
    port = free_port()
    if kind == "gunicorn":
        env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "4"}
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket", "dicomsite.wsgi"]
    else:
        env = {**env, "DJANGO_DEBUG": "1"}
        command = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    log = tmp_path / f"{kind}.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/healthz", server, log)
        yield base
    finally:
        stop(server)


def post(base: str, data: bytes) -> int:
    request = urllib.request.Request(
        f"{base}/api/instances/", data=data,
        headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/dicom"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as answer:
        return answer.code


def upload_in_parallel(base: str, files: list[bytes]) -> Counter:
    with ThreadPoolExecutor(UPLOADERS) as pool:
        return Counter(pool.map(lambda data: post(base, data), files))


def catalogued(tmp_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
        return db.execute("SELECT COUNT(*) FROM studies_instance").fetchone()[0]


@pytest.fixture(scope="module")
def files() -> list[bytes]:
    return [dicom_bytes() for _ in range(FILES)]


@pytest.mark.parametrize("kind", ["gunicorn", "runserver"])
def test_parallel_uploaders_on_sqlite_never_get_a_5xx(kind, files, tmp_path):
    env = server_env(tmp_path)
    with serving(kind, env, tmp_path) as base:
        statuses = upload_in_parallel(base, files)
    assert statuses == {201: FILES}
    assert catalogued(tmp_path) == FILES


def test_uploads_and_an_import_dicom_run_share_sqlite(files, tmp_path):
    env = server_env(tmp_path)
    folder = tmp_path / "to-import"
    folder.mkdir()
    for n, data in enumerate(files[FILES // 2 :]):
        (folder / f"{n:03}.dcm").write_bytes(data)
    with serving("gunicorn", env, tmp_path) as base:
        importer = subprocess.Popen(
            [sys.executable, "manage.py", "import_dicom", str(folder), "--owner", "uploader", "--workers", "1", "--progress", "none"],
            cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        statuses = upload_in_parallel(base, files[: FILES // 2])
        output, _ = importer.communicate(timeout=300)
    assert importer.returncode == 0, output.decode(errors="replace")
    assert statuses == {201: FILES // 2}
    assert f"{FILES // 2} created" in output.decode()
    assert catalogued(tmp_path) == FILES


def test_the_database_runs_in_wal_mode(tmp_path):
    env = server_env(tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert env["DATABASE_URL"].startswith("sqlite:///")
