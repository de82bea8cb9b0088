"""Where bulk imports find their files: folder trees, zip archives and DICOMDIR media.

`walk(paths)` yields one `Source` per candidate file (a file on disk or a zip member, read
without extracting the archive), one `Skipped` for everything that is not a DICOM instance
(README.TXT, the DICOMDIR index itself, nested archives) and one `Refused` for what must not
be read (an archive over its limits, unsafe paths, suspiciously compressed or encrypted members). Zip archives are checked by `ZipLimits` before any
member is read, so a zip bomb is refused rather than expanded.

Pure module: standard library and pydicom only, no Django.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

import pydicom

from .constants import CHUNK_SIZE, DICM, PREAMBLE_LENGTH
from .parsing import InvalidDicom, NotAnInstance, ParsedDicom, StoredBytesHasher, parse_dicom

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"


@dataclass(frozen=True)
class ZipLimits:
    """Caps checked against a zip's central directory before anything is decompressed."""

    max_members: int = 10_000
    max_total_bytes: int = 8 * 1024**3
    max_ratio: float = 200.0  # uncompressed / compressed, per member
    max_member_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class Source:
    """A file to import: on disk (`path`) or a member of a zip (`archive` + `member`)."""

    label: str  # what reports show
    size: int
    path: Path | None = None
    archive: Path | None = None
    member: str | None = None

    def open(self) -> IO[bytes]:
        if self.path is not None:
            return open(self.path, "rb")
        if self.archive is None or self.member is None:
            raise ValueError("this source is a member of an uploaded archive; read it from that archive")
        return open_member(self.archive, self.member)


@dataclass(frozen=True)
class Skipped:
    """A file that is not imported, and why."""

    label: str
    reason: str


class UnsafeArchive(ValueError):
    """The zip archive as a whole is refused (too many members, too large, unreadable)."""


def walk(paths: Iterable[str | os.PathLike], *, zip_limits: ZipLimits = ZipLimits()) -> Iterator[Source | Skipped | Refused]:
    """Every candidate file under `paths` (files, folders walked recursively in name order, zips)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield from _file(Path(folder) / name, zip_limits)
        elif path.exists():
            if path.name.upper() == "DICOMDIR":
                yield from dicomdir_files(path)
            yield from _file(path, zip_limits)
        else:
            yield Skipped(str(path), "no such file or folder")


def _file(path: Path, zip_limits: ZipLimits) -> Iterator[Source | Skipped | Refused]:
    label = str(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            yield Skipped(label, "not a regular file")
            return
        with open(path, "rb") as handle:
            head = handle.read(PREAMBLE_LENGTH + len(DICM))
    except OSError as exc:
        yield Skipped(label, f"cannot be read ({exc.strerror or type(exc).__name__})")
        return
    if head[:4] in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
        yield from zip_members(path, label=label, limits=zip_limits)
        return
    kind = classify(head, path.name)
    if kind:
        yield Skipped(label, kind)
        return
    yield Source(label=label, size=info.st_size, path=path)


def classify(head: bytes, name: str) -> str:
    """Why a file is not a DICOM instance to import, from its first 132 bytes ("" if it may be one)."""
    if not head:
        return "empty file"
    if head[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] != DICM:
        return "not a DICOM Part-10 file (no DICM prefix)"
    if name.upper() == "DICOMDIR":
        return "DICOMDIR: the media index, not an image; the files it lists are imported themselves"
    return ""


def dicomdir_files(path: Path) -> Iterator[Source | Skipped]:
    """The files a DICOMDIR lists (ReferencedFileID, relative to its folder), when it is given by name."""
    try:
        directory = pydicom.dcmread(path, stop_before_pixels=True)
        records = directory.get("DirectoryRecordSequence") or []
    except Exception as exc:  # noqa: BLE001 - an unreadable index is reported, never fatal
        yield Skipped(str(path), f"DICOMDIR cannot be read ({type(exc).__name__})")
        return
    root = path.parent.resolve()
    for record in records:
        parts = record.get("ReferencedFileID")
        if not parts:
            continue
        parts = [parts] if isinstance(parts, str) else list(parts)
        target = (root.joinpath(*[str(p) for p in parts])).resolve()
        label = str(target)
        if not target.is_relative_to(root):
            yield Skipped(label, "DICOMDIR entry points outside its folder")
        elif not target.is_file():
            yield Skipped(label, "listed in DICOMDIR but missing")
        else:
            yield Source(label=label, size=target.stat().st_size, path=target)


def zip_members(archive: Path | BinaryIO, *, label: str, limits: ZipLimits) -> Iterator[Source | Skipped | Refused]:
    """The members of a zip, after the whole archive passed `limits`; unsafe members are Skipped.

    `archive` is a path (members are re-opened by path later) or an open binary file (members
    are then read from it by `open_member`).
    """
    try:
        infos = check_zip(archive, limits)
    except UnsafeArchive as exc:
        yield Refused(label, str(exc))
        return
    for info in infos:
        member_label = f"{label}/{info.filename}"
        reason = member_problem(info, limits)
        if reason:  # hostile or unreadable: refused (counts for --strict)
            yield Refused(member_label, reason)
            continue
        reason = member_not_an_instance(info)
        if reason:
            yield Skipped(member_label, reason)
            continue
        if isinstance(archive, Path):
            yield Source(label=member_label, size=info.file_size, archive=archive, member=info.filename)
        else:
            yield Source(label=member_label, size=info.file_size, member=info.filename)


def check_zip(archive: Path | BinaryIO, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The archive's file members, or UnsafeArchive if the archive as a whole breaks a limit."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [info for info in zf.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnsafeArchive(f"not a readable zip archive ({exc})") from exc
    if len(infos) > limits.max_members:
        raise UnsafeArchive(f"the archive has {len(infos)} members; the limit is {limits.max_members}")
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise UnsafeArchive(f"the archive would expand to {total} bytes; the limit is {limits.max_total_bytes}")
    return infos


def member_problem(info: zipfile.ZipInfo, limits: ZipLimits) -> str:
    """Why a zip member must not be read ("" if it may)."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        return "unsafe path in archive (absolute or '..')"
    if info.flag_bits & 0x1:
        return "encrypted archive member"
    if info.file_size > limits.max_member_bytes:
        return f"member expands to {info.file_size} bytes; the limit is {limits.max_member_bytes}"
    if info.file_size and info.file_size / max(info.compress_size, 1) > limits.max_ratio:
        return f"compression ratio {info.file_size / max(info.compress_size, 1):.0f}:1 exceeds {limits.max_ratio:.0f}:1 (zip bomb?)"
    return ""


