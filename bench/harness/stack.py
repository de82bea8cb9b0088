"""The stack a scenario measures, started and stopped as one: a throwaway PostgreSQL database, Redis, the service's
Django environment and gunicorn, Orthanc 1.10 with a temporary config (and its DICOMweb plugin when asked).

    with Stack("http", keep_tmp=args.keep_tmp) as stack:
        service = stack.service(args, throttle=args.throttle)      # database + migrate + token user + gunicorn
        orthanc = stack.orthanc(args.orthanc_bin)
        ...                                                         # measure
    # everything stopped in reverse order, the database dropped, the temp dir removed (also on SIGTERM/SIGHUP)

Everything listens on loopback on ports picked free at start, lives in one temp dir, and is stopped by process
group; nothing is left running or stored after a run, whatever way it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Self

from .httpclient import HttpClient, multipart_form
from .processes import PYTHON, Proc, free_port, log, run_checked, signals_unwind, start_process, wait_http, wait_port
from .s3 import S3, start_seaweedfs

DEFAULT_POSTGRES = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
DEFAULT_ORTHANC = "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else "Orthanc"
DEFAULT_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
RAISED_THROTTLE = "1000000/min"  # one bench user sends everything: the per-user rates would measure the throttle
# The service's settings come from the environment only; whatever the caller's shell has set for them is dropped.
_STRIPPED_PREFIXES = ("DJANGO_", "DICOM_", "GUNICORN_")
_STRIPPED = ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL")
_SERVICE_ENV = "BENCH_SERVICE_"
SERVERS = ("gunicorn", "granian")


def add_stack_arguments(ap: argparse.ArgumentParser, *, gunicorn: bool = True, orthanc: bool = True, throttle: bool = True,
                        workers: int = 2, threads: int = 4) -> None:  # fmt: skip
    """The options every scenario that starts the stack shares, defined once."""
    ap.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server for the throwaway database(s)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs, stored files)")
    if gunicorn:
        ap.add_argument("--workers", type=int, default=workers, help=f"app server workers (default {workers})")
        ap.add_argument("--threads", type=int, default=threads, help=f"threads per worker (default {threads})")
        ap.add_argument("--server", choices=SERVERS, default="gunicorn",
                        help="the WSGI server: gunicorn gthread (production's) or granian's WSGI interface (default gunicorn)")
    if throttle:
        ap.add_argument("--throttle", default=RAISED_THROTTLE, help="DICOM_THROTTLE_UPLOAD and _RENDER for the service")
    if orthanc:
        ap.add_argument("--orthanc-bin", default=DEFAULT_ORTHANC, help="the Orthanc 1.10 binary (Debian package orthanc)")
        ap.add_argument("--orthanc-port", type=int, default=None, help="default: a free port")
        ap.add_argument("--no-orthanc", action="store_true", help="measure the service only")


# --------------------------------------------------------------------------- database


class Database:
    """A throwaway PostgreSQL database (created here, dropped at the end) or a SQLite file in the temp dir."""

    def __init__(self, url: str, *, name: str = "", base_url: str = ""):
        self.url = url
        self.name = name  # PostgreSQL database name; "" for SQLite
        self.base_url = base_url
        self.created = False

    @property
    def is_postgres(self) -> bool:
        return bool(self.name)

    @property
    def desc(self) -> str:
        return f"PostgreSQL (throwaway database {self.name})" if self.is_postgres else "SQLite (file in the temp dir)"

    def _admin(self) -> Any:  # a psycopg connection, imported late (only PostgreSQL runs need it)
        import psycopg

        return psycopg.connect(self.base_url + "/postgres", autocommit=True, connect_timeout=5)

    def create(self, template: Database | None = None) -> None:
        """CREATE DATABASE, optionally as a copy of `template` (retried while autovacuum still holds the template)."""
        import psycopg

        statement = f'CREATE DATABASE "{self.name}"' + (f' TEMPLATE "{template.name}"' if template else "")
        for attempt in range(30):
            try:
                with self._admin() as conn:
                    conn.execute(statement)
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 29:
                    raise
                time.sleep(1)
        self.created = True

    def drop(self) -> None:
        if not self.created:
            return
        try:
            with self._admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False
        except Exception as exc:  # noqa: BLE001 - cleanup: report, do not mask the real error
            log(f"could not drop database {self.name}: {exc}")

    def sql(self, statement: str, fetch: bool = True) -> list[tuple] | None:
        """One statement on this database, autocommit (VACUUM, SHOW, catalogue queries)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if fetch and cur.description else None


