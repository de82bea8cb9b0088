#!/usr/bin/env python3
"""HTTP benchmark: this service's ingest, tag lookup and list/search endpoints against a throwaway Orthanc.

    .venv/bin/python bench/http_bench.py [--n 300] [--clients 4] [--json bench/results/http.json]

End to end (everything started here is stopped in a `finally`, by process group; the database is dropped):

1. Workload (render_bench.make_ct_template: CT_small.dcm upscaled to 512x512 16-bit, Explicit VR LE, ~0.5 MB):
   --n files with fresh SOP Instance UIDs, split round-robin over 3 patients with different names and IDs
   (Smith^John / BENCH-P1, Garcia^Maria / BENCH-P2, Nakamura^Ken / BENCH-P3), each patient with one fresh
   study and series (render_bench.Workload). The same bytes go to both servers. A few extra "Warmup^Bench"
   files (not matched by any search below) warm each server's processes before anything is timed.
2. Servers (render_bench helpers):
   - the service under gunicorn (dicomsite.wsgi, --workers 2 --threads 4, gthread), DEBUG off, throwaway
     PostgreSQL database, token auth; DICOM_THROTTLE_UPLOAD / DICOM_THROTTLE_RENDER raised to
     --throttle (default 1000000/min, as bench/load_test.py does), since one user sends everything;
   - Orthanc with a temp JSON config (no DICOM server, no plugins, no auth, loopback, no storage compression).
3. Measurements, each with --clients threads on their own kept-alive http.client connections, wall time from
   sending the request to the last byte of the body:
   - ingest: every file once; service `POST /api/instances/` raw body `Content-Type: application/dicom`
     vs Orthanc `POST /instances`; files/s and MB/s over the wall time of the whole batch, upload p50/p95;
   - tag lookup: one request per stored instance (n, spread over all instances); service
     `GET /api/instances/{id}/tags/PatientName/` vs Orthanc `GET /instances/{id}/content/0010-0010`;
     each answer is checked against the name that was sent;
   - list/search (--n-search requests each, default --n, cycling over the 3 patients): service
     `GET /api/instances/?search=<family name>&page_size=50` vs Orthanc `POST /tools/find`
     {"Level":"Instance","Query":{"PatientName":"*<family name>*"},"Limit":50}, and service
     `GET /api/instances/?patient_id=<id>` vs {"Level":"Instance","Query":{"PatientID":"<id>"}}.
     Result counts are checked. The payloads are not equivalent: the service returns a page of serialized
     rows (default page size 50, plus a COUNT), Orthanc's /tools/find returns bare IDs (and for the
     patient-ID query all of them, no limit). An extra row with "Expand": true on Orthanc (main DICOM tags
     per instance) is printed as a closer match for the name search;
   - floor: n requests of each server's cheapest answer, service `GET /healthz` (no login, no query: the
     gunicorn + Django middleware floor every API request starts from) vs Orthanc `GET /system`.

Output: machine info, the exact command, one table (row, service, orthanc, ratio = service/orthanc and which
direction is better per row), and JSON in --json: {"rows": [{"row","service","orthanc","ratio","unit",
"better"}...], plus config, machine and per-measurement details}. Exit 1 if any request failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_bench as rb  # noqa: E402

ROOT = rb.ROOT
PATIENTS = [("Smith^John", "BENCH-P1"), ("Garcia^Maria", "BENCH-P2"), ("Nakamura^Ken", "BENCH-P3")]
log = rb.log


class ThrottledService(rb.Service):
    """render_bench.Service with the per-user throttles raised in the server's environment.

    Service.start() builds self.env from scratch (dropping inherited DICOM_* variables), so the rates are
    added whenever env is assigned rather than by copying start().
    """

    throttle = "1000000/min"

    @property
    def env(self) -> dict[str, str]:
        return self._env

    @env.setter
    def env(self, value: dict[str, str]) -> None:
        self._env = {**value, "DICOM_THROTTLE_UPLOAD": self.throttle, "DICOM_THROTTLE_RENDER": self.throttle} if value else {}


@dataclass
class Req:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None
    check: object = None  # callable(status, body) -> str | None (an error message)
    tag: object = None  # what the caller wants back with the result (e.g. the patient of an upload)


@dataclass
class Measure:
    name: str
    server: str
    example: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    results: list = field(default_factory=list)  # (req.tag, parsed body) per successful request
    sample: str = ""

    def p(self, q: float) -> float | None:
        return rb.percentile(self.latencies_ms, q) if self.latencies_ms else None

    def stats(self) -> dict:
        ok = self.latencies_ms
        d = {"name": self.name, "server": self.server, "example": self.example, "requests": sum(self.statuses.values()),
             "ok": len(ok), "statuses": self.statuses, "errors": self.errors[:5], "wall_s": round(self.wall_s, 3),
             "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, "sample_response": self.sample[:400]}  # fmt: skip
        if ok:
            d.update(p50_ms=round(rb.percentile(ok, 0.5), 2), p95_ms=round(rb.percentile(ok, 0.95), 2),
                     mean_ms=round(statistics.fmean(ok), 2), min_ms=round(min(ok), 2), max_ms=round(max(ok), 2),
                     throughput_rps=round(len(ok) / self.wall_s, 2) if self.wall_s else None)  # fmt: skip
        return d


def run(m: Measure, make_client, reqs: list[Req], clients: int, ok_statuses=(200, 201)) -> Measure:
    """Send every request once, `clients` threads each on its own kept-alive connection."""
    lock = threading.Lock()
    work: queue.Queue[Req] = queue.Queue()
    for r in reqs:
        work.put(r)

    def worker() -> None:
        c = make_client()
        try:
            while True:
                try:
                    r = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    status, _, data, secs = c.request(r.method, r.path, body=r.body, headers=r.headers)
                except OSError as exc:
                    c.close()
                    with lock:
                        m.statuses["error"] = m.statuses.get("error", 0) + 1
                        m.errors.append(f"{r.method} {r.path}: {type(exc).__name__}: {exc}")
                    continue
                problem = None
                if status not in ok_statuses:
                    problem = f"HTTP {status}: {data[:300]!r}"
                elif r.check is not None:
                    problem = r.check(status, data)
                with lock:
                    m.statuses[str(status)] = m.statuses.get(str(status), 0) + 1
                    m.bytes_sent += len(r.body or b"")
                    m.bytes_received += len(data)
                    if problem:
                        m.errors.append(f"{r.method} {r.path}: {problem}")
                    else:
                        m.latencies_ms.append(secs * 1000)
                        m.results.append((r.tag, data))
                        if not m.sample:
                            m.sample = data[:400].decode("utf-8", "replace")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, clients))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.wall_s = time.perf_counter() - start
    return m


# --------------------------------------------------------------------------- response checks


def check_service_upload(status: int, data: bytes) -> str | None:
    return None if status == 201 else f"expected 201 (new instance), got {status}: {data[:200]!r}"


def check_orthanc_upload(status: int, data: bytes) -> str | None:
    reply = json.loads(data)
    return None if reply.get("Status") == "Success" else f"Orthanc status {reply.get('Status')!r}"


def check_service_tag(expected: str):
    def check(status: int, data: bytes) -> str | None:
        return None if expected in data.decode("utf-8", "replace") else f"{expected!r} not in {data[:200]!r}"

    return check


def check_orthanc_tag(expected: str):
    def check(status: int, data: bytes) -> str | None:
        return None if data.decode("utf-8", "replace").rstrip("\x00 ") == expected else f"expected {expected!r}, got {data[:100]!r}"

    return check


def check_service_list(count: int, page: int):
    def check(status: int, data: bytes) -> str | None:
        reply = json.loads(data)
        got_count, got_rows = reply.get("count"), len(reply.get("results", []))
        return None if (got_count, got_rows) == (count, page) else f"expected count {count}, {page} rows; got {got_count}, {got_rows}"

    return check


def check_orthanc_find(rows: int):
    def check(status: int, data: bytes) -> str | None:
        got = len(json.loads(data))
        return None if got == rows else f"expected {rows} results, got {got}"

    return check


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="files ingested into each server (and tag lookups); default 300")
    ap.add_argument("--n-search", type=int, default=None, help="requests per list/search measurement (default: --n)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (threads, kept-alive connections); default 4")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    ap.add_argument("--throttle", default="1000000/min", help="DICOM_THROTTLE_UPLOAD and _RENDER for the service")
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server for the throwaway database")
    ap.add_argument("--orthanc-bin", default="/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else "Orthanc")
    ap.add_argument("--orthanc-port", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=8, help="throwaway uploads per server before timing (default 8)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "http.json")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs, stored files)")
    args = ap.parse_args(argv)
    n = args.n
    n_search = args.n_search if args.n_search is not None else n
    clients = max(1, args.clients)
    if n < len(PATIENTS):
        ap.error(f"--n must be at least {len(PATIENTS)}")
    # What render_bench.Service / Orthanc read from their args.
    args.server, args.database_url, args.service_port = "gunicorn", None, None

    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    exe = sys.executable
    if exe.startswith(os.getcwd() + os.sep):
        exe = os.path.relpath(exe)
    command = " ".join([exe, *sys.argv])
    t_start = time.monotonic()
    info = rb.machine_info()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="http-bench-"))
    ThrottledService.throttle = args.throttle
    service = ThrottledService(tmp, args, notes)
    orthanc = rb.Orthanc(tmp, args)
    m: dict[str, Measure] = {}

    # ---------------- workload: the same bytes for both servers
    log(f"generating {n} CT files ({rb.CT_SIZE}x{rb.CT_SIZE}) for {len(PATIENTS)} patients")
    template = rb.make_ct_template()
    loads = []
    for name, pid in PATIENTS:
        t = copy.deepcopy(template)  # Dataset.copy() shares the data elements
        t.PatientName, t.PatientID = name, pid
        loads.append(rb.Workload(t, f"http-bench {pid}"))
    files: list[tuple[int, bytes]] = [(i % len(PATIENTS), loads[i % len(PATIENTS)].copy_bytes()) for i in range(n)]
    warm_t = copy.deepcopy(template)  # Dataset.copy() shares the data elements
    warm_t.PatientName, warm_t.PatientID = "Warmup^Bench", "BENCH-WARMUP"
    warm_load = rb.Workload(warm_t, "http-bench warmup")
    warm_files = [warm_load.copy_bytes() for _ in range(args.warmup)]
    per_patient = [sum(1 for p, _ in files if p == k) for k in range(len(PATIENTS))]
    total_bytes = sum(len(b) for _, b in files)
    log(f"workload: {n} files, {total_bytes / 1e6:.1f} MB, per patient {per_patient}")

    svc_ids: list[tuple[int, str]] = []
    orth_ids: list[tuple[int, str]] = []
    service_log = orthanc_log = ""
    try:
        service.start()
        orthanc.start()
        dicom = {"Content-Type": "application/dicom"}

        # ---------------- warm-up (process warm: imports, DB connections, Orthanc's index), not timed
        for body in warm_files:
            run(Measure("warmup", "service", ""), service.client, [Req("POST", "/api/instances/", body, dicom)], 1)
            run(Measure("warmup", "orthanc", ""), orthanc.client, [Req("POST", "/instances", body, dicom)], 1)

        # ---------------- ingest
        log(f"ingest: service x{n}, {clients} clients")
        reqs = [Req("POST", "/api/instances/", body, dicom, check_service_upload, p) for p, body in files]
        m["svc_ingest"] = run(Measure("ingest", "service", "POST /api/instances/ (application/dicom)"), service.client, reqs, clients)
        svc_ids = [(p, json.loads(data)["id"]) for p, data in m["svc_ingest"].results]
        log(f"ingest: orthanc x{n}")
        reqs = [Req("POST", "/instances", body, dicom, check_orthanc_upload, p) for p, body in files]
        m["orth_ingest"] = run(Measure("ingest", "orthanc", "POST /instances"), orthanc.client, reqs, clients)
        orth_ids = [(p, json.loads(data)["ID"]) for p, data in m["orth_ingest"].results]
        log(f"ingest done ({time.monotonic() - t_start:.0f}s since start)")
        del files  # ~0.5 MB each

        # ---------------- warm the read paths on the warm-up instances (not on measured ones)
        c = service.client()
        _, _, data, _ = c.request("GET", "/api/instances/?search=Warmup&page_size=50")
        c.close()
        w_svc = [r["id"] for r in json.loads(data)["results"]]
        c = orthanc.client()
        _, _, data, _ = c.request("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"PatientName": "Warmup*"}}).encode())
        c.close()
        w_orth = json.loads(data)
        warm_svc = [Req("GET", f"/api/instances/{i}/tags/PatientName/") for i in w_svc] * 4
        warm_svc += [Req("GET", "/api/instances/?search=Warmup&page_size=50"), Req("GET", "/api/instances/?patient_id=BENCH-WARMUP")] * 8
        warm_orth = [Req("GET", f"/instances/{i}/content/0010-0010") for i in w_orth] * 4
        warm_orth += [Req("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"PatientName": "*Warmup*"}, "Limit": 50}).encode()),
                      Req("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"PatientID": "BENCH-WARMUP"}}).encode())] * 8  # fmt: skip
        run(Measure("warmup-reads", "service", ""), service.client, warm_svc, clients)
        run(Measure("warmup-reads", "orthanc", ""), orthanc.client, warm_orth, clients)

        # ---------------- tag lookup: one request per instance, in ingest order (spread over all instances)
        log(f"tag lookup: {len(svc_ids)} + {len(orth_ids)} requests")
        reqs = [Req("GET", f"/api/instances/{i}/tags/PatientName/", check=check_service_tag(PATIENTS[p][0])) for p, i in svc_ids]
        m["svc_tag"] = run(Measure("tag", "service", "GET /api/instances/{id}/tags/PatientName/"), service.client, reqs, clients)
        reqs = [Req("GET", f"/instances/{i}/content/0010-0010", check=check_orthanc_tag(PATIENTS[p][0])) for p, i in orth_ids]
        m["orth_tag"] = run(Measure("tag", "orthanc", "GET /instances/{id}/content/0010-0010"), orthanc.client, reqs, clients)

        # ---------------- list/search
        log(f"list/search: {n_search} requests per measurement")
        family = [name.split("^")[0] for name, _ in PATIENTS]
        order = [k % len(PATIENTS) for k in range(n_search)]
        reqs = [Req("GET", f"/api/instances/?search={quote(family[k])}&page_size=50", check=check_service_list(per_patient[k], min(50, per_patient[k])))
                for k in order]  # fmt: skip
        m["svc_search"] = run(Measure("search", "service", "GET /api/instances/?search=<family>&page_size=50"), service.client, reqs, clients)
        reqs = [Req("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"PatientName": f"*{family[k]}*"}, "Limit": 50}).encode(),
                    check=check_orthanc_find(min(50, per_patient[k]))) for k in order]  # fmt: skip
        m["orth_search"] = run(Measure("search", "orthanc", 'POST /tools/find {"PatientName":"*<family>*"},"Limit":50'), orthanc.client, reqs, clients)
        reqs = [Req("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"PatientName": f"*{family[k]}*"}, "Limit": 50, "Expand": True}).encode(),
                    check=check_orthanc_find(min(50, per_patient[k]))) for k in order]  # fmt: skip
        m["orth_search_expand"] = run(Measure("search_expand", "orthanc", '... "Expand": true'), orthanc.client, reqs, clients)
        reqs = [Req("GET", f"/api/instances/?patient_id={quote(PATIENTS[k][1])}", check=check_service_list(per_patient[k], min(50, per_patient[k])))
                for k in order]  # fmt: skip
        m["svc_pid"] = run(Measure("patient_id", "service", "GET /api/instances/?patient_id=<id>"), service.client, reqs, clients)
        reqs = [Req("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"PatientID": PATIENTS[k][1]}}).encode(),
                    check=check_orthanc_find(per_patient[k])) for k in order]  # fmt: skip
        m["orth_pid"] = run(Measure("patient_id", "orthanc", 'POST /tools/find {"PatientID":"<id>"}'), orthanc.client, reqs, clients)

        # ---------------- the floor: each server's cheapest request, same clients (what a lookup cannot go below)
        log(f"floor: {n} requests each")
        m["svc_floor"] = run(Measure("floor", "service", "GET /healthz (no login, no query)"), service.client, [Req("GET", "/healthz")] * n, clients)
        m["orth_floor"] = run(Measure("floor", "orthanc", "GET /system"), orthanc.client, [Req("GET", "/system")] * n, clients)
        log(f"measured ({time.monotonic() - t_start:.0f}s since start)")
    finally:
        service_log = service.proc.log_tail(40) if service.proc else ""
        orthanc_log = orthanc.proc.log_tail(40) if orthanc.proc else ""
        service.stop()  # gunicorn, then DROP DATABASE
        orthanc.stop()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------- report
    def val(key: str, what: str) -> float | None:
        s = m.get(key)
        if s is None or not s.latencies_ms:
            return None
        if what == "files_s":
            return len(s.latencies_ms) / s.wall_s
        if what == "mb_s":
            return s.bytes_sent / 1e6 / s.wall_s
        return s.p({"p50": 0.5, "p95": 0.95}[what])

    spec = [  # row, service key, orthanc key, stat, unit, better
        ("ingest throughput", "svc_ingest", "orth_ingest", "files_s", "files/s", "higher"),
        ("ingest throughput", "svc_ingest", "orth_ingest", "mb_s", "MB/s", "higher"),
        ("ingest upload p50", "svc_ingest", "orth_ingest", "p50", "ms", "lower"),
        ("ingest upload p95", "svc_ingest", "orth_ingest", "p95", "ms", "lower"),
        ("tag lookup PatientName p50", "svc_tag", "orth_tag", "p50", "ms", "lower"),
        ("tag lookup PatientName p95", "svc_tag", "orth_tag", "p95", "ms", "lower"),
        ("search by name p50 (50 rows vs 50 IDs)", "svc_search", "orth_search", "p50", "ms", "lower"),
        ("search by name p50 (Orthanc Expand:true)", "svc_search", "orth_search_expand", "p50", "ms", "lower"),
        ("list by patient ID p50", "svc_pid", "orth_pid", "p50", "ms", "lower"),
        ("floor: /healthz vs /system p50 (no auth, no lookup)", "svc_floor", "orth_floor", "p50", "ms", "lower"),
    ]
    rows = []
    for label, sk, ok_, stat, unit, better in spec:
        sv, ov = val(sk, stat), val(ok_, stat)
        ratio = sv / ov if sv is not None and ov else None
        rows.append({"row": label, "service": _r(sv), "orthanc": _r(ov), "ratio": _r(ratio, 3), "unit": unit, "better": better})

    for s in m.values():
        if s.errors:
            notes.append(f"{s.server} {s.name}: {len(s.errors)} failed requests, e.g. {s.errors[0][:300]}")
    per_req_bytes = {k: round(s.bytes_received / max(1, sum(s.statuses.values()))) for k, s in m.items()}
    notes.append(
        "response sizes (mean bytes): service search {svc_search}, Orthanc find {orth_search} (IDs only) / {orth_search_expand} "
        "(Expand); service patient_id list {svc_pid} (first page of 50, with count), Orthanc {orth_pid} (all IDs)".format(**per_req_bytes)
    )
    notes.append(f"files per patient {per_patient}; each patient has one study and one series; {args.warmup} warm-up files per server (not timed, not matched by the queries)")

    pk = info["packages"]
    machine_lines = [
        f"command: {command}",
        f"machine: nproc={info['nproc']} (usable {info['cpus_usable']}), {info['cpu_model']}, {info['platform']}",
        f"python {info['python']}; Django {pk['Django']}, DRF {pk['djangorestframework']}, gunicorn {pk['gunicorn']}, "
        f"psycopg {pk['psycopg']}, pydicom {pk['pydicom']}; Orthanc {orthanc.version or 'n/a'}",
        f"service: {service.server_desc}, PostgreSQL (throwaway DB), throttles {args.throttle}; repo {info['git'].get('commit', '?')}"
        + (" (uncommitted changes in studies/ or dicomsite/)" if info["git"].get("uncommitted_changes_in_studies_or_dicomsite") else ""),
        f"workload: n={n} CT {rb.CT_SIZE}x{rb.CT_SIZE} 16-bit files, {total_bytes / 1e6:.1f} MB; search requests={n_search}; "
        f"clients={clients}; ratio = service/orthanc",
    ]
    print()
    print("\n".join(machine_lines))
    print()
    width = max(len(r["row"]) for r in rows)
    print(f"{'row':<{width}}  {'service':>9}  {'orthanc':>9}  {'ratio':>7}  {'unit':<7}  better")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 7}  {'-' * 7}  {'-' * 6}")

    def fmt(v):
        return f"{v:9.1f}" if v is not None else f"{'n/a':>9}"

    for r in rows:
        ratio = f"{r['ratio']:7.2f}" if r["ratio"] is not None else f"{'-':>7}"
        print(f"{r['row']:<{width}}  {fmt(r['service'])}  {fmt(r['orthanc'])}  {ratio}  {r['unit']:<7}  {r['better']}")
    print("\nnotes:")
    for note in notes:
        print(f"  - {note}")

    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": info,
        "orthanc_version": orthanc.version or None,
        "service_server": service.server_desc,
        "config": {"n": n, "n_search": n_search, "clients": clients, "workers": args.workers, "threads": args.threads,
                   "throttle": args.throttle, "patients": PATIENTS, "files_per_patient": per_patient,
                   "bytes_total": total_bytes, "warmup_files": args.warmup,
                   "ratio": "service/orthanc; see 'better' per row",
                   "percentiles": "linear interpolation between closest ranks"},  # fmt: skip
        "rows": rows,
        "measurements": {k: s.stats() for k, s in m.items()},
        "notes": notes,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    failed = any(s.errors for s in m.values())
    if failed:
        out["server_logs_tail"] = {"service": service_log, "orthanc": orthanc_log}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json} ({out['elapsed_s']:.0f}s total)")
    return 1 if failed else 0


def _r(v: float | None, digits: int = 2) -> float | None:
    return round(v, digits) if v is not None else None


if __name__ == "__main__":
    sys.exit(main())
