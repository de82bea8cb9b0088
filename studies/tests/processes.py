"""The suite's one way to run the service as a real process (gunicorn, runserver, serve.py) and wait for it."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path | None = None, *, seconds: float = 90) -> None:
    """Until `url` answers; fails at once (with the log's tail) if the process exits first, or after `seconds`."""
    tail = lambda: log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""  # noqa: E731
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[:3]} exited with {process.returncode}:\n{tail()}"
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds:.0f} s:\n{tail()}")


def stop(process: subprocess.Popen, *, grace: float = 20) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaped."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
