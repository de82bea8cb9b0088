"""Staging uploads: stream bytes to a temporary file while hashing, with a size cap.

Every way a file arrives (multipart part, raw `application/dicom` body, a file on disk
for `import_dicom`) becomes a `StagedFile`: a temporary file plus the SHA-256 of the
bytes as they will be stored and the size. Memory stays flat whatever the file size.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from dicomcore.constants import CHUNK_SIZE
from dicomcore.parsing import StoredBytesHasher

from .errors import UploadTooLarge


class StagedFile(TemporaryUploadedFile):
    """A temporary file with the running SHA-256 (preamble zeroed) and size of what was written."""

    file: BinaryIO  # the binary NamedTemporaryFile TemporaryUploadedFile opens (never None)
    size: int  # 0 until finish() sets the bytes written

    def __init__(self, name: str, content_type: str = "application/dicom", max_bytes: int | None = None) -> None:
        # The client's name is only data (`original_name`); it never names anything on disk.
        super().__init__("upload.dcm", content_type, 0, None)
        self.original_name = clean_filename(name)
        self._hasher = StoredBytesHasher()
        self.max_bytes = max_bytes if max_bytes is not None else settings.DICOM_MAX_UPLOAD_BYTES

    def append(self, chunk: bytes) -> None:
        if self._hasher.size + len(chunk) > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        self._hasher.update(chunk)
        self.file.write(chunk)

    def finish(self) -> StagedFile:
        self.file.flush()
        self.file.seek(0)
        self.size = self._hasher.size
        return self

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()


def clean_filename(name: str | None) -> str:
    """The last path component of a client filename, without control characters, at most 255 chars."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:255]


class Readable(Protocol):
    """What stage_stream reads from: a request body, an open file, a zip member, a DIMSE data set."""

    def read(self, size: int, /) -> bytes: ...


def stage_stream(stream: Readable, name: str = "", *, max_bytes: int | None = None) -> StagedFile:
    """Copy a readable stream into a StagedFile in chunks, refusing it beyond `max_bytes`."""
    staged = StagedFile(name, max_bytes=max_bytes)
    try:
        while chunk := stream.read(CHUNK_SIZE):
            staged.append(chunk)
    except BaseException:
        staged.close()
        raise
    return staged.finish()


def as_staged(upload) -> StagedFile:
    """`upload` as a StagedFile: as it is when our upload handler staged it, else copied into one
    (a small in-memory multipart part, an admin form's file)."""
    if isinstance(upload, StagedFile):
        return upload
    return stage_stream(upload, getattr(upload, "original_name", "") or upload.name or "")


class StagingUploadHandler(FileUploadHandler):
    """Django upload handler writing each multipart file part into a StagedFile."""

    chunk_size = CHUNK_SIZE

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.staged = StagedFile(self.file_name or "", self.content_type or "application/octet-stream")

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        try:
            self.staged.append(raw_data)
        except UploadTooLarge:
            self.staged.close()
            raise
        return None

    def file_complete(self, file_size: int) -> StagedFile:
        return self.staged.finish()

    def upload_interrupted(self) -> None:
        if hasattr(self, "staged"):
            self.staged.close()
