"""Every place bench reaches into the app, besides seeding (bench/seed.py): functions that run inside a Django
process on a scenario's database, the rendering module png_levels times, and the names of app code that the
profiling scenarios group py-spy samples by.

Kept in one module on purpose: when the app renames a module or function, this file (and bench/seed.py) is what
to fix. A scenario never imports app code; it runs `python -m bench.app FUNCTION PARAMS.json` in the service's
environment (through harness.stack.Django.call), which prints `RESULT=<json>`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------- app code named by string

# Tables the scale scenario explains (EXPLAIN ANALYZE) and measures, and the migration that adds the list indexes.
CATALOGUE_TABLES = ("studies_instance", "studies_study", "studies_series")
LIST_INDEX_MIGRATION = ("studies", "0003_list_indexes", "0002")  # app, migration, the one before it
ADMIN_PATHS = ["/admin/studies/instance/", "/admin/studies/study/", "/admin/studies/series/"]
IMPORT_COMMAND = "import_dicom"  # manage.py command the import scenario times

# py-spy stacks of the gunicorn workers (profile scenario): (group, substrings of a frame), innermost frame first.
HTTP_GROUPS = [
    ("pydicom: header read and value conversion", ("pydicom/",)),
    ("dicomcore.parsing: DICOM JSON, summary", ("dicomcore/parsing.py",)),
    ("hashing and file copies", ("hashlib", "shutil.py", "studies/uploads.py", "tempfile.py")),
    ("psycopg: driver, adapting parameters", ("psycopg/",)),
    ("json encode/decode", ("/json/",)),
    ("Django ORM: query building, model instances", ("django/db/",)),
    ("DRF: dispatch, serializers, rendering", ("rest_framework/",)),
    ("Django: request, middleware, URL resolving", ("django/",)),
    ("gunicorn: HTTP parsing, socket I/O", ("gunicorn/",)),
    ("our code (studies/, dicomcore/)", ("studies/", "dicomcore/")),
]
# Inclusive: a sample counts here when any frame of its stack matches.
HTTP_INCLUSIVE = [
    ("audit event write (studies.audit.events.write_event)", "write_event (studies/audit/events.py"),
    ("token check (authenticate_credentials)", "authenticate_credentials"),
    ("ingest service (studies.services.ingest)", "ingest (studies/services.py"),
    ("  parse_dicom", "parse_dicom (dicomcore/parsing.py"),
    ("  duplicate check (_existing)", "_existing (studies/services.py"),
    ("  study/series/instance rows (_catalogue)", "_catalogue (studies/services.py"),
    ("  file into storage (_save_checked)", "_save_checked (studies/services.py"),
    ("upload body parsing (DicomParser / staging)", "studies/api/parsers.py"),
    ("response serializer (.data)", "data (rest_framework/serializers.py"),
    ("tag read (visible_header)", "visible_header (studies/selectors.py"),
]
# py-spy stacks of import_dicom (import scenario, --py-spy): the main thread, and the pool's workers.
IMPORT_MAIN_FRAME = "Command.handle (studies/management/commands/import_dicom.py"
IMPORT_WORKER_FRAME = "_process_worker (concurrent/futures/process.py"
IMPORT_MAIN_BUCKETS = [
    ("catalogue: duplicate/conflict lookup (services._existing)", "_existing (studies/services.py"),
    ("catalogue: Study/Series lookup or create (services._study_and_series)", "_study_and_series (studies/services.py"),
    ("catalogue: Instance INSERT", "bulk_create (django/db/models/query.py"),
    ("catalogue: COMMIT (transaction.atomic exit)", "__exit__ (django/db/transaction.py"),
    ("catalogue: storage save (copy, zero preamble, re-hash)", "save (django/core/files/storage"),
    ("catalogue: other (services.ingest_batch)", "ingest_batch (studies/services.py"),
    ("waiting for a worker's result", "_result (studies/importer.py"),
    ("submitting to the pool", "submit (concurrent/futures/process.py"),
    ("walking the folder", "walk (dicomcore/sources.py"),
    ("pool shutdown (joining workers)", "shutdown (concurrent/futures/process.py"),
    ("Django/app start-up", "_find_and_load"),
]
IMPORT_WORKER_BUCKETS = [
    ("prepare: header to DICOM JSON (parsing.dataset_to_json)", "dataset_to_json (dicomcore/parsing.py"),
    ("prepare: dcmread of the header", "_read_header (dicomcore/parsing.py"),
    ("prepare: SHA-256", "update (dicomcore/parsing.py"),
    ("prepare: other", "prepare (dicomcore/sources.py"),
    ("sending results back (pickle, pipe)", "_sendback_result"),
    ("idle: waiting for work (call queue)", "Queue.get (multiprocessing/queues.py"),
    ("worker start-up (imports)", "_find_and_load"),
]
# cProfile of import_dicom: frames that only wrap the command (interpreter, manage.py, Django's command machinery).
IMPORT_PROFILE_HANDLE = ("import_dicom.py", "handle")


def setup_django() -> None:
    """The service's settings (dicomsite.settings, configured by the environment), then django.setup()."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dicomsite.settings")
    django.setup()