# --------------------------------------------------------------------------- the service


class Django:
    """The service's environment (settings from env, media in the temp dir) and commands run in it."""

    def __init__(self, env: dict[str, str], media: Path, database: Database, tmp: Path):
        self.env = env
        self.media = media
        self.database = database
        self.tmp = tmp

    def manage(self, *argv: str, timeout: float = 900) -> str:
        return run_checked([PYTHON, "manage.py", *argv], self.env, timeout)

    def call(self, function: str, timeout: float = 3600, **params: Any) -> Any:
        """Run `bench.app.<function>(**params)` in a Django process on this environment; its JSON result."""
        path = self.tmp / f"call-{function}-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(params))
        out = run_checked([PYTHON, "-m", "bench.app", function, str(path)], self.env, timeout)
        return json.loads(next(line[7:] for line in reversed(out.splitlines()) if line.startswith("RESULT=")))

    def user_token(self, username: str, **flags: bool) -> str:
        """A user with a DRF token (token auth: HTTP basic would run the password hasher on every request)."""
        return self.call("create_user", username=username, **flags)["token"]

    def stored_files(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.media))


class Server:
    """A started HTTP server: its process, port, how to reach it, and a description for the report."""

    def __init__(self, proc: Proc, port: int, desc: str, headers: dict[str, str] | None = None):
        self.proc = proc
        self.port = port
        self.desc = desc
        self.headers = dict(headers or {})

    def client(self, timeout: float = 300.0) -> HttpClient:
        return HttpClient(self.port, self.headers, timeout=timeout)


class Service(Server):
    """The service under gunicorn."""

    token = ""
    django: Django

    def upload(self, client: HttpClient, content: bytes) -> str:
        """POST one file as multipart (the API's common form); the new instance's id."""
        body, ctype = multipart_form("file", "bench.dcm", content, "application/dicom")
        status, _, data, _ = client.request("POST", "/api/instances/", body=body, headers={"Content-Type": ctype})
        if status != 201:
            raise RuntimeError(f"service upload: HTTP {status}: {data[:500]!r}")
        return json.loads(data)["id"]


class Orthanc(Server):
    """Orthanc 1.10 from the Debian package, with its own config in the temp dir."""

    version = ""

    def upload(self, client: HttpClient, content: bytes) -> str:
        status, _, data, _ = client.request("POST", "/instances", body=content, headers={"Content-Type": "application/dicom"})
        if status != 200:
            raise RuntimeError(f"orthanc upload: HTTP {status}: {data[:500]!r}")
        reply = json.loads(data)
        if reply.get("Status") not in ("Success", None):
            raise RuntimeError(f"orthanc upload: {reply}")
        return reply["ID"]


def upload_copies(server: Service | Orthanc, copy_bytes: Any, count: int) -> list[str]:
    """`count` uploads of fresh copies (`copy_bytes()` makes one) on one connection; their ids."""
    with server.client() as c:
        return [server.upload(c, copy_bytes()) for _ in range(count)]


# --------------------------------------------------------------------------- the stack


