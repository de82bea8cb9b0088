#!/usr/bin/env python3
"""Scale benchmark: list/filter/search latency on a 1,000- vs a 100,000-instance catalogue (PostgreSQL).

    .venv/bin/python bench/scale_bench.py --n 50 [--json bench/results/scale.json] [--keep-db]

The requirement it checks: with 100,000 synthetic instances loaded, the API's list, filters (modality, patient
ID, study UID, study date range) and search keep their p50 within 1.5x of the same calls on a 1,000-instance
catalogue, and the admin instance list keeps a constant query count. Everything it starts is stopped in a
`finally`: the gunicorns by process group, the throwaway databases dropped (unless --keep-db).

1. Catalogues, each a throwaway PostgreSQL database:
   - "1k":   `migrate`, then `manage.py seed_catalogue --instances 1000 --users 20 --prefix scale --seed 1`
             (rows only, one stored CT file per user). Shape: --instances-per-series 10 --series-per-study 2 by
             default (20 instances a study), so that at 1,000 instances nearly every one of the 20 users owns rows
             (the command's own default, 200 a study, makes 5 studies at 1,000: at most 5 users with rows) and each
             user's share grows ~100x with the catalogue;
   - "100k": a copy of "1k" (CREATE DATABASE ... TEMPLATE), grown by `seed_catalogue` with the SAME prefix and
             users (and --seed 2, so the added rows are not a replay of the first ones) to 100,000 instances;
   - "100k-no-0003": a copy of "100k" after `migrate studies 0002` (the owner-leading list indexes of
             0003_list_indexes dropped); 0003 is re-applied to it at the end.
   After each load `VACUUM (ANALYZE)` (what autovacuum converges to; without it autovacuum fires at an
   unpredictable moment during the measurement); `--analyze-only` runs plain ANALYZE instead.
2. One seeded user is picked in "1k" (the one whose row count is closest to the mean); the filter values come
   from that user's rows at 1k (their most common modality, study year and family name; one study's patient ID,
   another study's UID), so every value exists, with the same rows, in all catalogues. The user gets is_staff and
   a Token, a superuser ("view_all") a Token too, before the copies are made: tokens are the same everywhere.
3. One gunicorn per catalogue (`dicomsite.wsgi`, --workers 2 --threads 4, gthread), DEBUG off, LOG_LEVEL=WARNING,
   token auth on kept-alive http.client connections. After --warmup requests per call and catalogue, --n rounds;
   in each round every call goes to every catalogue in turn (order reversed every other round), one request at
   a time, so machine noise (other jobs on a small machine) hits the catalogues alike and the ratios compare
   like with like. p50/p95 per call and catalogue. The same calls with `page_size=10` (--small-page) are
   measured too: at 1k most filters return fewer than 50 rows, so the default page also grows with the
   catalogue (serialising 50 rows instead of 10); the page_size=10 rows separate that from database work.
4. Then per catalogue a Django process (test Client + CaptureQueriesContext) makes every call once more and
   records its SQL, query count and EXPLAIN (ANALYZE, BUFFERS) of each catalogue SELECT (median Execution Time
   of --explain-runs), the ORM fetch time of each instance call's 50-row page with and without the header JSON
   (the list never shows it), and the admin changelists' query counts (the seeded user as staff, and the
   superuser).
5. A table (p50 at 1k, p50 at 100k, ratio against --target, p50 at 100k without 0003), seed rates, admin query
   counts, plans of the calls above target; JSON to bench/results/scale.json.

Standard library plus the venv's packages; helpers from bench/render_bench.py.
"""

from __future__ import annotations

import argparse
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


