"""The production front (`make serve`: deploy/serve.py): a real nginx in front of a real gunicorn, each test run on a
free port with its own run dir, SQLite database, media and static roots. Skipped when nginx is not installed
(CI and `make test` as root install it)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .conftest import CT_SMALL
from .processes import free_port, wait_until_up

PROJECT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; make test does it as root)")
LIMIT = 1536 * 1024**2  # DICOM_MAX_UPLOAD_BYTES and DICOM_BULK_MAX_BYTES for these tests (a 1 GiB upload fits)
TOKEN = "f" * 40


@dataclass
class Front:
    base: str
    port: int
    run_dir: Path
    database: Path
    log: Path
    instance_id: str

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Token {TOKEN}", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as refused:
            return refused.code, dict(refused.headers), refused.read()

    def gunicorn_workers(self) -> list[int]:
        master = int((self.run_dir / "gunicorn.pid").read_text())
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [int(pid) for pid in children]


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    root = tmp_path_factory.mktemp("front")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "DICOM_", "GUNICORN_", "DJANGO_", "AUDIT_", "NGINX"))}
    env.update(
        DJANGO_SECRET_KEY="serve-front-test-key",
        DATABASE_URL=f"sqlite:///{root / 'db.sqlite3'}",
        DICOM_MEDIA_ROOT=str(root / "media"),
        DJANGO_STATIC_ROOT=str(root / "static"),
        DICOM_MAX_UPLOAD_BYTES=str(LIMIT),
        DICOM_BULK_MAX_BYTES=str(LIMIT),
        DICOM_UPLOAD_TEMP_DIR=str(root / "upload-temp"),
        # The proxy in front of nginx, for the X-Forwarded-For test: 127.0.0.1 is believed, 127.0.0.2 is not.
        NGINX_TRUSTED_PROXIES="127.0.0.1",
        # Few threads, so that clients holding them would show at once.
        GUNICORN_WORKERS="1",
        GUNICORN_THREADS="2",
    )
    (root / "upload-temp").mkdir()
    log = root / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "deploy/serve.py", "--host", "127.0.0.1", "--port", str(port), "--run-dir", str(root / "run")],
            cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/healthz", server, log)
        make_user = (
            "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
            f"Token.objects.create(user=User.objects.create_user('front'), key='{TOKEN}')"
        )
        subprocess.run([sys.executable, "manage.py", "shell", "-c", make_user], cwd=PROJECT, env=env, check=True, timeout=60, capture_output=True)
        upload = urllib.request.Request(
            f"{base}/api/instances/", data=CT_SMALL.read_bytes(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/dicom"},
        )  # fmt: skip
        instance_id = str(json.loads(urllib.request.urlopen(upload, timeout=30).read())["id"])
        yield Front(base, port, root / "run", root / "db.sqlite3", log, instance_id)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    for pid_file in ("nginx.pid", "gunicorn.pid"):  # neither is left running
        path = root / "run" / pid_file
        if path.exists() and path.read_text().strip():
            assert not Path(f"/proc/{path.read_text().strip()}").exists(), f"{pid_file}: still running after serve.py stopped"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def test_fifty_stalled_uploaders_delay_neither_healthz_nor_a_tag_lookup(front):
    """Each sends its headers (a 100 MB Content-Length) and the first KiB of the body, then stalls. nginx holds
    them; gunicorn (one worker, two threads here) never sees them."""
    stalled = []
    try:
        for _ in range(50):
            client = socket.create_connection(("127.0.0.1", front.port), timeout=5)
            client.sendall(
                b"POST /api/instances/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/dicom\r\n"
                + f"Authorization: Token {TOKEN}\r\nContent-Length: {100 * 1024**2}\r\n\r\n".encode()
                + bytes(1024)
            )
            stalled.append(client)
        time.sleep(0.5)  # nginx has read what they sent
        health, lookup = [], []
        for _ in range(5):
            health.append(timed(lambda: front.get("/healthz", timeout=5)))
            lookup.append(timed(lambda: front.get(f"/api/instances/{front.instance_id}/tags/PatientName/", timeout=5)))
        status, _, body = front.get(f"/api/instances/{front.instance_id}/tags/PatientName/")
        print(f"\nunder 50 stalled uploaders: /healthz max {max(health) * 1000:.1f} ms, tag lookup max {max(lookup) * 1000:.1f} ms")
        assert status == 200 and json.loads(body)["value"] == "CompressedSamples^CT1"
        assert max(health) < 1.0, health
        assert max(lookup) < 1.0, lookup
        assert "POST /api/instances/" not in front.log.read_text(errors="replace").split("tags/PatientName")[-1]
    finally:
        for client in stalled:
            client.close()


def raw_request(port: int, head: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as client:
        client.sendall(head)
        response = http.client.HTTPResponse(client)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def test_a_body_over_the_limit_is_refused_with_413_in_the_error_shape(front):
    status, headers, body = raw_request(
        front.port,
        b"POST /api/instances/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/dicom\r\n"
        + f"Authorization: Token {TOKEN}\r\nContent-Length: {LIMIT * 2}\r\n\r\n".encode(),
    )
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    refusal = json.loads(body)
    assert refusal["code"] == "too_large"
    assert isinstance(refusal["error"], str) and refusal["error"]


def audited_address(front: Front, request_id: str) -> str:
    """The worker's audit buffer writes the event within DICOM_AUDIT_FLUSH_MS (500 ms): wait for it, up to 10 s."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(front.database) as db:
            rows = db.execute("SELECT client_address FROM studies_auditevent WHERE request_id = ?", (request_id,)).fetchall()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows) == 1, rows
    return rows[0][0]


