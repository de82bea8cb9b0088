"""Scale: list/filter/search latency on a 1,000- vs a 100,000-instance catalogue (PostgreSQL).

    python -m bench run scale [--n 50] [--small 1000] [--large 100000] [--keep-db]

The requirement it checks: with 100,000 synthetic instances loaded, the API's list, filters (modality, patient ID,
study UID, study date range) and search keep their p50 within 1.5x of the same calls on a 1,000-instance
catalogue, and the admin changelists keep a constant query count.

1. Catalogues, each a throwaway PostgreSQL database, filled by `python -m bench seed` (bench/seed.py: rows through
   the models, one stored CT file per user):
   - "1k": migrate, then seed --instances 1000 --users 20 --prefix scale --seed 1, shaped --instances-per-series
     10 --series-per-study 2 (20 a study), so nearly every user owns rows and each user's share grows ~100x;
   - "100k": a copy of "1k" (CREATE DATABASE ... TEMPLATE) grown with the SAME prefix and users (--seed 2);
   - "100k-no-0003": a copy of "100k" migrated back to 0002 (the owner-leading list indexes dropped).
   After each load VACUUM (ANALYZE) (--analyze-only: plain ANALYZE).
2. One seeded user is picked at 1k (row count closest to the mean); the filter values come from its rows, so
   they exist, with the same rows, in every catalogue. It gets is_staff and a token, a superuser a token too,
   before the copies are made (bench.app.scale_pick).
3. One gunicorn per catalogue (2 workers x 4 threads). After --warmup requests per call and catalogue, --n
   rounds; each round sends every call to every catalogue in turn (order reversed every other round), one request
   at a time, so machine noise hits the catalogues alike. The same calls with page_size=--small-page too.
4. Per catalogue a Django process (bench.app.scale_profile) makes every call once more: SQL, query count, EXPLAIN
   (ANALYZE, BUFFERS), the ORM cost of the list page with and without the header JSON, admin query counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import textwrap
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .. import app
from ..harness.httpclient import HttpClient
from ..harness.measure import Stopwatch, describe_machine, describe_repo, machine_info, percentile
from ..harness.processes import PYTHON, log, run_checked
from ..harness.report import write_result
from ..harness.stack import Django, Service, Stack, add_stack_arguments

SEED_SUMMARY = re.compile(r"(\d+) instances for (\d+) users in ([\d.]+) s \((\d+) rows/s\)")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=50, help="measured requests per call and catalogue (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured requests per call and catalogue first (default 5)")
    ap.add_argument("--small", type=int, default=1000, help="instances in the small catalogue (default 1000)")
    ap.add_argument("--large", type=int, default=100_000, help="instances in the large catalogue (default 100000)")
    ap.add_argument("--users", type=int, default=20, help="seeded users, the same at both sizes (default 20)")
    ap.add_argument("--prefix", default="scale", help="seed --prefix (default scale)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the small load (the large one uses seed+1)")
    ap.add_argument("--instances-per-series", type=int, default=10)
    ap.add_argument("--series-per-study", type=int, default=2)
    ap.add_argument("--small-page", type=int, default=10, help="also measure every call with this page_size (0: don't)")
    ap.add_argument("--target", type=float, default=1.5, help="p50 ratio target, large / small (default 1.5)")
    ap.add_argument("--analyze-only", action="store_true", help="plain ANALYZE after loads instead of VACUUM (ANALYZE)")
    ap.add_argument("--no-index-phase", dest="index_phase", action="store_false", help="skip the catalogue without 0003")
    ap.add_argument("--explain-runs", type=int, default=3, help="EXPLAIN ANALYZE runs per query (median kept)")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the databases (0003 re-applied); prints psql commands")
    add_stack_arguments(ap, orthanc=False, throttle=False)


class Catalogue:
    """One throwaway database with the service's environment on it and, while measuring, one gunicorn."""

    def __init__(self, label: str, django: Django):
        self.label = label
        self.django = django
        self.db = django.database
        self.service: Service | None = None


