"""Import: `manage.py import_dicom` of a CT series against Orthanc 1.10's `POST /instances`, and its peak memory.

    python -m bench run import [--n 1000] [--workers 2] [--db postgres|sqlite] [--repeat 1] [--profile] [--py-spy BIN]

The requirement it checks: import_dicom of a 1,000-file 512x512 CT series at >= 3x the files/s of Orthanc with 4
concurrent clients on the same files in the same run; the import's peak memory reported and independent of N.

1. Workload (bench.workload): the 512x512 CT, one study/series, fresh SOP UID and InstanceNumber per file, in the
   temp dir: `warmup/` (8 files), `full/` (N) and `quarter/` (hard links to the first N/4, imported for another
   owner, so they are "created", not duplicates).
2. Service: a throwaway PostgreSQL database (--db sqlite: a SQLite file), migrated, one user per import; each
   import is one subprocess `python manage.py import_dicom DIR --owner USER --workers W --progress none --report
   CSV`: a warm-up on 8 files, then N/4, then N (--repeat R: N R times). files/s = files / wall time of the whole
   subprocess (start-up included: what a user waits for); the command's own summary line is reported next to it.
   The report CSV, the catalogue and the stored files are checked (N created, N rows, N files).
3. Memory of each import's process tree (main process, pool workers, resource tracker) from /proc every
   --sample-ms: peak sum of RSS, peak sum of PSS, and the largest single VmHWM (= the ru_maxrss wait4 returns).
4. Orthanc (a fresh one per repeat): the same N files POSTed to /instances by --clients threads, each file read
   from disk per request; files/s = N / wall time from the first request to the last response (server already up).
5. Noise: the CPU the measured processes used and the machine's busy CPU (/proc/stat); the difference is reported
   as "foreign CPU" (other processes' load on a shared machine).
6. --profile: one more import of --profile-n files with --workers 1 under cProfile, top entries by cumulative time.
7. --py-spy BIN: one more N-file import under `py-spy record --subprocesses --idle`, wall time attributed to coarse
   buckets (bench.app names the app code they match). py-spy is optional: `pip install py-spy`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import pstats
import re
import resource
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import ROOT, app
from ..harness.measure import (
    Measure,
    Req,
    RssSampler,
    Stopwatch,
    describe_machine,
    describe_packages,
    describe_repo,
    foreign_share,
    machine_busy_s,
    machine_info,
    percentile,
    proc_cpu_s,
    rounded,
    run_requests,
)
from ..harness.processes import PYTHON, log, process_tree, run_group
from ..harness.report import comparison, format_table, print_report, write_result
from ..harness.stack import Django, Stack, add_stack_arguments
from ..workload import make_ct_template, write_series

SUMMARY_RE = re.compile(r"(\d+) files in ([\d.]+) s \(")
WARMUP_FILES = 8


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ncpu = os.cpu_count() or 1
    ap.add_argument("--n", type=int, default=1000, help="files in the series (default 1000)")
    ap.add_argument("--workers", type=int, default=ncpu, help=f"import_dicom --workers (default: CPU count, {ncpu})")
    ap.add_argument("--clients", type=int, default=4, help="concurrent Orthanc clients (default 4)")
    ap.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--repeat", type=int, default=1, help="measure the N import and Orthanc this many times (alternating); "
                    "the table shows the median (noise on a shared machine)")  # fmt: skip
    ap.add_argument("--sample-ms", type=float, default=50.0, help="memory sampling period (default 50 ms)")
    ap.add_argument("--profile", action="store_true", help="also cProfile an import with --workers 1")
    ap.add_argument("--profile-n", type=int, default=200)
    ap.add_argument("--profile-top", type=int, default=30)
    ap.add_argument("--py-spy", default=None, metavar="BIN", help="also record one N-file import under this py-spy binary")
    ap.add_argument("--py-spy-rate", type=int, default=100)
    ap.add_argument("--target-ratio", type=float, default=3.0)
    add_stack_arguments(ap, gunicorn=False, throttle=False)


# --------------------------------------------------------------------------- the service's imports


class BackendCpu:
    """CPU of the PostgreSQL backends serving one database (process title "postgres: ... DB ..."), sampled: the last
    value seen per backend (a backend's last sampling interval is lost when it exits)."""

    def __init__(self, db_name: str):
        self.needle = f" {db_name} ".encode()
        self.cpu_s: dict[int, float] = {}
        self.scans = 0

    def tick(self) -> None:
        if self.scans % 5 == 0:  # new connections: look for them every few samples
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) not in self.cpu_s:
                    with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as fh:
                        title = fh.read(300)
                        if title.startswith(b"postgres:") and self.needle in title:
                            self.cpu_s[int(entry)] = 0.0
        self.scans += 1
        for pid in list(self.cpu_s):
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.cpu_s[pid] = max(self.cpu_s[pid], proc_cpu_s(pid))


