#!/usr/bin/env python3
"""Scale benchmark: list/filter/search latency on a 1,000- vs a 100,000-instance catalogue (PostgreSQL).

    .venv/bin/python bench/scale_bench.py --n 50 [--json bench/results/scale.json] [--keep-db]

The requirement it checks: with 100,000 synthetic instances loaded, the API's list, filters (modality, patient
ID, study UID, study date range) and search keep their p50 within 1.5x of the same calls on a 1,000-instance
catalogue, and the admin instance list keeps a constant query count. Everything it starts is stopped in a
`finally`: gunicorn by process group, the throwaway database dropped (unless --keep-db).

1. A throwaway PostgreSQL database (created and dropped here), `migrate`, then
   `manage.py seed_catalogue --instances 1000 --users 20 --prefix scale` (rows only, one stored CT file per user).
   Shape: --instances-per-series 10 --series-per-study 2 by default (20 instances a study), so that at 1,000
   instances every one of the 20 users owns rows (the command's own default, 200 a study, makes 5 studies at
   1,000, i.e. at most 5 users with rows) and each user's share grows ~100x, like the catalogue.
2. Maintenance after every load: `VACUUM (ANALYZE)` (what autovacuum converges to; without it autovacuum fires
   at an unpredictable moment during the 100k measurement); `--analyze-only` runs plain ANALYZE instead.
3. One seeded user is picked (the one whose row count at 1k is closest to the mean); the filter values are taken
   from that user's rows at 1k (their most common modality, study year and family name; one study's patient ID,
   another study's UID), so every value exists at both sizes. The user gets is_staff and a Token; a superuser
   ("view_all") gets a Token too.
4. Phases, each with a fresh gunicorn (`dicomsite.wsgi`, --workers 2 --threads 4, gthread), DEBUG off,
   LOG_LEVEL=WARNING, token auth on kept-alive http.client connections; after --warmup requests per call,
   --n rounds, round-robin over the calls (so machine noise spreads over all of them), p50/p95 per call:
   - "1k":        the 1,000-instance catalogue with every migration;
   - "100k":      `seed_catalogue` again with the SAME prefix and users (another --seed, so the added rows are
                  not a replay of the first ones) up to 100,000 instances;
   - "100k-no-0003": `migrate studies 0002` (the owner-leading list indexes dropped), maintenance, measured
                  again; 0003 is re-applied afterwards.
   After each phase a Django process (test Client + CaptureQueriesContext) makes every call once more and
   records its SQL, query count and EXPLAIN (ANALYZE, BUFFERS) of each catalogue SELECT (median Execution Time
   of --explain-runs), the ORM fetch time of each instance call's 50-row page with and without the header JSON
   (the list never shows it), and the admin changelists' query counts (the seeded user as staff, and the superuser).
5. A table (p50 at 1k, p50 at 100k, ratio against --target, p50 at 100k without 0003), seed rates, admin query
   counts; plans of the calls above target; JSON to bench/results/scale.json.

Standard library plus the venv's packages; helpers from bench/render_bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_bench import (  # noqa: E402 - bench/ is not a package
    HttpClient,
    Postgres,
    Proc,
    free_port,
    log,
    machine_info,
    percentile,
    start_process,
    wait_http,
)

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = Path(sys.executable)
CATALOGUE_TABLES = ("studies_instance", "studies_study", "studies_series")

# --------------------------------------------------------------------------- Django-side helpers (run as scripts)

DJANGO_PRELUDE = """
import json, os, statistics, sys, time
sys.path.insert(0, os.environ["SCALE_BENCH_ROOT"])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dicomsite.settings")
import django
django.setup()
P = json.load(open(sys.argv[1]))
"""

# Picks the measured user and the filter values; gives tokens; makes the user staff and a superuser.
SETUP_SCRIPT = DJANGO_PRELUDE + r'''
from collections import Counter
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from studies.models import Instance, Study

User = get_user_model()
users = list(User.objects.filter(username__startswith=P["prefix"] + "-user-").order_by("username"))
counts = {u.username: Instance.objects.filter(owner=u).count() for u in users}
with_rows = [u for u in users if counts[u.username]]
mean = sum(counts.values()) / len(users)
user = min(with_rows, key=lambda u: (abs(counts[u.username] - mean), u.username))
rows = Instance.objects.filter(owner=user)
modality = Counter(rows.values_list("modality", flat=True)).most_common(1)[0][0]
year = Counter(d.year for d in rows.values_list("study_date", flat=True) if d).most_common(1)[0][0]
family = Counter(n.split("^")[0] for n in rows.values_list("patient_name", flat=True)).most_common(1)[0][0]
studies = list(Study.objects.filter(owner=user).order_by("created_at", "id"))
user.is_staff = True
user.save(update_fields=["is_staff"])
admin = User.objects.filter(username=P["admin"]).first() or User.objects.create_superuser(P["admin"], None, None)
print("RESULT=" + json.dumps({
    "user": user.username,
    "user_counts_1k": counts,
    "users_with_rows": len(with_rows),
    "modality": modality,
    "patient_id": studies[0].patient_id,
    "study_uid": studies[-1].study_instance_uid,
    "year": year,
    "family": family,
    "user_studies_1k": len(studies),
    "tokens": {"user": Token.objects.get_or_create(user=user)[0].key, "admin": Token.objects.get_or_create(user=admin)[0].key},
}))
'''

# Every call once more in-process: SQL, query count, EXPLAIN ANALYZE; admin changelist query counts.
PROFILE_SCRIPT = DJANGO_PRELUDE + r'''
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from studies import selectors
from studies.models import Instance
from urllib.parse import parse_qsl, urlsplit
import datetime as dt

def explain(sql, runs):
    times, plan = [], ""
    with connection.cursor() as cur:
        for _ in range(runs):
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            lines = [r[0] for r in cur.fetchall()]
            times += [float(l.split(":", 1)[1].split()[0]) for l in lines if l.startswith("Execution Time:")]
            plan = "\n".join(lines)
    return (statistics.median(times) if times else None), plan

def profile(client, path, runs):
    client.get(path)  # warm: permission caches, buffers
    with CaptureQueriesContext(connection) as cq:
        start = time.perf_counter()
        response = client.get(path)
        wall = (time.perf_counter() - start) * 1000
    queries = []
    for q in cq.captured_queries:
        sql = q["sql"]
        entry = {"sql": sql, "ms": round(float(q["time"]) * 1000, 3)}
        if runs and sql.lstrip().upper().startswith("SELECT") and any(t in sql for t in P["tables"]):
            entry["explain_ms"], entry["plan"] = explain(sql, runs)
        queries.append(entry)
    explained = [q["explain_ms"] for q in queries if q.get("explain_ms") is not None]
    return {
        "status": response.status_code,
        "queries": len(queries),
        "db_ms_captured": round(sum(q["ms"] for q in queries), 3),
        "explain_ms_sum": round(sum(explained), 3) if explained else None,
        "wall_ms_inprocess": round(wall, 2),
        "sql": queries,
    }

def orm_page(user, path, defer):
    params = dict(parse_qsl(urlsplit(path).query))
    for key in ("study_date_from", "study_date_to"):
        if key in params:
            params[key] = dt.date.fromisoformat(params[key])
    queryset = selectors.instance_list(user=user, **params)
    return list((queryset.defer("header") if defer else queryset)[:50])

def header_cost(user, path, runs=7):
    """ORM fetch of the page's 50 rows as instance_list builds it, and the same with the header JSON deferred."""
    times = {False: [], True: []}
    for _ in range(runs):
        for defer in (False, True):
            start = time.perf_counter()
            orm_page(user, path, defer)
            times[defer].append((time.perf_counter() - start) * 1000)
    return {"page_fetch_ms": round(statistics.median(times[False]), 2), "page_fetch_defer_header_ms": round(statistics.median(times[True]), 2)}