def seed(cat: Catalogue, args: argparse.Namespace, instances: int, seed_value: int) -> dict:
    log(f"{cat.label}: seed --instances {instances} --users {args.users} --prefix {args.prefix} --seed {seed_value}")
    start = time.monotonic()
    out = run_checked([PYTHON, "-m", "bench", "seed", "--instances", str(instances), "--users", str(args.users), "--prefix", args.prefix,
                       "--seed", str(seed_value), "--instances-per-series", str(args.instances_per_series),
                       "--series-per-study", str(args.series_per_study)], cat.django.env, timeout=3600)  # fmt: skip
    wall = time.monotonic() - start
    m = SEED_SUMMARY.search(out)
    log(f"{cat.label}: seeded {instances} in {wall:.1f}s wall ({out.strip()[-120:]})")
    return {"instances": instances, "seed": seed_value, "command_s": float(m.group(3)) if m else None,
            "command_rows_per_s": int(m.group(4)) if m else None, "wall_s_incl_startup": round(wall, 2), "output": out.strip()[-300:]}  # fmt: skip


def maintenance(cat: Catalogue, analyze_only: bool) -> str:
    statement = "ANALYZE" if analyze_only else "VACUUM (ANALYZE)"
    start = time.monotonic()
    cat.db.sql(statement, fetch=False)
    log(f"{cat.label}: {statement} in {time.monotonic() - start:.1f}s")
    return statement


def instance_indexes(cat: Catalogue) -> list[str]:
    return [r[0] for r in cat.db.sql("SELECT indexname FROM pg_indexes WHERE tablename = 'studies_instance' ORDER BY indexname")]


def table_sizes(cat: Catalogue) -> dict:
    rows = cat.db.sql("SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
                      f"WHERE relname IN {app.CATALOGUE_TABLES!r} ORDER BY relname")  # fmt: skip
    return {r[0]: {"rows": r[1], "total_bytes": r[2]} for r in rows}


