"""Profile: where a request's CPU goes, from py-spy samples of the gunicorn workers under ingest and tag-lookup load.

    pip install py-spy                  # a profiler, optional: not a dependency of the service
    python -m bench run profile [--n 300] [--clients 4] [--rate 200] [--raw-dir DIR]

The service starts as in the http scenario (gunicorn 2 workers x 4 threads, throwaway PostgreSQL database, token
auth, throttles raised). For each phase (ingest: --n uploads of the 512x512 CT; tag: --n x 3 lookups of
PatientName), `py-spy record --subprocesses --gil` samples the workers for the time the clients run, only the
thread holding each worker's GIL: the samples measure Python CPU time. Each sample goes to the first group its
stack matches, innermost frame first (pydicom, our DICOM JSON, psycopg, the ORM, DRF, Django, gunicorn, ...); a
second table gives inclusive shares of a few of our own functions. The groups name app code: see bench/app.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .. import app
from ..harness.measure import Measure, Req, describe_machine, expect_in_body, expect_status, machine_info, run_requests
from ..harness.processes import log
from ..harness.report import write_result
from ..harness.stack import Stack, add_stack_arguments
from ..workload import Workload, make_ct_template

DICOM = {"Content-Type": "application/dicom"}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=300, help="uploads (and a third of the tag lookups); default 300")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second per thread")
    ap.add_argument("--py-spy", default=None, metavar="BIN", help="the py-spy binary (default: on PATH or beside this Python)")
    ap.add_argument("--raw-dir", type=Path, default=None, help="keep py-spy's raw (folded) stacks here, e.g. for flamegraph.pl")
    add_stack_arguments(ap, orthanc=False)


def find_pyspy(given: str | None) -> str | None:
    candidates = [given] if given else [shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")]
    return next((c for c in candidates if c and Path(c).exists()), None)


def group_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # py-spy's raw format lists the outermost frame first
        for name, needles in app.HTTP_GROUPS:
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
        frames = stack.split(";")
        total += int(count)
        groups[group_of(frames)] += int(count)
        for label, needle in app.HTTP_INCLUSIVE:
            if any(needle in frame for frame in frames):
                inclusive[label] += int(count)
    return {"samples": total, "groups": dict(groups.most_common()), "inclusive": {k: inclusive[k] for k, _ in app.HTTP_INCLUSIVE}}


def sampled(pyspy: str, master_pid: int, out: Path, rate: int, work: Callable[[], object]) -> tuple[dict, float]:
    """Sample the gunicorn tree while `work()` runs; (summary, seconds of work)."""
    proc = subprocess.Popen(
        [pyspy, "record", "--pid", str(master_pid), "--subprocesses", "--rate", str(rate), "--format", "raw",
         "--output", str(out), "--nonblocking", "--gil", "--duration", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(1.5)  # py-spy attaches to every worker before the load starts
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-800:]}")
    return summarise(out), seconds


def main(args: argparse.Namespace) -> int:
    pyspy = find_pyspy(args.py_spy)
    if pyspy is None:
        print("profile: py-spy is not installed (it is optional, not a dependency of the service): "
              "pip install py-spy, or pass --py-spy /path/to/py-spy", file=sys.stderr)  # fmt: skip
        return 2
    info = machine_info()
    template = make_ct_template()
    load = Workload(template, "profile-http", patient=("Profile^Bench", "PROFILE-1"))
    files = [load.copy_bytes() for _ in range(args.n)]
    results: dict[str, dict] = {}
    with Stack("profile", keep_tmp=args.keep_tmp) as stack:
        service = stack.service(args, throttle=args.throttle)
        run_requests(Measure("warmup", "service"), service.client, [Req("POST", "/api/instances/", load.copy_bytes(), DICOM) for _ in range(8)])
        ingest = Measure("ingest", "service", "POST /api/instances/")
        reqs = [Req("POST", "/api/instances/", body, DICOM, expect_status(201)) for body in files]
        log(f"ingest: {len(reqs)} uploads, {args.clients} clients, sampling the workers")
        summary, seconds = sampled(pyspy, service.proc.pid, stack.tmp / "ingest.txt", args.rate,
                                   lambda: run_requests(ingest, service.client, reqs, args.clients, keep_bodies=True))  # fmt: skip
        results["ingest"] = {**summary, "requests": len(ingest.latencies_ms), "seconds": round(seconds, 2)}
        ids = [json.loads(data)["id"] for _, data in ingest.results]
        tag = Measure("tag", "service", "GET /api/instances/{id}/tags/PatientName/")
        reqs = [Req("GET", f"/api/instances/{i}/tags/PatientName/", check=expect_in_body("Profile^Bench")) for i in ids * 3]
        log(f"tag lookup: {len(reqs)} requests, sampling the workers")
        summary, seconds = sampled(pyspy, service.proc.pid, stack.tmp / "tag.txt", args.rate, lambda: run_requests(tag, service.client, reqs, args.clients))
        results["tag"] = {**summary, "requests": len(tag.latencies_ms), "seconds": round(seconds, 2)}
        failed = sum(len(m.errors) for m in (ingest, tag))
        if args.raw_dir:
            args.raw_dir.mkdir(parents=True, exist_ok=True)
            for phase in results:
                shutil.copy(stack.tmp / f"{phase}.txt", args.raw_dir / f"{phase}.txt")

    print(f"\n{describe_machine(info)}\n{service.desc}; py-spy --rate {args.rate}")
    rows = []
    for phase, r in results.items():
        per_request_ms = r["samples"] / args.rate / max(1, r["requests"]) * 1000
        rows.append({"row": f"{phase}: worker CPU per request (py-spy --gil)", "service": round(per_request_ms, 2), "orthanc": None,
                     "ratio": None, "unit": "ms", "better": "lower"})  # fmt: skip
        print(f"\n{phase}: {r['requests']} requests in {r['seconds']} s; {r['samples']} CPU samples = {per_request_ms:.1f} ms of worker CPU per request")
        print(f"  {'where the CPU went (innermost matching frame)':<58} {'share':>6}  {'ms/req':>7}")
        for name, count in r["groups"].items():
            print(f"  {name:<58} {count / r['samples']:>6.1%}  {count / args.rate / max(1, r['requests']) * 1000:>7.2f}")
        print(f"  {'inclusive (any frame of the stack)':<58}")
        for name, count in r["inclusive"].items():
            if count:
                print(f"  {name:<58} {count / r['samples']:>6.1%}  {count / args.rate / max(1, r['requests']) * 1000:>7.2f}")
    write_result(args.json, rows, info=info, server=service.desc, rate=args.rate, phases=results)
    return 1 if failed else 0