out = {"calls": {}, "admin": {}, "instances_total": Instance.objects.count()}
User = get_user_model()
for name, path, who in P["calls"]:
    out["calls"][name] = profile(Client(headers={"Authorization": "Token " + P["tokens"][who]}), path, P["explain_runs"])
    if path.startswith("/api/instances/"):
        out["calls"][name].update(header_cost(Token.objects.get(key=P["tokens"][who]).user, path))
for who, username in P["admin_users"].items():
    client = Client()
    client.force_login(User.objects.get(username=username))
    for path in P["admin_paths"]:
        res = profile(client, path, 0)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            client.get(path)
            times.append((time.perf_counter() - start) * 1000)
        res["wall_ms_inprocess_median3"] = round(statistics.median(times), 2)
        res["sql"] = sorted(res["sql"], key=lambda q: -q["ms"])[:5]  # the slowest few
        out["admin"][f"{who} {path}"] = res
json.dump(out, open(P["out"], "w"), indent=1)
'''


# --------------------------------------------------------------------------- the service


class Bench:
    def __init__(self, args, tmp: Path, notes: list[str]):
        self.args = args
        self.tmp = tmp
        self.notes = notes
        self.pg = Postgres(args.postgres)
        self.pg.name = f"scale_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.db_url = ""
        self.env: dict[str, str] = {}
        self.proc: Proc | None = None
        self.port = 0
        self.server_desc = ""

    def setup(self) -> None:
        self.db_url = self.pg.create()
        log(f"PostgreSQL database {self.pg.name}")
        media = self.tmp / "media"
        media.mkdir()
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "DICOM_")) and k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL")
        }
        self.env = {
            **inherited,
            "DJANGO_SECRET_KEY": "scale-bench-" + secrets.token_hex(16),
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": self.db_url,
            "DICOM_MEDIA_ROOT": str(media),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "SCALE_BENCH_ROOT": str(ROOT),
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)

    def run(self, argv: list[str], timeout: float = 3600) -> str:
        res = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res.stdout

    def manage(self, *argv: str, timeout: float = 3600) -> str:
        return self.run([str(VENV_PYTHON), "manage.py", *argv], timeout=timeout)

    def script(self, name: str, code: str, params: dict) -> str:
        path = self.tmp / f"{name}.py"
        path.write_text(code)
        params_path = self.tmp / f"{name}-params.json"
        params_path.write_text(json.dumps(params))
        return self.run([str(VENV_PYTHON), str(path), str(params_path)])

    def sql(self, statement: str, fetch: bool = True):
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if fetch and cur.description else None

    def start(self) -> None:
        self.port = free_port()
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
            f"gunicorn {metadata.version('gunicorn')} --workers {self.args.workers} --threads {self.args.threads} "
            f"({worker} worker; ./gunicorn.conf.py is read too, the command line overrides it)"
        )
        log(f"starting {self.server_desc} on port {self.port}")
        self.proc = start_process("service", cmd, self.tmp / f"service-{self.port}.log", env=self.env, cwd=ROOT)
        wait_http(self.proc, self.port, "/healthz")

    def stop_server(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def stop(self) -> None:
        self.stop_server()
        if self.args.keep_db:
            if self.pg.created:
                log(f"kept database: psql {self.db_url}")
                log(f"drop it with: psql {self.args.postgres}/postgres -c 'DROP DATABASE \"{self.pg.name}\" WITH (FORCE)'")
        else:
            self.pg.drop()


# --------------------------------------------------------------------------- measurement


def seed(bench: Bench, instances: int, seed_value: int) -> dict:
    a = bench.args
    log(f"seed_catalogue --instances {instances} --users {a.users} --prefix {a.prefix} --seed {seed_value}")
    start = time.monotonic()
    out = bench.manage(
        "seed_catalogue", "--instances", str(instances), "--users", str(a.users), "--prefix", a.prefix,
        "--seed", str(seed_value), "--instances-per-series", str(a.instances_per_series),
        "--series-per-study", str(a.series_per_study),
    )  # fmt: skip
    wall = time.monotonic() - start
    m = re.search(r"(\d+) instances for (\d+) users in ([\d.]+) s \((\d+) rows/s\)", out)
    res = {
        "instances": instances,
        "seed": seed_value,
        "command_s": float(m.group(3)) if m else None,
        "command_rows_per_s": int(m.group(4)) if m else None,
        "wall_s_incl_startup": round(wall, 2),
        "output": out.strip()[-300:],
    }
    log(f"seeded {instances} in {wall:.1f}s wall ({out.strip()[-120:]})")
    return res


def maintenance(bench: Bench) -> str:
    statement = "ANALYZE" if bench.args.analyze_only else "VACUUM (ANALYZE)"
    start = time.monotonic()
    bench.sql(statement, fetch=False)
    log(f"{statement} in {time.monotonic() - start:.1f}s")
    return statement


def instance_indexes(bench: Bench) -> list[str]:
    rows = bench.sql("SELECT indexname FROM pg_indexes WHERE tablename = 'studies_instance' ORDER BY indexname")
    return [r[0] for r in rows]


def table_sizes(bench: Bench) -> dict:
    rows = bench.sql(
        "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
        f"WHERE relname IN {CATALOGUE_TABLES!r} ORDER BY relname"
    )
    return {r[0]: {"rows": r[1], "total_bytes": r[2]} for r in rows}


def measure(bench: Bench, calls: list[tuple[str, str, str]], tokens: dict[str, str], phase: str) -> dict:
    a = bench.args
    clients = {who: HttpClient(bench.port, {"Authorization": f"Token {key}", "Accept": "application/json"}) for who, key in tokens.items()}
    lat: dict[str, list[float]] = {name: [] for name, _, _ in calls}
    errors: dict[str, list[str]] = {name: [] for name, _, _ in calls}
    sample: dict[str, dict] = {}
    load_before = os.getloadavg()
    try:
        for name, path, who in calls:  # warm-up (process, connection, plan and buffer caches)
            for i in range(a.warmup):
                status, _, data, _ = clients[who].request("GET", path)
                if i == 0:
                    try:
                        body = json.loads(data)
                    except ValueError:
                        body = {}
                    sample[name] = {
                        "status": status,
                        "count": body.get("count") if isinstance(body, dict) else None,
                        "page_rows": len(body.get("results", [])) if isinstance(body, dict) else None,
                        "bytes": len(data),
                    }
        log(f"{phase}: measuring {len(calls)} calls x {a.n} rounds")
        start = time.monotonic()
        for _ in range(a.n):
            for name, path, who in calls:
                try:
                    status, _, data, elapsed = clients[who].request("GET", path)
                except OSError as exc:
                    errors[name].append(f"{type(exc).__name__}: {exc}")
                    clients[who].close()
                    continue
                if status == 200:
                    lat[name].append(elapsed * 1000)
                else:
                    errors[name].append(f"HTTP {status}: {data[:200]!r}")
        wall = time.monotonic() - start
    finally:
        for c in clients.values():
            c.close()
    result = {"loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
              "wall_s": round(wall, 1), "calls": {}}  # fmt: skip
    for name, path, who in calls:
        v = lat[name]
        result["calls"][name] = {
            "path": path,
            "as": who,
            "ok": len(v),
            "errors": errors[name][:5],
            "p50_ms": round(percentile(v, 0.5), 2) if v else None,
            "p95_ms": round(percentile(v, 0.95), 2) if v else None,
            "min_ms": round(min(v), 2) if v else None,
            "latencies_ms": [round(x, 3) for x in v],
            **sample.get(name, {}),
        }
    return result


def profile(bench: Bench, calls, tokens, users: dict[str, str]) -> dict:
    out = bench.tmp / f"profile-{secrets.token_hex(3)}.json"
    params = {
        "calls": calls,
        "tokens": tokens,
        "explain_runs": bench.args.explain_runs,
        "tables": list(CATALOGUE_TABLES),
        "admin_users": users,
        "admin_paths": ["/admin/studies/instance/", "/admin/studies/study/", "/admin/studies/series/"],
        "out": str(out),
    }
    bench.script("profile", PROFILE_SCRIPT, params)
    return json.loads(out.read_text())


def run_phase(bench: Bench, label: str, calls, tokens, admin_users) -> dict:
    phase = {"label": label, "indexes": instance_indexes(bench), "tables": table_sizes(bench)}
    bench.start()
    try:
        phase.update(measure(bench, calls, tokens, label))
    finally:
        bench.stop_server()
    log(f"{label}: profiling (SQL, EXPLAIN ANALYZE, admin query counts)")
    prof = profile(bench, calls, tokens, admin_users)
    phase["instances_total"] = prof["instances_total"]
    phase["profile"] = prof
    return phase


# --------------------------------------------------------------------------- report


def fmt(v, width=8, digits=1) -> str:
    return f"{v:{width}.{digits}f}" if isinstance(v, (int, float)) else f"{'n/a':>{width}}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="measured requests per call and phase (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured requests per call before measuring (default 5)")
    ap.add_argument("--small", type=int, default=1000, help="instances in the small catalogue (default 1000)")
    ap.add_argument("--large", type=int, default=100_000, help="instances in the large catalogue (default 100000)")
    ap.add_argument("--users", type=int, default=20, help="seeded users, the same at both sizes (default 20)")
    ap.add_argument("--prefix", default="scale", help="seed_catalogue --prefix (default scale)")
    ap.add_argument("--seed", type=int, default=1, help="seed_catalogue --seed of the small load (the large one uses seed+1)")
    ap.add_argument("--instances-per-series", type=int, default=10)
    ap.add_argument("--series-per-study", type=int, default=2)
    ap.add_argument("--target", type=float, default=1.5, help="p50 ratio target, 100k / 1k (default 1.5)")
    ap.add_argument("--analyze-only", action="store_true", help="plain ANALYZE after loads instead of VACUUM (ANALYZE)")
    ap.add_argument("--no-index-phase", dest="index_phase", action="store_false", help="skip the 100k run without 0003")
    ap.add_argument("--explain-runs", type=int, default=3, help="EXPLAIN ANALYZE runs per query (median kept)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server for the throwaway database")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the database (0003 re-applied); prints psql commands")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (gunicorn logs, helper scripts)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = ap.parse_args(argv)
    if args.n < 1 or args.large <= args.small or args.small < 1 or args.users < 1:
        ap.error("need --n >= 1, 1 <= --small < --large, --users >= 1")

    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    t_start = time.monotonic()
    command = " ".join([".venv/bin/python", *[os.path.relpath(sys.argv[0], ROOT)], *sys.argv[1:]])
    info = machine_info()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    bench = Bench(args, tmp, notes)
    phases: dict[str, dict] = {}
    seeds: dict[str, dict] = {}
    pick: dict = {}
    pg_settings: dict = {}
    small_label = f"{args.small // 1000}k" if args.small % 1000 == 0 else str(args.small)
    large_label = f"{args.large // 1000}k" if args.large % 1000 == 0 else str(args.large)
    noidx_label = f"{large_label}-no-0003"
    try:
        bench.setup()
        for key in ("server_version", "shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "jit"):
            pg_settings[key] = bench.sql(f"SHOW {key}")[0][0]
        bench.manage("migrate", "--noinput", "-v", "0")
        seeds[small_label] = seed(bench, args.small, args.seed)
        maint = maintenance(bench)

        out = bench.script("setup", SETUP_SCRIPT, {"prefix": args.prefix, "admin": f"{args.prefix}-admin"})
        pick = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT=")))
        tokens = pick.pop("tokens")
        log(f"measured user {pick['user']} ({pick['user_counts_1k'][pick['user']]} instances at {small_label}); values: "
            f"modality={pick['modality']} patient_id={pick['patient_id']} study={pick['study_uid']} year={pick['year']} "
            f"search={pick['family']}")  # fmt: skip
        q = urllib.parse.urlencode
        calls = [
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
        admin_users = {"user": pick["user"], "superuser": f"{args.prefix}-admin"}

        phases[small_label] = run_phase(bench, small_label, calls, tokens, admin_users)
        phases[small_label]["maintenance"] = maint

        seeds[large_label] = seed(bench, args.large - args.small, args.seed + 1)
        maint = maintenance(bench)
        phases[large_label] = run_phase(bench, large_label, calls, tokens, admin_users)
        phases[large_label]["maintenance"] = maint

        if args.index_phase:
            log("migrate studies 0002 (drops the 0003 list indexes)")
            bench.manage("migrate", "studies", "0002", "--noinput", "-v", "0")
            maint = maintenance(bench)
            phases[noidx_label] = run_phase(bench, noidx_label, calls, tokens, admin_users)
            phases[noidx_label]["maintenance"] = maint
            log("migrate studies (re-applies 0003)")
            bench.manage("migrate", "studies", "--noinput", "-v", "0")
    finally:
        server_log = bench.proc.log_tail(40) if bench.proc else ""
        bench.stop()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------- report
    small, large, noidx = phases.get(small_label), phases.get(large_label), phases.get(noidx_label)

    def call(phase, name, key):
        return phase["calls"][name].get(key) if phase else None

    def prof(phase, name, key):
        return phase["profile"]["calls"][name].get(key) if phase else None

    user = pick["user"]
    share_small = pick["user_counts_1k"][user]
    share_large = call(large, "list", "count")
    machine_lines = [
        f"machine: nproc={info['nproc']} ({info['cpu_model']}), {info['platform']}; loadavg during phases: "
        + ", ".join(f"{k} {p['loadavg_before'][0]:.1f}->{p['loadavg_after'][0]:.1f}" for k, p in phases.items()),
        f"python {info['python']}; Django {info['packages']['Django']}, DRF {info['packages']['djangorestframework']}, "
        f"psycopg {info['packages']['psycopg']}, gunicorn {info['packages']['gunicorn']}; PostgreSQL {pg_settings.get('server_version')} "
        f"(shared_buffers {pg_settings.get('shared_buffers')}, work_mem {pg_settings.get('work_mem')}, jit {pg_settings.get('jit')})",
        f"service: {bench.server_desc}; repo {info['git'].get('commit', '?')}"
        + (" (uncommitted changes in studies/ or dicomsite/)" if info["git"].get("uncommitted_changes_in_studies_or_dicomsite") else ""),
        f"command: {command}",
        f"catalogue: {args.users} users ({pick['users_with_rows']} with rows at {small_label}), {args.instances_per_series} instances/series, "
        f"{args.series_per_study} series/study; measured user {user}: {share_small} instances at {small_label}, {share_large} at {large_label}; "
        f"maintenance after each load: {maint}",
        f"n={args.n} per call and phase after {args.warmup} warm-up requests, round-robin over the calls, one client; "
        "ms, wall time per request incl. body read",
    ]
    print()
    print("\n".join(machine_lines))
    print()
    header = (f"{'call':<14} {'rows ' + small_label + '/' + large_label:>15}  {'p50 ' + small_label:>8}  {'p50 ' + large_label:>8}  "
              f"{'ratio':>6}  {'ok?':>4}  {'p95 ' + small_label:>8}  {'p95 ' + large_label:>8}  {'p50 no0003':>10}  {'no0003/idx':>10}")  # fmt: skip
    print(header)
    print("-" * len(header))
    table = []
    for name, path, who in calls if phases else []:
        s50, l50, n50 = call(small, name, "p50_ms"), call(large, name, "p50_ms"), call(noidx, name, "p50_ms")
        ratio = l50 / s50 if s50 and l50 else None
        gain = n50 / l50 if n50 and l50 else None
        info_only = name == "view_all_list"
        verdict = "info" if info_only else ("ok" if ratio is not None and ratio <= args.target else "OVER")
        rows = f"{call(small, name, 'count')}/{call(large, name, 'count')}"
        print(f"{name:<14} {rows:>15}  {fmt(s50)}  {fmt(l50)}  {fmt(ratio, 6, 2)}  {verdict:>4}  {fmt(call(small, name, 'p95_ms'))}  "
              f"{fmt(call(large, name, 'p95_ms'))}  {fmt(n50, 10)}  {fmt(gain, 10, 2)}")  # fmt: skip
        table.append({
            "call": name, "path": path, "as": who, "count_small": call(small, name, "count"), "count_large": call(large, name, "count"),
            "page_rows_small": call(small, name, "page_rows"), "page_rows_large": call(large, name, "page_rows"),
            "p50_small_ms": s50, "p50_large_ms": l50, "ratio": round(ratio, 3) if ratio else None, "target": args.target,
            "verdict": verdict, "p95_small_ms": call(small, name, "p95_ms"), "p95_large_ms": call(large, name, "p95_ms"),
            "p50_large_no_0003_ms": n50, "no_0003_over_indexed": round(gain, 3) if gain else None,
        })  # fmt: skip
    print()
    print("database side (in-process Django test Client, same calls): queries per request; sum of EXPLAIN ANALYZE "
          f"execution times of its catalogue SELECTs (median of {args.explain_runs}), ms; ORM fetch of the 50-row page as "
          "selectors.instance_list builds it, and with .defer('header') (median of 7), ms")
    hdr2 = (f"{'call':<14} {'queries':>17}  {'db ' + small_label:>8}  {'db ' + large_label:>8}  {'db no0003':>9}  "
            f"{'orm page ' + large_label:>13}  {'…defer(header)':>14}")  # fmt: skip
    print(hdr2)
    print("-" * len(hdr2))
    for name, _, _ in calls if phases else []:
        qs = "/".join(str(prof(p, name, "queries")) for p in (small, large, noidx) if p)
        print(f"{name:<14} {qs:>17}  {fmt(prof(small, name, 'explain_ms_sum'))}  {fmt(prof(large, name, 'explain_ms_sum'))}  "
              f"{fmt(prof(noidx, name, 'explain_ms_sum'), 9)}  {fmt(prof(large, name, 'page_fetch_ms'), 13)}  "
              f"{fmt(prof(large, name, 'page_fetch_defer_header_ms'), 14)}")  # fmt: skip
    print()
    print("admin changelists (Django test Client, session login): queries per page at " + " / ".join(phases) + "; in-process ms (median of 3)")
    admin_rows = []
    for key in (small["profile"]["admin"] if small else {}):
        counts = [p["profile"]["admin"][key]["queries"] for p in phases.values()]
        times = [p["profile"]["admin"][key]["wall_ms_inprocess_median3"] for p in phases.values()]
        statuses = {p["profile"]["admin"][key]["status"] for p in phases.values()}
        constant = len(set(counts)) == 1
        print(f"  {key:<40} queries {' / '.join(map(str, counts)):<14} {'constant' if constant else 'CHANGES':<9} "
              f"ms {' / '.join(f'{t:.0f}' for t in times)}  status {sorted(statuses)}")
        admin_rows.append({"page": key, "queries": dict(zip(phases, counts)), "constant": constant, "ms": dict(zip(phases, times))})
    print()
    print("seeding (manage.py seed_catalogue; rows/s as the command reports it, wall incl. Django start-up):")
    for k, s in seeds.items():
        print(f"  {k:<6} +{s['instances']:>7} instances: {fmt(s['command_s'], 6)} s  {s['command_rows_per_s'] or 0:>7} rows/s  "
              f"(wall {s['wall_s_incl_startup']:.1f} s)")
    print()
    print("indexes on studies_instance: " + "; ".join(f"{k}: {', '.join(p['indexes'])}" for k, p in phases.items()))
    over = [r for r in table if r["verdict"] == "OVER"]
    if over and large:
        print()
        print(f"calls above {args.target}x: their slowest catalogue query at {large_label} (EXPLAIN ANALYZE, BUFFERS):")
        for r in over:
            sqls = [q for q in large["profile"]["calls"][r["call"]]["sql"] if q.get("explain_ms") is not None]
            if not sqls:
                continue
            worst = max(sqls, key=lambda q: q["explain_ms"])
            print(f"\n--- {r['call']} ({r['path']}): {worst['explain_ms']:.2f} ms\n{textwrap.shorten(worst['sql'], 900)}\n{worst['plan']}")
    for k, p in phases.items():
        for name, c in p["calls"].items():
            if c["errors"]:
                notes.append(f"{k} {name}: {len(c['errors'])}+ failed requests, e.g. {c['errors'][0]}")
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  - {note}")

    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": info,
        "postgres": pg_settings,
        "service_server": bench.server_desc,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "picked": pick,
        "calls": [{"name": n, "path": p, "as": w} for n, p, w in calls] if phases else [],
        "table": table,
        "admin": admin_rows,
        "seed": seeds,
        "phases": phases,
        "notes": notes,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    if server_log:
        out["server_log_tail"] = server_log
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.json} ({out['elapsed_s']:.0f}s total)")
    return 1 if any(c["errors"] for p in phases.values() for c in p["calls"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