class Rates:
    """files/s, MB/s and files per CPU-second of one run, from its files, bytes, wall time and CPU."""

    files: int
    bytes: int
    wall_s: float

    def total_cpu_s(self) -> float:
        raise NotImplementedError

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.wall_s / 1e6 if self.wall_s else 0.0

    @property
    def files_per_cpu_s(self) -> float:
        total = self.total_cpu_s()
        return self.files / total if total else 0.0


@dataclass
class ImportRun(Rates):
    label: str
    files: int
    bytes: int
    command: list[str]
    wall_s: float = 0.0
    returncode: int | None = None
    summary: str = ""
    internal_s: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    db_cpu_s: float | None = None  # PostgreSQL backend(s) of this database, sampled (None on SQLite)
    ru_maxrss_kb: int = 0
    peak_rss_sum_kb: int = 0
    peak_pss_sum_kb: int = 0
    max_process_hwm_kb: int = 0
    processes: int = 0
    samples: int = 0
    process_hwm: list[dict] = field(default_factory=list)
    foreign_cpu_share: float | None = None
    stderr_tail: str = ""
    checks: dict = field(default_factory=dict)

    def total_cpu_s(self) -> float:
        return self.cpu_s + (self.db_cpu_s or 0.0)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(command=" ".join(self.command), files_per_s=round(self.files_per_s, 2), mb_per_s=round(self.mb_per_s, 2),
                 internal_files_per_s=round(self.files / self.internal_s, 2) if self.internal_s else None,
                 wall_s=round(self.wall_s, 3), cpu_s=round(self.cpu_s, 2), db_cpu_s=rounded(self.db_cpu_s),
                 files_per_cpu_s=round(self.files_per_cpu_s, 2) if self.files_per_cpu_s else None)  # fmt: skip
        return d


def import_command(tmp: Path, folder: Path, owner: str, workers: int, label: str) -> list[str]:
    return [PYTHON, "manage.py", app.IMPORT_COMMAND, str(folder), "--owner", owner, "--workers", str(workers),
            "--progress", "none", "--report", str(tmp / f"report-{label}.csv")]  # fmt: skip