def tag_lookup_head(front: Front, request_id: str, forwarded_for: str) -> bytes:
    return (
        f"GET /api/instances/{front.instance_id}/tags/PatientName/ HTTP/1.1\r\nHost: 127.0.0.1:{front.port}\r\n"
        f"Authorization: Token {TOKEN}\r\nX-Request-ID: {request_id}\r\nX-Forwarded-For: {forwarded_for}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def test_the_audit_trail_records_the_forwarded_client_from_a_trusted_proxy_only(front):
    trusted = uuid.uuid4().hex
    status, _, _ = raw_request(front.port, tag_lookup_head(front, trusted, "203.0.113.7"))
    assert status == 200
    assert audited_address(front, trusted) == "203.0.113.7"
    # A client that is not a trusted proxy cannot choose the address the audit trail records.
    spoofed = uuid.uuid4().hex
    status, _, _ = raw_request(front.port, tag_lookup_head(front, spoofed, "198.51.100.9"), source="127.0.0.2")
    assert status == 200
    assert audited_address(front, spoofed) == "127.0.0.2"


def test_static_files_are_served_by_nginx_from_the_collected_root(front):
    status, headers, body = front.get("/static/admin/css/base.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css") and body
    assert (front.run_dir.parent / "static" / "admin" / "css" / "base.css").read_bytes() == body
    assert "/static/" not in front.log.read_text(errors="replace"), "gunicorn served a static file"


def test_share_link_secrets_stay_out_of_both_access_logs(front):
    """A share link's secret opens a study to whoever has it: nginx's and gunicorn's access logs show /share/-/."""
    _, _, body = front.get(f"/api/instances/{front.instance_id}/")
    study = json.loads(body)["study"]
    request = urllib.request.Request(
        f"{front.base}/api/studies/{study}/share/", data=b"{}", method="POST",
        headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    link = json.loads(urllib.request.urlopen(request, timeout=30).read())
    secret = link["link"].rstrip("/").rsplit("/", 1)[1]
    anonymous = {"Authorization": ""}
    assert front.get(f"/share/{secret}/", anonymous)[0] == 200
    assert front.get(f"/share/{secret}/dicomweb/studies", anonymous)[0] == 200
    logs = (front.run_dir / "logs" / "access.log", front.log)
    deadline = time.monotonic() + 10
    while not all("/share/-/dicomweb/studies" in log.read_text() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.1)  # each server writes its log line after the answer
    for log in logs:
        text = log.read_text(errors="replace")
        assert secret not in text, log
        assert "/share/-/dicomweb/studies" in text, log


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_1_gb_upload_through_nginx_keeps_the_gunicorn_worker_rss_flat(front, tmp_path):
    """A multi-frame 8-bit image of 1 GiB: nginx spools it to disk, gunicorn streams it to storage."""
    frames, rows, columns = 1024, 1024, 1024
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Large^Upload", "LARGE1", "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256)) * (frames * rows * columns // 256)  # 1 GiB of a ramp: cheap to make
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    size = path.stat().st_size

    front.get("/healthz")
    workers = front.gunicorn_workers()
    baseline = {pid: rss_kib(pid) for pid in workers}
    peak = dict(baseline)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in workers:
                peak[pid] = max(peak[pid], rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=300)
        with path.open("rb") as body:
            connection.request(
                "POST", "/api/instances/", body=body,
                headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/dicom", "Content-Length": str(size)},
            )  # fmt: skip
            response = connection.getresponse()
            answer = response.read()
        connection.close()
    finally:
        done.set()
        sampler.join()
    growth_mib = max(peak[pid] - baseline[pid] for pid in workers) / 1024
    print(f"\n{size / 1024**2:.0f} MiB upload: gunicorn worker RSS grew by at most {growth_mib:.1f} MiB")
    assert response.status == 201, answer[:500]
    assert growth_mib < 64, f"the worker's RSS grew by {growth_mib:.0f} MiB for a {size / 1024**2:.0f} MiB upload"


def test_serve_refuses_clearly_without_a_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "deploy/serve.py", "--run-dir", str(tmp_path / "run")], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "DJANGO_SECRET_KEY is not set" in result.stderr
    assert not (tmp_path / "run").exists()
