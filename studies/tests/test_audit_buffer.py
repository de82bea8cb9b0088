"""The audit buffer (studies/audit/events.py): events written in batches off the request path, none lost on a clean
exit, and on a power cut at most the last interval's.

In-process: one EventBuffer against the test database (its events are written by this thread's `flush()`; a real
fault: the audit table renamed away under it). Then real gunicorn (gunicorn.conf.py, one worker) on its own SQLite
file: a worker recycled by max_requests and a SIGTERM shutdown write every event though the flush interval is ten
minutes; SIGKILL of the whole process group (what a power cut does to the processes) loses exactly the events newer
than the last flush, and none older than one interval.
"""

from __future__ import annotations

import atexit
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from studies.audit.events import EventBuffer
from studies.models import AuditEvent

from .processes import free_port, wait_until_up

PROJECT = Path(__file__).resolve().parents[2]
TOKEN = "a" * 40


def row(request_id: str) -> tuple:
    return (timezone.now(), None, "", "instance-list", "GET", "", "", "success", 200, "127.0.0.1", request_id)


@pytest.fixture
def buffer(settings):
    settings.AUDIT_FLUSH_MS = 600_000  # the writer thread sleeps through the test: only flush() writes
    buffer = EventBuffer()
    yield buffer
    atexit.unregister(buffer.close)  # what a test left waiting is not written into whatever database exists at exit


@pytest.mark.django_db(transaction=True)
def test_flush_writes_every_waiting_event_in_order_in_one_go(buffer):
    for n in range(5):
        buffer.add(row(f"r{n}"))
    assert buffer.pending() == 5
    assert not AuditEvent.objects.exists(), "nothing is written before the flush"
    assert buffer.flush() == 5
    assert buffer.pending() == 0
    assert list(AuditEvent.objects.order_by("id").values_list("request_id", flat=True)) == [f"r{n}" for n in range(5)]
    assert buffer.flush() == 0


@pytest.mark.django_db(transaction=True)
def test_a_failed_flush_keeps_its_events_for_the_next_one(buffer):
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    buffer.add(row("first"))
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO audit_away")
    try:
        assert buffer.flush() == 0
        buffer.add(row("second"))
        assert buffer.pending() == 2
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE audit_away RENAME TO {table}")
    assert buffer.flush() == 2
    assert list(AuditEvent.objects.order_by("id").values_list("request_id", flat=True)) == ["first", "second"]


@pytest.mark.django_db(transaction=True)
def test_past_the_limit_an_event_is_written_by_its_caller(buffer, settings):
    settings.AUDIT_BUFFER_MAX = 2
    for n in range(3):
        buffer.add(row(f"r{n}"))
    assert buffer.pending() == 2
    assert list(AuditEvent.objects.values_list("request_id", flat=True)) == ["r2"]


@pytest.mark.django_db(transaction=True)
def test_the_writer_thread_flushes_every_interval(settings):
    settings.AUDIT_FLUSH_MS = 50
    buffer = EventBuffer()
    atexit.unregister(buffer.close)
    buffer.add(row("timed"))
    deadline = time.monotonic() + 10
    while buffer.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert buffer.pending() == 0
    connection.close()  # see the writer thread's commit from a new transaction on SQLite too
    assert AuditEvent.objects.filter(request_id="timed").count() == 1


def test_a_forked_child_starts_with_an_empty_buffer(buffer):
    buffer.add(row("parent"))
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, reports through the pipe
        os.write(writer, str(buffer.pending()).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        in_child = pipe.read()
    os.waitpid(child, 0)
    assert in_child == "0"
    assert buffer.pending() == 1  # still the parent's to write


class Gunicorn:
    """gunicorn.conf.py with one worker on its own SQLite file, in its own process group."""

    def __init__(self, tmp_path: Path, **extra: str) -> None:
        self.database = tmp_path / "db.sqlite3"
        self.log = tmp_path / "gunicorn.log"
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        keep = ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "PYTHONPATH", "TMPDIR")
        self.env = {k: v for k, v in os.environ.items() if k in keep} | {
            "DJANGO_SECRET_KEY": "audit-buffer-test-key",
            "DATABASE_URL": f"sqlite:///{self.database}",
            "DICOM_MEDIA_ROOT": str(tmp_path / "media"),
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": "1",
            "GUNICORN_THREADS": "2",
            "GUNICORN_MAX_REQUESTS": "0",
            "LOG_LEVEL": "INFO",
            **extra,
        }
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "-v0"], cwd=PROJECT, env=self.env, check=True, timeout=120)
        make_user = (
            "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
            f"Token.objects.create(user=User.objects.create_user('auditor'), key='{TOKEN}')"
        )
        subprocess.run([*manage, "shell", "-c", make_user], cwd=PROJECT, env=self.env, check=True, timeout=60)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket", "dicomsite.wsgi"],
                cwd=PROJECT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_until_up(f"{self.base}/healthz", self.process, self.log)

    def audited_read(self, request_id: str) -> None:
        request = urllib.request.Request(
            f"{self.base}/api/instances/", headers={"Authorization": f"Token {TOKEN}", "X-Request-ID": request_id}
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

    def audited(self, request_ids: list[str]) -> list[str]:
        """Which of these request ids have their audit event in the database."""
        with closing(sqlite3.connect(self.database)) as db:
            found = {r for (r,) in db.execute("SELECT request_id FROM studies_auditevent WHERE action = 'instance-list'")}
        return [r for r in request_ids if r in found]

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def power_cut(self) -> None:
        """SIGKILL to the master and its worker at once: no handler, no atexit, as when the machine loses power."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


@pytest.fixture
def slow_flush(tmp_path):
    """Ten minutes between timed flushes: within a test only a clean exit writes the buffer."""
    servers: list[Gunicorn] = []
    yield lambda **extra: servers.append(Gunicorn(tmp_path, DICOM_AUDIT_FLUSH_MS="600000", **extra)) or servers[-1]
    for server in servers:
        if server.process.poll() is None:
            server.power_cut()


def test_a_recycled_worker_and_a_clean_shutdown_write_every_event(slow_flush):
    server = slow_flush(GUNICORN_MAX_REQUESTS="10")  # a jitter of one: recycled after 10 or 11 requests
    requests = ids(30)
    for request_id in requests:
        server.audited_read(request_id)
    assert "Autorestarting worker" in server.log.read_text(), "the worker was never recycled"
    written = server.audited(requests)
    assert len(written) >= 10, "the recycled workers' exits wrote their events"
    assert written == requests[: len(written)]
    server.terminate()
    assert server.audited(requests) == requests


def test_a_power_cut_loses_the_events_since_the_last_flush(slow_flush):
    server = slow_flush()
    requests = ids(10)
    for request_id in requests:
        server.audited_read(request_id)
    server.power_cut()
    assert server.audited(requests) == [], "no flush was due: the buffer is what a power cut loses"


def test_a_power_cut_keeps_every_event_older_than_the_flush_interval(tmp_path):
    server = Gunicorn(tmp_path, DICOM_AUDIT_FLUSH_MS="200")
    try:
        requests = ids(20)
        for request_id in requests:
            server.audited_read(request_id)
        time.sleep(1.0)  # five intervals
    finally:
        server.power_cut()
    assert server.audited(requests) == requests
