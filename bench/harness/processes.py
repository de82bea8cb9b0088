"""Child processes of a benchmark: start them in their own session with a log file, wait for their port, stop the
whole group, and make SIGTERM/SIGHUP unwind through the cleanup code.

Every server is started with `start_new_session=True`, so stopping it is one `killpg` that also reaches gunicorn's
workers and py-spy's children, and nothing outlives the benchmark; only processes started here are signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import ROOT
from .httpclient import HttpClient

PYTHON = sys.executable


def log(msg: str) -> None:
    """Progress to stderr, so that stdout carries only the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(preferred: int | None = None) -> int:
    """`preferred` if it can be bound on loopback, else a port the kernel picks (so runs never collide)."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A started process group and its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    final_log_tail: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return self.final_log_tail

    def stop(self, grace: float = 15) -> None:
        """SIGTERM to the group, SIGKILL if it lingers past `grace` seconds; keeps the log's tail for the report."""
        self.final_log_tail = self.log_tail()
        if self.popen.poll() is not None:
            return
        try:
            pgid = os.getpgid(self.popen.pid)
        except ProcessLookupError:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children of the group (gunicorn workers) may outlive the leader by a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def start_process(name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> Proc:
    """Start `cmd` in its own session, stdout and stderr to `log_path`, no stdin."""
    with open(log_path, "wb") as handle:
        popen = subprocess.Popen(
            list(cmd), stdout=handle, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None, cwd=cwd,
            start_new_session=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return Proc(name, popen, log_path)


def wait_http(proc: Proc, port: int, path: str, timeout: float = 60.0) -> None:
    """Until GET `path` answers 200; fails early (with the log) if the process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (code {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            with HttpClient(port, timeout=5) as client:
                status = client.request("GET", path)[0]
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready on port {port} after {timeout:.0f}s ({last}):\n{proc.log_tail()}")


def wait_port(proc: Proc, port: int, hello: bytes, expect: bytes, timeout: float = 20.0) -> None:
    """Until a TCP server on `port` answers `hello` with something starting with `expect` (e.g. Redis PING)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(hello)
            if sock.recv(64).startswith(expect):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer on port {port} within {timeout:.0f}s:\n{proc.log_tail()}")


def run_group(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 900, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """subprocess.run in its own session, output captured; the whole group is killed if we are interrupted or time out."""
    popen = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env) if env is not None else None, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        out, err = popen.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    return subprocess.CompletedProcess(list(cmd), popen.returncode, out, err)


def run_checked(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 900) -> str:
    """`run_group`, raising with the tails of stdout and stderr when it fails; returns stdout."""
    res = run_group(cmd, env, timeout)
    if res.returncode != 0:
        shown = " ".join(str(c) for c in list(cmd)[:5])
        raise RuntimeError(f"{shown} ... failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit while inside, so `finally` blocks and context managers stop the servers."""
    previous = {sig: signal.signal(sig, _raise_system_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def children_of(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's workers), from /proc."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
    except OSError:
        pass
    return sorted(set(out))


def process_tree(root: int) -> list[int]:
    """The process and all its descendants (an import command, its pool workers and resource tracker)."""
    seen: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children_of(pid))
    return seen