class Stack:
    """Everything one scenario starts, in one temp dir, stopped in reverse order when the `with` block ends."""

    def __init__(self, name: str, keep_tmp: bool = False, tmp_parent: str | None = None):
        self.name = name
        self.keep_tmp = keep_tmp
        self.tmp_parent = tmp_parent
        self.notes: list[str] = []
        self.procs: list[Proc] = []
        self._exit = contextlib.ExitStack()
        self.tmp = Path()

    def __enter__(self) -> Self:
        self._exit.enter_context(signals_unwind())
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-", dir=self.tmp_parent))
        self._exit.callback(self._remove_tmp)
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _remove_tmp(self) -> None:
        if self.keep_tmp:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tails(self) -> dict[str, str]:
        """The last lines of every server's log (kept when it stopped), for a result file when requests failed."""
        return {p.name: p.log_tail() for p in self.procs}

    def _process(self, name: str, cmd: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
        kwargs = {"cwd": cwd} if cwd is not None else {}
        proc = start_process(name, cmd, self.tmp / f"{name}.log", env=env, **kwargs)
        self.procs.append(proc)
        self._exit.callback(proc.stop)
        return proc

    # ---- database and cache

    def database(self, postgres_url: str = DEFAULT_POSTGRES, *, sqlite: bool = False, fallback: bool = True,
                 label: str = "", template: Database | None = None, keep: bool = False) -> Database:  # fmt: skip
        """A throwaway PostgreSQL database (a copy of `template` if given), dropped at the end unless `keep`.

        With `sqlite`, or when PostgreSQL is unreachable and `fallback`, a SQLite file in the temp dir (with a note).
        """
        if not sqlite:
            base = postgres_url.rstrip("/")
            slug = re.sub(r"[^a-z0-9]+", "_", f"{self.name}_{label}".lower()).strip("_")
            name = f"bench_{slug}_{os.getpid()}_{secrets.token_hex(3)}"
            db = Database(f"{base}/{name}", name=name, base_url=base)
            try:
                db.create(template)
            except Exception as exc:  # reported, then SQLite (or re-raised)
                if not fallback or template is not None:
                    raise
                self.notes.append(f"PostgreSQL unreachable ({type(exc).__name__}: {exc}); the service ran on SQLite")
            else:
                if keep:
                    self._exit.callback(log, f"kept database: psql {db.url}  (drop: DROP DATABASE \"{db.name}\" WITH (FORCE))")
                else:
                    self._exit.callback(db.drop)
                log(f"database {db.name}" + (f" (copy of {template.name})" if template else ""))
                return db
        return Database(f"sqlite:///{self.tmp / (label or 'service')}.sqlite3")

    def redis(self) -> str:
        """A throwaway redis-server (no persistence) as the service's shared cache; its REDIS_URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found (Debian package redis-server)")
        port = free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--dir", str(self.tmp)]  # fmt: skip
        proc = self._process("redis", cmd, cwd=self.tmp)
        wait_port(proc, port, b"PING\r\n", b"+PONG")
        log(f"redis on port {port}")
        return f"redis://127.0.0.1:{port}/0"

    def s3(self, **kwargs: Any) -> S3:
        """A throwaway SeaweedFS (S3 API) with its data in the temp dir, stopped at the end (see harness.s3)."""
        server = start_seaweedfs(self.tmp / "seaweedfs", **kwargs)
        self.procs.append(server.proc)
        self._exit.callback(server.stop)
        return server

    # ---- the service

    def django(self, database: Database, *, throttle: str | None = None, redis_url: str | None = None,
               env: Mapping[str, str] | None = None, media: Path | None = None, migrate: bool = True) -> Django:  # fmt: skip
        """The service's environment on `database` (DEBUG off, media and upload staging in the temp dir), migrated."""
        if media is None:
            media = self.tmp / "media"
        media.mkdir(parents=True, exist_ok=True)
        staging = self.tmp / "upload-tmp"
        staging.mkdir(exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_PREFIXES) and k not in _STRIPPED}
        full = {
            **inherited,
            "DJANGO_SECRET_KEY": f"bench-{self.name}-" + secrets.token_hex(16),
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": database.url,
            "DICOM_MEDIA_ROOT": str(media),
            "DICOM_UPLOAD_TEMP_DIR": str(staging),  # same filesystem as media: storing can be a rename
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        if throttle:
            full["DICOM_THROTTLE_UPLOAD"] = full["DICOM_THROTTLE_RENDER"] = throttle
        if redis_url:
            full["REDIS_URL"] = redis_url
        # A setting to compare runs with: BENCH_SERVICE_DICOM_AUDIT_FLUSH_MS=0 sets DICOM_AUDIT_FLUSH_MS=0 for the service.
        full.update({k.removeprefix(_SERVICE_ENV): v for k, v in os.environ.items() if k.startswith(_SERVICE_ENV)})
        full.update(env or {})
        django = Django(full, media, database, self.tmp)
        if migrate:
            django.manage("migrate", "--noinput", "-v", "0")
        return django

    def gunicorn(self, django: Django, *, workers: int = 2, threads: int = 4, conf_file: bool = False,
                 env: Mapping[str, str] | None = None, label: str = "service", token: str = "",
                 control_socket: bool = True, server: str = "gunicorn") -> Service:  # fmt: skip
        """gunicorn (or granian: server="granian") running dicomsite.wsgi on a free port; waits for /healthz.

        conf_file=False: the worker layout on the command line (`--workers W --threads T`, gthread when T > 1),
        timeouts as before; conf_file=True: production's `-c gunicorn.conf.py`, configured by GUNICORN_* (`env`).
        """
        port = free_port()
        version = metadata.version("gunicorn")
        full_env = dict(django.env)
        if conf_file:
            full_env.update({"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": str(workers), "GUNICORN_THREADS": str(threads)})
            full_env.update(env or {})
            cmd = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "dicomsite.wsgi"]
            desc = f"gunicorn {version} -c gunicorn.conf.py, {workers} workers x {threads} threads (gthread)"
        else:
            full_env.update(env or {})
            cmd = [PYTHON, "-m", "gunicorn", "dicomsite.wsgi:application", "--bind", f"127.0.0.1:{port}",
                   "--workers", str(workers), "--threads", str(threads), "--timeout", "300", "--graceful-timeout", "5",
                   "--log-level", "warning"]  # fmt: skip
            desc = f"gunicorn {version} --workers {workers} --threads {threads} ({'gthread' if threads > 1 else 'sync'} worker)"
        if not control_socket:
            cmd.append("--no-control-socket")
        if server == "granian":  # the same app and worker layout under granian's WSGI interface (Rust HTTP, a thread pool)
            version = metadata.version("granian")
            full_env = dict(django.env) | dict(env or {})
            cmd = [PYTHON, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(workers), "--blocking-threads", str(threads), "--log-level", "warning",
                   "--no-access-log", "dicomsite.wsgi:application"]  # fmt: skip
            desc = f"granian {version} --interface wsgi --workers {workers} --blocking-threads {threads}"
        log(f"{label}: starting {desc} on port {port}")
        proc = self._process(label, cmd, env=full_env)
        wait_http(proc, port, "/healthz")
        headers = {"Authorization": f"Token {token}"} if token else {}
        service = Service(proc, port, desc, headers)
        service.token, service.django = token, django
        return service

    def service(self, args: argparse.Namespace, *, throttle: str | None = None, redis_url: str | None = None,
                conf_file: bool = False, env: Mapping[str, str] | None = None, username: str = "bench") -> Service:  # fmt: skip
        """The usual service: a throwaway database, migrated, one user with a token, gunicorn with --workers/--threads."""
        django = self.django(self.database(args.postgres), throttle=throttle, redis_url=redis_url)
        token = django.user_token(username)
        return self.gunicorn(django, workers=args.workers, threads=args.threads, conf_file=conf_file, env=env, token=token,
                             server=getattr(args, "server", "gunicorn"))

    # ---- Orthanc

    def orthanc(self, binary: str = DEFAULT_ORTHANC, *, port: int | None = None, plugins: list[str] | None = None,
                config: dict | None = None, label: str = "orthanc") -> Orthanc:  # fmt: skip
        """Orthanc with a JSON config in the temp dir: DICOM server off, no auth, loopback only, no storage compression,
        SQLite index and storage in the temp dir; `plugins` (shared-library paths) and `config` (extra top-level keys,
        e.g. {"DicomWeb": {...}}) are empty by default."""
        found = shutil.which(binary)
        if found is None:
            raise FileNotFoundError(f"Orthanc binary '{binary}' not found (Debian package orthanc)")
        home = self.tmp / label
        storage = home / "db"
        storage.mkdir(parents=True)
        port = free_port(port)
        settings = {
            "Name": f"bench-{self.name}",
            "HttpPort": port,
            "HttpServerEnabled": True,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": list(plugins or []),
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "LuaScripts": [],
            **(config or {}),
        }
        config_path = home / "orthanc.json"
        config_path.write_text(json.dumps(settings, indent=2))
        log(f"{label}: starting {found} on port {port}")
        proc = self._process(label, [found, str(config_path)], cwd=home)
        wait_http(proc, port, "/system")
        orthanc = Orthanc(proc, port, f"Orthanc ({found})")
        with orthanc.client() as c:
            orthanc.version = json.loads(c.request("GET", "/system")[2]).get("Version", "?")
        orthanc.desc = f"Orthanc {orthanc.version}"
        return orthanc

    def optional_orthanc(self, args: argparse.Namespace, **kwargs: Any) -> Orthanc | None:
        """Orthanc unless --no-orthanc; if it cannot start, None and a note (the Orthanc columns stay empty)."""
        if getattr(args, "no_orthanc", False):
            return None
        try:
            return self.orthanc(args.orthanc_bin, port=args.orthanc_port, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the service's side is still worth measuring
            self.notes.append(f"Orthanc could not be started ({exc}); Orthanc columns are empty")
            log(f"orthanc: {exc}")
            return None