def measure(cats: list[Catalogue], calls: list[tuple[str, str, str]], tokens: dict[str, str], args: argparse.Namespace) -> dict:
    """Interleaved: each round sends every call to every catalogue in turn, one request at a time."""
    headers = {who: {"Authorization": f"Token {key}", "Accept": "application/json"} for who, key in tokens.items()}
    clients = {(c.label, who): HttpClient(c.service.port, headers[who]) for c in cats for who in tokens}
    lat: dict[tuple[str, str], list[float]] = {(c.label, name): [] for c in cats for name, _, _ in calls}
    errors: dict[tuple[str, str], list[str]] = {(c.label, name): [] for c in cats for name, _, _ in calls}
    sample: dict[tuple[str, str], dict] = {}
    load_before = os.getloadavg()
    try:
        for c in cats:  # warm-up: worker processes, connections, plan and buffer caches
            for name, path, who in calls:
                for i in range(args.warmup):
                    status, _, data, _ = clients[(c.label, who)].request("GET", path)
                    if i == 0:
                        try:
                            body = json.loads(data)
                        except ValueError:
                            body = {}
                        body = body if isinstance(body, dict) else {}
                        sample[(c.label, name)] = {"status": status, "count": body.get("count"), "page_rows": len(body.get("results", [])),
                                                   "bytes": len(data)}  # fmt: skip
        log(f"measuring {len(calls)} calls x {len(cats)} catalogues x {args.n} rounds, interleaved")
        start = time.monotonic()
        for r in range(args.n):
            for name, path, who in calls:
                for c in cats if r % 2 == 0 else cats[::-1]:
                    key = (c.label, name)
                    try:
                        status, _, data, elapsed = clients[(c.label, who)].request("GET", path)
                    except OSError as exc:
                        errors[key].append(f"{type(exc).__name__}: {exc}")
                        clients[(c.label, who)].close()
                        continue
                    if status == 200:
                        lat[key].append(elapsed * 1000)
                    else:
                        errors[key].append(f"HTTP {status}: {data[:200]!r}")
        wall = time.monotonic() - start
    finally:
        for client in clients.values():
            client.close()
    out: dict = {"loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                 "wall_s": round(wall, 1), "by_catalogue": {}}  # fmt: skip
    for c in cats:
        res = {}
        for name, path, who in calls:
            v = lat[(c.label, name)]
            res[name] = {"path": path, "as": who, "ok": len(v), "errors": errors[(c.label, name)][:5],
                         "p50_ms": round(percentile(v, 0.5), 2) if v else None, "p95_ms": round(percentile(v, 0.95), 2) if v else None,
                         "min_ms": round(min(v), 2) if v else None, "latencies_ms": [round(x, 3) for x in v], **sample.get((c.label, name), {})}  # fmt: skip
        out["by_catalogue"][c.label] = res
    return out


def fmt(v: float | None, width: int = 8, digits: int = 1) -> str:
    return f"{v:{width}.{digits}f}" if isinstance(v, (int, float)) else f"{'n/a':>{width}}"


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(args: argparse.Namespace) -> int:
    if args.n < 1 or args.large <= args.small or args.small < 1 or args.users < 1:
        raise SystemExit("need --n >= 1, 1 <= --small < --large, --users >= 1")
    clock = Stopwatch()
    info = machine_info()
    small_label, large_label = size_label(args.small), size_label(args.large)
    noidx_label = f"{large_label}-no-0003"
    phases: dict[str, dict] = {}
    seeds: dict[str, dict] = {}
    pg_settings: dict = {}
    app_label, index_migration, before_index = app.LIST_INDEX_MIGRATION
    with Stack("scale", keep_tmp=args.keep_tmp) as stack:
        notes = stack.notes
        media = stack.tmp / "media"  # shared: the copies point at the same seeded files

        def catalogue(label: str, template: Catalogue | None = None) -> Catalogue:
            db = stack.database(args.postgres, fallback=False, label=label, template=template.db if template else None, keep=args.keep_db)
            return Catalogue(label, stack.django(db, media=media, migrate=template is None))

        small = catalogue(small_label)
        for key in ("server_version", "shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "jit"):
            pg_settings[key] = small.db.sql(f"SHOW {key}")[0][0]
        seeds[small_label] = seed(small, args, args.small, args.seed)
        maint = maintenance(small, args.analyze_only)
        pick = small.django.call("scale_pick", prefix=args.prefix, admin=f"{args.prefix}-admin")
        tokens = pick.pop("tokens")
        log(f"measured user {pick['user']} ({pick['user_counts_1k'][pick['user']]} instances at {small_label}); values: "
            f"modality={pick['modality']} patient_id={pick['patient_id']} study={pick['study_uid']} year={pick['year']} search={pick['family']}")  # fmt: skip

        large = catalogue(large_label, template=small)
        seeds[large_label] = seed(large, args, args.large - args.small, args.seed + 1)
        maintenance(large, args.analyze_only)
        cats = [small, large]
        if args.index_phase:
            noidx = catalogue(noidx_label, template=large)
            log(f"{noidx_label}: migrate {app_label} {before_index} (drops the {index_migration} list indexes)")
            noidx.django.manage("migrate", app_label, before_index, "--noinput", "-v", "0")
            maintenance(noidx, args.analyze_only)
            cats.append(noidx)

        q = urllib.parse.urlencode
        base_calls = [
            ("list", "/api/instances/", "user"),
            ("modality", "/api/instances/?" + q({"modality": pick["modality"]}), "user"),
            ("patient_id", "/api/instances/?" + q({"patient_id": pick["patient_id"]}), "user"),
            ("study_uid", "/api/instances/?" + q({"study": pick["study_uid"]}), "user"),
            ("date_range", "/api/instances/?" + q({"study_date_from": f"{pick['year']}-01-01", "study_date_to": f"{pick['year']}-12-31"}), "user"),
            ("search", "/api/instances/?" + q({"search": pick["family"]}), "user"),
            ("studies", "/api/studies/", "user"),
            ("series", "/api/series/", "user"),
            ("view_all_list", "/api/instances/", "admin"),
        ]  # fmt: skip
        calls = list(base_calls)
        if args.small_page:
            calls += [(f"{n}@{args.small_page}", p + ("&" if "?" in p else "?") + f"page_size={args.small_page}", w) for n, p, w in base_calls]
        admin_users = {"user": pick["user"], "superuser": f"{args.prefix}-admin"}
        for c in cats:
            phases[c.label] = {"label": c.label, "indexes": instance_indexes(c), "tables": table_sizes(c), "maintenance": maint}

        for c in cats:
            c.service = stack.gunicorn(c.django, workers=args.workers, threads=args.threads, label=f"service-{c.label}")
        try:
            measured = measure(cats, calls, tokens, args)
        finally:
            for c in cats:  # stopped before profiling, so idle servers do not share the machine with it
                c.service.proc.stop()
        for c in cats:
            phases[c.label]["calls"] = measured["by_catalogue"][c.label]
            log(f"{c.label}: profiling (SQL, EXPLAIN ANALYZE, admin query counts)")
            prof = c.django.call("scale_profile", calls=base_calls, tokens=tokens, explain_runs=args.explain_runs, admin_users=admin_users)
            phases[c.label]["instances_total"] = prof["instances_total"]
            phases[c.label]["profile"] = prof
        if args.index_phase and args.keep_db:
            log(f"{noidx_label}: migrate {app_label} (re-applies {index_migration})")
            noidx.django.manage("migrate", app_label, "--noinput", "-v", "0")
        server_desc = cats[0].service.desc + ", one per catalogue; ./gunicorn.conf.py is read too, the command line overrides it"

    # ---------------- report
    ps, pl, pn = (phases.get(k) for k in (small_label, large_label, noidx_label))

    def call(phase: dict | None, name: str, key: str) -> Any:
        return phase["calls"][name].get(key) if phase else None

    def prof(phase: dict | None, name: str, key: str) -> Any:
        return phase["profile"]["calls"][name].get(key) if phase else None

    la, lb = measured["loadavg_before"], measured["loadavg_after"]
    print("\n" + "\n".join([
        describe_machine(info) + f"; load average 1/5/15 min before {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f}, after {lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f}",
        (f"Django {info['packages']['Django']}, DRF {info['packages']['djangorestframework']}, psycopg {info['packages']['psycopg']}; "
        f"PostgreSQL {pg_settings.get('server_version')} (shared_buffers {pg_settings.get('shared_buffers')}, work_mem "
        f"{pg_settings.get('work_mem')}, random_page_cost {pg_settings.get('random_page_cost')}, jit {pg_settings.get('jit')})"),
        f"service: {server_desc}; {describe_repo(info)}",
        (f"catalogues: {args.users} users ({pick['users_with_rows']} with rows at {small_label}), {args.instances_per_series} instances/series, "
        f"{args.series_per_study} series/study; measured user {pick['user']}: {call(ps, 'list', 'count')} instances at {small_label}, "
        f"{call(pl, 'list', 'count')} at {large_label}; {maint} after each load"),
        (f"n={args.n} per call and catalogue after {args.warmup} warm-up requests; catalogues interleaved request by request; one client; "
        "ms, wall time per request incl. body read"),
    ]))  # fmt: skip

    def latency_table(names: list[str], title: str) -> list[dict]:
        header = (f"{'call':<16} {'rows ' + small_label + '/' + large_label:>15}  {'p50 ' + small_label:>8}  {'p50 ' + large_label:>8}  "
                  f"{'ratio':>6}  {'ok?':>4}  {'p95 ' + small_label:>8}  {'p95 ' + large_label:>8}  {'p50 no0003':>10}  {'no0003/idx':>10}")  # fmt: skip
        print(f"\n{title}\n{header}\n{'-' * len(header)}")
        rows = []
        for name in names:
            s50, l50, n50 = call(ps, name, "p50_ms"), call(pl, name, "p50_ms"), call(pn, name, "p50_ms")
            ratio = l50 / s50 if s50 and l50 else None
            gain = n50 / l50 if n50 and l50 else None
            verdict = "info" if name.startswith("view_all_list") else ("ok" if ratio is not None and ratio <= args.target else "OVER")
            counts = f"{call(ps, name, 'count')}/{call(pl, name, 'count')}"
            print(f"{name:<16} {counts:>15}  {fmt(s50)}  {fmt(l50)}  {fmt(ratio, 6, 2)}  {verdict:>4}  {fmt(call(ps, name, 'p95_ms'))}  "
                  f"{fmt(call(pl, name, 'p95_ms'))}  {fmt(n50, 10)}  {fmt(gain, 10, 2)}")  # fmt: skip
            rows.append({
                "call": name, "path": call(ps, name, "path"), "as": call(ps, name, "as"),
                "count_small": call(ps, name, "count"), "count_large": call(pl, name, "count"),
                "page_rows_small": call(ps, name, "page_rows"), "page_rows_large": call(pl, name, "page_rows"),
                "p50_small_ms": s50, "p50_large_ms": l50, "ratio": round(ratio, 3) if ratio else None, "target": args.target,
                "verdict": verdict, "p95_small_ms": call(ps, name, "p95_ms"), "p95_large_ms": call(pl, name, "p95_ms"),
                "p50_large_no_0003_ms": n50, "no_0003_over_indexed": round(gain, 3) if gain else None,
            })  # fmt: skip
        return rows

    base_names = [n for n, _, _ in base_calls]
    table = latency_table(base_names, "API, default page (50 rows):")
    table_small_page = (latency_table([f"{n}@{args.small_page}" for n in base_names], f"API, page_size={args.small_page} (same page size at both sizes):")
                        if args.small_page else [])  # fmt: skip
    print(f"\ndatabase side (in-process Django test Client, same calls): queries per request; sum of EXPLAIN ANALYZE execution times "
          f"of its catalogue SELECTs (median of {args.explain_runs}), ms; ORM fetch of the 50-row page as selectors.instance_list builds it, "
          "and with .defer('header') (median of 7), ms")  # fmt: skip
    hdr2 = (f"{'call':<16} {'queries':>17}  {'db ' + small_label:>8}  {'db ' + large_label:>8}  {'db no0003':>9}  "
            f"{'orm page ' + large_label:>13}  {'defer(header)':>13}")  # fmt: skip
    print(f"{hdr2}\n{'-' * len(hdr2)}")
    for name in base_names:
        qs = "/".join(str(prof(p, name, "queries")) for p in (ps, pl, pn) if p)
        print(f"{name:<16} {qs:>17}  {fmt(prof(ps, name, 'explain_ms_sum'))}  {fmt(prof(pl, name, 'explain_ms_sum'))}  "
              f"{fmt(prof(pn, name, 'explain_ms_sum'), 9)}  {fmt(prof(pl, name, 'page_fetch_ms'), 13)}  "
              f"{fmt(prof(pl, name, 'page_fetch_defer_header_ms'), 13)}")  # fmt: skip
    print("\nadmin changelists (Django test Client, session login): queries per page at " + " / ".join(phases) + "; in-process ms (median of 3)")
    admin_rows = []
    for key in ps["profile"]["admin"]:
        counts = [p["profile"]["admin"][key]["queries"] for p in phases.values()]
        times = [p["profile"]["admin"][key]["wall_ms_inprocess_median3"] for p in phases.values()]
        statuses = sorted({p["profile"]["admin"][key]["status"] for p in phases.values()})
        constant = len(set(counts)) == 1
        print(f"  {key:<36} queries {' / '.join(map(str, counts)):<14} {'constant' if constant else 'CHANGES':<9} "
              f"ms {' / '.join(f'{t:.0f}' for t in times)}  HTTP {statuses}")  # fmt: skip
        admin_rows.append({"page": key, "queries": dict(zip(phases, counts)), "constant": constant, "ms": dict(zip(phases, times)), "statuses": statuses})
    print("\nseeding (python -m bench seed; rows/s as the seeding reports it, wall incl. Django start-up):")
    for k, s in seeds.items():
        print(f"  {k:<6} +{s['instances']:>7} instances: {fmt(s['command_s'], 6)} s  {s['command_rows_per_s'] or 0:>7} rows/s  "
              f"(wall {s['wall_s_incl_startup']:.1f} s)")  # fmt: skip
    print("\nindexes on studies_instance:")
    for k, p in phases.items():
        print(f"  {k}: {', '.join(p['indexes'])}")
    over = [r for r in table if r["verdict"] == "OVER"]
    if over and pl:
        print(f"\ncalls above {args.target}x at the default page: their slowest catalogue query at {large_label} (EXPLAIN ANALYZE, BUFFERS):")
        for r in over:
            sqls = [q for q in pl["profile"]["calls"][r["call"]]["sql"] if q.get("explain_ms") is not None]
            if sqls:
                worst = max(sqls, key=lambda q: q["explain_ms"])
                print(f"\n--- {r['call']} ({r['path']}): {worst['explain_ms']:.2f} ms\n{textwrap.shorten(worst['sql'], 600)}\n{worst['plan']}")
    for k, p in phases.items():
        for name, c in p.get("calls", {}).items():
            if c["errors"]:
                notes.append(f"{k} {name}: {len(c['errors'])}+ failed requests, e.g. {c['errors'][0]}")
    if notes:
        print("\nnotes:\n" + "\n".join(f"  - {note}" for note in notes))

    rows = [{"row": f"{r['call']} p50 at {r['count_large']} vs {r['count_small']} rows (ratio {large_label}/{small_label}, target {r['target']})",
             "service": r["p50_large_ms"], "orthanc": None, "ratio": r["ratio"], "unit": "ms", "better": "lower"} for r in table]  # fmt: skip
    failed = any(c["errors"] for p in phases.values() for c in p.get("calls", {}).values())
    write_result(
        args.json, rows, info=info, loadavg={"before": la, "after": lb}, postgres=pg_settings, service_server=server_desc,
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, picked=pick,
        calls=[{"name": n, "path": p, "as": w} for n, p, w in calls], table=table, table_small_page=table_small_page, admin=admin_rows,
        seed=seeds, measure_wall_s=measured.get("wall_s"), phases=phases, notes=notes, elapsed_s=round(clock.elapsed, 1),
        **({"server_log_tail": stack.log_tails()} if failed else {}),
    )  # fmt: skip
    return 1 if failed else 0