# ---------------------------------------------------------------------------- outside Django


def png_frames() -> dict:
    """Typical rendered frames as PIL images, made by the app's own renderer: an 8-bit 512x512 CT, a 16-bit one
    and an 8-bit 256 px thumbnail (what png_levels encodes at each zlib level)."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    from dicomcore import rendering

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    big = np.kron(ds.pixel_array, np.ones((4, 4), dtype=ds.pixel_array.dtype))  # 512x512 CT
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ct8 = rendering.to_display(big, ds, rendering.RenderOptions())
    return {
        "CT 512 8-bit": ct8,
        "CT 512 16-bit": rendering.to_display(big, ds, rendering.RenderOptions(bits=16)),
        "thumb 256 8-bit": rendering.resize(ct8, rendering.RenderOptions(size=256)),
    }


# ---------------------------------------------------------------------------- inside Django (python -m bench.app)


def create_user(username: str, token: bool = True, staff: bool = False) -> dict:
    """A user (random password) with a DRF token."""
    import secrets

    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user(username, password=secrets.token_urlsafe(16), is_staff=staff)
    return {"token": Token.objects.create(user=user).key if token else None}


def session_for(username: str) -> dict:
    """A logged-in session for a user (made staff; created when missing), as the admin's login form gives a browser:
    its key."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    user, _ = get_user_model().objects.update_or_create(username=username, defaults={"is_staff": True})
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return {"key": session.session_key}


def create_users(names: list[str]) -> dict:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    for name in names:
        User.objects.create_user(name)
    return {"created": len(names)}


def catalogue_counts(owner: str) -> dict:
    """Instances, series and studies of one owner (the import scenario checks its import landed whole)."""
    from studies.models import Instance, Series, Study

    return {
        "instances": Instance.objects.filter(owner__username=owner).count(),
        "series": Series.objects.filter(owner__username=owner).count(),
        "studies": Study.objects.filter(owner__username=owner).count(),
    }


