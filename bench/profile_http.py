#!/usr/bin/env python3
"""Where a request's CPU goes: py-spy samples of the gunicorn workers while http_bench's clients send
ingest uploads and tag lookups, grouped by the code they were in.

    .venv/bin/pip install py-spy        # a profiler, not a dependency of the service
    .venv/bin/python bench/profile_http.py [--n 300] [--clients 4] [--rate 200] [--json bench/results/profile.json]

The service starts as in bench/http_bench.py (gunicorn 2 workers x 4 threads on a throwaway PostgreSQL
database, token auth, throttles raised). For each phase (ingest: --n uploads of the 512x512 CT; tag:
--n x 3 lookups of PatientName), `py-spy record --subprocesses --gil` samples the workers for exactly the
time the clients run, only the thread holding the GIL of each worker: threads waiting on a socket, on
PostgreSQL or for the GIL are not sampled, so the samples measure Python CPU time. Each sample is put in the first group its stack matches, innermost frame first
(pydicom, our DICOM JSON conversion, psycopg, Django's ORM, DRF, other Django, gunicorn, ...); a second
table gives inclusive shares of a few of our own functions (the audit write, the token check, ...).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_bench as hb  # noqa: E402
import render_bench as rb  # noqa: E402

ROOT = rb.ROOT
log = rb.log

# (group, substrings of a frame's file or function), tried on each frame from the innermost outwards.
GROUPS = [
    ("pydicom: header read and value conversion", ("pydicom/",)),
    ("studies.dicom.parsing: DICOM JSON, summary", ("studies/dicom/parsing.py",)),
    ("hashing and file copies", ("hashlib", "shutil.py", "studies/uploads.py", "tempfile.py")),
    ("psycopg: driver, adapting parameters", ("psycopg/",)),
    ("json encode/decode", ("/json/",)),
    ("Django ORM: query building, model instances", ("django/db/",)),
    ("DRF: dispatch, serializers, rendering", ("rest_framework/",)),
    ("Django: request, middleware, URL resolving", ("django/",)),
    ("gunicorn: HTTP parsing, socket I/O", ("gunicorn/",)),
    ("our code (studies/)", ("studies/",)),
]
# Inclusive: a sample counts here when any frame of its stack matches.
INCLUSIVE = [
    ("audit event write (studies.audit.record)", "record (studies/audit.py"),
    ("token check (authenticate_credentials)", "authenticate_credentials"),
    ("ingest service (studies.services.ingest_instance)", "ingest_instance (studies/services.py"),
    ("  parse_dicom", "parse_dicom (studies/dicom/parsing.py"),
    ("  duplicate check (_existing)", "_existing (studies/services.py"),
    ("  study/series/instance rows (_catalogue)", "_catalogue (studies/services.py"),
    ("  file into storage (_save_checked)", "_save_checked (studies/services.py"),
    ("upload body parsing (DicomParser / staging)", "studies/api/parsers.py"),
    ("response serializer (.data)", "data (rest_framework/serializers.py"),
    ("tag read (visible_header)", "visible_header (studies/selectors.py"),
]


def group_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # py-spy's raw format lists the outermost frame first
        for name, needles in GROUPS:
            if any(n in frame for n in needles):
                return name
    return "other (stdlib, interpreter)"


def summarise(raw: Path) -> dict:
    groups: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        groups[group_of(frames)] += n
        for label, needle in INCLUSIVE:
            if any(needle in frame for frame in frames):
                inclusive[label] += n
    return {"samples": total, "groups": dict(groups.most_common()), "inclusive": {k: inclusive[k] for k, _ in INCLUSIVE}}


def profile(pyspy: str, master_pid: int, out: Path, rate: int, work) -> tuple[dict, float]:
    """Sample the gunicorn tree while `work()` runs; (summary, seconds of work)."""
    proc = subprocess.Popen(
        [pyspy, "record", "--pid", str(master_pid), "--subprocesses", "--rate", str(rate), "--format", "raw",
         "--output", str(out), "--nonblocking", "--gil", "--duration", "600"],  # fmt: skip
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # py-spy attaches to every worker before the load starts
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    proc.send_signal(2)  # SIGINT: py-spy writes what it has and exits
    _, err = proc.communicate(timeout=60)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-800:]}")
    return summarise(out), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="uploads (and a third of the tag lookups); default 300")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second per thread")
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "profile.json")
    ap.add_argument("--raw-dir", type=Path, default=None, help="keep py-spy's raw (folded) stacks here, e.g. for flamegraph.pl")
    args = ap.parse_args(argv)
    args.server, args.database_url, args.service_port, args.throttle = "gunicorn", None, None, "1000000/min"
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        ap.error("py-spy is not installed: .venv/bin/pip install py-spy")

    tmp = Path(tempfile.mkdtemp(prefix="profile-http-"))
    notes: list[str] = []
    service = hb.ThrottledService(tmp, args, notes)
    template = rb.make_ct_template()
    template.PatientName, template.PatientID = "Profile^Bench", "PROFILE-1"
    load = rb.Workload(template, "profile-http")
    files = [load.copy_bytes() for _ in range(args.n)]
    results: dict[str, dict] = {}
    try:
        service.start()
        dicom = {"Content-Type": "application/dicom"}
        warm = [hb.Req("POST", "/api/instances/", load.copy_bytes(), dicom) for _ in range(8)]
        hb.run(hb.Measure("warmup", "service", ""), service.client, warm, 1)
        ingest = hb.Measure("ingest", "service", "POST /api/instances/")
        reqs = [hb.Req("POST", "/api/instances/", body, dicom, hb.check_service_upload) for body in files]
        log(f"ingest: {len(reqs)} uploads, {args.clients} clients, sampling the workers")
        summary, seconds = profile(pyspy, service.proc.popen.pid, tmp / "ingest.txt", args.rate,
                                   lambda: hb.run(ingest, service.client, reqs, args.clients))  # fmt: skip
        results["ingest"] = {**summary, "requests": len(ingest.latencies_ms), "seconds": round(seconds, 2)}
        ids = [json.loads(data)["id"] for _, data in ingest.results]
        tag = hb.Measure("tag", "service", "GET /api/instances/{id}/tags/PatientName/")
        reqs = [hb.Req("GET", f"/api/instances/{i}/tags/PatientName/", check=hb.check_service_tag("Profile^Bench")) for i in ids * 3]
        log(f"tag lookup: {len(reqs)} requests, sampling the workers")
        summary, seconds = profile(pyspy, service.proc.popen.pid, tmp / "tag.txt", args.rate,
                                   lambda: hb.run(tag, service.client, reqs, args.clients))  # fmt: skip
        results["tag"] = {**summary, "requests": len(tag.latencies_ms), "seconds": round(seconds, 2)}
        failed = sum(len(m.errors) for m in (ingest, tag))
    finally:
        service.stop()
        if args.raw_dir:
            args.raw_dir.mkdir(parents=True, exist_ok=True)
            for phase in ("ingest", "tag"):
                if (tmp / f"{phase}.txt").exists():
                    shutil.copy(tmp / f"{phase}.txt", args.raw_dir / f"{phase}.txt")
        shutil.rmtree(tmp, ignore_errors=True)

    info = rb.machine_info()
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: nproc={info['nproc']}, {info['cpu_model']}; {service.server_desc}; py-spy --rate {args.rate}")
    for phase, r in results.items():
        per_request_ms = r["samples"] / args.rate / max(1, r["requests"]) * 1000
        print(f"\n{phase}: {r['requests']} requests in {r['seconds']} s; {r['samples']} CPU samples "
              f"= {per_request_ms:.1f} ms of worker CPU per request")  # fmt: skip
        print(f"  {'where the CPU went (innermost matching frame)':<58} {'share':>6}  {'ms/req':>7}")
        for name, n in r["groups"].items():
            print(f"  {name:<58} {n / r['samples']:>6.1%}  {n / args.rate / r['requests'] * 1000:>7.2f}")
        print(f"  {'inclusive (any frame of the stack)':<58}")
        for name, n in r["inclusive"].items():
            if n:
                print(f"  {name:<58} {n / r['samples']:>6.1%}  {n / args.rate / r['requests'] * 1000:>7.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "server": service.server_desc, "rate": args.rate, "phases": results}, indent=2))
    print(f"\nwrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    threading.excepthook = lambda a: print(f"thread error: {a.exc_value}", file=sys.stderr)
    sys.exit(main())
