#!/usr/bin/env python3
"""Import benchmark: `manage.py import_dicom` against a throwaway Orthanc's `POST /instances`.

    .venv/bin/python bench/import_bench.py --n 1000 [--workers 2] [--db postgres|sqlite] [--repeat 1]
                                           [--profile] [--py-spy /path/to/py-spy] [--json bench/results/import.json]

The requirement it checks: import_dicom of a 1,000-file 512x512 CT series at >= 3x the files/s of Orthanc
1.10's POST /instances with 4 concurrent clients on the same files in the same run; the import's peak
memory reported and independent of the number of files.

What it does, end to end (everything it starts is stopped in a `finally`; the throwaway database is dropped
and the temp dir removed unless --keep-tmp):

1. Workload, made with pydicom (helpers imported from render_bench.py): CT_small.dcm upscaled bilinearly to
   512x512 signed 16-bit with light seeded noise, Explicit VR Little Endian, ~514 KB per file. One fresh
   Study/Series UID for the set, a fresh SOP Instance UID (and InstanceNumber) per file. Three sets in the
   temp dir: `warmup/` (8 files), `full/` (N files) and `quarter/` (hard links to the first N/4 files of
   `full/`, imported for another owner, so they are "created", not duplicates).
2. Service: a throwaway PostgreSQL database (`--db sqlite`: a SQLite file in the temp dir), `manage.py
   migrate`, one user per import (`bench_warmup`, `bench_quarter`, `bench_full[_k]`), DICOM_MEDIA_ROOT and
   DICOM_UPLOAD_TEMP_DIR in the temp dir, DJANGO_DEBUG=0, LOG_LEVEL=WARNING. Each import is one subprocess:
       .venv/bin/python manage.py import_dicom DIR --owner USER --workers W --progress none --report CSV
   Runs: a warm-up on 8 files (pyc files, page cache of the venv), then N/4, then N (--repeat R: N R times,
   each for a fresh owner). files/s = files / wall time of the whole subprocess (interpreter and Django
   start-up, worker spawn and shutdown included: what a user waits for); the command's own summary line
   (timer started after start-up) is reported next to it. The --report CSV and the catalogue are checked
   (N "created" rows, N Instance rows, N stored files).
3. Memory of each import (the command's process tree: the main process, its spawn workers and the
   multiprocessing resource tracker), from /proc, sampled every 50 ms (--sample-ms):
   - "peak tree RSS": the maximum over samples of the sum of VmRSS over the tree (counts shared pages, e.g.
     the interpreter and numpy mapped in each worker, once per process: an upper bound of real use);
   - "peak tree PSS": the same with Pss from smaps_rollup (shared pages split between their users);
   - "max process RSS": the largest VmHWM (kernel high-water mark, exact, not sampled) of any single process of
     the tree; it equals the ru_maxrss that wait4() returns for the command (max of it and its reaped
     descendants, *not* a sum), which is also recorded.
   Memory independence: the same figures for N/4 and N side by side, and their ratio.
4. Orthanc 1.10 (/usr/sbin/Orthanc): own JSON config in the temp dir (SQLite index and storage in the temp
   dir, DICOM server off, no plugins, no auth, loopback), the same N files POSTed to /instances with
   --clients (4) threads, each on a kept-alive http.client connection, each reading its file from disk per
   request. files/s = N / wall time from the first request to the last response (server already up: this
   favours Orthanc slightly versus the service's start-up-included figure). Every reply must be "Success",
   and /statistics must count N instances. A fresh Orthanc (new storage) for each --repeat.
5. Noise: the machine may run other work (tests) at the same time. For each measurement the script records
   the CPU the measured processes used (user+sys) and the whole machine's busy CPU from /proc/stat; the
   difference, as a share of wall time x CPUs, is reported as "foreign CPU" (other processes' load).
6. --profile: one more import of 200 files (--profile-n) with --workers 1 under cProfile
   (`python -m cProfile -o FILE manage.py import_dicom ...`, fresh owner); the top entries by cumulative time
   are printed and stored in the JSON.
7. --py-spy BIN: one more N-file import (fresh owner, same --workers) under `py-spy record --subprocesses --idle`;
   wall time of the main process's main thread and of the workers is attributed to coarse buckets (catalogue
   queries, commit, storage, waiting for workers; header JSON, dcmread, hashing, idle).

Prints a table (service vs Orthanc, ratio = service/orthanc files/s, higher is better; peak memory at N/4
and N), machine info and the exact commands; writes JSON to bench/results/import.json.
Standard library plus the venv's packages (pydicom, numpy, psycopg) only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import json
import os
import pstats
import queue
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_bench as rb  # noqa: E402  (helpers: workload, processes, Postgres, Orthanc, machine info)

ROOT = rb.ROOT
VENV_PYTHON = rb.VENV_PYTHON
log = rb.log
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------- workload


class SeriesWorkload(rb.Workload):
    """render_bench's Workload (fresh Study/Series per set, fresh SOP per copy) plus an InstanceNumber."""

    def __init__(self, template, label: str):
        super().__init__(template, label)
        self.count = 0

    def copy_bytes(self) -> bytes:
        self.count += 1
        self.template.InstanceNumber = self.count
        self.template.SeriesNumber = 1
        self.template.StudyDescription = "import bench"
        return super().copy_bytes()


