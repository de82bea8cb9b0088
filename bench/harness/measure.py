"""Measurement: percentiles, concurrent clients that time each request, CPU and memory from /proc, machine info.

One definition of each, so that every scenario's p50 means the same thing (linear interpolation between closest
ranks, numpy's default) and every server is driven by the same client code.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import queue
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .. import ROOT
from .httpclient import ClientFactory, image_info

CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method); NaN for no values."""
    s = sorted(values)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def rounded(v: float | None, digits: int = 2) -> float | None:
    return round(v, digits) if v is not None else None


class Stopwatch:
    """Seconds since it was made, for progress lines ("... 12s since start") and elapsed_s in the results."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


# --------------------------------------------------------------------------- concurrent clients


Check = Callable[[int, bytes], "str | None"]  # (status, body) -> an error message, or None when the answer is right


def expect_status(expected: int) -> Check:
    """A check that the answer has exactly this status (e.g. 201 for a new instance, not 200 for a duplicate)."""

    def check(status: int, data: bytes) -> str | None:
        return None if status == expected else f"expected {expected}, got {status}: {data[:200]!r}"

    return check


def expect_in_body(text: str) -> Check:
    """A check that the body contains `text` (e.g. the patient name that was sent)."""

    def check(status: int, data: bytes) -> str | None:
        return None if text in data.decode("utf-8", "replace") else f"{text!r} not in {data[:200]!r}"

    return check


@dataclass
class Req:
    """One request to send; `check` validates the answer, `tag` comes back with the body in Measure.results.

    `body` may be a callable that returns the bytes: read when the request is sent, so a thousand files need not
    be held in memory at once (it is read outside the request's timing, inside the measurement's wall time)."""

    method: str
    path: str
    body: bytes | Callable[[], bytes] | None = None
    headers: dict[str, str] | None = None
    check: Check | None = None
    tag: object = None


@dataclass
class Measure:
    """Latencies and outcomes of one measurement (one kind of request against one server)."""

    name: str
    server: str
    example: str = ""
    kind: str = ""  # e.g. cold | warm | revalidate (render), free text elsewhere
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    clients: int = 1
    bytes_sent: int = 0
    bytes_received: int = 0
    results: list = field(default_factory=list)  # (req.tag, body) per good answer, when keep_bodies
    sample: dict = field(default_factory=dict)  # the first good answer: status, type, etag, image size or text
    sample_bytes: bytes = b""

    @property
    def key(self) -> str:
        return f"{self.server}:{self.name}"

    def p(self, q: float) -> float | None:
        """Percentile of the good answers; None when nothing succeeded (a row then shows n/a)."""
        return percentile(self.latencies_ms, q) if self.latencies_ms else None

    @property
    def mean_response_bytes(self) -> int:
        return round(self.bytes_received / max(1, sum(self.statuses.values())))

    @property
    def rate(self) -> float | None:
        """Good answers per second of the measurement's wall time."""
        return len(self.latencies_ms) / self.wall_s if self.latencies_ms and self.wall_s else None

    def stats(self, with_latencies: bool = False) -> dict:
        ok = self.latencies_ms
        d = {
            "name": self.name, "server": self.server, "kind": self.kind or None, "example": self.example,
            "clients": self.clients, "requests": sum(self.statuses.values()), "ok": len(ok), "statuses": self.statuses,
            "errors": self.errors[:5], "wall_s": round(self.wall_s, 3), "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received, "sample_response": self.sample,
        }  # fmt: skip
        if ok:
            d.update(p50_ms=round(percentile(ok, 0.5), 2), p95_ms=round(percentile(ok, 0.95), 2),
                     mean_ms=round(statistics.fmean(ok), 2), min_ms=round(min(ok), 2), max_ms=round(max(ok), 2),
                     throughput_rps=rounded(self.rate))  # fmt: skip
            if with_latencies:
                d["latencies_ms"] = [round(v, 3) for v in ok]
        return d


def _sample_of(status: int, hdrs: dict[str, str], data: bytes) -> dict:
    ctype = hdrs.get("content-type") or ""
    out = {"status": status, "content_type": ctype or None, "etag": hdrs.get("etag"), "cache_control": hdrs.get("cache-control"),
           "bytes": len(data)}  # fmt: skip
    if ctype.startswith("image/"):
        out.update(image_info(data))
    else:
        out["text"] = data[:400].decode("utf-8", "replace")
    return out


