"""Search on any header attribute: a header-backed key vs a column-backed key of the same selectivity, at 100k instances.

    python -m bench run search [--instances 100000] [--users 4] [--n 50]

The requirement it checks (issue 19): matching on an attribute that has no column (studies.header_search, served by
the GIN index over the search terms of the stored headers, migration 0011) keeps its p50 within 2x of a key that has
one.

1. One throwaway PostgreSQL database, migrated (0011 creates the GIN index, on an empty table), filled by `python -m bench seed`
   (bench/seed.py): --instances rows for --users users, 50 instances a series, 4 series a study. Every series'
   header carries ProtocolName "<modality> protocol" (as selective as its Modality and SeriesDescription columns)
   and every study's AdmittingDiagnosesDescription "D<serial>" (unique, as its AccessionNumber column). Then
   VACUUM (ANALYZE).
2. The seeded user with the row count closest to the mean is measured (bench.app.scale_pick), with the most common
   modality among its rows and the accession number of one of its studies.
3. One gunicorn (2 workers x 4 threads). Each pair of calls asks the same question of a column and of the headers;
   after --warmup requests per call, --n rounds, every call once a round, one request at a time.
The table: p50 of each, header / column, against the target (2.0).
"""

from __future__ import annotations

import argparse
import json
import urllib.parse

from ..harness.httpclient import HttpClient
from ..harness.measure import Stopwatch, describe_machine, describe_repo, machine_info
from ..harness.report import write_result
from ..harness.stack import Stack, add_stack_arguments
from .scale import Catalogue, fmt, maintenance, measure, seed, table_sizes


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--instances", type=int, default=100_000, help="seeded instances (default 100000)")
    ap.add_argument("--users", type=int, default=4, help="seeded users (default 4: ~25k instances each)")
    ap.add_argument("--n", type=int, default=50, help="measured requests per call (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured requests per call first (default 5)")
    ap.add_argument("--prefix", default="search", help="seed --prefix (default search)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", type=float, default=2.0, help="p50 target, header key / column key (default 2.0)")
    add_stack_arguments(ap, orthanc=False, throttle=False)
    ap.set_defaults(instances_per_series=50, series_per_study=4)


def pairs(pick: dict) -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
    """(name, (column call's label, path), (header call's label, path)): the same rows asked for two ways."""
    q = urllib.parse.urlencode
    modality, accession = pick["modality"], pick["accession"]
    protocol, diagnosis = f"{modality} protocol", "D" + accession[1:]
    return [
        ("QIDO studies, 1 study", (f"AccessionNumber={accession}", "/dicomweb/studies?" + q({"AccessionNumber": accession})),
         (f"AdmittingDiagnosesDescription={diagnosis}", "/dicomweb/studies?" + q({"AdmittingDiagnosesDescription": diagnosis}))),
        ("QIDO studies, 1 in 8 series", (f"ModalitiesInStudy={modality}", "/dicomweb/studies?" + q({"ModalitiesInStudy": modality})),
         (f"ProtocolName={protocol}", "/dicomweb/studies?" + q({"ProtocolName": protocol}))),
        ("QIDO series, 1 in 8", (f"SeriesDescription={modality} series", "/dicomweb/series?" + q({"SeriesDescription": f"{modality} series"})),
         (f"ProtocolName={protocol}", "/dicomweb/series?" + q({"ProtocolName": protocol}))),
        ("QIDO instances, 1 in 8", (f"SeriesDescription={modality} series", "/dicomweb/instances?" + q({"SeriesDescription": f"{modality} series"})),
         (f"ProtocolName={protocol}", "/dicomweb/instances?" + q({"ProtocolName": protocol}))),
        ("QIDO instances, 1 study", (f"AccessionNumber={accession}", "/dicomweb/instances?" + q({"AccessionNumber": accession})),
         (f"AdmittingDiagnosesDescription={diagnosis}", "/dicomweb/instances?" + q({"AdmittingDiagnosesDescription": diagnosis}))),
        ("REST instances, 1 in 8", (f"modality={modality}", "/api/instances/?" + q({"modality": modality})),
         (f"ProtocolName={protocol}", "/api/instances/?" + q({"ProtocolName": protocol}))),
        ("REST studies, 1 study", (f"AccessionNumber={accession}", "/api/studies/?" + q({"AccessionNumber": accession})),
         (f"AdmittingDiagnosesDescription={diagnosis}", "/api/studies/?" + q({"AdmittingDiagnosesDescription": diagnosis}))),
    ]  # fmt: skip