def run_import(django: Django, label: str, folder: Path, files: int, owner: str, workers: int, sample_ms: float,
               notes: list[str]) -> ImportRun:  # fmt: skip
    """One import_dicom subprocess: wall time, wait4 rusage, sampled tree memory, then the catalogue checked."""
    tmp = django.tmp
    nbytes = sum(p.stat().st_size for p in folder.iterdir())
    cmd = import_command(tmp, folder, owner, workers, label)
    run = ImportRun(label, files, nbytes, cmd)
    out_path, err_path = tmp / f"import-{label}.out", tmp / f"import-{label}.err"
    stored_before = django.stored_files()
    backends = BackendCpu(django.database.name) if django.database.is_postgres else None
    busy0 = machine_busy_s()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        popen = subprocess.Popen(cmd, cwd=ROOT, env=django.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        sampler = RssSampler(lambda: process_tree(popen.pid), sample_ms / 1000, pss=True, on_tick=backends.tick if backends else None)
        sampler.start()
        try:
            # wait4: the exit status plus the rusage of the command and its reaped descendants (the workers):
            # ru_maxrss = max over those processes (not a sum), ru_utime/ru_stime = their total CPU.
            _, status, ru = os.wait4(popen.pid, 0)
            run.wall_s = time.perf_counter() - t0
            popen.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise
        finally:
            sampler.stop()
            if backends:
                backends.tick()
    busy1 = machine_busy_s()
    with contextlib.suppress(ProcessLookupError):  # anything left in the session (nothing should be) is ours to end
        os.killpg(popen.pid, signal.SIGKILL)
    run.returncode = popen.returncode
    run.cpu_s = ru.ru_utime + ru.ru_stime
    run.db_cpu_s = sum(backends.cpu_s.values()) if backends else None
    run.ru_maxrss_kb = ru.ru_maxrss
    run.peak_rss_sum_kb, run.peak_pss_sum_kb = sampler.peak_rss_sum_kb, sampler.peak_pss_sum_kb
    run.processes, run.samples = sampler.peak_processes, sampler.ticks
    run.max_process_hwm_kb = max([ru.ru_maxrss, *sampler.hwm_kb.values()])
    run.process_hwm = [{"pid": p, "vm_hwm_kb": k, "cmd": sampler.names.get(p, "")} for p, k in sorted(sampler.hwm_kb.items())]
    run.foreign_cpu_share = foreign_share(busy1 - busy0, run.cpu_s + (run.db_cpu_s or 0.0), run.wall_s)
    stdout = out_path.read_text(errors="replace")
    run.stderr_tail = err_path.read_text(errors="replace")[-2000:]
    run.summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if match := SUMMARY_RE.search(run.summary):
        run.internal_s = float(match.group(2))
    report = Path(cmd[-1])
    if report.exists():
        with open(report, newline="") as fh:
            for row in csv.DictReader(fh):
                run.counts[row["status"]] = run.counts.get(row["status"], 0) + 1
    if run.returncode != 0:
        raise RuntimeError(f"import_dicom ({label}) exited {run.returncode}:\n{stdout[-2000:]}\n{run.stderr_tail}")
    cat = django.call("catalogue_counts", owner=owner)
    run.checks = {"report_created": run.counts.get("created", 0), "catalogue": cat, "stored_files_added": django.stored_files() - stored_before}
    run.checks["ok"] = run.counts.get("created", 0) == files and cat["instances"] == files and run.checks["stored_files_added"] == files
    if not run.checks["ok"]:
        notes.append(f"import {label}: expected {files} created/catalogued/stored, got {run.checks} ({run.summary})")
    log(f"service {label}: {files} files in {run.wall_s:.2f} s ({run.files_per_s:.1f} files/s), peak tree RSS "
        f"{run.peak_rss_sum_kb / 1024:.0f} MiB, max process {run.max_process_hwm_kb / 1024:.0f} MiB; {run.summary}")  # fmt: skip
    return run


# --------------------------------------------------------------------------- Orthanc


@dataclass
class OrthancRun(Rates):
    files: int
    bytes: int
    clients: int
    measure: Measure | None = None
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    foreign_cpu_share: float | None = None
    peak_rss_kb: int = 0
    count_instances: int | None = None
    version: str = ""

    @property
    def wall_s(self) -> float:
        return self.measure.wall_s if self.measure else 0.0

    @property
    def errors(self) -> list[str]:
        return self.measure.errors if self.measure else []

    def total_cpu_s(self) -> float:
        return self.cpu_s + self.client_cpu_s

    def as_dict(self) -> dict:
        return {
            "files": self.files, "bytes": self.bytes, "clients": self.clients, "wall_s": round(self.wall_s, 3),
            "files_per_s": round(self.files_per_s, 2), "mb_per_s": round(self.mb_per_s, 2),
            "upload": self.measure.stats() if self.measure else None, "orthanc_cpu_s": round(self.cpu_s, 2),
            "client_cpu_s": round(self.client_cpu_s, 2), "files_per_cpu_s": round(self.files_per_cpu_s, 2) if self.files_per_cpu_s else None,
            "foreign_cpu_share": self.foreign_cpu_share, "orthanc_peak_rss_kb": self.peak_rss_kb,
            "count_instances_after": self.count_instances, "version": self.version,
        }  # fmt: skip


def check_success(status: int, data: bytes) -> str | None:
    with contextlib.suppress(ValueError):
        if json.loads(data).get("Status") == "Success":
            return None
    return f"reply {data[:200]!r}"


def run_orthanc(stack: Stack, args: argparse.Namespace, files: list[Path], nbytes: int, label: str, warmup_file: Path) -> OrthancRun:
    """A fresh Orthanc; one warm-up instance; the N files POSTed by --clients threads; CPU, memory, count checked."""
    orthanc = stack.orthanc(args.orthanc_bin, port=args.orthanc_port, label=f"orthanc-{label}")
    run = OrthancRun(len(files), nbytes, args.clients, version=orthanc.version)
    try:
        pid = orthanc.proc.pid
        with orthanc.client() as warm:
            orthanc.upload(warm, warmup_file.read_bytes())
        reqs = [Req("POST", "/instances", p.read_bytes, {"Content-Type": "application/dicom"}, check_success) for p in files]
        sampler = RssSampler(lambda: [pid], args.sample_ms / 1000)
        cpu0, self0, busy0 = proc_cpu_s(pid), resource.getrusage(resource.RUSAGE_SELF), machine_busy_s()
        sampler.start()
        run.measure = run_requests(Measure("ingest", "orthanc", "POST /instances"), orthanc.client, reqs, args.clients, ok_statuses=(200,))
        cpu1, self1, busy1 = proc_cpu_s(pid), resource.getrusage(resource.RUSAGE_SELF), machine_busy_s()
        sampler.stop()
        run.cpu_s = cpu1 - cpu0
        run.client_cpu_s = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
        run.foreign_cpu_share = foreign_share(busy1 - busy0, run.cpu_s + run.client_cpu_s, run.wall_s)
        run.peak_rss_kb = max(sampler.hwm_kb.values(), default=0)
        with orthanc.client() as c:
            run.count_instances = json.loads(c.request("GET", "/statistics")[2]).get("CountInstances")
        log(f"orthanc {label}: {run.files} files in {run.wall_s:.2f} s ({run.files_per_s:.1f} files/s), "
            f"{len(run.errors)} errors, CountInstances {run.count_instances} (incl. 1 warm-up)")  # fmt: skip
    finally:
        orthanc.proc.stop()  # now, so that an idle Orthanc does not sit beside the next import
    return run


# --------------------------------------------------------------------------- profiles


def _short(filename: str) -> str:
    return re.sub(r".*/site-packages/", "", filename.replace(str(ROOT) + "/", ""))


# Frames that only wrap the command (interpreter, manage.py, Django's command machinery) or are import-time.
_WRAPPERS = ("manage.py", "django/core/management/__init__.py", "django/core/management/base.py", "<frozen importlib",
             "django/__init__.py", "django/apps/registry.py", "django/apps/config.py")  # fmt: skip


def profile_import(django: Django, template, n: int, owner: str, top: int) -> dict:
    """cProfile one import with --workers 1 (all work in one process); top entries by cumulative time."""
    tmp = django.tmp
    folder = tmp / "profile"
    _, nbytes = write_series(template, folder, n, "import bench profile")
    prof = tmp / "import.prof"
    cmd = [PYTHON, "-m", "cProfile", "-o", str(prof), *import_command(tmp, folder, owner, 1, "profile")[1:]]
    log(f"profile: {' '.join(cmd)}")
    t0 = time.perf_counter()
    res = run_group(cmd, django.env, 900)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"profiled import failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    stats = pstats.Stats(str(prof))
    startup = sum(v[3] for k, v in stats.stats.items() if k[2] == "<module>" and k[0].endswith("manage.py"))
    file_end, func = app.IMPORT_PROFILE_HANDLE
    handle = max((v[3] for k, v in stats.stats.items() if k[0].endswith(file_end) and k[2] == func), default=0.0)

    def rows(key: int, skip_wrappers: bool) -> list[dict]:
        out = []
        for (filename, line, fn), (_cc, nc, tt, ct, _callers) in sorted(stats.stats.items(), key=lambda kv: kv[1][key], reverse=True):
            short = _short(filename)
            if skip_wrappers and (short.startswith(_WRAPPERS) or "importlib/__init__.py" in short
                                  or fn.startswith(("<built-in method builtins.exec", "<built-in method builtins.__import__"))):  # fmt: skip
                continue
            out.append({"function": f"{short}:{line}({fn})", "ncalls": nc, "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3)})
            if len(out) >= top:
                break
        return out

    return {
        "command": " ".join(cmd), "files": n, "bytes": nbytes, "wall_s": round(wall, 2), "profiled_total_s": round(startup, 2),
        "handle_cumtime_s": round(handle, 2), "summary": res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "",
        "top_cumulative": rows(3, True), "top_tottime": rows(2, False),
        "note": "cProfile inflates per-call costs (pydicom and the ORM make many small calls); --workers 1 so all work "
                "is in the profiled process; interpreter/manage.py/Django command wrappers and import-time frames are "
                "left out of top_cumulative",
    }  # fmt: skip


def attribute_stacks(path: Path, rate: int, parts: dict[str, tuple[str, list[tuple[str, str]]]], top: int = 14) -> dict:
    """py-spy raw ("collapsed") stacks attributed to buckets: parts maps a part's name to (a frame every stack of
    that part contains, [(bucket, substring)...]); each stack goes to its part's first matching bucket."""
    counts: dict[str, dict[str, int]] = {name: {} for name in parts}
    totals = dict.fromkeys(parts, 0)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        for name, (frame, buckets) in parts.items():
            if frame in stack:
                label = next((lbl for lbl, key in buckets if key in stack), "other: " + stack.split(";")[-1][:80])
                counts[name][label] = counts[name].get(label, 0) + int(count)
                totals[name] += int(count)
                break
    out: dict = {f"{name}_samples": totals[name] for name in parts}
    for name in parts:
        out[name] = [{"what": k, "samples": v, "share": round(v / totals[name], 4), "seconds": round(v / rate, 2)}
                     for k, v in sorted(counts[name].items(), key=lambda kv: -kv[1])[:top]] if totals[name] else []  # fmt: skip
    return out


def pyspy_import(django: Django, pyspy: str, folder: Path, files: int, owner: str, workers: int, rate: int) -> dict:
    """One more import (fresh owner) under `py-spy record --subprocesses --idle`: wall-time attribution."""
    raw = django.tmp / "import.pyspy.txt"
    cmd = [pyspy, "record", "--subprocesses", "--idle", "--rate", str(rate), "--format", "raw", "--output", str(raw), "--",
           *import_command(django.tmp, folder, owner, workers, "pyspy")]  # fmt: skip
    log(f"py-spy: {' '.join(cmd)}")
    t0 = time.perf_counter()
    res = run_group(cmd, django.env, 900)
    wall = time.perf_counter() - t0
    if res.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy run failed ({res.returncode}):\n{res.stdout[-1500:]}\n{res.stderr[-1500:]}")
    parts = {"main_thread": (app.IMPORT_MAIN_FRAME, app.IMPORT_MAIN_BUCKETS), "workers": (app.IMPORT_WORKER_FRAME, app.IMPORT_WORKER_BUCKETS)}
    return {"command": " ".join(cmd), "files": files, "workers": workers, "wall_s": round(wall, 2), "rate_hz": rate,
            "summary": next((x for x in reversed(res.stdout.splitlines()) if " files in " in x), ""),
            **attribute_stacks(raw, rate, parts),
            "note": "--idle: blocked time (waiting for PostgreSQL, for workers, for work) is sampled too; worker samples "
                    "are summed over the worker processes"}  # fmt: skip


# --------------------------------------------------------------------------- the scenario


def main(args: argparse.Namespace) -> int:
    n, quarter = args.n, max(1, args.n // 4)
    if n < 4 or args.workers < 1 or args.clients < 1 or args.repeat < 1:
        raise SystemExit("--n must be >= 4; --workers, --clients, --repeat >= 1")
    clock = Stopwatch()
    info = machine_info()
    load_before = os.getloadavg()
    svc_runs: dict[str, ImportRun] = {}
    full_runs: list[ImportRun] = []
    orth_runs: list[OrthancRun] = []
    profile = spy = None
    with Stack("import", keep_tmp=args.keep_tmp) as stack:
        notes, tmp = stack.notes, stack.tmp
        log(f"workload: {n} + {WARMUP_FILES} warm-up files in {tmp}")
        template = make_ct_template()
        write_series(template, tmp / "warmup", WARMUP_FILES, "import bench warmup")
        files, total_bytes = write_series(template, tmp / "full", n, "import bench full")
        (tmp / "quarter").mkdir()
        for p in files[:quarter]:
            os.link(p, tmp / "quarter" / p.name)
        log(f"workload: {n} files, {total_bytes / 1e6:.1f} MB ({total_bytes / n / 1024:.0f} KiB each)")

        django = stack.django(stack.database(args.postgres, sqlite=args.db == "sqlite", fallback=False))
        owners = ["bench_warmup", "bench_quarter", *[f"bench_full_{k}" for k in range(args.repeat)], "bench_profile", "bench_pyspy"]
        django.call("create_users", names=owners)

        def one(label: str, folder: Path, count: int, owner: str, workers: int = args.workers) -> ImportRun:
            return run_import(django, label, folder, count, owner, workers, args.sample_ms, notes)

        svc_runs["warmup"] = one("warmup", tmp / "warmup", WARMUP_FILES, "bench_warmup")
        svc_runs["quarter"] = one("quarter", tmp / "quarter", quarter, "bench_quarter")
        for k in range(args.repeat):
            full_runs.append(one(f"full_{k}", tmp / "full", n, f"bench_full_{k}"))
            svc_runs[f"full_{k}"] = full_runs[-1]
            if not args.no_orthanc:
                try:
                    orth_runs.append(run_orthanc(stack, args, files, total_bytes, str(k), tmp / "warmup" / "IM000001.dcm"))
                except Exception as exc:  # noqa: BLE001 - the service's side is still worth reporting
                    notes.append(f"Orthanc run {k} failed: {type(exc).__name__}: {exc}")
                    log(f"orthanc: {exc}")
        if args.profile:
            profile = profile_import(django, template, min(args.profile_n, n), "bench_profile", args.profile_top)
        if args.py_spy:
            try:
                spy = pyspy_import(django, args.py_spy, tmp / "full", n, "bench_pyspy", args.workers, args.py_spy_rate)
            except Exception as exc:  # noqa: BLE001 - optional diagnostics
                notes.append(f"py-spy run failed (is it installed? pip install py-spy): {exc}")
        db_desc = django.database.desc

    # ---------------- report
    for r in orth_runs:
        if r.errors:
            notes.append(f"Orthanc: {len(r.errors)} failed uploads, e.g. {r.errors[0][:200]}")
        if r.count_instances is not None and r.count_instances != n + 1:
            notes.append(f"Orthanc /statistics CountInstances {r.count_instances}, expected {n + 1} (N + 1 warm-up)")

    def med(runs: list, value: Callable) -> float | None:
        got = [v for v in (value(r) for r in runs) if v]
        return statistics.median(got) if got else None

    orth_ok = [r for r in orth_runs if not r.errors]
    rep = f" (median of {len(full_runs)})" if len(full_runs) > 1 else ""
    rows = [
        comparison("import files/s [1]" + rep, med(full_runs, lambda r: r.files_per_s), med(orth_ok, lambda r: r.files_per_s), "files/s", "higher"),
        comparison("import files/s, command's own timer [2]" + rep, med(full_runs, lambda r: r.files / r.internal_s if r.internal_s else None),
                   med(orth_ok, lambda r: r.files_per_s), "files/s", "higher"),
        comparison("import MB/s [1]" + rep, med(full_runs, lambda r: r.mb_per_s), med(orth_ok, lambda r: r.mb_per_s), "MB/s", "higher"),
        comparison("files per CPU-second [3]" + rep, med(full_runs, lambda r: r.files_per_cpu_s), med(orth_ok, lambda r: r.files_per_cpu_s),
                   "files/CPU-s", "higher"),
    ]  # fmt: skip
    ratio = rows[0]["ratio"]
    verdict = "n/a" if ratio is None else ("PASS" if ratio >= args.target_ratio else "FAIL")
    legend = [
        f"target: service >= {args.target_ratio}x orthanc files/s [1]: {verdict}",
        (f"[1] service: N / wall time of the import_dicom subprocess (start-up included), --workers {args.workers}; "
        f"orthanc: N / wall time of POST /instances with {args.clients} concurrent clients (server already up)"),
        "[2] the command's summary line (its timer starts after Django start-up)",
        "[3] N / CPU-seconds used: service = import process tree (wait4 rusage, start-up included)"
        + (" + its PostgreSQL backend (sampled)" if args.db == "postgres" else "")
        + "; orthanc = server process + the bench's client threads. Both saturate the CPUs, so on an idle machine "
        "the files/s ratio tends to this ratio; it is much less sensitive to other load than files/s",
    ]
    header = [
        describe_machine(info) + f"; load avg before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}",
        describe_packages(info, "pydicom", "numpy", "Django", "psycopg") + f"; Orthanc {orth_runs[0].version if orth_runs else 'n/a'}",
        f"service: {db_desc}; {describe_repo(info)}",
        f"workload: {n} files 512x512 CT 16-bit, {total_bytes / 1e6:.1f} MB total, one study/series, fresh SOP UIDs; N/4 = {quarter} files",
    ]
    print_report(header, rows, legend=legend)

    q = svc_runs["quarter"]
    mem_label = f"peak tree RSS, sum over processes (sampled every {args.sample_ms:g} ms)"
    mem_rows = [
        {"row": mem_label, "quarter_mib": q.peak_rss_sum_kb / 1024, "full_mib": max(r.peak_rss_sum_kb for r in full_runs) / 1024},
        {"row": "peak tree PSS, sum over processes (sampled)", "quarter_mib": q.peak_pss_sum_kb / 1024,
         "full_mib": max(r.peak_pss_sum_kb for r in full_runs) / 1024},
        {"row": "max single-process RSS (VmHWM / wait4 ru_maxrss, exact)", "quarter_mib": q.max_process_hwm_kb / 1024,
         "full_mib": max(r.max_process_hwm_kb for r in full_runs) / 1024},
    ]  # fmt: skip
    for r in mem_rows:
        r["ratio"] = rounded(r["full_mib"] / r["quarter_mib"], 3) if r["quarter_mib"] else None
        r["quarter_mib"], r["full_mib"] = rounded(r["quarter_mib"]), rounded(r["full_mib"])
    print(f"\npeak memory of import_dicom (--workers {args.workers}), MiB at N/4={quarter} and N={n}:")
    print(format_table(mem_rows, [("row", "text"), ("quarter_mib", "number"), ("full_mib", "number"), ("ratio", "ratio")]))
    orth_peak = max((r.peak_rss_kb for r in orth_runs), default=0)
    print(f"(processes in the tree at peak: N/4 {q.processes}, N {max(r.processes for r in full_runs)}; orthanc peak RSS "
          f"{orth_peak / 1024:.1f} MiB)")  # fmt: skip
    print("\nruns (wall s, files/s, CPU s of the measured processes, foreign CPU share = other processes' load):")
    for r in svc_runs.values():
        db_cpu = f" (+ db {r.db_cpu_s:.1f} s)" if r.db_cpu_s is not None else ""
        print(f"  service {r.label:<8} {r.files:>5} files  {r.wall_s:7.2f} s  {r.files_per_s:7.1f} files/s  "
              f"cpu {r.cpu_s:6.1f} s{db_cpu}  foreign {_pct(r.foreign_cpu_share)}  | {r.summary}")  # fmt: skip
    for k, r in enumerate(orth_runs):
        lat = r.measure.latencies_ms if r.measure else []
        print(f"  orthanc {k:<8} {r.files:>5} files  {r.wall_s:7.2f} s  {r.files_per_s:7.1f} files/s  "
              f"cpu {r.cpu_s:6.1f} s (+ clients {r.client_cpu_s:.1f} s)  foreign {_pct(r.foreign_cpu_share)}  "
              f"p50 {percentile(lat, .5):.1f} ms")  # fmt: skip
    print(f"\ncommands:\n  service:  {' '.join(full_runs[0].command)}  (DIR/owner/report are temp; env: DJANGO_SECRET_KEY, "
          "DATABASE_URL, DICOM_MEDIA_ROOT, DICOM_UPLOAD_TEMP_DIR, DJANGO_DEBUG=0, LOG_LEVEL=WARNING)")  # fmt: skip
    if not args.no_orthanc:
        print(f"  orthanc:  {args.orthanc_bin} CONFIG.json; POST /instances (Content-Type: application/dicom) x{n}, "
              f"{args.clients} threads with kept-alive http.client connections")  # fmt: skip
    if profile:
        print(f"\nprofile ({profile['command']}):\n  {profile['summary']}  [wall {profile['wall_s']} s under cProfile; handle() "
              f"{profile['handle_cumtime_s']} s of {profile['profiled_total_s']} s profiled]")  # fmt: skip
        print(f"  {'cumtime s':>9}  {'tottime s':>9}  {'ncalls':>8}  function   (wrappers and import-time frames left out)")
        for row in profile["top_cumulative"]:
            print(f"  {row['cumtime_s']:9.3f}  {row['tottime_s']:9.3f}  {row['ncalls']:8d}  {row['function']}")
    if spy:
        print(f"\npy-spy wall-time attribution ({spy['command']}):\n  {spy['summary']}")
        for part, key in (("main process, main thread", "main_thread"), ("worker processes (summed)", "workers")):
            print(f"  {part}:")
            for row in spy[key]:
                print(f"    {row['share'] * 100:5.1f}%  {row['seconds']:7.2f} s  {row['what']}")
    if notes:
        print("\nnotes:\n" + "\n".join(f"  - {note}" for note in notes))

    write_result(
        args.json, rows, info={**info, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        config={"n": n, "quarter": quarter, "workers": args.workers, "clients": args.clients, "db": args.db, "repeat": args.repeat,
                "sample_ms": args.sample_ms, "bytes_total": total_bytes,
                "workload": "CT_small.dcm upscaled bilinearly to 512x512 (bench.workload), one study/series, fresh SOP UIDs",
                "service_files_per_s": "files / wall time of the import_dicom subprocess (start-up included)",
                "orthanc_files_per_s": "files / wall time from first POST to last response, server already running",
                "memory": "tree RSS/PSS: max over /proc samples of the sum over the command's process tree; "
                          "max single-process RSS: max VmHWM over the tree = wait4 ru_maxrss (not a sum)"},
        legend=legend, verdict={"target_ratio": args.target_ratio, "ratio": ratio, "result": verdict}, memory_table=mem_rows,
        service_runs={k: r.as_dict() for k, r in svc_runs.items()}, orthanc_runs=[r.as_dict() for r in orth_runs],
        profile=profile, py_spy=spy, notes=notes, elapsed_s=round(clock.elapsed, 1),
    )  # fmt: skip
    bad = any(r.errors for r in orth_runs) or any(r.checks and not r.checks.get("ok") for r in svc_runs.values())
    return 1 if bad else 0


def _pct(v: float | None) -> str:
    return f"{v * 100:4.0f}%" if v is not None else " n/a"
