"""S3 storage for stored DICOM files (DICOM_STORAGE_URL=s3://...): django-storages' S3Storage, with

- reads through `RangedS3File`: a seekable, read-only file over ranged GETs with a read-ahead buffer, so
  one frame of a large multi-frame file costs about one frame's bytes (S3Storage's own S3File downloads
  the whole object on the first read, into memory by default), and downloads, zips and retrieval stream;
- writes streamed by boto3's upload_fileobj (multipart above 8 MiB, at most two parts in flight);
- S3 and connection errors raised as OSError, the error every caller already handles as "storage failing";
- no storage URLs: url() refuses (downloads go through views that check ownership).
"""

from __future__ import annotations

import errno
import io
import threading

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.base import File
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

MiB = 1024 * 1024
# The read-ahead window: small after a seek (a frame, a header), doubling while reads stay sequential.
FIRST_READ_AHEAD = 64 * 1024
READ_AHEAD = 4 * MiB


class FetchStats:
    """Bytes and GET requests fetched by every RangedS3File in this process (for tests and diagnostics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.requests = 0

    def add(self, size: int) -> None:
        with self._lock:
            self.bytes += size
            self.requests += 1

    def reset(self) -> None:
        with self._lock:
            self.bytes = 0
            self.requests = 0


fetch_stats = FetchStats()


def _storage_error(exc: Exception, key: str) -> OSError:
    status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(exc, ClientError) else None
    if status == 404:
        return FileNotFoundError(errno.ENOENT, "no such object", key)
    return OSError(errno.EIO, f"object storage failed ({type(exc).__name__})", key)


class RangedS3File(io.RawIOBase):
    """Read-only, seekable view of one object: each read is served from a read-ahead buffer filled by a
    ranged GET (Range: bytes=a-b). The window starts at 64 KiB and doubles (up to 4 MiB) while each refill
    follows the last one, so pydicom's many small header reads and a streamed download both take few
    requests, and a seek to one frame fetches about that frame. A read larger than the window is fetched
    as asked, not buffered."""

    def __init__(self, client, bucket: str, key: str, *, read_ahead: int = READ_AHEAD) -> None:
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._max_read_ahead = read_ahead
        self._read_ahead = min(FIRST_READ_AHEAD, read_ahead)
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, key) from None
        self.size: int = int(head["ContentLength"])
        self._etag = head.get("ETag")
        self._pos = 0
        self._buffer = b""
        self._buffer_start = 0
        self.bytes_fetched = 0
        self.name = key

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("seek on a closed file")
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._pos + offset
        elif whence == io.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if position < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = position
        return position

    def _fetch(self, start: int, length: int) -> bytes:
        end = min(start + length, self.size) - 1
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end}")
            data = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, self._key) from None
        self.bytes_fetched += len(data)
        fetch_stats.add(len(data))
        if len(data) != end - start + 1:
            raise OSError(errno.EIO, "object storage returned a short range", self._key)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed file")
        available = max(self.size - self._pos, 0)
        wanted = available if size is None or size < 0 else min(size, available)
        if wanted == 0:
            return b""
        start, end = self._pos, self._pos + wanted
        buffered_end = self._buffer_start + len(self._buffer)
        if self._buffer_start <= start and end <= buffered_end:
            data = self._buffer[start - self._buffer_start : end - self._buffer_start]
        elif wanted >= self._read_ahead:
            head = b""
            if self._buffer_start <= start < buffered_end:  # use what is buffered, fetch only the rest
                head = self._buffer[start - self._buffer_start :]
            data = head + self._fetch(start + len(head), wanted - len(head))
        else:
            head = b""
            if self._buffer_start <= start < buffered_end:
                head = self._buffer[start - self._buffer_start :]
            fill_start = start + len(head)
            if fill_start == buffered_end and self._buffer:
                self._read_ahead = min(self._read_ahead * 2, self._max_read_ahead)  # still sequential
            else:
                self._read_ahead = min(FIRST_READ_AHEAD, self._max_read_ahead)
            self._buffer = self._fetch(fill_start, max(self._read_ahead, wanted - len(head)))
            self._buffer_start = fill_start
            data = head + self._buffer[: end - fill_start]
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, target) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._buffer = b""
        super().close()


def transfer_config() -> TransferConfig:
    """Multipart above 8 MiB, two parts in flight and two read ahead: an upload holds at most ~32 MiB in memory."""
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=2)
    config.max_in_memory_upload_chunks = 2  # s3transfer's own knob (default 10), not among boto3's arguments
    return config


class PrivateS3Storage(S3Storage):
    """S3Storage for private DICOM objects (see the module docstring)."""

    def __init__(self, **settings) -> None:
        if settings.get("transfer_config") is None:
            settings["transfer_config"] = transfer_config()
        super().__init__(**settings)

    def key(self, name: str) -> str:
        return self._normalize_name(clean_name(name))

    def _open(self, name, mode="rb"):
        if set(mode) - {"r", "b"}:
            raise ValueError(f"stored DICOM objects are opened read-only, not {mode!r}")
        return File(RangedS3File(self.connection.meta.client, self.bucket_name, self.key(name)), name=name)

    def _save(self, name, content):
        try:
            return super()._save(name, content)
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:  # the last wraps a failed part's error
            raise OSError(errno.EIO, f"object storage failed ({type(exc).__name__})", name) from None

    def delete(self, name):
        try:
            super().delete(name)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, name) from None

    def size(self, name):
        try:
            return super().size(name)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, name) from None

    def exists(self, name):
        try:
            return super().exists(name)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, name) from None

    def listdir(self, name):
        try:
            return super().listdir(name)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, name) from None

    def get_modified_time(self, name):
        try:
            return super().get_modified_time(name)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, name) from None

    def check_bucket(self) -> None:
        """One round trip that fails unless the bucket exists and the credentials may use it (readyz)."""
        try:
            self.connection.meta.client.head_bucket(Bucket=self.bucket_name)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(exc, self.bucket_name) from None

    def url(self, name, parameters=None, expire=None, http_method=None):
        raise NotImplementedError("stored DICOM objects have no URL: they are served by views that check ownership")