def answers(port: int, token: str, path: str) -> int:
    """How many results one call gives (a QIDO page, or the REST list's count)."""
    with HttpClient(port, {"Authorization": f"Token {token}", "Accept": "application/json"}) as client:
        status, _, data, _ = client.request("GET", path)
    if status != 200:
        raise SystemExit(f"{path}: HTTP {status}: {data[:300]!r}")
    body = json.loads(data)
    return body["count"] if isinstance(body, dict) else len(body)


def main(args: argparse.Namespace) -> int:
    clock = Stopwatch()
    info = machine_info()
    with Stack("search", keep_tmp=args.keep_tmp) as stack:
        db = stack.database(args.postgres, fallback=False, label="search")
        cat = Catalogue(f"{args.instances // 1000}k", stack.django(db, media=stack.tmp / "media"))
        seeded = seed(cat, args, args.instances, args.seed)
        maintenance(cat, False)
        pick = cat.django.call("scale_pick", prefix=args.prefix, admin=f"{args.prefix}-admin")
        tokens = pick.pop("tokens")
        index_bytes = db.sql("SELECT pg_relation_size('instance_header_terms')")[0][0]
        sizes = table_sizes(cat)
        calls, names = [], []
        for name, (col_label, col_path), (hdr_label, hdr_path) in pairs(pick):
            calls += [(f"{name} | column", col_path, "user"), (f"{name} | header", hdr_path, "user")]
            names.append((name, col_label, hdr_label))
        cat.service = stack.gunicorn(cat.django, workers=args.workers, threads=args.threads, label="service")
        try:
            counts = {call: answers(cat.service.port, tokens["user"], path) for call, path, _ in calls}
            measured = measure([cat], calls, tokens, args)["by_catalogue"][cat.label]
        finally:
            cat.service.proc.stop()
        server_desc = cat.service.desc

    user_rows = pick["user_counts_1k"][pick["user"]]
    print("\n" + describe_machine(info))
    print(f"service: {server_desc}; {describe_repo(info)}")
    print(f"catalogue: {seeded['instances']} instances for {args.users} users (measured user: {user_rows}); GIN index "
          f"instance_header_terms {index_bytes / 2**20:.0f} MiB, studies_instance {sizes.get('studies_instance', {}).get('total_bytes', 0) / 2**20:.0f} MiB "
          f"with indexes; n={args.n} per call after {args.warmup} warm-up, one client, ms per request incl. body read")  # fmt: skip
    header = f"{'question':<28} {'column key':<36} {'header key':<44} {'results':>9}  {'p50 col':>7}  {'p50 hdr':>7}  {'ratio':>5}  ok?"
    print(f"\n{header}\n{'-' * len(header)}")
    rows = []
    for name, col_label, hdr_label in names:
        col, hdr = measured[f"{name} | column"], measured[f"{name} | header"]
        ratio = hdr["p50_ms"] / col["p50_ms"] if hdr["p50_ms"] and col["p50_ms"] else None
        verdict = "ok" if ratio is not None and ratio <= args.target else "OVER"
        n_col, n_hdr = counts[f"{name} | column"], counts[f"{name} | header"]
        print(f"{name:<28} {col_label[:36]:<36} {hdr_label[:44]:<44} {f'{n_col}/{n_hdr}':>9}  {fmt(col['p50_ms'], 7)}  "
              f"{fmt(hdr['p50_ms'], 7)}  {fmt(ratio, 5, 2)}  {verdict}")  # fmt: skip
        rows.append({"bench": "search", "metric": f"{name}: header key p50 / column key p50", "service": hdr["p50_ms"],
                     "baseline": col["p50_ms"], "ratio": round(ratio, 3) if ratio else None, "target": f"<= {args.target}",
                     "verdict": verdict, "results_column": n_col, "results_header": n_hdr,
                     "column_errors": col["errors"], "header_errors": hdr["errors"]})  # fmt: skip
    write_result(args.json, rows, info=info, seeded=seeded, index_bytes=index_bytes, tables=sizes, elapsed_s=clock.elapsed)
    return 0 if all(r["verdict"] == "ok" for r in rows) else 1