def write_set(template, folder: Path, n: int, label: str) -> tuple[list[Path], int]:
    folder.mkdir(parents=True)
    wl = SeriesWorkload(template, label)
    files, total = [], 0
    for i in range(n):
        data = wl.copy_bytes()
        p = folder / f"IM{i + 1:06d}.dcm"
        p.write_bytes(data)
        files.append(p)
        total += len(data)
    return files, total


# --------------------------------------------------------------------------- /proc helpers


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    out.extend(int(x) for x in fh.read().split())
    except OSError:
        pass
    return out


def process_tree(root: int) -> list[int]:
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(_children(pid))
    return seen


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0])
    return out


def _pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    return ""


def proc_cpu_s(pid: int) -> float:
    """utime+stime of one live process (not its children), seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent busy (all CPUs) since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    steal = parts[7] if len(parts) > 7 else 0
    guest = sum(parts[8:10]) if len(parts) > 9 else 0  # already included in user/nice
    return (sum(parts) - idle - steal - guest) / CLK_TCK


class TreeSampler(threading.Thread):
    """Samples a process tree's memory every `interval` s until stopped; keeps the maxima."""

    def __init__(self, root: int, interval: float, db_name: str | None = None):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        # PostgreSQL backends serving this database (process title "postgres: ... USER DB HOST(PORT) state"):
        # their CPU is sampled too (last value seen per backend; a backend's last <interval> is lost at exit).
        self.db_name = db_name
        self.backend_cpu_s: dict[int, float] = {}
        self._backend_scan = 0
        self.stop_event = threading.Event()
        self.samples = 0
        self.peak_rss_sum_kb = 0
        self.peak_pss_sum_kb = 0
        self.peak_processes = 0
        self.hwm_kb: dict[int, int] = {}  # pid -> VmHWM (kernel high-water mark of that process)
        self.names: dict[int, str] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self) -> None:
        rss_sum = pss_sum = n = 0
        for pid in process_tree(self.root):
            try:
                st = _status_kb(pid)
                if "VmRSS" not in st:  # zombie / kernel thread
                    continue
                rss_sum += st["VmRSS"]
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), st.get("VmHWM", 0))
                with contextlib.suppress(OSError):
                    pss_sum += _pss_kb(pid)
                if pid not in self.names:
                    self.names[pid] = _cmdline(pid)[:160]
                n += 1
            except (OSError, ValueError):
                continue
        if self.db_name:
            self._sample_backends()
        self.samples += 1
        self.peak_rss_sum_kb = max(self.peak_rss_sum_kb, rss_sum)
        self.peak_pss_sum_kb = max(self.peak_pss_sum_kb, pss_sum)
        self.peak_processes = max(self.peak_processes, n)

    def _sample_backends(self) -> None:
        if self._backend_scan % 5 == 0:  # new connections: look for them every few samples
            needle = f" {self.db_name} ".encode()
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) not in self.backend_cpu_s:
                    with contextlib.suppress(OSError):
                        with open(f"/proc/{entry}/cmdline", "rb") as fh:
                            title = fh.read(300)
                        if title.startswith(b"postgres:") and needle in title:
                            self.backend_cpu_s[int(entry)] = 0.0
        self._backend_scan += 1
        for pid in list(self.backend_cpu_s):
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.backend_cpu_s[pid] = max(self.backend_cpu_s[pid], proc_cpu_s(pid))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        if self.db_name:
            self._sample_backends()


# --------------------------------------------------------------------------- service


@dataclass
class ImportRun:
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

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.wall_s / 1e6 if self.wall_s else 0.0

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["command"] = " ".join(self.command)
        d["files_per_s"] = round(self.files_per_s, 2)
        d["mb_per_s"] = round(self.mb_per_s, 2)
        d["internal_files_per_s"] = round(self.files / self.internal_s, 2) if self.internal_s else None
        d["wall_s"] = round(self.wall_s, 3)
        d["cpu_s"] = round(self.cpu_s, 2)
        d["db_cpu_s"] = round(self.db_cpu_s, 2) if self.db_cpu_s is not None else None
        d["files_per_cpu_s"] = round(self.files_per_cpu_s, 2) if self.files_per_cpu_s else None
        return d

    @property
    def files_per_cpu_s(self) -> float:
        total = self.cpu_s + (self.db_cpu_s or 0.0)
        return self.files / total if total else 0.0


SUMMARY_RE = re.compile(r"(\d+) files in ([\d.]+) s \(")


