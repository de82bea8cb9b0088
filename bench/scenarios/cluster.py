"""Cluster: two app servers (2 gunicorn workers each) on one PostgreSQL, one S3 bucket, one Redis, vs one app server.

    python -m bench run cluster [--seconds 120] [--clients 8] [--redis redis://127.0.0.1:6379/11]

1. A throwaway PostgreSQL database, migrated; a throwaway SeaweedFS (S3 API, its own data dir and free ports, an
   identities config) with one bucket; Redis database --redis (flushed before and after: use a database of its own)
   as the shared cache and token cache. DICOM_STORAGE_URL=s3://bucket/prefix?endpoint_url=...; DICOM_PRERENDER=0
   (no RQ worker runs here: renders are made by requests). One user with a token, throttles raised to --throttle.
2. Two servers: gunicorn -c gunicorn.conf.py (--workers per server, --threads) twice, on two ports; --clients threads,
   each with its own keep-alive connection to server (client number mod 2), pick a request kind at random (MIX):
   upload (CT with fresh UIDs, application/dicom), tag (PatientName), render (/image/ with window/size/format from
   small sets), frame (WADO-RS frames/1), qido (QIDO-RS studies by PatientName, series of a study), for --seconds.
   Then the two servers are stopped and ONE server (same workers, same database, bucket and Redis) gets the same load.
3. Per route and in total: requests, req/s, p50/p95 ms, 5xx and non-2xx. After both runs: instances catalogued ==
   uploads answered 201, objects in the bucket (under the prefix) == instances, `manage.py check_storage` (with
   hashes) clean on the same database and bucket.
The ratio column is two servers / one server. On a 2-core machine two servers are not expected to be faster (the
same two cores serve both): the point is that they are correct together. Exit 1 on any 5xx, transport error,
count mismatch or check_storage problem.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..harness.measure import Stopwatch, describe_machine, machine_info, percentile
from ..harness.processes import log
from ..harness.report import comparison, format_table, write_result
from ..harness.stack import Service, Stack, add_stack_arguments
from ..workload import Workload, small_ct

MIX = {"upload": 1, "tag": 3, "render": 3, "frame": 2, "qido": 2}
WINDOWS = ["", "window=40,400", "window=-600,1500", "preset=bone", "preset=lung"]
SIZES = ["", "size=128", "size=256", "size=512"]
FORMATS = ["", "format=jpeg", "format=webp"]
JSON_ACCEPT = {"Accept": "application/dicom+json"}
FRAME_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
BUCKET = "bench-cluster"
SEED_UPLOADS = 4


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seconds", type=float, default=120, help="how long each of the two runs lasts (default 120)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients, spread over the servers")
    ap.add_argument("--servers", type=int, default=2, help="app servers in the cluster run (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--redis", default=DEFAULT_REDIS, help=f"REDIS_URL shared by the servers, flushed before and after (default {DEFAULT_REDIS})")
    ap.add_argument("--no-hash", action="store_true", help="check_storage --no-hash (skip re-reading every object)")
    add_stack_arguments(ap, orthanc=False, workers=2, threads=4)


@dataclass
class Tally:
    """Latencies and statuses per request kind for one run, from many threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    status: dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    errors: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # non-2xx examples
    wall: float = 0.0

    def add(self, kind: str, status: int, ms: float, path: str, body: bytes) -> None:
        with self.lock:
            self.latency[kind].append(ms)
            self.status[kind][status] += 1
            if not 200 <= status < 300 and len(self.samples) < 20:
                self.samples.append(f"{kind} {path} -> {status}: {body[:200]!r}")

    def summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for kind in [*MIX, "total"]:
            lat = [v for k in MIX for v in self.latency.get(k, [])] if kind == "total" else self.latency.get(kind, [])
            status: collections.Counter = collections.Counter()
            for k in MIX if kind == "total" else [kind]:
                status.update(self.status.get(k, {}))
            out[kind] = {"requests": len(lat), "rps": len(lat) / self.wall if self.wall else None,
                         "p50_ms": percentile(lat, 0.5) if lat else None, "p95_ms": percentile(lat, 0.95) if lat else None,
                         "n5xx": sum(c for s, c in status.items() if s >= 500),
                         "non2xx": sum(c for s, c in status.items() if not 200 <= s < 300),
                         "status": dict(sorted(status.items()))}  # fmt: skip
        return out


