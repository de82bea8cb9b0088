"""HTTP: the service's ingest, tag lookup and list/search endpoints against Orthanc.

    python -m bench run http [--n 300] [--clients 4]

1. Workload (bench.workload): --n 512x512 CT files, round-robin over 3 patients (Smith^John / BENCH-P1,
   Garcia^Maria / BENCH-P2, Nakamura^Ken / BENCH-P3), one study and series each; the same bytes go to both
   servers. --warmup "Warmup^Bench" files (matched by no search below) warm each server's processes first.
2. The service under gunicorn (2 workers x 4 threads, gthread), DEBUG off, throwaway PostgreSQL database, token
   auth, upload/render throttles raised to --throttle (one user sends everything); Orthanc with a temp config.
3. Measurements, --clients threads on their own kept-alive connections, wall time to the last byte of the body:
   - ingest: every file once; `POST /api/instances/` (raw application/dicom) vs Orthanc `POST /instances`;
     files/s and MB/s over the batch's wall time, upload p50/p95;
   - tag lookup: one request per stored instance, `GET /api/instances/{id}/tags/PatientName/` vs
     `GET /instances/{id}/content/0010-0010`, each answer checked against the name that was sent;
   - list/search (--n-search requests each, cycling over the patients): `?search=<family>&page_size=50` vs
     `POST /tools/find` {"PatientName":"*<family>*"},"Limit":50 (and with "Expand": true, closer to the service's
     serialized rows), and `?patient_id=<id>` vs {"PatientID":"<id>"}; result counts checked;
   - floor: `GET /healthz` (no login, no query: the gunicorn + Django middleware floor) vs `GET /system`;
   - single-object reads at 1 client and at --clients: /healthz, the tag lookup and `GET /api/instances/{id}/` on the
     service (rows "[own floor]": each read's p50 over the service's own /healthz p50), Orthanc's tag read.
"""

from __future__ import annotations

import argparse
import json
from urllib.parse import quote

from ..harness.measure import (
    Check,
    Measure,
    Req,
    Stopwatch,
    describe_machine,
    describe_packages,
    describe_repo,
    expect_in_body,
    expect_status,
    machine_info,
    run_requests,
)
from ..harness.processes import log
from ..harness.report import comparison, print_report, write_result
from ..harness.stack import Stack, add_stack_arguments
from ..workload import CT_SIZE, PATIENTS, WARMUP_PATIENT, Workload, make_ct_template

DICOM = {"Content-Type": "application/dicom"}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=300, help="files ingested into each server (and tag lookups); default 300")
    ap.add_argument("--n-search", type=int, default=None, help="requests per list/search measurement (default: --n)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (threads, kept-alive connections); default 4")
    ap.add_argument("--warmup", type=int, default=8, help="throwaway uploads per server before timing (default 8)")
    add_stack_arguments(ap)


# --------------------------------------------------------------------------- response checks


def check_orthanc_upload(status: int, data: bytes) -> str | None:
    reply = json.loads(data)
    return None if reply.get("Status") == "Success" else f"Orthanc status {reply.get('Status')!r}"


def check_orthanc_tag(expected: str) -> Check:
    def check(status: int, data: bytes) -> str | None:
        got = data.decode("utf-8", "replace").rstrip("\x00 ")
        return None if got == expected else f"expected {expected!r}, got {data[:100]!r}"

    return check


def check_service_list(count: int, page: int) -> Check:
    def check(status: int, data: bytes) -> str | None:
        reply = json.loads(data)
        got = (reply.get("count"), len(reply.get("results", [])))
        return None if got == (count, page) else f"expected count {count}, {page} rows; got {got[0]}, {got[1]}"

    return check


def check_orthanc_find(rows: int) -> Check:
    def check(status: int, data: bytes) -> str | None:
        got = len(json.loads(data))
        return None if got == rows else f"expected {rows} results, got {got}"

    return check


def find(query: dict, limit: int | None = None, expand: bool = False) -> bytes:
    body: dict = {"Level": "Instance", "Query": query}
    if limit:
        body["Limit"] = limit
    if expand:
        body["Expand"] = True
    return json.dumps(body).encode()