class Catalogue:
    """One throwaway database and, while measuring, one gunicorn on it."""

    def __init__(self, label: str, args, tmp: Path, base_env: dict[str, str]):
        self.label = label
        self.args = args
        self.tmp = tmp
        self.base_env = base_env
        self.pg = Postgres(args.postgres)
        slug = re.sub(r"[^a-z0-9]+", "_", label.lower())
        self.pg.name = f"scale_bench_{os.getpid()}_{secrets.token_hex(2)}_{slug}"
        self.url = ""
        self.env: dict[str, str] = {}
        self.proc: Proc | None = None
        self.port = 0

    def create(self, template: Catalogue | None = None) -> None:
        if template is None:
            self.url = self.pg.create()
        else:
            import psycopg

            for attempt in range(30):  # an autovacuum worker may still be connected to the template for a moment
                try:
                    with self.pg._admin() as conn:
                        conn.execute(f'CREATE DATABASE "{self.pg.name}" TEMPLATE "{template.pg.name}"')
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 29:
                        raise
                    time.sleep(1)
            self.pg.created = True
            self.url = f"{self.pg.base_url}/{self.pg.name}"
        self.env = {**self.base_env, "DATABASE_URL": self.url}
        log(f"{self.label}: database {self.pg.name}" + (f" (copy of {template.label})" if template else ""))

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
        params_path = self.tmp / f"{name}-{self.pg.name}-params.json"
        params_path.write_text(json.dumps(params))
        return self.run([str(VENV_PYTHON), str(path), str(params_path)])

    def sql(self, statement: str, fetch: bool = True):
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
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
        log(f"{self.label}: gunicorn on port {self.port}")
        self.proc = start_process(f"service-{self.label}", cmd, self.tmp / f"service-{self.pg.name}.log", env=self.env, cwd=ROOT)
        wait_http(self.proc, self.port, "/healthz")

    def stop_server(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def finish(self) -> None:
        self.stop_server()
        if not self.pg.created:
            return
        if self.args.keep_db:
            log(f"kept {self.label}: psql {self.url}")
        else:
            self.pg.drop()


def server_desc(args) -> str:
    worker = "gthread" if args.threads > 1 else "sync"
    return (
        f"gunicorn {metadata.version('gunicorn')} --workers {args.workers} --threads {args.threads} ({worker} worker), "
        "one per catalogue; ./gunicorn.conf.py is read too, the command line overrides it"
    )


# --------------------------------------------------------------------------- measurement


def seed(cat: Catalogue, instances: int, seed_value: int) -> dict:
    a = cat.args
    log(f"{cat.label}: seed_catalogue --instances {instances} --users {a.users} --prefix {a.prefix} --seed {seed_value}")
    start = time.monotonic()
    out = cat.manage(
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
    log(f"{cat.label}: seeded {instances} in {wall:.1f}s wall ({out.strip()[-120:]})")
    return res


def maintenance(cat: Catalogue) -> str:
    statement = "ANALYZE" if cat.args.analyze_only else "VACUUM (ANALYZE)"
    start = time.monotonic()
    cat.sql(statement, fetch=False)
    log(f"{cat.label}: {statement} in {time.monotonic() - start:.1f}s")
    return statement


def instance_indexes(cat: Catalogue) -> list[str]:
    rows = cat.sql("SELECT indexname FROM pg_indexes WHERE tablename = 'studies_instance' ORDER BY indexname")
    return [r[0] for r in rows]


def table_sizes(cat: Catalogue) -> dict:
    rows = cat.sql(
        "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
        f"WHERE relname IN {CATALOGUE_TABLES!r} ORDER BY relname"
    )
    return {r[0]: {"rows": r[1], "total_bytes": r[2]} for r in rows}


def measure(cats: list[Catalogue], calls: list[tuple[str, str, str]], tokens: dict[str, str], args) -> dict:
    """Interleaved: each round sends every call to every catalogue in turn, one request at a time."""
    headers = {who: {"Authorization": f"Token {key}", "Accept": "application/json"} for who, key in tokens.items()}
    clients = {(c.label, who): HttpClient(c.port, headers[who]) for c in cats for who in tokens}
    lat = {(c.label, name): [] for c in cats for name, _, _ in calls}
    errors = {(c.label, name): [] for c in cats for name, _, _ in calls}
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
                        sample[(c.label, name)] = {"status": status, "count": body.get("count"),
                                                   "page_rows": len(body.get("results", [])), "bytes": len(data)}  # fmt: skip
        log(f"measuring {len(calls)} calls x {len(cats)} catalogues x {args.n} rounds, interleaved")
        start = time.monotonic()
        for r in range(args.n):
            order = cats if r % 2 == 0 else cats[::-1]
            for name, path, who in calls:
                for c in order:
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
    out = {"loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
           "wall_s": round(wall, 1), "by_catalogue": {}}  # fmt: skip
    for c in cats:
        res = {}
        for name, path, who in calls:
            v = lat[(c.label, name)]
            res[name] = {
                "path": path,
                "as": who,
                "ok": len(v),
                "errors": errors[(c.label, name)][:5],
                "p50_ms": round(percentile(v, 0.5), 2) if v else None,
                "p95_ms": round(percentile(v, 0.95), 2) if v else None,
                "min_ms": round(min(v), 2) if v else None,
                "latencies_ms": [round(x, 3) for x in v],
                **sample.get((c.label, name), {}),
            }
        out["by_catalogue"][c.label] = res
    return out


def profile(cat: Catalogue, calls, tokens, users: dict[str, str]) -> dict:
    log(f"{cat.label}: profiling (SQL, EXPLAIN ANALYZE, admin query counts)")
    out = cat.tmp / f"profile-{cat.pg.name}.json"
    params = {
        "calls": calls,
        "tokens": tokens,
        "explain_runs": cat.args.explain_runs,
        "tables": list(CATALOGUE_TABLES),
        "admin_users": users,
        "admin_paths": ["/admin/studies/instance/", "/admin/studies/study/", "/admin/studies/series/"],
        "out": str(out),
    }
    cat.script("profile", PROFILE_SCRIPT, params)
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- report


def fmt(v, width=8, digits=1) -> str:
    return f"{v:{width}.{digits}f}" if isinstance(v, (int, float)) else f"{'n/a':>{width}}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="measured requests per call and catalogue (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured requests per call and catalogue first (default 5)")
    ap.add_argument("--small", type=int, default=1000, help="instances in the small catalogue (default 1000)")
    ap.add_argument("--large", type=int, default=100_000, help="instances in the large catalogue (default 100000)")
    ap.add_argument("--users", type=int, default=20, help="seeded users, the same at both sizes (default 20)")
    ap.add_argument("--prefix", default="scale", help="seed_catalogue --prefix (default scale)")
    ap.add_argument("--seed", type=int, default=1, help="seed_catalogue --seed of the small load (the large one uses seed+1)")
    ap.add_argument("--instances-per-series", type=int, default=10)
    ap.add_argument("--series-per-study", type=int, default=2)
    ap.add_argument("--small-page", type=int, default=10, help="also measure every call with this page_size (0: don't)")
    ap.add_argument("--target", type=float, default=1.5, help="p50 ratio target, large / small (default 1.5)")
    ap.add_argument("--analyze-only", action="store_true", help="plain ANALYZE after loads instead of VACUUM (ANALYZE)")
    ap.add_argument("--no-index-phase", dest="index_phase", action="store_false", help="skip the catalogue without 0003")
    ap.add_argument("--explain-runs", type=int, default=3, help="EXPLAIN ANALYZE runs per query (median kept)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server for the throwaway databases")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the databases (0003 re-applied); prints psql commands")
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
    command = " ".join([".venv/bin/python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])
    info = machine_info()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    media = tmp / "media"  # shared: the copies point at the same seeded files
    media.mkdir()
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DICOM_")) and k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "DJANGO_SETTINGS_MODULE")
    }
    base_env = {
        **inherited,
        "DJANGO_SECRET_KEY": "scale-bench-" + secrets.token_hex(16),
        "DJANGO_DEBUG": "0",
        "DICOM_MEDIA_ROOT": str(media),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "SCALE_BENCH_ROOT": str(ROOT),
    }
    def label(n: int) -> str:
        return f"{n // 1000}k" if n % 1000 == 0 else str(n)

    small_label, large_label = label(args.small), label(args.large)
    noidx_label = f"{large_label}-no-0003"
    small = Catalogue(small_label, args, tmp, base_env)
    large = Catalogue(large_label, args, tmp, base_env)
    noidx = Catalogue(noidx_label, args, tmp, base_env) if args.index_phase else None
    cats = [c for c in (small, large, noidx) if c is not None]
    phases: dict[str, dict] = {}
    seeds: dict[str, dict] = {}
    pick: dict = {}
    pg_settings: dict = {}
    calls: list[tuple[str, str, str]] = []
    measured: dict = {}
    server_logs: dict[str, str] = {}
    try:
        small.create()
        for key in ("server_version", "shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "jit"):
            pg_settings[key] = small.sql(f"SHOW {key}")[0][0]
        small.manage("migrate", "--noinput", "-v", "0")
        seeds[small_label] = seed(small, args.small, args.seed)
        maint = maintenance(small)

        out = small.script("setup", SETUP_SCRIPT, {"prefix": args.prefix, "admin": f"{args.prefix}-admin"})
        pick = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT=")))
        tokens = pick.pop("tokens")
        log(f"measured user {pick['user']} ({pick['user_counts_1k'][pick['user']]} instances at {small_label}); values: "
            f"modality={pick['modality']} patient_id={pick['patient_id']} study={pick['study_uid']} year={pick['year']} "
            f"search={pick['family']}")  # fmt: skip

        large.create(template=small)
        seeds[large_label] = seed(large, args.large - args.small, args.seed + 1)
        maintenance(large)
        if noidx is not None:
            noidx.create(template=large)
            log(f"{noidx_label}: migrate studies 0002 (drops the 0003 list indexes)")
            noidx.manage("migrate", "studies", "0002", "--noinput", "-v", "0")
            maintenance(noidx)

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

        try:
            for c in cats:
                c.start()
            measured = measure(cats, calls, tokens, args)
        finally:
            for c in cats:
                if c.proc is not None:
                    server_logs[c.label] = c.proc.log_tail(20)
                c.stop_server()
        for c in cats:
            phases[c.label]["calls"] = measured["by_catalogue"][c.label]
            prof = profile(c, base_calls, tokens, admin_users)
            phases[c.label]["instances_total"] = prof["instances_total"]
            phases[c.label]["profile"] = prof
        if noidx is not None and args.keep_db:
            log(f"{noidx_label}: migrate studies (re-applies 0003)")
            noidx.manage("migrate", "studies", "--noinput", "-v", "0")
    finally:
        for c in cats:
            c.finish()
        kept = [c.pg.name for c in cats if c.pg.created]
        if args.keep_db and kept:
            log("drop them with: " + "; ".join(f"psql {args.postgres}/postgres -c 'DROP DATABASE \"{n}\" WITH (FORCE)'" for n in kept))
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------- report
    P = {k: phases.get(k) for k in (small_label, large_label, noidx_label)}
    ps, pl, pn = P[small_label], P[large_label], P[noidx_label]

    def call(phase, name, key):
        return phase["calls"][name].get(key) if phase else None

    def prof(phase, name, key):
        return phase["profile"]["calls"][name].get(key) if phase else None

    user = pick["user"]
    la, lb = measured["loadavg_before"], measured["loadavg_after"]
    machine_lines = [
        f"machine: nproc={info['nproc']} ({info['cpu_model']}), {info['platform']}; load average 1/5/15 min before "
        f"{la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f}, after {lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} (other jobs share the machine)",
        f"python {info['python']}; Django {info['packages']['Django']}, DRF {info['packages']['djangorestframework']}, "
        f"psycopg {info['packages']['psycopg']}, gunicorn {info['packages']['gunicorn']}; PostgreSQL {pg_settings.get('server_version')} "
        f"(shared_buffers {pg_settings.get('shared_buffers')}, work_mem {pg_settings.get('work_mem')}, "
        f"random_page_cost {pg_settings.get('random_page_cost')} server default, jit {pg_settings.get('jit')})",
        f"service: {server_desc(args)}; repo {info['git'].get('commit', '?')}"
        + (" (uncommitted changes in studies/ or dicomsite/)" if info["git"].get("uncommitted_changes_in_studies_or_dicomsite") else ""),
        f"command: {command}",
        f"catalogues: {args.users} users ({pick['users_with_rows']} with rows at {small_label}), {args.instances_per_series} "
        f"instances/series, {args.series_per_study} series/study; measured user {user}: {call(ps, 'list', 'count')} instances at "
        f"{small_label}, {call(pl, 'list', 'count')} at {large_label}; {maint} after each load",
        f"n={args.n} per call and catalogue after {args.warmup} warm-up requests; catalogues interleaved request by request; "
        "one client; ms, wall time per request incl. body read",
    ]
    print()
    print("\n".join(machine_lines))

    def latency_table(names: list[str], title: str) -> list[dict]:
        print()
        print(title)
        header = (f"{'call':<16} {'rows ' + small_label + '/' + large_label:>15}  {'p50 ' + small_label:>8}  {'p50 ' + large_label:>8}  "
                  f"{'ratio':>6}  {'ok?':>4}  {'p95 ' + small_label:>8}  {'p95 ' + large_label:>8}  {'p50 no0003':>10}  {'no0003/idx':>10}")  # fmt: skip
        print(header)
        print("-" * len(header))
        rows = []
        for name in names:
            s50, l50, n50 = call(ps, name, "p50_ms"), call(pl, name, "p50_ms"), call(pn, name, "p50_ms")
            ratio = l50 / s50 if s50 and l50 else None
            gain = n50 / l50 if n50 and l50 else None
            info_only = name.startswith("view_all_list")
            verdict = "info" if info_only else ("ok" if ratio is not None and ratio <= args.target else "OVER")
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
    table_small_page = (
        latency_table([f"{n}@{args.small_page}" for n in base_names], f"API, page_size={args.small_page} (same page size at both sizes):")
        if args.small_page else []
    )  # fmt: skip
    print()
    print("database side (in-process Django test Client, same calls): queries per request; sum of EXPLAIN ANALYZE "
          f"execution times of its catalogue SELECTs (median of {args.explain_runs}), ms; ORM fetch of the 50-row page as "
          "selectors.instance_list builds it, and with .defer('header') (median of 7), ms")  # fmt: skip
    hdr2 = (f"{'call':<16} {'queries':>17}  {'db ' + small_label:>8}  {'db ' + large_label:>8}  {'db no0003':>9}  "
            f"{'orm page ' + large_label:>13}  {'defer(header)':>13}")  # fmt: skip
    print(hdr2)
    print("-" * len(hdr2))
    for name in base_names:
        qs = "/".join(str(prof(p, name, "queries")) for p in (ps, pl, pn) if p)
        print(f"{name:<16} {qs:>17}  {fmt(prof(ps, name, 'explain_ms_sum'))}  {fmt(prof(pl, name, 'explain_ms_sum'))}  "
              f"{fmt(prof(pn, name, 'explain_ms_sum'), 9)}  {fmt(prof(pl, name, 'page_fetch_ms'), 13)}  "
              f"{fmt(prof(pl, name, 'page_fetch_defer_header_ms'), 13)}")  # fmt: skip
    print()
    print("admin changelists (Django test Client, session login): queries per page at " + " / ".join(phases) + "; in-process ms (median of 3)")
    admin_rows = []
    for key in (ps["profile"]["admin"] if ps else {}):
        counts = [p["profile"]["admin"][key]["queries"] for p in phases.values()]
        times = [p["profile"]["admin"][key]["wall_ms_inprocess_median3"] for p in phases.values()]
        statuses = sorted({p["profile"]["admin"][key]["status"] for p in phases.values()})
        constant = len(set(counts)) == 1
        print(f"  {key:<36} queries {' / '.join(map(str, counts)):<14} {'constant' if constant else 'CHANGES':<9} "
              f"ms {' / '.join(f'{t:.0f}' for t in times)}  HTTP {statuses}")
        admin_rows.append({"page": key, "queries": dict(zip(phases, counts)), "constant": constant, "ms": dict(zip(phases, times)), "statuses": statuses})
    print()
    print("seeding (manage.py seed_catalogue; rows/s as the command reports it, wall incl. Django start-up):")
    for k, s in seeds.items():
        print(f"  {k:<6} +{s['instances']:>7} instances: {fmt(s['command_s'], 6)} s  {s['command_rows_per_s'] or 0:>7} rows/s  "
              f"(wall {s['wall_s_incl_startup']:.1f} s)")
    print()
    print("indexes on studies_instance:")
    for k, p in phases.items():
        print(f"  {k}: {', '.join(p['indexes'])}")
    over = [r for r in table + table_small_page if r["verdict"] == "OVER" and "@" not in r["call"]]
    if over and pl:
        print()
        print(f"calls above {args.target}x at the default page: their slowest catalogue query at {large_label} (EXPLAIN ANALYZE, BUFFERS):")
        for r in over:
            sqls = [q for q in pl["profile"]["calls"][r["call"]]["sql"] if q.get("explain_ms") is not None]
            if not sqls:
                continue
            worst = max(sqls, key=lambda q: q["explain_ms"])
            print(f"\n--- {r['call']} ({r['path']}): {worst['explain_ms']:.2f} ms\n{textwrap.shorten(worst['sql'], 600)}\n{worst['plan']}")
    for k, p in phases.items():
        for name, c in p.get("calls", {}).items():
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
        "loadavg": {"before": measured.get("loadavg_before"), "after": measured.get("loadavg_after")},
        "postgres": pg_settings,
        "service_server": server_desc(args),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "picked": pick,
        "calls": [{"name": n, "path": p, "as": w} for n, p, w in calls],
        "table": table,
        "table_small_page": table_small_page,
        "admin": admin_rows,
        "seed": seeds,
        "measure_wall_s": measured.get("wall_s"),
        "phases": phases,
        "notes": notes,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    if any(c["errors"] for p in phases.values() for c in p.get("calls", {}).values()):
        out["server_log_tail"] = server_logs
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.json} ({out['elapsed_s']:.0f}s total)")
    return 1 if any(c["errors"] for p in phases.values() for c in p.get("calls", {}).values()) else 0


if __name__ == "__main__":
    sys.exit(main())