def run_requests(
    m: Measure,
    make_client: ClientFactory,
    reqs: Iterable[Req],
    clients: int = 1,
    ok_statuses: tuple[int, ...] = (200, 201),
    keep_bodies: bool = False,
) -> Measure:
    """Send every request once, `clients` threads each on its own kept-alive connection; time the good answers.

    A wrong status, a failed check or a transport error is counted as an error (never as a latency), so a broken
    server cannot look fast.
    """
    m.clients = max(1, clients)
    lock = threading.Lock()
    work: queue.Queue[Req] = queue.Queue()
    for r in reqs:
        work.put(r)

    def worker() -> None:
        with make_client() as c:
            while True:
                try:
                    r = work.get_nowait()
                except queue.Empty:
                    return
                body = r.body() if callable(r.body) else r.body
                try:
                    status, hdrs, data, secs = c.request(r.method, r.path, body=body, headers=r.headers)
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
                    m.bytes_sent += len(body or b"")
                    m.bytes_received += len(data)
                    if problem:
                        m.errors.append(f"{r.method} {r.path}: {problem}")
                        continue
                    m.latencies_ms.append(secs * 1000)
                    if keep_bodies:
                        m.results.append((r.tag, data))
                    if not m.sample:
                        m.sample, m.sample_bytes = _sample_of(status, hdrs, data), data

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(m.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.wall_s = time.perf_counter() - start
    return m


# --------------------------------------------------------------------------- /proc: CPU and memory


def proc_mem(pid: int, pss: bool = False) -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile, VmHWM (KiB), rchar/wchar (bytes) and optionally Pss (KiB); None if it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(line.split()[1])
        if "VmRSS" not in out:  # zombie or kernel thread
            return None
        with contextlib.suppress(OSError), open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith(("rchar:", "wchar:")):
                    out[line[:5]] = int(line.split()[1])
        if pss:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as fh:
                out["Pss"] = next((int(line.split()[1]) for line in fh if line.startswith("Pss:")), 0)
    except (OSError, ValueError):
        return None
    return out


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of a process to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
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


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def foreign_share(machine_busy: float, ours: float, wall: float) -> float | None:
    """The share of the machine's CPU that other processes used during a measurement (noise on a shared machine)."""
    if wall <= 0:
        return None
    return max(0.0, (machine_busy - ours) / (wall * usable_cpus()))


class RssSampler(threading.Thread):
    """Samples the memory of a set of processes every `interval` s in a thread, keeping peaks (and the samples).

    `pids` is called at each tick (a process tree, a gunicorn master's workers), so processes that start or are
    recycled during the measurement are seen. Per tick it records the sum of RSS (and of PSS with `pss=True`) over
    the processes, and per process its VmHWM, so both "the tree" and "the largest single process" can be reported.
    """

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float, pss: bool = False, keep_samples: bool = False,
                 on_tick: Callable[[], None] | None = None):  # fmt: skip
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.pss = pss
        self.keep_samples = keep_samples
        self.on_tick = on_tick
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, int, dict[str, int]]] = []  # (t, pid, mem), when keep_samples
        self.ticks = 0
        self.peak_rss_sum_kb = 0
        self.peak_pss_sum_kb = 0
        self.peak_processes = 0
        self.hwm_kb: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def snapshot(self) -> dict[int, dict[str, int]]:
        snap = {}
        for pid in self.pids():
            mem = proc_mem(pid, self.pss)
            if mem is not None:
                snap[pid] = mem
        return snap

    def tick(self) -> None:
        now = time.monotonic() - self.t0
        snap = self.snapshot()
        with self.lock:
            for pid, mem in snap.items():
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), mem.get("VmHWM", 0))
                if pid not in self.names:
                    self.names[pid] = cmdline(pid)[:160]
                if self.keep_samples:
                    self.samples.append((now, pid, mem))
            self.ticks += 1
            self.peak_rss_sum_kb = max(self.peak_rss_sum_kb, sum(m["VmRSS"] for m in snap.values()))
            self.peak_pss_sum_kb = max(self.peak_pss_sum_kb, sum(m.get("Pss", 0) for m in snap.values()))
            self.peak_processes = max(self.peak_processes, len(snap))
        if self.on_tick is not None:
            self.on_tick()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.tick()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout=10)

    def window(self, t_start: float, t_end: float) -> list[tuple[float, int, dict[str, int]]]:
        with self.lock:
            return [s for s in self.samples if t_start <= s[0] <= t_end]

    def now(self) -> float:
        return time.monotonic() - self.t0


# --------------------------------------------------------------------------- the machine


PACKAGES = ("pydicom", "pillow", "numpy", "Django", "djangorestframework", "gunicorn", "pylibjpeg", "pylibjpeg-openjpeg",
            "pylibjpeg-libjpeg", "psycopg", "pydicom-data")  # fmt: skip


def machine_info() -> dict:
    """CPU, Python, package versions and the repo commit, so a result file says what it measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    git: dict = {}
    with contextlib.suppress(Exception):
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "studies", "dicomsite"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
        git["uncommitted_changes_in_studies_or_dicomsite"] = bool(dirty.strip())
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git": git,
    }


def describe_machine(info: dict) -> str:
    """One line for the header of a table."""
    return f"machine: nproc={info['nproc']} (usable {info['cpus_usable']}), {info['cpu_model']}, {info['platform']}; python {info['python']}"


def describe_packages(info: dict, *names: str) -> str:
    """ "Django 5.2.19, gunicorn 27.0.1, ..." for the packages a table depends on."""
    short = {"djangorestframework": "DRF"}
    return ", ".join(f"{short.get(n, n)} {info['packages'].get(n)}" for n in names)


def describe_repo(info: dict) -> str:
    dirty = " (uncommitted changes in studies/ or dicomsite/)" if info["git"].get("uncommitted_changes_in_studies_or_dicomsite") else ""
    return f"repo {info['git'].get('commit', '?')}{dirty}"