def scale_pick(prefix: str, admin: str) -> dict:
    """Pick the measured user of a seeded catalogue (row count closest to the mean) and filter values from its rows
    (most common modality, study year, family name; one study's patient ID, another's UID); make it staff and give
    it and a superuser tokens, before the catalogue is copied, so they are the same in every copy."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from studies.models import Instance, Study

    User = get_user_model()
    users = list(User.objects.filter(username__startswith=prefix + "-user-").order_by("username"))
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
    superuser = User.objects.filter(username=admin).first() or User.objects.create_superuser(admin, None, None)
    return {
        "user": user.username,
        "user_counts_1k": counts,
        "users_with_rows": len(with_rows),
        "modality": modality,
        "patient_id": studies[0].patient_id,
        "study_uid": studies[-1].study_instance_uid,
        "accession": studies[-1].accession_number,
        "year": year,
        "family": family,
        "user_studies_1k": len(studies),
        "tokens": {"user": Token.objects.get_or_create(user=user)[0].key, "admin": Token.objects.get_or_create(user=superuser)[0].key},
    }


def _explain(sql: str, runs: int) -> tuple[float | None, str]:
    from django.db import connection

    times, plan = [], ""
    with connection.cursor() as cur:
        for _ in range(runs):
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            lines = [r[0] for r in cur.fetchall()]
            times += [float(line.split(":", 1)[1].split()[0]) for line in lines if line.startswith("Execution Time:")]
            plan = "\n".join(lines)
    return (statistics.median(times) if times else None), plan


def _profile_request(client: Any, path: str, runs: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(path)  # warm: permission caches, buffers
    with CaptureQueriesContext(connection) as cq:
        start = time.perf_counter()
        response = client.get(path)
        wall = (time.perf_counter() - start) * 1000
    queries = []
    for q in cq.captured_queries:
        sql = q["sql"]
        entry: dict[str, Any] = {"sql": sql, "ms": round(float(q["time"]) * 1000, 3)}
        if runs and sql.lstrip().upper().startswith("SELECT") and any(t in sql for t in CATALOGUE_TABLES):
            entry["explain_ms"], entry["plan"] = _explain(sql, runs)
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


def _header_cost(user: Any, path: str, runs: int = 7) -> dict:
    """ORM fetch of the page's 50 rows as selectors.instance_list builds it, and the same with the header deferred."""
    import datetime as dt
    from urllib.parse import parse_qsl, urlsplit

    from studies import selectors

    params: dict[str, Any] = dict(parse_qsl(urlsplit(path).query))
    for key in ("study_date_from", "study_date_to"):
        if key in params:
            params[key] = dt.date.fromisoformat(params[key])
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for defer in (False, True):
            start = time.perf_counter()
            queryset = selectors.instance_list(user=user, **params)
            list((queryset.defer("header") if defer else queryset)[:50])
            times[defer].append((time.perf_counter() - start) * 1000)
    return {"page_fetch_ms": round(statistics.median(times[False]), 2), "page_fetch_defer_header_ms": round(statistics.median(times[True]), 2)}


def scale_profile(calls: list[list[str]], tokens: dict[str, str], explain_runs: int, admin_users: dict[str, str]) -> dict:
    """Every call once more in-process (Django test Client): its SQL, query count and EXPLAIN ANALYZE; the ORM cost
    of the list page with and without the header; the admin changelists' query counts."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from studies.models import Instance

    out: dict[str, Any] = {"calls": {}, "admin": {}, "instances_total": Instance.objects.count()}
    for name, path, who in calls:
        out["calls"][name] = _profile_request(Client(headers={"Authorization": "Token " + tokens[who]}), path, explain_runs)
        if path.startswith("/api/instances/"):
            out["calls"][name].update(_header_cost(Token.objects.get(key=tokens[who]).user, path))
    User = get_user_model()
    for who, username in admin_users.items():
        client = Client()
        client.force_login(User.objects.get(username=username))
        for path in ADMIN_PATHS:
            res = _profile_request(client, path, 0)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                client.get(path)
                times.append((time.perf_counter() - start) * 1000)
            res["wall_ms_inprocess_median3"] = round(statistics.median(times), 2)
            res["sql"] = sorted(res["sql"], key=lambda q: -q["ms"])[:5]  # the slowest few
            out["admin"][f"{who} {path}"] = res
    return out


FUNCTIONS = {f.__name__: f for f in (create_user, create_users, session_for, catalogue_counts, scale_pick, scale_profile)}


def main(argv: list[str]) -> int:
    """`python -m bench.app FUNCTION PARAMS.json`: set Django up, call it, print RESULT=<json>."""
    if len(argv) != 2 or argv[0] not in FUNCTIONS:
        print(f"usage: python -m bench.app {{{','.join(FUNCTIONS)}}} PARAMS.json", file=sys.stderr)
        return 2
    setup_django()
    result = FUNCTIONS[argv[0]](**json.loads(Path(argv[1]).read_text()))
    print("RESULT=" + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