class Targets:
    """What the reads aim at: every instance answered 201 (id and DICOM UIDs), shared by the clients of both runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[dict[str, str]] = []
        self.created = 0

    def add(self, reply: dict) -> None:
        with self.lock:
            self.created += 1
            self.items.append({k: reply[k] for k in ("id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "patient_name")})

    def pick(self, rnd: random.Random) -> dict[str, str]:
        with self.lock:
            return rnd.choice(self.items)


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def run_load(servers: list[Service], targets: Targets, workload: Workload, args: argparse.Namespace, label: str) -> Tally:
    tally = Tally()
    template_lock = threading.Lock()
    stop = threading.Event()

    def upload(client) -> tuple[int, bytes, float, str]:
        with template_lock:
            body = workload.copy_bytes()
        st, _, data, secs = client.request("POST", "/api/instances/", body=body, headers={"Content-Type": "application/dicom"})
        if st == 201:
            targets.add(json.loads(data))
        return st, data, secs, "/api/instances/"

    def worker(k: int) -> None:
        rnd = random.Random(args.seed * 1000 + k + (500 if label == "one" else 0))
        kinds, weights = list(MIX), list(MIX.values())
        with servers[k % len(servers)].client(timeout=120) as client:
            while not stop.is_set():
                kind = rnd.choices(kinds, weights)[0]
                t = targets.pick(rnd)
                headers: dict[str, str] = {}
                try:
                    if kind == "upload":
                        st, data, secs, path = upload(client)
                    else:
                        if kind == "tag":
                            path = f"/api/instances/{t['id']}/tags/PatientName/"
                        elif kind == "render":
                            q = "&".join(p for p in (rnd.choice(WINDOWS), rnd.choice(SIZES), rnd.choice(FORMATS)) if p)
                            path = f"/api/instances/{t['id']}/image/" + (f"?{q}" if q else "")
                        elif kind == "frame":
                            path = (f"/dicomweb/studies/{t['study_instance_uid']}/series/{t['series_instance_uid']}"
                                    f"/instances/{t['sop_instance_uid']}/frames/1")  # fmt: skip
                            headers = FRAME_ACCEPT
                        elif rnd.random() < 0.5:
                            path = f"/dicomweb/studies?PatientName={t['patient_name'].split('^')[0]}*&limit=20"
                            headers = JSON_ACCEPT
                        else:
                            path = f"/dicomweb/studies/{t['study_instance_uid']}/series"
                            headers = JSON_ACCEPT
                        st, _, data, secs = client.request("GET", path, headers=headers)
                except Exception as exc:  # noqa: BLE001 - count transport errors, keep going
                    with tally.lock:
                        tally.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                    client.close()
                    continue
                tally.add(kind, st, secs * 1000, path, data)

    log(f"cluster: {label} server(s): {args.clients} clients for {args.seconds:.0f}s, mix {MIX}")
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=150)
    tally.wall = time.monotonic() - started
    return tally


def start_servers(stack: Stack, django: Any, token: str, count: int, args: argparse.Namespace, label: str) -> list[Service]:
    return [stack.gunicorn(django, workers=args.workers, threads=args.threads, conf_file=True, token=token,
                           label=f"{label}-{i + 1}", control_socket=False) for i in range(count)]  # fmt: skip


def rows_of(two: dict, one: dict) -> list[dict]:
    rows = []
    for kind in [*MIX, "total"]:
        a, b = two[kind], one[kind]
        rows.append(comparison(f"cluster {kind} throughput", a["rps"], b["rps"], "req/s", "higher", 1))
        rows.append(comparison(f"cluster {kind} p50", a["p50_ms"], b["p50_ms"]))
        rows.append(comparison(f"cluster {kind} p95", a["p95_ms"], b["p95_ms"]))
    rows.append(comparison("cluster requests", two["total"]["requests"], one["total"]["requests"], "", "higher", 0))
    rows.append(comparison("cluster 5xx (must be 0)", two["total"]["n5xx"], one["total"]["n5xx"], "", "lower", 0))
    rows.append(comparison("cluster non-2xx", two["total"]["non2xx"], one["total"]["non2xx"], "", "lower", 0))
    return rows


def main(args: argparse.Namespace) -> int:
    clock = Stopwatch()
    info = machine_info()
    notes = [f"ratio = {args.servers} servers / one server; on {info['nproc']} cores {args.servers} servers are not expected "
             "to be faster (they share the same cores): the point is that they are correct together"]  # fmt: skip
    checks: dict[str, Any] = {}
    flush_redis(args.redis)
    try:
        with Stack("cluster", keep_tmp=args.keep_tmp) as stack:
            s3 = stack.s3()
            s3.create_bucket(BUCKET)
            prefix = f"cluster-{int(time.time())}"
            database = stack.database(args.postgres, fallback=False)
            env = {**s3.service_env(BUCKET, prefix), "DICOM_PRERENDER": "0"}
            django = stack.django(database, throttle=args.throttle, redis_url=args.redis, env=env)
            token = django.user_token("cluster")
            workload = Workload(small_ct(), "cluster", new_study_per_copy=True)
            targets = Targets()

            tallies: dict[str, Tally] = {}
            descs: dict[str, str] = {}
            for label, count in (("cluster", args.servers), ("one", 1)):
                servers = start_servers(stack, django, token, count, args, label)
                descs[label] = f"{count} x {servers[0].desc}"
                if not targets.items:
                    for i in range(SEED_UPLOADS):  # reads need targets: a few uploads, through every server
                        with servers[i % count].client() as c:
                            st, _, data, _ = c.request("POST", "/api/instances/", body=workload.copy_bytes(),
                                                       headers={"Content-Type": "application/dicom"})  # fmt: skip
                        if st != 201:
                            raise RuntimeError(f"seed upload: HTTP {st}: {data[:300]!r}")
                        targets.add(json.loads(data))
                tallies[label] = run_load(servers, targets, workload, args, label)
                for s in servers:
                    if not s.proc.alive():
                        notes.append(f"{s.proc.name} died during the run (code {s.proc.popen.returncode})")
                    s.proc.stop()

            # ---- exact counts and the storage scrub, on the same database and bucket
            instances = database.sql('SELECT count(*) FROM studies_instance')[0][0]  # type: ignore[index]
            objects = s3.count_objects(BUCKET, prefix + "/")
            checks = {"uploads_201": targets.created, "instances": instances, "objects": objects}
            try:
                out = django.manage("check_storage", *(["--no-hash"] if args.no_hash else []), timeout=1800)
                checks["check_storage"] = {"ok": True, "output": out.strip().splitlines()[-1:]}
            except RuntimeError as exc:
                checks["check_storage"] = {"ok": False, "output": str(exc)[-2000:]}
            log_tails = stack.log_tails()
    finally:
        flush_redis(args.redis)

    two, one = (tallies[k].summary() for k in ("cluster", "one"))
    rows = rows_of(two, one)
    counts_ok = checks["uploads_201"] == checks["instances"] == checks["objects"]
    rows.append(comparison("cluster instances == uploads 201 == objects (1 = yes)", float(counts_ok), None, "", "higher", 0))
    rows.append(comparison("cluster check_storage clean (1 = yes)", float(checks["check_storage"]["ok"]), None, "", "higher", 0))

    print(f"\n{describe_machine(info)}")
    print(f"cluster run: {descs['cluster']}; one-server run: {descs['one']}")
    print(f"PostgreSQL (throwaway), SeaweedFS bucket {BUCKET}/{prefix}, Redis {args.redis}; {args.clients} clients, "
          f"{args.seconds:.0f}s per run (cluster {tallies['cluster'].wall:.0f}s, one {tallies['one'].wall:.0f}s); mix {MIX}\n")  # fmt: skip
    shown = [{"row": r["row"], f"{args.servers} servers": r["service"], "1 server": r["orthanc"], "ratio": r["ratio"],
              "unit": r["unit"], "better": r["better"]} for r in rows]  # fmt: skip
    print(format_table(shown, [("row", "text"), (f"{args.servers} servers", "number"), ("1 server", "number"), ("ratio", "ratio"),
                               ("unit", "text"), ("better", "text")]))  # fmt: skip
    print("\nstatus codes: " + "; ".join(f"{label}: {t.summary()['total']['status']}" for label, t in tallies.items()))
    print(f"after both runs: uploads answered 201 = {checks['uploads_201']} (incl. {SEED_UPLOADS} seed uploads), instances "
          f"catalogued = {checks['instances']}, objects in the bucket = {checks['objects']}; "
          f"check_storage: {'clean' if checks['check_storage']['ok'] else 'PROBLEMS'} {checks['check_storage']['output']}")  # fmt: skip
    errors = {k: t.errors for k, t in tallies.items() if t.errors}
    samples = {k: t.samples for k, t in tallies.items() if t.samples}
    if errors:
        notes.append(f"transport errors: { {k: v[:3] for k, v in errors.items()} }")
    if samples:
        notes.append(f"non-2xx samples: { {k: v[:3] for k, v in samples.items()} }")
    print("\nnotes:\n" + "\n".join(f"  - {n}" for n in notes))
    failed = bool(two["total"]["n5xx"] or one["total"]["n5xx"] or errors or not counts_ok or not checks["check_storage"]["ok"])
    write_result(
        args.json, rows, info=info,
        config={"seconds": args.seconds, "clients": args.clients, "servers": args.servers, "workers": args.workers,
                "threads": args.threads, "mix": MIX, "redis": args.redis, "throttle": args.throttle, "prefix": prefix},
        servers=descs, routes={"cluster": two, "one": one}, checks=checks, notes=notes, elapsed_s=round(clock.elapsed, 1),
        transport_errors=errors, non2xx_samples=samples, **({"server_log_tail": log_tails} if failed else {}),
    )  # fmt: skip
    return 1 if failed else 0