def member_not_an_instance(info: zipfile.ZipInfo) -> str:
    """Why a (safe) zip member is skipped without reading it ("" if it may be an instance)."""
    if PurePosixPath(info.filename).name.upper() == "DICOMDIR":
        return "DICOMDIR: the media index, not an image; the files it lists are imported themselves"
    if info.filename.lower().endswith(".zip"):
        return "nested archive (not expanded)"
    return ""


def open_member(archive: Path, member: str) -> IO[bytes]:
    """A readable stream of one zip member; zipfile stops at the declared size and checks the CRC.

    The archive's ZipFile is kept open per process (import workers read many members of the
    same archive; re-reading its central directory for each would cost O(members²)).
    """
    info = os.stat(archive)
    return _archive(str(archive), info.st_mtime_ns, info.st_size).open(member)


@lru_cache(maxsize=4)
def _archive(path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:  # mtime and size: a changed file is reopened
    return zipfile.ZipFile(path)


# --- preparing a file for the catalogue (runs in import worker processes) ----------------------



@dataclass(frozen=True)
class Prepared:
    """A source read, hashed (as it will be stored) and parsed; `path` holds its bytes.

    `temporary` means `path` is a copy made for this import (a zip member) that the caller removes.
    """

    label: str
    path: str
    temporary: bool
    sha256: str
    size: int
    parsed: ParsedDicom

    @property
    def original_name(self) -> str:
        """The file's own name (kept as data on the instance, never as a storage key)."""
        return PurePosixPath(self.label.replace("\\", "/")).name


@dataclass(frozen=True)
class Refused:
    """A source that is not a valid DICOM instance, and why."""

    label: str
    reason: str
    skipped: bool = False  # not an instance at all (a DICOMDIR), rather than a broken one


def worker_init() -> None:
    """Import worker setup: Ctrl-C is the parent's to handle (it stops and cleans up after us);
    pydicom's warnings quote header values (patient data), so they are not printed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def prepare(source: Source, *, max_bytes: int, max_inflated_bytes: int, temp_dir: str | None = None) -> Prepared | Refused:
    """Hash and parse one source. Zip members are first copied to a temporary file in `temp_dir`."""
    if source.size > max_bytes:
        return Refused(source.label, f"the file is larger than the limit of {max_bytes} bytes")
    temporary = None
    try:
        hasher = StoredBytesHasher()
        with source.open() as stream:
            if source.path is not None:
                path = str(source.path)
                while chunk := stream.read(CHUNK_SIZE):
                    hasher.update(chunk)
            else:
                # Named before the copy starts, so that the cleanup below finds it whatever happens.
                handle = tempfile.NamedTemporaryFile(prefix="import-", suffix=".dcm", dir=temp_dir, delete=False)  # noqa: SIM115
                temporary = path = handle.name
                with handle:
                    while chunk := stream.read(CHUNK_SIZE):
                        if hasher.size + len(chunk) > max_bytes:
                            raise InvalidDicom(f"the file is larger than the limit of {max_bytes} bytes")
                        hasher.update(chunk)
                        handle.write(chunk)
        with open(path, "rb") as stored:
            if source.path is None:  # files on disk were classified by walk(); zip members only now
                reason = classify(stored.read(PREAMBLE_LENGTH + len(DICM)), PurePosixPath(source.member or "").name)
                if reason:
                    _remove(temporary)
                    return Refused(source.label, reason, skipped=True)
                stored.seek(0)
            parsed = parse_dicom(stored, max_inflated_bytes=max_inflated_bytes)
    except InvalidDicom as exc:
        _remove(temporary)
        return Refused(source.label, str(exc), skipped=isinstance(exc, NotAnInstance))
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        _remove(temporary)
        return Refused(source.label, f"cannot be read ({type(exc).__name__}: {exc})")
    except BaseException:
        _remove(temporary)
        raise
    return Prepared(source.label, path, temporary is not None, hasher.hexdigest(), hasher.size, parsed)


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
