"""Load: the service under production's gunicorn config, N concurrent keep-alive clients, a mixed workload, for a while.

    python -m bench run load [--seconds 180] [--clients 8] [--redis URL] [--max-requests N]

1. A throwaway PostgreSQL database, migrated, a temp media folder, one user with a token.
2. `gunicorn -c gunicorn.conf.py dicomsite.wsgi` (GUNICORN_BIND on a free port, GUNICORN_WORKERS=--workers),
   DEBUG off; the per-user throttles raised to --throttle (one user for every client); the rest are production
   defaults (render cache per worker unless --redis).
3. A few uploads so reads have targets; then --clients threads, each on its own keep-alive connection, pick a
   request kind at random (weights MIX) until --seconds have passed: upload (CT_small.dcm with fresh UIDs, raw
   application/dicom), render (/image/ with window/size/format from small sets: some cold, many cached),
   thumbnail (64/128/256), tag (PatientName), list (with and without ?search= / ?modality=, studies, series).
4. Every 5 s the VmRSS of each gunicorn worker; a worker recycled by max_requests shows as a new pid, its own row.
Exit 1 if any 5xx or transport error happened.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import threading
import time

from ..harness.measure import RssSampler, Stopwatch, describe_machine, machine_info, percentile
from ..harness.processes import children_of, log
from ..harness.report import write_result
from ..harness.stack import Stack, add_stack_arguments
from ..workload import Workload, small_ct

MIX = {"upload": 1, "render": 4, "thumbnail": 2, "tag": 3, "list": 2}
WINDOWS = ["", "window=40,400", "window=-600,1500", "preset=bone", "preset=lung", "window=50,350,sigmoid"]
SIZES = ["", "size=128", "size=256", "width=300", "size=512"]
FORMATS = ["", "format=jpeg", "format=webp"]
LISTS = ["/api/instances/", "/api/instances/?search=CompressedSamples", "/api/instances/?modality=CT", "/api/studies/", "/api/series/"]
RSS_INTERVAL_S = 5.0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--redis", help="REDIS_URL for the render cache (shared by the workers instead of in each one)")
    ap.add_argument("--max-requests", type=int, help="GUNICORN_MAX_REQUESTS (0: never recycle workers)")
    add_stack_arguments(ap, orthanc=False)


class Tally:
    """Latencies and statuses per request kind, from many threads."""

    def __init__(self) -> None:
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


def main(args: argparse.Namespace) -> int:
    clock = Stopwatch()
    info = machine_info()
    tally = Tally()
    notes: list[str] = []
    env = {"GUNICORN_MAX_REQUESTS": str(args.max_requests)} if args.max_requests is not None else {}
    with Stack("load", keep_tmp=args.keep_tmp) as stack:
        service = stack.service(args, throttle=args.throttle, redis_url=args.redis, conf_file=True, env=env, username="load")
        master = service.proc.pid
        load = Workload(small_ct(), "load", new_study_per_copy=True)
        template_lock, ids_lock = threading.Lock(), threading.Lock()
        ids: list[str] = []

        def do_upload(client) -> tuple[int, bytes, float, str]:
            with template_lock:
                body = load.copy_bytes()
            st, _, data, secs = client.request("POST", "/api/instances/", body=body, headers={"Content-Type": "application/dicom"})
            if st == 201:
                with ids_lock:
                    ids.append(json.loads(data)["id"])
            return st, data, secs, "/api/instances/"

        with service.client() as seed_client:
            for _ in range(4):
                st, data, _, _ = do_upload(seed_client)
                if st != 201:
                    raise RuntimeError(f"seed upload: HTTP {st}: {data[:300]!r}")

        stop = threading.Event()

        def worker(k: int) -> None:
            rnd = random.Random(args.seed * 1000 + k)
            kinds, weights = list(MIX), list(MIX.values())
            with service.client(timeout=120) as client:
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
                        with tally.lock:
                            tally.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                        client.close()
                        continue
                    tally.add(kind, st, secs * 1000, path, data)

        sampler = RssSampler(lambda: children_of(master), RSS_INTERVAL_S, keep_samples=True)
        sampler.start()
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
        sampler.stop()
        log(f"load done in {wall:.1f}s")
        if not service.proc.alive():
            notes.append(f"gunicorn master died during the run (code {service.proc.popen.returncode})")

    # ---------------- report
    kinds = []
    total_status: collections.Counter = collections.Counter()
    for kind in MIX:
        lat = tally.latency.get(kind, [])
        total_status.update(tally.status.get(kind, {}))
        kinds.append({"kind": kind, "count": len(lat), "rps": round(len(lat) / wall, 1),
                      "p50_ms": round(percentile(lat, 0.5), 1) if lat else None, "p95_ms": round(percentile(lat, 0.95), 1) if lat else None,
                      "status": dict(sorted(tally.status.get(kind, {}).items()))})  # fmt: skip
    n5xx = sum(c for s, c in total_status.items() if s >= 500)
    print(f"\n{describe_machine(info)}\n{service.desc}; PostgreSQL; {args.clients} clients, {wall:.0f}s; throttles {args.throttle} (one user)")
    print(f"{'kind':<10} {'count':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8}  status codes")
    for r in kinds:
        p50, p95 = (f"{v:8.1f}" if v is not None else f"{'-':>8}" for v in (r["p50_ms"], r["p95_ms"]))
        print(f"{r['kind']:<10} {r['count']:>7} {r['rps']:>7.1f} {p50} {p95}  {r['status']}")
    total = sum(r["count"] for r in kinds)
    print(f"{'total':<10} {total:>7} {total / wall:>7.1f} {'':>8} {'':>8}  {dict(sorted(total_status.items()))}")
    print(f"5xx: {n5xx}; transport errors: {len(tally.errors)}")
    print(f"\nworker RSS (MiB), sampled every {RSS_INTERVAL_S:.0f} s:")
    print(f"{'pid':>8} {'samples':>7} {'from s':>7} {'to s':>7} {'first':>8} {'last':>8} {'max':>8}")
    per_pid: dict[int, list[tuple[float, int]]] = collections.defaultdict(list)
    for t, pid, mem in sampler.samples:
        per_pid[pid].append((round(t, 1), mem["VmRSS"]))
    rss_rows = []
    for pid, series in sorted(per_pid.items(), key=lambda kv: kv[1][0][0]):
        vals = [v for _, v in series]
        row = {"pid": pid, "samples": len(vals), "first_t_s": series[0][0], "last_t_s": series[-1][0], "first_mib": round(vals[0] / 1024, 1),
               "last_mib": round(vals[-1] / 1024, 1), "max_mib": round(max(vals) / 1024, 1), "series_kib": series}  # fmt: skip
        rss_rows.append(row)
        print(f"{pid:>8} {row['samples']:>7} {row['first_t_s']:>7.0f} {row['last_t_s']:>7.0f} {row['first_mib']:>8.1f} "
              f"{row['last_mib']:>8.1f} {row['max_mib']:>8.1f}")  # fmt: skip
    if len(rss_rows) > args.workers:
        notes.append(f"{len(rss_rows)} worker pids seen for {args.workers} workers: gunicorn recycled workers (max_requests)")
    if tally.samples_5xx:
        notes.append("5xx samples: " + " | ".join(tally.samples_5xx[:5]))
    if tally.errors:
        notes.append(f"transport errors, e.g. {tally.errors[:3]}")
    for note in notes:
        print(f"note: {note}")

    rows = [{"row": f"load {k['kind']} p50 ({k['count']} requests, {k['rps']} req/s)", "service": k["p50_ms"], "orthanc": None,
             "ratio": None, "unit": "ms", "better": "lower"} for k in kinds]  # fmt: skip
    rows.append({"row": "load 5xx responses", "service": n5xx, "orthanc": None, "ratio": None, "unit": "", "better": "lower"})
    failed = bool(n5xx or tally.errors)
    write_result(
        args.json, rows, info=info,
        config={"seconds": args.seconds, "clients": args.clients, "workers": args.workers, "mix": MIX,
                "throttle_env": {"DICOM_THROTTLE_UPLOAD": args.throttle, "DICOM_THROTTLE_RENDER": args.throttle},
                "users": 1, "database": "PostgreSQL (throwaway)", "master_pid": master, "nproc": info["nproc"]},
        service_server=service.desc, wall_s=round(wall, 1), kinds=kinds, status_total=dict(sorted(total_status.items())),
        count_5xx=n5xx, transport_errors=tally.errors[:50], rss=rss_rows, notes=notes, elapsed_s=round(clock.elapsed, 1),
        **({"server_log_tail": stack.log_tails()} if failed else {}),
    )  # fmt: skip
    return 1 if failed else 0
