#!/usr/bin/env python3
"""Render benchmark: this service's image/thumbnail endpoints against a throwaway Orthanc.

    .venv/bin/python bench/render_bench.py --n 50 [--clients 1] [--json bench/results/render.json]

What it does, end to end (everything it starts is stopped in a `finally`, by process group):

1. Workload, made with pydicom (fresh Study/Series UIDs per set, a fresh SOP Instance UID per copy, so every
   copy is a distinct file with a distinct SHA-256 and a distinct cache key on both servers):
   - CT: pydicom's CT_small.dcm (128x128, signed 16-bit) upscaled bilinearly to 512x512 with numpy, with light
     seeded Gaussian noise (sigma 6 HU) so PNG encoding sees CT-like texture instead of smooth gradients;
     WindowCenter/WindowWidth 40/400, Explicit VR Little Endian.
   - CR: pydicom-data's RG1_J2KR.dcm (1955x1841, MONOCHROME1, JPEG 2000 lossless, 15 bits stored) and, so that
     Orthanc has something it can decode, the same image uncompressed (RG1_UNCR.dcm).
2. Servers:
   - the service under gunicorn (`dicomsite.wsgi`, --workers 2 --threads 4, i.e. the gthread worker), DEBUG off,
     on a throwaway PostgreSQL database (created and dropped here; SQLite in the temp dir if PostgreSQL is
     unreachable), DICOM_MEDIA_ROOT in a temp dir, LOG_LEVEL=WARNING; token auth (`Authorization: Token`),
     because HTTP basic auth would run the password hasher on every request;
   - Orthanc with its own JSON config in a temp dir (DICOM server off, no plugins, no auth, loopback only).
3. Before any timing, each server's processes are warmed on a throwaway instance (imports, codec loading),
   so "cold" means cache-cold, not process-cold.
4. Timings (one client by default, `--clients C` for concurrency), wall time from sending the request to the
   last byte of the body, each request on a kept-alive http.client connection:
   - cold: the first request for each of N distinct copies;
   - warm: N repeats of one identical URL after it has been requested once (plus a few priming requests,
     since the service's default cache is per worker process); if the service sends an ETag, also N
     conditional requests (If-None-Match) as "revalidate";
   - thumbnails: service `/thumbnail/?size=256&format=jpeg&quality=90` vs Orthanc
     `/rendered?width=256&height=256&quality=90` with `Accept: image/jpeg` (`--thumb-format png` for PNG);
     a 404 from the service's thumbnail route skips those rows with a note;
   - a floor: `GET /api/instances/{id}/` (metadata JSON, no pixels) vs Orthanc `GET /instances/{id}`.
   Orthanc's `/preview` stretches the full pixel range (it ignores WindowCenter/Width); its `/rendered` applies
   the file's window like the service's `/image/` does, so the `/rendered` rows compare the same output.

Options: --n-cr (fewer CR copies: each J2K decode takes ~1 s), --redis (throwaway redis-server as the shared
render cache, like CI), --samples DIR (save the first image of each measurement), --no-orthanc, --keep-tmp.
Standard library plus the venv's packages (pydicom, numpy, psycopg) only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import io
import json
import math
import os
import platform
import queue
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = Path(sys.executable)
CT_SIZE = 512
CR_J2K_NAME = "RG1_J2KR.dcm"
CR_UNC_NAME = "RG1_UNCR.dcm"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- workload


def upscale_bilinear(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resize of a 2-D array (corner-aligned), numpy only."""
    a = a.astype(np.float64)
    r = np.linspace(0, a.shape[0] - 1, rows)
    c = np.linspace(0, a.shape[1] - 1, cols)
    r0 = np.floor(r).astype(int)
    c0 = np.floor(c).astype(int)
    r1 = np.minimum(r0 + 1, a.shape[0] - 1)
    c1 = np.minimum(c0 + 1, a.shape[1] - 1)
    fr = (r - r0)[:, None]
    fc = (c - c0)[None, :]
    top = a[r0][:, c0] * (1 - fc) + a[r0][:, c1] * fc
    bottom = a[r1][:, c0] * (1 - fc) + a[r1][:, c1] * fc
    return top * (1 - fr) + bottom * fr