class Service:
    def __init__(self, tmp: Path, args, notes: list[str]):
        self.tmp = tmp
        self.args = args
        self.notes = notes
        self.pg: rb.Postgres | None = None
        self.env: dict[str, str] = {}
        self.media = tmp / "service-media"
        self.db_desc = ""

    def setup(self) -> None:
        self.media.mkdir()
        (self.tmp / "service-upload-tmp").mkdir()
        if self.args.db == "postgres":
            self.pg = rb.Postgres(self.args.postgres)
            self.pg.name = f"import_bench_{os.getpid()}_{secrets.token_hex(3)}"
            url = self.pg.create()
            self.db_desc = f"PostgreSQL (throwaway database {self.pg.name})"
        else:
            url = f"sqlite:///{self.tmp / 'service.sqlite3'}"
            self.db_desc = "SQLite (file in the temp dir)"
        log(f"service: {self.db_desc}")
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "DICOM_")) and k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL")
        }
        self.env = {
            **inherited,
            "DJANGO_SECRET_KEY": "import-bench-" + secrets.token_hex(16),
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": url,
            "DICOM_MEDIA_ROOT": str(self.media),
            "DICOM_UPLOAD_TEMP_DIR": str(self.tmp / "service-upload-tmp"),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.manage("migrate", "--noinput", "-v", "0")

    def manage(self, *argv: str) -> str:
        res = subprocess.run(
            [str(VENV_PYTHON), "manage.py", *argv], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600
        )
        if res.returncode != 0:
            raise RuntimeError(f"manage.py {argv[0]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res.stdout

    def create_users(self, names: list[str]) -> None:
        script = "from django.contrib.auth import get_user_model; U = get_user_model(); " + "; ".join(
            f"U.objects.create_user({n!r})" for n in names
        )
        self.manage("shell", "-c", script)

    def catalogue_counts(self, owner: str) -> dict:
        script = (
            "from studies.models import Instance, Series, Study; "
            f"print('COUNTS', Instance.objects.filter(owner__username={owner!r}).count(), "
            f"Series.objects.filter(owner__username={owner!r}).count(), Study.objects.filter(owner__username={owner!r}).count())"
        )
        out = self.manage("shell", "-c", script)
        line = next(x for x in out.splitlines() if x.startswith("COUNTS"))
        i, se, st = (int(v) for v in line.split()[1:])
        return {"instances": i, "series": se, "studies": st}

    def stored_files(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.media))

    def import_command(self, folder: Path, owner: str, workers: int, report: Path) -> list[str]:
        return [str(VENV_PYTHON), "manage.py", "import_dicom", str(folder), "--owner", owner,
                "--workers", str(workers), "--progress", "none", "--report", str(report)]  # fmt: skip

    def run_import(self, label: str, folder: Path, files: int, nbytes: int, owner: str, workers: int, check: bool = True) -> ImportRun:
        report = self.tmp / f"report-{label}.csv"
        cmd = self.import_command(folder, owner, workers, report)
        run = ImportRun(label, files, nbytes, cmd)
        out_path, err_path = self.tmp / f"import-{label}.out", self.tmp / f"import-{label}.err"
        stored_before = self.stored_files()
        busy0 = machine_busy_s()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            popen = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
            sampler = TreeSampler(popen.pid, self.args.sample_ms / 1000, db_name=self.pg.name if self.pg else None)
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
        busy1 = machine_busy_s()
        # Anything left in the session (nothing should be) is ours to end.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        run.returncode = popen.returncode
        run.cpu_s = ru.ru_utime + ru.ru_stime
        run.db_cpu_s = sum(sampler.backend_cpu_s.values()) if self.pg else None
        run.ru_maxrss_kb = ru.ru_maxrss
        run.peak_rss_sum_kb = sampler.peak_rss_sum_kb
        run.peak_pss_sum_kb = sampler.peak_pss_sum_kb
        run.processes = sampler.peak_processes
        run.samples = sampler.samples
        run.max_process_hwm_kb = max([ru.ru_maxrss, *sampler.hwm_kb.values()])
        run.process_hwm = [{"pid": p, "vm_hwm_kb": k, "cmd": sampler.names.get(p, "")} for p, k in sorted(sampler.hwm_kb.items())]
        run.foreign_cpu_share = foreign_share(busy1 - busy0, run.cpu_s + (run.db_cpu_s or 0.0), run.wall_s)
        stdout = out_path.read_text(errors="replace")
        run.stderr_tail = err_path.read_text(errors="replace")[-2000:]
        run.summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        m = SUMMARY_RE.search(run.summary)
        if m:
            run.internal_s = float(m.group(2))
        if report.exists():
            with open(report, newline="") as fh:
                for row in csv.DictReader(fh):
                    run.counts[row["status"]] = run.counts.get(row["status"], 0) + 1
        if run.returncode != 0:
            raise RuntimeError(f"import_dicom ({label}) exited {run.returncode}:\n{stdout[-2000:]}\n{run.stderr_tail}")
        if check:
            cat = self.catalogue_counts(owner)
            run.checks = {
                "report_created": run.counts.get("created", 0),
                "catalogue": cat,
                "stored_files_added": self.stored_files() - stored_before,
            }
            ok = run.counts.get("created", 0) == files and cat["instances"] == files and run.checks["stored_files_added"] == files
            run.checks["ok"] = ok
            if not ok:
                self.notes.append(f"import {label}: expected {files} created/catalogued/stored, got {run.checks} ({run.summary})")
        log(f"service {label}: {files} files in {run.wall_s:.2f} s ({run.files_per_s:.1f} files/s), "
            f"peak tree RSS {run.peak_rss_sum_kb / 1024:.0f} MiB, max process {run.max_process_hwm_kb / 1024:.0f} MiB; {run.summary}")  # fmt: skip
        return run

    def stop(self) -> None:
        if self.pg is not None:
            self.pg.drop()


def foreign_share(machine_busy: float, ours: float, wall: float) -> float | None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if wall <= 0:
        return None
    return max(0.0, (machine_busy - ours) / (wall * cpus))


# --------------------------------------------------------------------------- Orthanc


@dataclass
class OrthancRun:
    files: int
    bytes: int
    clients: int
    wall_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    foreign_cpu_share: float | None = None
    peak_rss_kb: int = 0
    count_instances: int | None = None
    version: str = ""

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.wall_s / 1e6 if self.wall_s else 0.0

    @property
    def files_per_cpu_s(self) -> float:
        total = self.cpu_s + self.client_cpu_s
        return self.files / total if total else 0.0

    def as_dict(self) -> dict:
        lat = self.latencies_ms
        return {
            "files": self.files, "bytes": self.bytes, "clients": self.clients, "wall_s": round(self.wall_s, 3),
            "files_per_s": round(self.files_per_s, 2), "mb_per_s": round(self.mb_per_s, 2),
            "statuses": self.statuses, "errors": self.errors[:5],
            "p50_ms": round(rb.percentile(lat, 0.5), 2) if lat else None,
            "p95_ms": round(rb.percentile(lat, 0.95), 2) if lat else None,
            "orthanc_cpu_s": round(self.cpu_s, 2), "client_cpu_s": round(self.client_cpu_s, 2),
            "files_per_cpu_s": round(self.files_per_cpu_s, 2) if self.files_per_cpu_s else None,
            "foreign_cpu_share": self.foreign_cpu_share, "orthanc_peak_rss_kb": self.peak_rss_kb,
            "count_instances_after": self.count_instances, "version": self.version,
        }  # fmt: skip


def run_orthanc(tmp: Path, args, files: list[Path], nbytes: int, label: str) -> OrthancRun:
    sub = tmp / f"orthanc-{label}"
    sub.mkdir()
    orthanc = rb.Orthanc(sub, SimpleNamespace(orthanc_port=None, orthanc_bin=args.orthanc_bin))
    run = OrthancRun(len(files), nbytes, args.clients)
    try:
        orthanc.start()
        run.version = orthanc.version
        pid = orthanc.proc.popen.pid
        # Warm the server's threads/codepaths with one throwaway instance (not one of the measured files).
        warm = orthanc.client()
        orthanc.upload(warm, (tmp / "warmup" / "IM000001.dcm").read_bytes())
        warm.close()
        work: queue.Queue[Path] = queue.Queue()
        for p in files:
            work.put(p)
        lock = threading.Lock()

        def worker() -> None:
            c = orthanc.client()
            try:
                while True:
                    try:
                        p = work.get_nowait()
                    except queue.Empty:
                        return
                    body = p.read_bytes()
                    try:
                        status, _, data, elapsed = c.request("POST", "/instances", body=body, headers={"Content-Type": "application/dicom"})
                    except OSError as exc:
                        with lock:
                            run.statuses["error"] = run.statuses.get("error", 0) + 1
                            run.errors.append(f"{p.name}: {type(exc).__name__}: {exc}")
                        c.close()
                        continue
                    with lock:
                        run.statuses[str(status)] = run.statuses.get(str(status), 0) + 1
                        reply_status = None
                        with contextlib.suppress(ValueError):
                            reply_status = json.loads(data).get("Status")
                        if status == 200 and reply_status == "Success":
                            run.latencies_ms.append(elapsed * 1000)
                        else:
                            run.errors.append(f"{p.name}: HTTP {status} {reply_status}: {data[:200]!r}")
            finally:
                c.close()

        sampler = TreeSampler(pid, args.sample_ms / 1000)
        cpu0, self0, busy0 = proc_cpu_s(pid), resource.getrusage(resource.RUSAGE_SELF), machine_busy_s()
        sampler.start()
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            for f in [pool.submit(worker) for _ in range(args.clients)]:
                f.result()
        run.wall_s = time.perf_counter() - t0
        cpu1, self1, busy1 = proc_cpu_s(pid), resource.getrusage(resource.RUSAGE_SELF), machine_busy_s()
        sampler.stop()
        run.cpu_s = cpu1 - cpu0
        run.client_cpu_s = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
        run.foreign_cpu_share = foreign_share(busy1 - busy0, run.cpu_s + run.client_cpu_s, run.wall_s)
        run.peak_rss_kb = max(sampler.hwm_kb.values(), default=0)
        c = orthanc.client()
        _, _, data, _ = c.request("GET", "/statistics")
        c.close()
        run.count_instances = json.loads(data).get("CountInstances")
        log(f"orthanc {label}: {run.files} files in {run.wall_s:.2f} s ({run.files_per_s:.1f} files/s), "
            f"{len(run.errors)} errors, CountInstances {run.count_instances} (incl. 1 warm-up)")  # fmt: skip
    finally:
        orthanc.stop()
    return run


# --------------------------------------------------------------------------- profile


def run_group(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run in its own session; the whole group is killed if we are interrupted or time out."""
    popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        out, err = popen.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    return subprocess.CompletedProcess(cmd, popen.returncode, out, err)


def _short(filename: str) -> str:
    return re.sub(r".*/site-packages/", "", filename.replace(str(ROOT) + "/", ""))


# Frames that only wrap the command (interpreter, manage.py, Django's command machinery) or are import-time.
_WRAPPERS = ("manage.py", "django/core/management/__init__.py", "django/core/management/base.py", "<frozen importlib",
             "django/__init__.py", "django/apps/registry.py", "django/apps/config.py")


def profile_import(service: Service, tmp: Path, template, n: int, owner: str, top: int) -> dict:
    """cProfile one import with --workers 1 (all work in one process); top entries by cumulative time."""
    folder = tmp / "profile"
    _, nbytes = write_set(template, folder, n, "profile")
    prof = tmp / "import.prof"
    cmd = [str(VENV_PYTHON), "-m", "cProfile", "-o", str(prof),
           *service.import_command(folder, owner, 1, tmp / "report-profile.csv")[1:]]  # fmt: skip
    log(f"profile: {' '.join(cmd)}")
    t0 = time.perf_counter()
    res = run_group(cmd, service.env, 900)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"profiled import failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    stats = pstats.Stats(str(prof))
    startup = sum(v[3] for k, v in stats.stats.items() if k[2] == "<module>" and k[0].endswith("manage.py"))
    handle = max((v[3] for k, v in stats.stats.items() if k[0].endswith("import_dicom.py") and k[2] == "handle"), default=0.0)

    def rows(key: int, skip_wrappers: bool) -> list[dict]:
        out = []
        for (filename, line, func), (_cc, nc, tt, ct, _callers) in sorted(stats.stats.items(), key=lambda kv: kv[1][key], reverse=True):
            short = _short(filename)
            if skip_wrappers and (short.startswith(_WRAPPERS) or "importlib/__init__.py" in short
                                  or func.startswith(("<built-in method builtins.exec", "<built-in method builtins.__import__"))):
                continue
            out.append({"function": f"{short}:{line}({func})", "ncalls": nc, "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3)})
            if len(out) >= top:
                break
        return out

    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    return {
        "command": " ".join(cmd),
        "files": n,
        "bytes": nbytes,
        "wall_s": round(wall, 2),
        "profiled_total_s": round(startup, 2),
        "handle_cumtime_s": round(handle, 2),
        "summary": summary,
        "top_cumulative": rows(3, True),
        "top_tottime": rows(2, False),
        "note": "cProfile inflates per-call costs (pydicom and the ORM make many small calls); --workers 1 so all work "
                "is in the profiled process; interpreter/manage.py/Django command wrappers and import-time frames are "
                "left out of top_cumulative",
    }  # fmt: skip


# py-spy raw ("collapsed") stacks: where the main process's main thread and the workers spend wall time.
_MAIN_BUCKETS = [
    ("catalogue: duplicate/conflict lookup (services._existing)", "_existing (studies/services.py"),
    ("catalogue: Study/Series get_or_create", "get_or_create (django/db/models/query.py"),
    ("catalogue: Instance INSERT", "create (django/db/models/query.py"),
    ("catalogue: COMMIT (transaction.atomic exit)", "__exit__ (django/db/transaction.py"),
    ("catalogue: storage save (copy, zero preamble, re-hash)", "save (django/core/files/storage"),
    ("catalogue: other", "_catalogue (studies/bulk.py"),
    ("waiting for a worker's result", "_result (studies/bulk.py"),
    ("submitting to the pool", "submit (concurrent/futures/process.py"),
    ("walking the folder", "walk (studies/dicom/sources.py"),
    ("pool shutdown (joining workers)", "shutdown (concurrent/futures/process.py"),
    ("Django/app start-up", "_find_and_load"),
]
_WORKER_BUCKETS = [
    ("prepare: header to DICOM JSON (parsing.dataset_to_json)", "dataset_to_json (studies/dicom/parsing.py"),
    ("prepare: dcmread of the header", "_read_header (studies/dicom/parsing.py"),
    ("prepare: SHA-256", "update (studies/dicom/parsing.py"),
    ("prepare: other", "prepare (studies/dicom/sources.py"),
    ("sending results back (pickle, pipe)", "_sendback_result"),
    ("idle: waiting for work (call queue)", "Queue.get (multiprocessing/queues.py"),
    ("worker start-up (imports)", "_find_and_load"),
]


def summarise_pyspy(path: Path, rate: int) -> dict:
    main: dict[str, int] = {}
    workers: dict[str, int] = {}
    main_total = worker_total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        cnt = int(count)
        if "Command.handle (studies/management/commands/import_dicom.py" in stack:
            target, buckets = main, _MAIN_BUCKETS
            main_total += cnt
        elif "_process_worker (concurrent/futures/process.py" in stack:
            target, buckets = workers, _WORKER_BUCKETS
            worker_total += cnt
        else:
            continue
        label = next((lbl for lbl, key in buckets if key in stack), "other: " + stack.split(";")[-1][:80])
        target[label] = target.get(label, 0) + cnt

    def table(d: dict[str, int], total: int) -> list[dict]:
        return [{"what": k, "samples": v, "share": round(v / total, 4), "seconds": round(v / rate, 2)}
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:14]]  # fmt: skip

    return {"main_thread_samples": main_total, "worker_samples": worker_total,
            "main_thread": table(main, main_total) if main_total else [],
            "workers": table(workers, worker_total) if worker_total else []}  # fmt: skip


def pyspy_import(service: Service, tmp: Path, pyspy: str, folder: Path, files: int, owner: str, workers: int, rate: int) -> dict:
    """One more import (fresh owner) under `py-spy record --subprocesses --idle`: wall-time attribution."""
    raw = tmp / "import.pyspy.txt"
    cmd = [pyspy, "record", "--subprocesses", "--idle", "--rate", str(rate), "--format", "raw", "--output", str(raw), "--",
           *service.import_command(folder, owner, workers, tmp / "report-pyspy.csv")]  # fmt: skip
    log(f"py-spy: {' '.join(cmd)}")
    t0 = time.perf_counter()
    res = run_group(cmd, service.env, 900)
    wall = time.perf_counter() - t0
    if res.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy run failed ({res.returncode}):\n{res.stdout[-1500:]}\n{res.stderr[-1500:]}")
    summary = next((x for x in reversed(res.stdout.splitlines()) if " files in " in x), "")
    return {"command": " ".join(cmd), "files": files, "workers": workers, "wall_s": round(wall, 2), "summary": summary,
            "rate_hz": rate, **summarise_pyspy(raw, rate),
            "note": "--idle: blocked time (waiting for PostgreSQL, for workers, for work) is sampled too; worker "
                    "samples are summed over the worker processes"}  # fmt: skip


# --------------------------------------------------------------------------- report


def kb_mib(kb: int | float | None) -> str:
    return f"{kb / 1024:.1f} MiB" if kb else "n/a"


def main(argv: list[str] | None = None) -> int:
    ncpu = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="files in the series (default 1000)")
    ap.add_argument("--workers", type=int, default=ncpu, help=f"import_dicom --workers (default: CPU count, {ncpu})")
    ap.add_argument("--clients", type=int, default=4, help="concurrent Orthanc clients (default 4)")
    ap.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server for the throwaway database")
    ap.add_argument("--orthanc-bin", default="/usr/sbin/Orthanc")
    ap.add_argument("--no-orthanc", action="store_true", help="measure the service only")
    ap.add_argument("--repeat", type=int, default=1, help="measure the N import and Orthanc this many times (alternating); "
                    "the table shows the median (noise on a shared machine)")  # fmt: skip
    ap.add_argument("--sample-ms", type=float, default=50.0, help="memory sampling period (default 50 ms)")
    ap.add_argument("--profile", action="store_true", help="also cProfile an import with --workers 1")
    ap.add_argument("--profile-n", type=int, default=200)
    ap.add_argument("--profile-top", type=int, default=30)
    ap.add_argument("--py-spy", default=None, metavar="BIN",
                    help="also record one N-file import (--workers W) under this py-spy binary and attribute wall time")
    ap.add_argument("--py-spy-rate", type=int, default=100)
    ap.add_argument("--target-ratio", type=float, default=3.0)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "import.json", help="where to write results")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (files, logs, stored files, reports)")
    args = ap.parse_args(argv)
    n, quarter = args.n, max(1, args.n // 4)
    if n < 4 or args.workers < 1 or args.clients < 1 or args.repeat < 1:
        ap.error("--n must be >= 4; --workers, --clients, --repeat >= 1")

    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    notes: list[str] = []
    t_start = time.monotonic()
    info = rb.machine_info()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="import-bench-"))
    service = Service(tmp, args, notes)
    svc_runs: dict[str, ImportRun] = {}
    full_runs: list[ImportRun] = []
    orth_runs: list[OrthancRun] = []
    profile: dict | None = None
    spy: dict | None = None
    failed = False
    try:
        log(f"workload: {n} + 8 warm-up files in {tmp}")
        template = rb.make_ct_template()
        write_set(template, tmp / "warmup", 8, "warmup")
        files, total_bytes = write_set(template, tmp / "full", n, "full")
        (tmp / "quarter").mkdir()
        q_bytes = 0
        for p in files[:quarter]:
            os.link(p, tmp / "quarter" / p.name)
            q_bytes += p.stat().st_size
        log(f"workload: {n} files, {total_bytes / 1e6:.1f} MB ({total_bytes / n / 1024:.0f} KiB each)")

        service.setup()
        owners = ["bench_warmup", "bench_quarter", *[f"bench_full_{k}" for k in range(args.repeat)], "bench_profile", "bench_pyspy"]
        service.create_users(owners)
        svc_runs["warmup"] = service.run_import("warmup", tmp / "warmup", 8, sum(p.stat().st_size for p in (tmp / "warmup").iterdir()),
                                                "bench_warmup", args.workers)  # fmt: skip
        svc_runs["quarter"] = service.run_import("quarter", tmp / "quarter", quarter, q_bytes, "bench_quarter", args.workers)
        for k in range(args.repeat):
            r = service.run_import(f"full_{k}", tmp / "full", n, total_bytes, f"bench_full_{k}", args.workers)
            full_runs.append(r)
            svc_runs[f"full_{k}"] = r
            if not args.no_orthanc:
                try:
                    orth_runs.append(run_orthanc(tmp, args, files, total_bytes, str(k)))
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"Orthanc run {k} failed: {type(exc).__name__}: {exc}")
                    log(f"orthanc: {exc}")
        if args.profile:
            pn = min(args.profile_n, n)
            profile = profile_import(service, tmp, template, pn, "bench_profile", args.profile_top)
        if args.py_spy:
            try:
                spy = pyspy_import(service, tmp, args.py_spy, tmp / "full", n, "bench_pyspy", args.workers, args.py_spy_rate)
            except Exception as exc:  # noqa: BLE001 - optional diagnostics
                notes.append(f"py-spy run failed: {exc}")
    except BaseException:
        failed = True
        raise
    finally:
        service.stop()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if failed:
            log("failed; cleaned up")

    # ---------------- report
    for r in orth_runs:
        if r.errors:
            notes.append(f"Orthanc: {len(r.errors)} failed uploads, e.g. {r.errors[0][:200]}")
        if r.count_instances is not None and r.count_instances != n + 1:
            notes.append(f"Orthanc /statistics CountInstances {r.count_instances}, expected {n + 1} (N + 1 warm-up)")

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    svc_fps = med([r.files_per_s for r in full_runs])
    svc_internal_fps = med([r.files / r.internal_s for r in full_runs if r.internal_s])
    svc_mbps = med([r.mb_per_s for r in full_runs])
    orth_ok = [r for r in orth_runs if not r.errors]
    orth_fps = med([r.files_per_s for r in orth_ok])
    orth_mbps = med([r.mb_per_s for r in orth_ok])
    ratio = svc_fps / orth_fps if svc_fps and orth_fps else None
    ratio_internal = svc_internal_fps / orth_fps if svc_internal_fps and orth_fps else None
    svc_fpc = med([r.files_per_cpu_s for r in full_runs if r.files_per_cpu_s])
    orth_fpc = med([r.files_per_cpu_s for r in orth_ok if r.files_per_cpu_s])
    q = svc_runs["quarter"]
    f_peak_sum = max(r.peak_rss_sum_kb for r in full_runs)
    f_peak_pss = max(r.peak_pss_sum_kb for r in full_runs)
    f_peak_proc = max(r.max_process_hwm_kb for r in full_runs)
    rep = f" (median of {len(full_runs)})" if len(full_runs) > 1 else ""

    rows = [
        ("import files/s [1]" + rep, svc_fps, orth_fps, ratio, "{:.1f}"),
        ("import files/s, command's own timer [2]" + rep, svc_internal_fps, orth_fps, ratio_internal, "{:.1f}"),
        ("import MB/s [1]" + rep, svc_mbps, orth_mbps, (svc_mbps / orth_mbps) if svc_mbps and orth_mbps else None, "{:.1f}"),
        ("files per CPU-second [3]" + rep, svc_fpc, orth_fpc, (svc_fpc / orth_fpc) if svc_fpc and orth_fpc else None, "{:.1f}"),
    ]
    legend = [
        f"[1] service: N / wall time of the import_dicom subprocess (start-up included), --workers {args.workers}; "
        f"orthanc: N / wall time of POST /instances with {args.clients} concurrent clients (server already up)",
        "[2] the command's summary line (its timer starts after Django start-up)",
        "[3] N / CPU-seconds used: service = import process tree (wait4 rusage, start-up included)"
        + (" + its PostgreSQL backend (sampled)" if args.db == "postgres" else "")
        + "; orthanc = server process + the bench's client threads. Both saturate the CPUs, so on an idle machine "
        "the files/s ratio tends to this ratio; it is much less sensitive to other load than files/s",
        "ratio = service / orthanc (higher is better)",
    ]
    mem_label = "peak tree RSS, sum over processes (sampled every %g ms)" % args.sample_ms
    width = max(len(mem_label), *(len(r[0]) for r in rows))
    machine_lines = [
        f"machine: nproc={info['nproc']} ({info['cpu_model']}), {info['platform']}; load avg before "
        f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}",
        f"python {info['python']}; pydicom {info['packages']['pydicom']}, numpy {info['packages']['numpy']}, "
        f"Django {info['packages']['Django']}, psycopg {info['packages']['psycopg']}; Orthanc {orth_runs[0].version if orth_runs else 'n/a'}",
        f"service: {service.db_desc}; repo {info['git'].get('commit', '?')}"
        + (" (uncommitted changes in studies/ or dicomsite/)" if info["git"].get("uncommitted_changes_in_studies_or_dicomsite") else ""),
        f"workload: {n} files 512x512 CT 16-bit, {total_bytes / 1e6:.1f} MB total, one study/series, fresh SOP UIDs; "
        f"N/4 = {quarter} files",
    ]
    print()
    print("\n".join(machine_lines))
    print()
    print(f"{'row':<{width}}  {'service':>9}  {'orthanc':>9}  {'ratio':>7}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 7}")
    table = []

    def fmt(v, spec="{:.1f}") -> str:
        return f"{spec.format(v):>9}" if v is not None else f"{'n/a':>9}"

    for label, sv, ov, rt, spec in rows:
        print(f"{label:<{width}}  {fmt(sv, spec)}  {fmt(ov, spec)}  {(f'{rt:7.2f}' if rt is not None else f'{chr(8212):>7}')}")
        table.append({"row": label, "service": _r(sv), "orthanc": _r(ov), "ratio": _r(rt, 3)})
    verdict = "n/a" if ratio is None else ("PASS" if ratio >= args.target_ratio else "FAIL")
    print(f"{'target: service >= ' + str(args.target_ratio) + 'x orthanc files/s [1]':<{width}}  {verdict:>9}")
    for line in legend:
        print("  " + line)
    print()
    print(f"{'peak memory of import_dicom (--workers ' + str(args.workers) + ')':<{width}}  {'N/4=' + str(quarter):>9}  {'N=' + str(n):>9}  {'N/(N/4)':>7}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 7}")
    mem_rows = [
        (mem_label, q.peak_rss_sum_kb, f_peak_sum),
        ("peak tree PSS, sum over processes (sampled)", q.peak_pss_sum_kb, f_peak_pss),
        ("max single-process RSS (VmHWM / wait4 ru_maxrss, exact)", q.max_process_hwm_kb, f_peak_proc),
    ]
    mem_table = []
    for label, qv, fv in mem_rows:
        rt = fv / qv if qv else None
        print(f"{label:<{width}}  {fmt(qv / 1024 if qv else None)}  {fmt(fv / 1024 if fv else None)}  {(f'{rt:7.2f}' if rt else f'{chr(8212):>7}')}")
        mem_table.append({"row": label, "quarter_mib": _r(qv / 1024), "full_mib": _r(fv / 1024), "ratio": _r(rt, 3)})
    print("(MiB; processes in the tree at peak: "
          f"N/4 {q.processes}, N {max(r.processes for r in full_runs)}; orthanc peak RSS "
          f"{kb_mib(max((r.peak_rss_kb for r in orth_runs), default=0))})")  # fmt: skip
    print()
    print("runs (wall s, files/s, CPU s of the measured processes, foreign CPU share = other processes' load):")
    for r in svc_runs.values():
        db_cpu = f" (+ db {r.db_cpu_s:.1f} s)" if r.db_cpu_s is not None else ""
        print(f"  service {r.label:<8} {r.files:>5} files  {r.wall_s:7.2f} s  {r.files_per_s:7.1f} files/s  "
              f"cpu {r.cpu_s:6.1f} s{db_cpu}  foreign {_pct(r.foreign_cpu_share)}  | {r.summary}")  # fmt: skip
    for k, r in enumerate(orth_runs):
        print(f"  orthanc {k:<8} {r.files:>5} files  {r.wall_s:7.2f} s  {r.files_per_s:7.1f} files/s  "
              f"cpu {r.cpu_s:6.1f} s (+ clients {r.client_cpu_s:.1f} s)  foreign {_pct(r.foreign_cpu_share)}  "
              f"p50 {rb.percentile(r.latencies_ms, .5) if r.latencies_ms else float('nan'):.1f} ms")  # fmt: skip
    print()
    print("commands:")
    print(f"  bench:    {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"  service:  {' '.join(full_runs[0].command)}  (DIR/owner/report are temp; env: DJANGO_SECRET_KEY, "
          f"DATABASE_URL, DICOM_MEDIA_ROOT, DICOM_UPLOAD_TEMP_DIR, DJANGO_DEBUG=0, LOG_LEVEL=WARNING)")  # fmt: skip
    if not args.no_orthanc:
        print(f"  orthanc:  {args.orthanc_bin} CONFIG.json; POST /instances (Content-Type: application/dicom) x{n}, "
              f"{args.clients} threads with kept-alive http.client connections")  # fmt: skip
    if profile:
        print()
        print(f"profile ({profile['command']}):")
        print(f"  {profile['summary']}  [wall {profile['wall_s']} s under cProfile; handle() {profile['handle_cumtime_s']} s "
              f"of {profile['profiled_total_s']} s profiled]")  # fmt: skip
        print(f"  {'cumtime s':>9}  {'tottime s':>9}  {'ncalls':>8}  function   (wrappers and import-time frames left out)")
        for row in profile["top_cumulative"]:
            print(f"  {row['cumtime_s']:9.3f}  {row['tottime_s']:9.3f}  {row['ncalls']:8d}  {row['function']}")
    if spy:
        print()
        print(f"py-spy wall-time attribution ({spy['command']}):")
        print(f"  {spy['summary']}")
        for part, key in (("main process, main thread", "main_thread"), ("worker processes (summed)", "workers")):
            print(f"  {part}:")
            for row in spy[key]:
                print(f"    {row['share'] * 100:5.1f}%  {row['seconds']:7.2f} s  {row['what']}")
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  - {note}")

    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**info, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "config": {
            "n": n, "quarter": quarter, "workers": args.workers, "clients": args.clients, "db": args.db,
            "repeat": args.repeat, "sample_ms": args.sample_ms, "bytes_total": total_bytes,
            "workload": "CT_small.dcm upscaled bilinearly to 512x512 (render_bench.make_ct_template), one study/series, fresh SOP UIDs",
            "service_files_per_s": "files / wall time of the import_dicom subprocess (start-up included)",
            "orthanc_files_per_s": "files / wall time from first POST to last response, server already running",
            "memory": "tree RSS/PSS: max over /proc samples of the sum over the command's process tree; "
                      "max single-process RSS: max VmHWM over the tree = wait4 ru_maxrss (not a sum)",
        },  # fmt: skip
        "table": table,
        "legend": legend,
        "verdict": {"target_ratio": args.target_ratio, "ratio": _r(ratio, 3), "result": verdict},
        "memory_table": mem_table,
        "service_runs": {k: r.as_dict() for k, r in svc_runs.items()},
        "orthanc_runs": [r.as_dict() for r in orth_runs],
        "profile": profile,
        "py_spy": spy,
        "notes": notes,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json} ({out['elapsed_s']:.0f}s total)")
    bad = any(r.errors for r in orth_runs) or any(r.checks and not r.checks.get("ok") for r in svc_runs.values())
    return 1 if bad else 0


def _pct(v: float | None) -> str:
    return f"{v * 100:4.0f}%" if v is not None else " n/a"


def _r(v, digits: int = 2):
    return round(v, digits) if v is not None else None


if __name__ == "__main__":
    sys.exit(main())
