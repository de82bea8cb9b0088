"""A kept-alive HTTP client on loopback, and the small request/response helpers every scenario needs.

Standard library only (http.client): a benchmark client must cost little and the same for both servers, and
must not pull in a dependency the service does not already have.
"""

from __future__ import annotations

import http.client
import secrets
import struct
import time
from collections.abc import Callable
from typing import Self

Response = tuple[int, dict[str, str], bytes, float]  # status, headers (lower-case keys), body, seconds


class HttpClient:
    """One kept-alive connection to 127.0.0.1:port; reconnects (and retries once) when the server closed it.

    The timing is wall time from sending the request to the last byte of the body, which is what a user waits for.
    """

    def __init__(self, port: int, headers: dict[str, str] | None = None, timeout: float = 300.0):
        self.port = port
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
        """(status, headers with lower-case keys, body, seconds)."""
        all_headers = {**self.headers, **(headers or {})}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            start = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=all_headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest):
                self.close()
                if attempt == 2:
                    raise
                continue
            elapsed = time.perf_counter() - start
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if hdrs.get("connection", "").lower() == "close" or resp.will_close:
                self.close()
            return resp.status, hdrs, data, elapsed
        raise AssertionError("unreachable")


ClientFactory = Callable[[], HttpClient]


def probe(make_client: ClientFactory, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection, untimed: for warm-up and for asking a server what it supports."""
    with make_client() as client:
        status, hdrs, data, _ = client.request("GET", path, headers=headers)
    return status, hdrs, data


def multipart_form(field_name: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type."""
    boundary = "bench-" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def image_info(data: bytes) -> dict:
    """Format and dimensions of PNG/JPEG/WebP bytes, standard library only (checks that a render is what was asked)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return {"format": "png", "width": w, "height": h, "bytes": len(data)}
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return {"format": "jpeg", "width": w, "height": h, "bytes": len(data)}
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        return {"format": "jpeg", "bytes": len(data)}
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return {"format": "webp", "bytes": len(data)}
    return {"format": "unknown", "bytes": len(data)}


def post_file_streamed(port: int, path: str, file_path, headers: dict[str, str], chunk: int = 1024 * 1024,
                       timeout: float = 1800.0) -> dict:  # fmt: skip
    """POST a file as the raw body with Content-Length, read from disk `chunk` bytes at a time (a 1 GiB upload
    without 1 GiB in the client). A server that answers early (e.g. 413) stops the sending; the answer is kept."""
    from pathlib import Path

    file_path = Path(file_path)
    size = file_path.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    sent, send_error = 0, None
    try:
        conn.putrequest("POST", path)
        for key, value in {**headers, "Content-Length": str(size)}.items():
            conn.putheader(key, value)
        conn.endheaders()
        with open(file_path, "rb") as fh:
            while piece := fh.read(chunk):
                try:
                    conn.send(piece)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    send_error = f"{type(exc).__name__} after {sent} bytes"
                    break
                sent += len(piece)
        t_sent = time.perf_counter()
        resp = conn.getresponse()
        body = resp.read()
        t_done = time.perf_counter()
    finally:
        conn.close()
    return {"status": resp.status, "body": body, "bytes_sent": sent, "send_error": send_error,
            "send_s": t_sent - t0, "total_s": t_done - t0, "server_after_body_s": t_done - t_sent}  # fmt: skip