# --------------------------------------------------------------------------- the scenario


def main(args: argparse.Namespace) -> int:
    n = args.n
    n_search = args.n_search if args.n_search is not None else n
    clients = max(1, args.clients)
    if n < len(PATIENTS):
        raise SystemExit(f"--n must be at least {len(PATIENTS)}")
    clock = Stopwatch()
    info = machine_info()

    log(f"generating {n} CT files ({CT_SIZE}x{CT_SIZE}) for {len(PATIENTS)} patients")
    template = make_ct_template()
    loads = [Workload(template, f"http {pid}", patient=(name, pid)) for name, pid in PATIENTS]
    files = [(i % len(PATIENTS), loads[i % len(PATIENTS)].copy_bytes()) for i in range(n)]
    warm_load = Workload(template, "http warmup", patient=WARMUP_PATIENT)
    warm_files = [warm_load.copy_bytes() for _ in range(args.warmup)]
    per_patient = [sum(1 for p, _ in files if p == k) for k in range(len(PATIENTS))]
    total_bytes = sum(len(b) for _, b in files)
    log(f"workload: {n} files, {total_bytes / 1e6:.1f} MB, per patient {per_patient}")

    m: dict[str, Measure] = {}
    with Stack("http", keep_tmp=args.keep_tmp) as stack:
        service = stack.service(args, throttle=args.throttle)
        orthanc = stack.optional_orthanc(args)
        sides = [("service", service, "/api/instances/"), *([("orthanc", orthanc, "/instances")] if orthanc else [])]

        # warm-up (processes, imports, DB connections, Orthanc's index), not timed
        for body in warm_files:
            for name, server, upload_path in sides:
                run_requests(Measure("warmup", name), server.client, [Req("POST", upload_path, body, DICOM)])

        log(f"ingest: {n} files per server, {clients} clients")
        reqs = [Req("POST", "/api/instances/", body, DICOM, expect_status(201), p) for p, body in files]
        m["svc_ingest"] = run_requests(Measure("ingest", "service", "POST /api/instances/ (application/dicom)"), service.client, reqs,
                                       clients, keep_bodies=True)  # fmt: skip
        svc_ids = [(p, json.loads(data)["id"]) for p, data in m["svc_ingest"].results]
        orth_ids: list[tuple[int, str]] = []
        if orthanc:
            reqs = [Req("POST", "/instances", body, DICOM, check_orthanc_upload, p) for p, body in files]
            m["orth_ingest"] = run_requests(Measure("ingest", "orthanc", "POST /instances"), orthanc.client, reqs, clients, keep_bodies=True)
            orth_ids = [(p, json.loads(data)["ID"]) for p, data in m["orth_ingest"].results]
        log(f"ingest done ({clock.elapsed:.0f}s since start)")
        del files  # ~0.5 MB each

        # warm the read paths on the warm-up instances (not on measured ones)
        with service.client() as c:
            w_svc = [r["id"] for r in json.loads(c.request("GET", "/api/instances/?search=Warmup&page_size=50")[2])["results"]]
        warm = [Req("GET", f"/api/instances/{i}/tags/PatientName/") for i in w_svc] * 4
        warm += [Req("GET", "/api/instances/?search=Warmup&page_size=50"), Req("GET", "/api/instances/?patient_id=BENCH-WARMUP")] * 8
        run_requests(Measure("warmup-reads", "service"), service.client, warm, clients)
        if orthanc:
            with orthanc.client() as c:
                w_orth = json.loads(c.request("POST", "/tools/find", find({"PatientName": "Warmup*"}))[2])
            warm = [Req("GET", f"/instances/{i}/content/0010-0010") for i in w_orth] * 4
            warm += [Req("POST", "/tools/find", find({"PatientName": "*Warmup*"}, 50)), Req("POST", "/tools/find", find({"PatientID": "BENCH-WARMUP"}))] * 8
            run_requests(Measure("warmup-reads", "orthanc"), orthanc.client, warm, clients)

        log(f"tag lookup: {len(svc_ids)} + {len(orth_ids)} requests")
        reqs = [Req("GET", f"/api/instances/{i}/tags/PatientName/", check=expect_in_body(PATIENTS[p][0])) for p, i in svc_ids]
        m["svc_tag"] = run_requests(Measure("tag", "service", "GET /api/instances/{id}/tags/PatientName/"), service.client, reqs, clients)
        if orthanc:
            reqs = [Req("GET", f"/instances/{i}/content/0010-0010", check=check_orthanc_tag(PATIENTS[p][0])) for p, i in orth_ids]
            m["orth_tag"] = run_requests(Measure("tag", "orthanc", "GET /instances/{id}/content/0010-0010"), orthanc.client, reqs, clients)

        log(f"list/search: {n_search} requests per measurement")
        family = [name.split("^")[0] for name, _ in PATIENTS]
        order = [k % len(PATIENTS) for k in range(n_search)]

        def page(k: int) -> int:
            return min(50, per_patient[k])

        reqs = [Req("GET", f"/api/instances/?search={quote(family[k])}&page_size=50", check=check_service_list(per_patient[k], page(k))) for k in order]
        m["svc_search"] = run_requests(Measure("search", "service", "GET /api/instances/?search=<family>&page_size=50"), service.client, reqs, clients)
        reqs = [Req("GET", f"/api/instances/?patient_id={quote(PATIENTS[k][1])}", check=check_service_list(per_patient[k], page(k))) for k in order]
        m["svc_pid"] = run_requests(Measure("patient_id", "service", "GET /api/instances/?patient_id=<id>"), service.client, reqs, clients)
        if orthanc:
            reqs = [Req("POST", "/tools/find", find({"PatientName": f"*{family[k]}*"}, 50), check=check_orthanc_find(page(k))) for k in order]
            m["orth_search"] = run_requests(Measure("search", "orthanc", 'POST /tools/find {"PatientName":"*<family>*"},"Limit":50'),
                                            orthanc.client, reqs, clients)  # fmt: skip
            reqs = [Req("POST", "/tools/find", find({"PatientName": f"*{family[k]}*"}, 50, expand=True), check=check_orthanc_find(page(k)))
                    for k in order]  # fmt: skip
            m["orth_search_expand"] = run_requests(Measure("search_expand", "orthanc", '... "Expand": true'), orthanc.client, reqs, clients)
            reqs = [Req("POST", "/tools/find", find({"PatientID": PATIENTS[k][1]}), check=check_orthanc_find(per_patient[k])) for k in order]
            m["orth_pid"] = run_requests(Measure("patient_id", "orthanc", 'POST /tools/find {"PatientID":"<id>"}'), orthanc.client, reqs, clients)

        log(f"floor: {n} requests each")
        m["svc_floor"] = run_requests(Measure("floor", "service", "GET /healthz (no login, no query)"), service.client, [Req("GET", "/healthz")] * n, clients)
        if orthanc:
            m["orth_floor"] = run_requests(Measure("floor", "orthanc", "GET /system"), orthanc.client, [Req("GET", "/system")] * n, clients)

        # The bar for single-object reads: their p50 against the same server's /healthz p50 (the cost an
        # authenticated read adds to the floor), at 1 client and at --clients; Orthanc's tag read at 1 client too.
        for c in sorted({1, clients}):
            log(f"single-object reads and the floor, {c} client(s): {n} requests each")
            m[f"svc_floor_{c}"] = run_requests(Measure(f"floor_{c}", "service", "GET /healthz"), service.client, [Req("GET", "/healthz")] * n, c)
            reqs = [Req("GET", f"/api/instances/{i}/tags/PatientName/", check=expect_in_body(PATIENTS[p][0])) for p, i in svc_ids]
            m[f"svc_tag_{c}"] = run_requests(Measure(f"tag_{c}", "service", "GET /api/instances/{id}/tags/PatientName/"), service.client, reqs, c)
            reqs = [Req("GET", f"/api/instances/{i}/", check=expect_in_body(i)) for _, i in svc_ids]
            m[f"svc_meta_{c}"] = run_requests(Measure(f"meta_{c}", "service", "GET /api/instances/{id}/"), service.client, reqs, c)
            if orthanc:
                reqs = [Req("GET", f"/instances/{i}/content/0010-0010", check=check_orthanc_tag(PATIENTS[p][0])) for p, i in orth_ids]
                m[f"orth_tag_{c}"] = run_requests(Measure(f"tag_{c}", "orthanc", "GET /instances/{id}/content/0010-0010"), orthanc.client, reqs, c)
        log(f"measured ({clock.elapsed:.0f}s since start)")
    notes = stack.notes

    # ---------------- report
    def val(key: str, what: str) -> float | None:
        s = m.get(key)
        if s is None or not s.latencies_ms:
            return None
        if what == "files_s":
            return s.rate
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
    for c in sorted({1, clients}):
        who = f"{c} client" + ("s" if c > 1 else "")
        spec += [
            (f"tag lookup PatientName p50, {who}", f"svc_tag_{c}", f"orth_tag_{c}", "p50", "ms", "lower"),
            (f"tag lookup p50 / own /healthz p50, {who} [own floor]", f"svc_tag_{c}", f"svc_floor_{c}", "p50", "ms", "lower"),
            (f"instance metadata p50 / own /healthz p50, {who} [own floor]", f"svc_meta_{c}", f"svc_floor_{c}", "p50", "ms", "lower"),
        ]
    rows = [comparison(label, val(sk, stat), val(ok, stat), unit, better) for label, sk, ok, stat, unit, better in spec]
    notes.append("[own floor] rows: the 'orthanc' column is the service's own GET /healthz p50 measured just before at the same "
                 "client count, so the ratio is what an authenticated single-object read costs over the floor (target <= 2)")

    for s in m.values():
        if s.errors:
            notes.append(f"{s.server} {s.name}: {len(s.errors)} failed requests, e.g. {s.errors[0][:300]}")
    mean_bytes = {k: s.mean_response_bytes for k, s in m.items()}
    if orthanc:
        notes.append(
            "response sizes (mean bytes): service search {svc_search}, Orthanc find {orth_search} (IDs only) / {orth_search_expand} "
            "(Expand); service patient_id list {svc_pid} (first page of 50, with count), Orthanc {orth_pid} (all IDs)".format(**mean_bytes)
        )
    notes.append(f"files per patient {per_patient}; each patient has one study and one series; {args.warmup} warm-up files per "
                 "server (not timed, not matched by the queries)")  # fmt: skip

    header = [
        describe_machine(info),
        describe_packages(info, "Django", "djangorestframework", "gunicorn", "psycopg", "pydicom") + f"; {orthanc.desc if orthanc else 'Orthanc n/a'}",
        f"service: {service.desc}, {service.django.database.desc}, throttles {args.throttle}; {describe_repo(info)}",
        (f"workload: n={n} CT {CT_SIZE}x{CT_SIZE} 16-bit files, {total_bytes / 1e6:.1f} MB; search requests={n_search}; "
        f"clients={clients}; ratio = service/orthanc"),
    ]
    print_report(header, rows, notes)
    failed = any(s.errors for s in m.values())
    write_result(
        args.json, rows, info=info, orthanc_version=orthanc.version if orthanc else None, service_server=service.desc,
        config={"n": n, "n_search": n_search, "clients": clients, "workers": args.workers, "threads": args.threads,
                "throttle": args.throttle, "patients": PATIENTS, "files_per_patient": per_patient, "bytes_total": total_bytes,
                "warmup_files": args.warmup, "ratio": "service/orthanc; see 'better' per row",
                "percentiles": "linear interpolation between closest ranks"},
        measurements={k: s.stats() for k, s in m.items()}, notes=notes, elapsed_s=round(clock.elapsed, 1),
        **({"server_logs_tail": stack.log_tails()} if failed else {}),
    )  # fmt: skip
    return 1 if failed else 0