def make_ct_template() -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array  # stored values (signed 16-bit)
    big = upscale_bilinear(arr, CT_SIZE, CT_SIZE)
    big += np.random.default_rng(20240101).normal(0.0, 6.0, big.shape)
    info = np.iinfo(np.int16) if int(ds.PixelRepresentation) == 1 else np.iinfo(np.uint16)
    big = np.clip(np.rint(big), info.min, info.max).astype(np.int16 if int(ds.PixelRepresentation) == 1 else np.uint16)
    for keyword in ("LargestImagePixelValue", "SmallestImagePixelValue", "WindowCenterWidthExplanation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.Rows = CT_SIZE
    ds.Columns = CT_SIZE
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [float(v) * arr.shape[0] / CT_SIZE for v in ds.PixelSpacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = big.astype(big.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = "Bench^RenderCT"
    ds.PatientID = "BENCH-CT"
    return ds


def cr_path(name: str) -> Path | None:
    try:
        import data_store  # pydicom-data
    except ImportError:
        return None
    p = Path(data_store.__file__).parent / "data" / name
    return p if p.exists() else None


class Workload:
    """One set of distinct copies of a template: same pixels, fresh Study/Series per set, fresh SOP per copy."""

    def __init__(self, template: pydicom.Dataset, label: str):
        self.template = template
        self.label = label
        self.study = generate_uid()
        self.series = generate_uid()

    def copy_bytes(self) -> bytes:
        ds = self.template
        sop = generate_uid()
        ds.StudyInstanceUID = self.study
        ds.SeriesInstanceUID = self.series
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesDescription = f"render bench {self.label}"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


# --------------------------------------------------------------------------- HTTP


class HttpClient:
    """One kept-alive connection; reconnects (and retries once) when the server closed it."""

    def __init__(self, port: int, headers: dict[str, str] | None = None, timeout: float = 300.0):
        self.port = port
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        """Returns (status, headers dict (lower-case keys), body bytes, seconds)."""
        all_headers = {**self.headers, **(headers or {})}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            start = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=all_headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest):
                self.close()
                if attempt == 2:
                    raise
                continue
            elapsed = time.perf_counter() - start
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if hdrs.get("connection", "").lower() == "close" or resp.will_close:
                self.close()
            return resp.status, hdrs, data, elapsed
        raise AssertionError("unreachable")


def multipart(field_name: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "bench-" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def image_info(data: bytes) -> dict:
    """Format and dimensions of PNG/JPEG/WebP bytes, standard library only."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return {"format": "png", "width": w, "height": h, "bytes": len(data)}
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return {"format": "jpeg", "width": w, "height": h, "bytes": len(data)}
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        return {"format": "jpeg", "bytes": len(data)}
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return {"format": "webp", "bytes": len(data)}
    return {"format": "unknown", "bytes": len(data)}


# --------------------------------------------------------------------------- processes


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        try:
            pgid = os.getpgid(self.popen.pid)
        except ProcessLookupError:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children of the group (gunicorn workers) may outlive the master by a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def start_process(name: str, cmd: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None) -> Proc:
    handle = open(log_path, "wb")
    popen = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL
    )
    handle.close()
    return Proc(name, popen, log_path)


def wait_http(proc: Proc, port: int, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (code {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            c = HttpClient(port, timeout=5)
            status, _, _, _ = c.request("GET", path)
            c.close()
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready on port {port} after {timeout:.0f}s ({last}):\n{proc.log_tail()}")


class Postgres:
    """A throwaway database on the local PostgreSQL, dropped at the end."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.name = f"render_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.created = False

    def _admin(self):
        import psycopg

        return psycopg.connect(self.base_url + "/postgres", autocommit=True, connect_timeout=5)

    def create(self) -> str:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return f"{self.base_url}/{self.name}"

    def drop(self) -> None:
        if not self.created:
            return
        try:
            with self._admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False
        except Exception as exc:  # noqa: BLE001 - cleanup: report, do not mask the real error
            log(f"could not drop database {self.name}: {exc}")


# --------------------------------------------------------------------------- servers


class Service:
    def __init__(self, tmp: Path, args, notes: list[str]):
        self.tmp = tmp
        self.args = args
        self.notes = notes
        self.port = free_port(args.service_port)
        self.proc: Proc | None = None
        self.pg: Postgres | None = None
        self.token = ""
        self.server_desc = ""
        self.env: dict[str, str] = {}
        self.redis_url = ""
        self.redis: Proc | None = None

    def start_redis(self) -> None:
        """A throwaway redis-server (no persistence) so both workers share one render cache."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found")
        port = free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--dir", str(self.tmp)]  # fmt: skip
        self.redis = start_process("redis", cmd, self.tmp / "redis.log", cwd=self.tmp)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not self.redis.alive():
                raise RuntimeError(f"redis-server exited:\n{self.redis.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    self.redis_url = f"redis://127.0.0.1:{port}/0"
                    log(f"service: redis cache on port {port}")
                    return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not answer PING")

    def database_url(self) -> str:
        if self.args.database_url:
            return self.args.database_url
        try:
            self.pg = Postgres(self.args.postgres)
            url = self.pg.create()
            log(f"service: PostgreSQL database {self.pg.name}")
            return url
        except Exception as exc:  # noqa: BLE001
            self.pg = None
            self.notes.append(f"PostgreSQL unreachable ({type(exc).__name__}: {exc}); the service ran on SQLite")
            return f"sqlite:///{self.tmp / 'service.sqlite3'}"

    def start(self) -> None:
        media = self.tmp / "service-media"
        upload_tmp = self.tmp / "service-upload-tmp"
        media.mkdir()
        upload_tmp.mkdir()
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "DICOM_")) and k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL")
        }
        self.env = {
            **inherited,
            "DJANGO_SECRET_KEY": "render-bench-" + secrets.token_hex(16),
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": self.database_url(),
            "DICOM_MEDIA_ROOT": str(media),
            "DICOM_UPLOAD_TEMP_DIR": str(upload_tmp),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        if self.redis_url:
            self.env["REDIS_URL"] = self.redis_url
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.manage("migrate", "--noinput", "-v", "0")
        password = secrets.token_urlsafe(16)
        script = (
            "from django.contrib.auth import get_user_model; from rest_framework.authtoken.models import Token; "
            f"u = get_user_model().objects.create_user('bench', password='{password}'); "
            "print('TOKEN=' + Token.objects.create(user=u).key)"
        )
        out = self.manage("shell", "-c", script)
        self.token = next(line[6:] for line in out.splitlines() if line.startswith("TOKEN="))
        if self.args.server == "gunicorn" and _has_module("gunicorn"):
            cmd = [
                str(VENV_PYTHON), "-m", "gunicorn", "dicomsite.wsgi:application",
                "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(self.args.workers),
                "--threads", str(self.args.threads),
                "--timeout", "300",
                "--graceful-timeout", "5",
                "--log-level", "warning",
            ]  # fmt: skip
            worker = "gthread" if self.args.threads > 1 else "sync"
            self.server_desc = (
                f"gunicorn {metadata.version('gunicorn')} --workers {self.args.workers} "
                f"--threads {self.args.threads} ({worker} worker)"
            )
        else:
            if self.args.server == "gunicorn":
                self.notes.append("gunicorn is not installed in the venv: the service ran under runserver --noreload")
            cmd = [str(VENV_PYTHON), "manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"]
            self.server_desc = "manage.py runserver --noreload (threaded, 1 process)"
        log(f"service: starting {self.server_desc} on port {self.port}")
        self.proc = start_process("service", cmd, self.tmp / "service.log", env=self.env, cwd=ROOT)
        wait_http(self.proc, self.port, "/healthz")
        self.server_desc += f", cache: {'Redis (shared by the workers)' if self.redis_url else 'local memory (per worker process)'}"

    def manage(self, *argv: str) -> str:
        res = subprocess.run(
            [str(VENV_PYTHON), "manage.py", *argv], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        if res.returncode != 0:
            raise RuntimeError(f"manage.py {argv[0]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res.stdout

    def client(self) -> HttpClient:
        return HttpClient(self.port, {"Authorization": f"Token {self.token}"})

    def upload(self, client: HttpClient, content: bytes) -> str:
        body, ctype = multipart("file", "bench.dcm", content, "application/dicom")
        status, _, data, _ = client.request("POST", "/api/instances/", body=body, headers={"Content-Type": ctype})
        if status != 201:
            raise RuntimeError(f"service upload: HTTP {status}: {data[:500]!r}")
        return json.loads(data)["id"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.drop()


class Orthanc:
    """Orthanc with a temp JSON config; `plugins` (shared-library paths) and `config` (extra top-level keys,
    e.g. {"DicomWeb": {...}}) are empty by default: no plugins, the config below as is."""

    def __init__(self, tmp: Path, args, plugins: list[str] | None = None, config: dict | None = None):
        self.tmp = tmp
        self.args = args
        self.plugins = list(plugins or [])
        self.config_extra = dict(config or {})
        self.port = free_port(args.orthanc_port)
        self.proc: Proc | None = None
        self.version = ""

    def start(self) -> None:
        binary = shutil.which(self.args.orthanc_bin)
        if binary is None:
            raise FileNotFoundError(f"Orthanc binary '{self.args.orthanc_bin}' not found")
        storage = self.tmp / "orthanc-db"
        storage.mkdir()
        config = {
            "Name": "render-bench",
            "HttpPort": self.port,
            "HttpServerEnabled": True,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": self.plugins,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "LuaScripts": [],
            **self.config_extra,
        }
        cfg_path = self.tmp / "orthanc.json"
        cfg_path.write_text(json.dumps(config, indent=2))
        log(f"orthanc: starting {binary} on port {self.port}")
        self.proc = start_process("orthanc", [binary, str(cfg_path)], self.tmp / "orthanc.log", cwd=self.tmp)
        wait_http(self.proc, self.port, "/system")
        c = self.client()
        _, _, data, _ = c.request("GET", "/system")
        c.close()
        self.version = json.loads(data).get("Version", "?")

    def client(self) -> HttpClient:
        return HttpClient(self.port)

    def upload(self, client: HttpClient, content: bytes) -> str:
        status, _, data, _ = client.request("POST", "/instances", body=content, headers={"Content-Type": "application/dicom"})
        if status != 200:
            raise RuntimeError(f"orthanc upload: HTTP {status}: {data[:500]!r}")
        reply = json.loads(data)
        if reply.get("Status") not in ("Success", None):
            raise RuntimeError(f"orthanc upload: {reply}")
        return reply["ID"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def _has_module(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


# --------------------------------------------------------------------------- measurement


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    s = sorted(values)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Series:
    """Latencies of one measurement."""

    name: str
    server: str
    url_example: str
    kind: str  # cold | warm | revalidate
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    clients: int = 1
    sample: dict = field(default_factory=dict)
    sample_bytes: bytes = b""
    skipped: str = ""

    def stats(self) -> dict:
        ok = self.latencies_ms
        d = {
            "name": self.name,
            "server": self.server,
            "kind": self.kind,
            "url_example": self.url_example,
            "clients": self.clients,
            "requests": sum(self.statuses.values()),
            "ok": len(ok),
            "statuses": self.statuses,
            "errors": self.errors[:5],
            "sample_response": self.sample,
            "skipped": self.skipped or None,
        }
        if ok:
            d.update(
                p50_ms=round(percentile(ok, 0.50), 2),
                p95_ms=round(percentile(ok, 0.95), 2),
                mean_ms=round(statistics.fmean(ok), 2),
                min_ms=round(min(ok), 2),
                max_ms=round(max(ok), 2),
                wall_s=round(self.wall_s, 3),
                throughput_rps=round(len(ok) / self.wall_s, 2) if self.wall_s else None,
                latencies_ms=[round(v, 3) for v in ok],
            )
        return d

    @property
    def key(self) -> str:
        return f"{self.server}:{self.name}"

    def p(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q) if self.latencies_ms and not self.errors else None


def run_requests(
    series: Series,
    make_client,
    paths: list[str],
    clients: int,
    ok_statuses=(200,),
    headers: dict[str, str] | None = None,
) -> Series:
    """GET each path once (cold: distinct paths; warm: the same path repeated), with `clients` threads."""
    series.clients = clients
    lock = threading.Lock()

    def record(status: int, hdrs: dict, data: bytes, elapsed: float, path: str) -> None:
        with lock:
            series.statuses[str(status)] = series.statuses.get(str(status), 0) + 1
            if status in ok_statuses:
                series.latencies_ms.append(elapsed * 1000)
                if not series.sample:
                    series.sample_bytes = data
                    series.sample = {
                        "status": status,
                        "content_type": hdrs.get("content-type"),
                        "etag": hdrs.get("etag"),
                        "cache_control": hdrs.get("cache-control"),
                        **(image_info(data) if status == 200 else {}),
                    }
            else:
                series.errors.append(f"{path}: HTTP {status}: {data[:300]!r}")

    work: queue.Queue[str] = queue.Queue()
    for p in paths:
        work.put(p)

    def worker() -> None:
        c = make_client()
        try:
            while True:
                try:
                    path = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    status, hdrs, data, elapsed = c.request("GET", path, headers=headers)
                except OSError as exc:
                    with lock:
                        series.statuses["error"] = series.statuses.get("error", 0) + 1
                        series.errors.append(f"{path}: {type(exc).__name__}: {exc}")
                    c.close()
                    continue
                record(status, hdrs, data, elapsed, path)
        finally:
            c.close()

    start = time.perf_counter()
    if clients <= 1:
        worker()
    else:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            for f in [pool.submit(worker) for _ in range(clients)]:
                f.result()
    series.wall_s = time.perf_counter() - start
    return series


def upload_copies(server, workload: Workload, count: int) -> list[str]:
    c = server.client()
    try:
        return [server.upload(c, workload.copy_bytes()) for _ in range(count)]
    finally:
        c.close()


def probe(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    c = server.client()
    try:
        status, hdrs, data, _ = c.request("GET", path, headers=headers)
        return status, hdrs, data
    finally:
        c.close()


# --------------------------------------------------------------------------- the benchmark


def machine_info() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("pydicom", "pillow", "numpy", "Django", "djangorestframework", "gunicorn", "pylibjpeg",
                "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "psycopg", "pydicom-data"):  # fmt: skip
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    git = {}
    with contextlib.suppress(Exception):
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "studies", "dicomsite"], cwd=ROOT, capture_output=True, text=True).stdout
        git["uncommitted_changes_in_studies_or_dicomsite"] = bool(dirty.strip())
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git": git,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="requests per measurement (distinct copies for cold ones); default 50")
    ap.add_argument("--n-cr", type=int, default=None, help="requests for the large CR measurements (default: --n)")
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1: sequential)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "render.json", help="where to write results")
    ap.add_argument("--thumb-size", type=int, default=256)
    ap.add_argument("--thumb-format", choices=("png", "jpeg", "webp"), default="jpeg",
                    help="thumbnail format (default jpeg, the service's default; Orthanc gets the matching Accept header)")
    ap.add_argument("--server", choices=("gunicorn", "runserver"), default="gunicorn")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--redis", action="store_true", help="run a throwaway redis-server and set REDIS_URL (shared render cache)")
    ap.add_argument("--database-url", default=None, help="use this database instead of a throwaway PostgreSQL one")
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server for the throwaway database")
    ap.add_argument("--service-port", type=int, default=None)
    ap.add_argument("--orthanc-port", type=int, default=18042)
    ap.add_argument("--orthanc-bin", default="Orthanc")
    ap.add_argument("--no-orthanc", action="store_true", help="measure the service only")
    ap.add_argument("--samples", type=Path, default=None, help="save the first image of each measurement here")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, stored files)")
    args = ap.parse_args(argv)
    n = args.n
    n_cr = args.n_cr if args.n_cr is not None else n
    clients = max(1, args.clients)
    if n < 1 or n_cr < 0:
        ap.error("--n must be >= 1 and --n-cr >= 0")

    # SIGTERM/SIGHUP run the finally blocks too.
    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    notes: list[str] = []
    t_start = time.monotonic()
    info = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="render-bench-"))
    service = Service(tmp, args, notes)
    orthanc = None if args.no_orthanc else Orthanc(tmp, args)
    results: dict[str, Series] = {}

    ct_template = make_ct_template()
    cr_files = {"cr_j2k": cr_path(CR_J2K_NAME), "cr_unc": cr_path(CR_UNC_NAME)}
    cr_templates = {k: pydicom.dcmread(p) for k, p in cr_files.items() if p is not None and n_cr > 0}
    for k, p in cr_files.items():
        if p is None:
            notes.append(f"{CR_J2K_NAME if k == 'cr_j2k' else CR_UNC_NAME} not found in pydicom-data: {k} rows skipped")
    if "cr_j2k" in cr_templates:
        d = cr_templates["cr_j2k"]
        log(
            f"CR file: {cr_files['cr_j2k']} ({d.Rows}x{d.Columns} {d.PhotometricInterpretation}, "
            f"{d.file_meta.TransferSyntaxUID.name}, BitsStored {d.BitsStored})"
        )

    quality = "" if args.thumb_format == "png" else "&quality=90"
    thumb_q = f"size={args.thumb_size}&format={args.thumb_format}{quality}"
    orthanc_thumb_q = f"width={args.thumb_size}&height={args.thumb_size}{quality}"
    orthanc_accept = {"png": "image/png", "jpeg": "image/jpeg", "webp": None}[args.thumb_format]

    try:
        if args.redis:
            service.start_redis()
        service.start()
        if orthanc is not None:
            try:
                orthanc.start()
            except Exception as exc:  # noqa: BLE001
                notes.append(f"Orthanc could not be started ({exc}); Orthanc columns are empty")
                log(f"orthanc: {exc}")
                orthanc.stop()
                orthanc = None

        # ---------------- uploads (distinct copies for every cold measurement)
        log(f"uploading: service {2 * n + 2 * n_cr + 3}, orthanc {3 * n + 2 * n_cr + 3} copies")
        svc_ids = {
            "warmup_ct": upload_copies(service, Workload(ct_template, "warmup-ct"), 1),
            "ct_image": upload_copies(service, Workload(ct_template, "ct-image"), n),
        }
        for k, tpl in cr_templates.items():
            svc_ids["warmup_" + k] = upload_copies(service, Workload(tpl, "warmup-" + k), 1)
        orth_ids: dict[str, list[str]] = {}
        if orthanc is not None:
            orth_ids["warmup_ct"] = upload_copies(orthanc, Workload(ct_template, "warmup-ct"), 1)
            orth_ids["ct_preview"] = upload_copies(orthanc, Workload(ct_template, "ct-preview"), n)
            orth_ids["ct_rendered"] = upload_copies(orthanc, Workload(ct_template, "ct-rendered"), n)
            orth_ids["ct_thumb"] = upload_copies(orthanc, Workload(ct_template, "ct-thumb"), n)
            for k, tpl in cr_templates.items():
                orth_ids["warmup_" + k] = upload_copies(orthanc, Workload(tpl, "warmup-" + k), 1)

        # ---------------- does the service have the thumbnail route?
        w = svc_ids["warmup_ct"][0]
        status, hdrs, data = probe(service, f"/api/instances/{w}/thumbnail/?{thumb_q}")
        thumb_available = status == 200
        if status == 404:
            notes.append("service GET /api/instances/{id}/thumbnail/ answered 404 (route not there yet): thumbnail rows skipped for the service")
        elif status != 200:
            notes.append(f"service thumbnail probe answered HTTP {status}: {data[:200]!r}; thumbnail rows skipped for the service")
        if thumb_available:
            svc_ids["ct_thumb"] = upload_copies(service, Workload(ct_template, "ct-thumb"), n)
            for k, tpl in cr_templates.items():
                svc_ids[k + "_thumb"] = upload_copies(service, Workload(tpl, k + "-thumb"), n_cr)
        if orthanc is not None:
            for k in cr_templates:
                st, _, body = probe(orthanc, f"/instances/{orth_ids['warmup_' + k][0]}/rendered?{orthanc_thumb_q}")
                if st == 200:
                    orth_ids[k + "_thumb"] = upload_copies(orthanc, Workload(cr_templates[k], k + "-thumb"), n_cr)
                else:
                    ts = cr_templates[k].file_meta.TransferSyntaxUID
                    notes.append(
                        f"Orthanc {orthanc.version} cannot render {cr_files[k].name} ({ts.name}, {ts}): HTTP {st} "
                        "(its built-in DCMTK decoder has no JPEG 2000; that needs the GDCM plugin): Orthanc column empty for that row"
                    )
        log(f"uploads done ({time.monotonic() - t_start:.0f}s since start)")

        # ---------------- process warm-up on throwaway instances (not cache warm-up of measured ones)
        warm_rounds = max(2, 2 * args.workers)
        for _ in range(warm_rounds):
            probe(service, f"/api/instances/{svc_ids['warmup_ct'][0]}/image/")
            if thumb_available:
                for k in ["ct", *cr_templates]:
                    probe(service, f"/api/instances/{svc_ids['warmup_' + k][0]}/thumbnail/?{thumb_q}")
            if orthanc is not None:
                probe(orthanc, f"/instances/{orth_ids['warmup_ct'][0]}/preview")
                probe(orthanc, f"/instances/{orth_ids['warmup_ct'][0]}/rendered")

        # ---------------- framework floor: a small JSON read, no pixels
        meta_path = f"/api/instances/{svc_ids['warmup_ct'][0]}/"
        s = Series("metadata", "service", "/api/instances/{id}/", "json")
        results[s.key] = run_requests(s, service.client, [meta_path] * n, clients)
        if orthanc is not None:
            meta_path = f"/instances/{orth_ids['warmup_ct'][0]}"
            s = Series("metadata", "orthanc", "/instances/{id}", "json")
            results[s.key] = run_requests(s, orthanc.client, [meta_path] * n, clients)

        # ---------------- service
        ids = svc_ids["ct_image"]
        s = Series("ct_image_cold", "service", "/api/instances/{id}/image/", "cold")
        results[s.key] = run_requests(s, service.client, [f"/api/instances/{i}/image/" for i in ids], clients)
        warm_path = f"/api/instances/{ids[0]}/image/"
        for _ in range(2 * args.workers + 2):  # the default cache is per worker process
            probe(service, warm_path)
        s = Series("ct_image_warm", "service", warm_path, "warm")
        results[s.key] = run_requests(s, service.client, [warm_path] * n, clients)
        etag = results["service:ct_image_warm"].sample.get("etag")
        if etag:
            s = Series("ct_image_revalidate", "service", warm_path + " (If-None-Match)", "revalidate")
            results[s.key] = run_requests(s, service.client, [warm_path] * n, clients, ok_statuses=(304,), headers={"If-None-Match": etag})
        else:
            notes.append("the service's /image/ response carries no ETag (no cache yet?): its 'warm' rows are repeated renders")
        if thumb_available:
            for k, label in [("ct", "ct_thumb"), *[(k, k + "_thumb") for k in cr_templates]]:
                log(f"service: {label} cold x{len(svc_ids[label])}")
                s = Series(label + "_cold", "service", "/api/instances/{id}/thumbnail/?" + thumb_q, "cold")
                results[s.key] = run_requests(s, service.client, [f"/api/instances/{i}/thumbnail/?{thumb_q}" for i in svc_ids[label]], clients)
        log(f"service measured ({time.monotonic() - t_start:.0f}s since start)")

        # ---------------- orthanc
        if orthanc is not None:
            for endpoint in ("preview", "rendered"):
                ids = orth_ids["ct_" + endpoint]
                s = Series(f"ct_{endpoint}_cold", "orthanc", f"/instances/{{id}}/{endpoint}", "cold")
                results[s.key] = run_requests(s, orthanc.client, [f"/instances/{i}/{endpoint}" for i in ids], clients)
                warm_path = f"/instances/{ids[0]}/{endpoint}"
                probe(orthanc, warm_path)
                s = Series(f"ct_{endpoint}_warm", "orthanc", warm_path, "warm")
                results[s.key] = run_requests(s, orthanc.client, [warm_path] * n, clients)
            accept = {"Accept": orthanc_accept} if orthanc_accept else None
            if orthanc_accept is None:
                notes.append(f"Orthanc cannot return {args.thumb_format}: its thumbnail rows are skipped")
            else:
                for k, label in [("ct", "ct_thumb"), *[(k, k + "_thumb") for k in cr_templates]]:
                    if label not in orth_ids:
                        continue
                    s = Series(label + "_cold", "orthanc", "/instances/{id}/rendered?" + orthanc_thumb_q, "cold")
                    results[s.key] = run_requests(
                        s, orthanc.client, [f"/instances/{i}/rendered?{orthanc_thumb_q}" for i in orth_ids[label]], clients, headers=accept
                    )
            log(f"orthanc measured ({time.monotonic() - t_start:.0f}s since start)")
    finally:
        service_log = service.proc.log_tail(40) if service.proc else ""
        orthanc_log = orthanc.proc.log_tail(40) if orthanc is not None and orthanc.proc else ""
        service.stop()
        if orthanc is not None:
            orthanc.stop()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------- report
    for s in results.values():
        if s.errors:
            notes.append(f"{s.server} {s.name}: {len(s.errors)} failed requests, e.g. {s.errors[0][:200]}")

    def cell(name: str, server: str, q: float) -> float | None:
        s = results.get(f"{server}:{name}")
        return s.p(q) if s is not None else None

    ct = f"CT {CT_SIZE}x{CT_SIZE} 16-bit"
    cr_j2k = f"CR {CR_J2K_NAME} 1955x1841 J2K"
    cr_unc = f"CR {CR_UNC_NAME} 1955x1841 unc."
    ts, tf = args.thumb_size, args.thumb_format
    rows = [
        (f"{ct} render cold p50  (/image/ vs /preview)", cell("ct_image_cold", "service", .5), cell("ct_preview_cold", "orthanc", .5)),
        (f"{ct} render cold p95  (/image/ vs /preview)", cell("ct_image_cold", "service", .95), cell("ct_preview_cold", "orthanc", .95)),
        (f"{ct} render warm p50  (/image/ vs /preview)", cell("ct_image_warm", "service", .5), cell("ct_preview_warm", "orthanc", .5)),
        (f"{ct} render warm p95  (/image/ vs /preview)", cell("ct_image_warm", "service", .95), cell("ct_preview_warm", "orthanc", .95)),
        (f"{ct} render cold p50  (/image/ vs /rendered)", cell("ct_image_cold", "service", .5), cell("ct_rendered_cold", "orthanc", .5)),
        (f"{ct} render cold p95  (/image/ vs /rendered)", cell("ct_image_cold", "service", .95), cell("ct_rendered_cold", "orthanc", .95)),
        (f"{ct} render warm p50  (/image/ vs /rendered)", cell("ct_image_warm", "service", .5), cell("ct_rendered_warm", "orthanc", .5)),
        (f"{ct} render warm p95  (/image/ vs /rendered)", cell("ct_image_warm", "service", .95), cell("ct_rendered_warm", "orthanc", .95)),
    ]
    if "service:ct_image_revalidate" in results:
        rows.append((f"{ct} revalidate 304 p50 (If-None-Match)", cell("ct_image_revalidate", "service", .5), None))
    rows += [
        ("instance metadata JSON p50 (no pixels: HTTP+auth+DB floor)", cell("metadata", "service", .5), cell("metadata", "orthanc", .5)),
        (f"{ct} thumbnail {ts} {tf} cold p50", cell("ct_thumb_cold", "service", .5), cell("ct_thumb_cold", "orthanc", .5)),
        (f"{cr_j2k} thumbnail {ts} {tf} cold p50", cell("cr_j2k_thumb_cold", "service", .5), cell("cr_j2k_thumb_cold", "orthanc", .5)),
        (f"{cr_unc} thumbnail {ts} {tf} cold p50", cell("cr_unc_thumb_cold", "service", .5), cell("cr_unc_thumb_cold", "orthanc", .5)),
    ]

    def fmt(v: float | None) -> str:
        return f"{v:9.1f}" if v is not None else f"{'n/a':>9}"

    machine_lines = [
        f"machine: nproc={info['nproc']} ({info['cpu_model']}), {info['platform']}",
        f"python {info['python']}; pydicom {info['packages']['pydicom']}, pillow {info['packages']['pillow']}, "
        f"numpy {info['packages']['numpy']}, Django {info['packages']['Django']}, "
        f"pylibjpeg-openjpeg {info['packages']['pylibjpeg-openjpeg']}; Orthanc {orthanc.version if orthanc else 'n/a'}",
        f"service: {service.server_desc}; repo {info['git'].get('commit', '?')}"
        + (" (uncommitted changes in studies/ or dicomsite/)" if info["git"].get("uncommitted_changes_in_studies_or_dicomsite") else ""),
        f"n={n} (CR n={n_cr}), clients={clients}; times in ms, wall time per request incl. body read; ratio = service/orthanc",
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print("\n".join(machine_lines))
    print()
    print(f"{'row':<{width}}  {'service':>9}  {'orthanc':>9}  {'ratio':>7}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 7}")
    table = []
    for label, sv, ov in rows:
        ratio = sv / ov if sv is not None and ov else None
        print(f"{label:<{width}}  {fmt(sv)}  {fmt(ov)}  {(f'{ratio:7.2f}' if ratio is not None else f'{chr(8212):>7}')}")
        table.append({"row": label, "service_ms": _r(sv), "orthanc_ms": _r(ov), "ratio": _r(ratio, 3)})
    print()
    print("responses (first of each measurement); p50/p95 ms; throughput over the measurement:")
    for s in results.values():
        smp = s.sample
        dims = f"{smp.get('width')}x{smp.get('height')}" if smp.get("width") else "-"
        ctype = (smp.get("content_type") or "-").split(";")[0]
        p50, p95 = s.p(0.5), s.p(0.95)
        rps = len(s.latencies_ms) / s.wall_s if s.wall_s and s.latencies_ms else 0.0
        print(f"  {s.server:<8} {s.name:<20} {ctype:<16} {dims:>9} {smp.get('bytes', 0):>7} B  etag={'yes' if smp.get('etag') else 'no ':<3}"
              f"  {fmt(p50)} {fmt(p95)}  {rps:6.1f} req/s")
    if args.samples:
        args.samples.mkdir(parents=True, exist_ok=True)
        for s in results.values():
            if s.sample_bytes and s.sample.get("format") in ("png", "jpeg", "webp"):
                (args.samples / f"{s.server}-{s.name}.{s.sample['format']}").write_bytes(s.sample_bytes)
        print(f"sample images in {args.samples}")
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  - {note}")

    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": info,
        "orthanc_version": orthanc.version if orthanc else None,
        "service_server": service.server_desc,
        "config": {
            "n": n, "n_cr": n_cr, "clients": clients, "thumb_size": ts, "thumb_format": tf,
            "ct": f"CT_small.dcm upscaled bilinearly to {CT_SIZE}x{CT_SIZE}, noise sigma 6, WC/WW 40/400",
            "cr_files": {k: str(v) if v else None for k, v in cr_files.items()},
            "percentiles": "linear interpolation between closest ranks",
        },  # fmt: skip
        "table": table,
        "measurements": {key: s.stats() for key, s in results.items()},
        "notes": notes,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    if any(s.errors for s in results.values()):
        out["server_logs_tail"] = {"service": service_log, "orthanc": orthanc_log}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json} ({out['elapsed_s']:.0f}s total)")
    return 1 if any(s.errors for s in results.values()) else 0


def _r(v: float | None, digits: int = 2) -> float | None:
    return round(v, digits) if v is not None else None


if __name__ == "__main__":
    sys.exit(main())
