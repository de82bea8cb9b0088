#!/usr/bin/env python3
"""Load test: the service under gunicorn, N concurrent keep-alive clients, a mixed workload, for a while.

    .venv/bin/python bench/load_test.py [--seconds 180] [--clients 8] [--json bench/results/load.json]

Not a unit test. End to end (everything started here is stopped in a `finally`, by process group):

1. A throwaway PostgreSQL database on --postgres (created, migrated, dropped at the end), a temp
   DICOM_MEDIA_ROOT, one user + DRF token.
2. `.venv/bin/gunicorn -c gunicorn.conf.py dicomsite.wsgi` with GUNICORN_BIND=127.0.0.1:<free port>,
   GUNICORN_WORKERS=2 (--workers), DEBUG off, LOG_LEVEL=WARNING. Throttles: one user for every client, so the
   per-user rates are raised in the server's environment (DICOM_THROTTLE_UPLOAD / DICOM_THROTTLE_RENDER,
   default here 1000000/min each); the rest of the settings are the production defaults (cache per worker).
3. Seeding: a few uploads so reads have targets. Then --clients threads, each on its own http.client
   keep-alive connection, pick a request kind at random (weights in MIX) until --seconds have passed:
   - upload: a freshly generated CT_small.dcm (fresh Study/Series/SOP UIDs) as a raw
     `Content-Type: application/dicom` POST /api/instances/;
   - render: /api/instances/{id}/image/ with window/size/format drawn from small sets, so some requests
     are cold (first time that id+params combination) and many repeat (cached);
   - thumbnail: /api/instances/{id}/thumbnail/ (sizes 64/128/256);
   - tag: /api/instances/{id}/tags/PatientName/;
   - list: /api/instances/ with and without ?search= / ?modality=, /api/studies/, /api/series/.
4. Every 5 s, the VmRSS of each gunicorn worker (children of the master, from /proc/<pid>/status).
   gunicorn.conf.py recycles a worker after max_requests=2000(+jitter): a new pid then appears; it is
   reported as its own row, so a recycle is visible rather than hidden in the numbers.

Output: a table (per-kind counts, p50/p95 ms, status histogram, RSS first/last/max per worker) on stdout,
JSON in --json. Exit code 1 if any 5xx or transport error happened.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_bench import HttpClient, Postgres, free_port, log, percentile, start_process, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MIX = {"upload": 1, "render": 4, "thumbnail": 2, "tag": 3, "list": 2}
WINDOWS = ["", "window=40,400", "window=-600,1500", "preset=bone", "preset=lung", "window=50,350,sigmoid"]
SIZES = ["", "size=128", "size=256", "width=300", "size=512"]
FORMATS = ["", "format=jpeg", "format=webp"]
LISTS = ["/api/instances/", "/api/instances/?search=CompressedSamples", "/api/instances/?modality=CT", "/api/studies/", "/api/series/"]


def fresh_ct(template: pydicom.Dataset) -> bytes:
    ds = template.copy()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def migrate_and_serve(env: dict, tmp: Path, port: int, workers: int, *, username: str):
    """Migrate the database in `env`, create a user with a token, start gunicorn (gunicorn.conf.py) and
    wait until it answers: (process, token)."""
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300)
    script = (
        "from django.contrib.auth import get_user_model; from rest_framework.authtoken.models import Token; "
        f"u = get_user_model().objects.create_user({username!r}, password='{secrets.token_urlsafe(16)}'); "
        "print('TOKEN=' + Token.objects.create(user=u).key)"
    )
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    token = next(line[6:] for line in out.splitlines() if line.startswith("TOKEN="))
    cmd = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "dicomsite.wsgi"]
    log(f"starting {' '.join(cmd)} on port {port}, {workers} workers")
    proc = start_process("gunicorn", cmd, tmp / "gunicorn.log", env=env, cwd=ROOT)
    wait_http(proc, port, "/healthz")
    return proc, token


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        return out


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.status: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.errors: list[str] = []
        self.samples_5xx: list[str] = []

    def add(self, kind: str, status: int, ms: float, path: str, body: bytes) -> None:
        with self.lock:
            self.latency[kind].append(ms)
            self.status[kind][status] += 1
            if status >= 500 and len(self.samples_5xx) < 20:
                self.samples_5xx.append(f"{kind} {path} -> {status}: {body[:300]!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--throttle", default="1000000/min", help="DICOM_THROTTLE_UPLOAD and _RENDER for the run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--redis", help="REDIS_URL for the render cache (shared by the workers instead of in each one)")
    ap.add_argument("--max-requests", type=int, help="GUNICORN_MAX_REQUESTS (0: never recycle workers)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="load-test-"))
    pg = Postgres(args.postgres)
    pg.name = f"load_test_{os.getpid()}_{secrets.token_hex(3)}"
    proc = None
    stats = Stats()
    rss: dict[int, list[tuple[float, int]]] = collections.defaultdict(list)
    notes: list[str] = []
    t0 = time.monotonic()
    try:
        media = tmp / "media"
        media.mkdir()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DICOM_", "GUNICORN_"))
               and k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL")}  # fmt: skip
        env.update({
            "DJANGO_SECRET_KEY": "load-test-" + secrets.token_hex(16),
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": pg.create(),
            "DICOM_MEDIA_ROOT": str(media),
            "DICOM_UPLOAD_TEMP_DIR": str(tmp),
            "DICOM_THROTTLE_UPLOAD": args.throttle,
            "DICOM_THROTTLE_RENDER": args.throttle,
            "LOG_LEVEL": "WARNING",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(args.workers),
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        if args.redis:
            env["REDIS_URL"] = args.redis
        if args.max_requests is not None:
            env["GUNICORN_MAX_REQUESTS"] = str(args.max_requests)
        log(f"database {pg.name}; migrating")
        proc, token = migrate_and_serve(env, tmp, port, args.workers, username="load")
        headers = {"Authorization": f"Token {token}"}

        template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        template_lock = threading.Lock()
        ids: list[str] = []
        ids_lock = threading.Lock()

        def do_upload(client: HttpClient) -> tuple[int, bytes, float, str]:
            with template_lock:
                body = fresh_ct(template)
            st, _, data, secs = client.request("POST", "/api/instances/", body=body, headers={"Content-Type": "application/dicom"})
            if st == 201:
                with ids_lock:
                    ids.append(json.loads(data)["id"])
            return st, data, secs, "/api/instances/"

        seed_client = HttpClient(port, headers)
        for _ in range(4):
            st, data, _, _ = do_upload(seed_client)
            if st != 201:
                raise RuntimeError(f"seed upload: HTTP {st}: {data[:300]!r}")
        seed_client.close()

        stop = threading.Event()

        def sampler() -> None:
            while True:
                now = time.monotonic() - t0
                for pid in children_of(proc.popen.pid):
                    kib = rss_kib(pid)
                    if kib is not None:
                        rss[pid].append((round(now, 1), kib))
                if stop.wait(5.0):
                    return

        def worker(n: int) -> None:
            rnd = random.Random(args.seed * 1000 + n)
            client = HttpClient(port, headers, timeout=120)
            kinds, weights = list(MIX), list(MIX.values())
            try:
                while not stop.is_set():
                    kind = rnd.choices(kinds, weights)[0]
                    with ids_lock:
                        target = rnd.choice(ids)
                    try:
                        if kind == "upload":
                            st, data, secs, path = do_upload(client)
                        else:
                            if kind == "render":
                                q = "&".join(p for p in (rnd.choice(WINDOWS), rnd.choice(SIZES), rnd.choice(FORMATS)) if p)
                                path = f"/api/instances/{target}/image/" + (f"?{q}" if q else "")
                            elif kind == "thumbnail":
                                path = f"/api/instances/{target}/thumbnail/?size={rnd.choice([64, 128, 256])}"
                            elif kind == "tag":
                                path = f"/api/instances/{target}/tags/PatientName/"
                            else:
                                path = rnd.choice(LISTS)
                            st, _, data, secs = client.request("GET", path)
                    except Exception as exc:  # noqa: BLE001 - count transport errors, keep going
                        with stats.lock:
                            stats.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                        client.close()
                        continue
                    stats.add(kind, st, secs * 1000, path, data)
            finally:
                client.close()

        sampler_thread = threading.Thread(target=sampler, daemon=True)
        sampler_thread.start()
        log(f"load: {args.clients} clients for {args.seconds:.0f}s, mix {MIX}")
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.clients)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=150)
        wall = time.monotonic() - t_start
        sampler_thread.join(timeout=10)
        log(f"load done in {wall:.1f}s")
        if not proc.alive():
            notes.append(f"gunicorn master died during the run (code {proc.popen.returncode})")
        log_tail = proc.log_tail(40)
    finally:
        if proc is not None:
            proc.stop()
        pg.drop()
        shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ report
    rows = []
    total_status: collections.Counter = collections.Counter()
    for kind in MIX:
        lat = stats.latency.get(kind, [])
        total_status.update(stats.status.get(kind, {}))
        rows.append({
            "kind": kind, "count": len(lat), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(percentile(lat, 0.5), 1) if lat else None,
            "p95_ms": round(percentile(lat, 0.95), 1) if lat else None,
            "status": dict(sorted(stats.status.get(kind, {}).items())),
        })  # fmt: skip
    n5xx = sum(c for s, c in total_status.items() if s >= 500)
    print()
    print(f"gunicorn -c gunicorn.conf.py dicomsite.wsgi: {args.workers} workers x 4 threads (gthread, gunicorn.conf.py defaults); "
          f"PostgreSQL; {args.clients} clients, {wall:.0f}s; throttles {args.throttle} (one user); nproc={os.cpu_count()}")
    print(f"{'kind':<10} {'count':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8}  status codes")
    for r in rows:
        p50 = f"{r['p50_ms']:8.1f}" if r["p50_ms"] is not None else f"{'-':>8}"
        p95 = f"{r['p95_ms']:8.1f}" if r["p95_ms"] is not None else f"{'-':>8}"
        print(f"{r['kind']:<10} {r['count']:>7} {r['rps']:>7.1f} {p50} {p95}  {r['status']}")
    total = sum(r["count"] for r in rows)
    print(f"{'total':<10} {total:>7} {total / wall:>7.1f} {'':>8} {'':>8}  {dict(sorted(total_status.items()))}")
    print(f"5xx: {n5xx}; transport errors: {len(stats.errors)}")
    print()
    print("worker RSS (MiB), sampled every 5 s:")
    print(f"{'pid':>8} {'samples':>7} {'from s':>7} {'to s':>7} {'first':>8} {'last':>8} {'max':>8}")
    rss_rows = []
    master_pid = proc.popen.pid if proc else None
    for pid, series in sorted(rss.items(), key=lambda kv: kv[1][0][0]):
        vals = [v for _, v in series]
        row = {"pid": pid, "samples": len(vals), "first_t_s": series[0][0], "last_t_s": series[-1][0],
               "first_mib": round(vals[0] / 1024, 1), "last_mib": round(vals[-1] / 1024, 1), "max_mib": round(max(vals) / 1024, 1),
               "series_kib": series}  # fmt: skip
        rss_rows.append(row)
        print(f"{pid:>8} {row['samples']:>7} {row['first_t_s']:>7.0f} {row['last_t_s']:>7.0f} {row['first_mib']:>8.1f} "
              f"{row['last_mib']:>8.1f} {row['max_mib']:>8.1f}")  # fmt: skip
    if len(rss_rows) > args.workers:
        notes.append(f"{len(rss_rows)} worker pids seen for {args.workers} workers: gunicorn recycled workers (max_requests)")
    if stats.samples_5xx:
        notes.append("5xx samples: " + " | ".join(stats.samples_5xx[:5]))
    if stats.errors:
        notes.append(f"transport errors, e.g. {stats.errors[:3]}")
    for note in notes:
        print(f"note: {note}")
    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {"seconds": args.seconds, "clients": args.clients, "workers": args.workers, "mix": MIX,
                   "throttle_env": {"DICOM_THROTTLE_UPLOAD": args.throttle, "DICOM_THROTTLE_RENDER": args.throttle},
                   "users": 1, "database": "PostgreSQL (throwaway)", "master_pid": master_pid, "nproc": os.cpu_count()},  # fmt: skip
        "wall_s": round(wall, 1),
        "kinds": rows,
        "status_total": dict(sorted(total_status.items())),
        "count_5xx": n5xx,
        "transport_errors": stats.errors[:50],
        "rss": rss_rows,
        "notes": notes,
    }
    if n5xx or stats.errors:
        out["server_log_tail"] = log_tail
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")
    return 1 if n5xx or stats.errors else 0


if __name__ == "__main__":
    sys.exit(main())
