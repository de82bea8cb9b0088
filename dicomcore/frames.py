"""Frames and whole instances for DICOMweb retrieval, read straight from a stored file.

- `read_frames`: one frame at a time, either as stored (a compressed frame's own bytes, or the
  native bytes sliced from the file without decoding) or decoded to native little-endian
  bytes (PS3.18 8.7.3.5.2's application/octet-stream);
- `to_explicit_little_endian`: a whole instance re-encoded (and decompressed) as Explicit VR
  Little Endian, the default transfer syntax of WADO-RS retrieval.

Pure module: pydicom and numpy, no Django. Failures become `rendering.RenderError`s.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import get_expected_length, pack_bits
from pydicom.uid import UID

from .constants import EXPLICIT_LE
from .rendering import RenderError, check_frame, check_native_length, decode_frame, read_attributes

LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


@dataclass(frozen=True)
class PixelLayout:
    """Where the pixel data value starts in the file and how its frames are laid out."""

    ds: Dataset
    transfer_syntax: UID
    value_offset: int | None  # None: the value is not addressable in the file (deflated)
    frames: int
    frame_length: int | None  # native frames of whole bytes only

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax.is_transfer_syntax and self.transfer_syntax.is_compressed


def layout(fp: BinaryIO, max_frame_bytes: int) -> PixelLayout:
    """Read the header and locate the pixel data value (NoPixelData / RenderError when it cannot)."""
    ds = read_attributes(fp)
    check_frame(ds, 0, max_frame_bytes)
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    offset = None
    if ts != pydicom.uid.DeflatedExplicitVRLittleEndian:
        offset = _value_offset(fp, ds)
    frame_length = None
    if not (ts.is_transfer_syntax and ts.is_compressed) and int(ds.get("BitsAllocated", 8) or 8) % 8 == 0:
        frame_length = get_expected_length(ds, "bytes") // frames
    return PixelLayout(ds, ts, offset, frames, frame_length)


def _value_offset(fp: BinaryIO, ds: Dataset) -> int:
    """fp is at the pixel data element (as dcmread(stop_before_pixels=True) leaves it): skip its header."""
    implicit = ds.original_encoding[0] is True
    head = fp.read(8)
    if len(head) < 8:
        raise RenderError("the pixel data element is cut short")
    if implicit:
        return fp.tell()
    vr = head[4:6]
    if vr in LONG_LENGTH_VRS and len(fp.read(4)) < 4:  # 2 reserved bytes, then a 4-byte length
        raise RenderError("the pixel data element is cut short")
    return fp.tell()


def read_frames(fp: BinaryIO, numbers: list[int], *, keep: bool, max_frame_bytes: int) -> Iterator[bytes]:
    """The frames numbered (1-based) in order: as stored when `keep`, else native little-endian bytes.

    All numbers are checked before the first frame is read, so a bad list fails before any output.
    """
    pixels = layout(fp, max_frame_bytes)
    for number in numbers:
        check_frame(pixels.ds, number - 1, max_frame_bytes)
    check_native_length(pixels.ds, max(numbers) - 1)
    for number in numbers:
        yield _frame(fp, pixels, number - 1, keep=keep)


@dataclass(frozen=True)
class StoredPixels:
    """What the catalogue row knows of a stored file's pixel data: enough to find a frame without its header."""

    transfer_syntax: str
    value_offset: int  # where the pixel data value starts (parsing.PixelDataInfo.value_offset)
    file_size: int
    frames: int  # Number of Frames (0 or 1: one frame)
    rows: int | None
    columns: int | None
    samples_per_pixel: int | None
    bits_allocated: int | None
    photometric_interpretation: str


# Native syntaxes whose frames are the file's own bytes in order (big endian and deflated need the header path).
_NATIVE_LITTLE = {pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian}


def read_frames_at(fp: BinaryIO, stored: StoredPixels, numbers: list[int], *, keep: bool, max_frame_bytes: int) -> Iterator[bytes] | None:
    """read_frames without reading the header, from the row's facts: the stored bytes of an encapsulated frame
    (`keep`), or a native little-endian frame of whole bytes sliced from the file; None for anything else (the
    caller then uses read_frames). The same checks, with the same errors, before the first frame."""
    ts = UID(stored.transfer_syntax)
    encapsulated = ts.is_transfer_syntax and ts.is_compressed and ts != pydicom.uid.DeflatedExplicitVRLittleEndian
    bits = stored.bits_allocated or 8
    native = ts in _NATIVE_LITTLE and bits % 8 == 0 and stored.photometric_interpretation.strip() != "YBR_FULL_422"
    known = None not in (stored.rows, stored.columns, stored.samples_per_pixel, stored.bits_allocated)
    if not known or not ((encapsulated and keep) or native):
        return None
    ds = Dataset()  # the attributes check_frame reads, from the row
    ds.Rows, ds.Columns = stored.rows or 0, stored.columns or 0
    ds.SamplesPerPixel, ds.BitsAllocated, ds.NumberOfFrames = stored.samples_per_pixel or 1, bits, max(stored.frames, 1)
    for number in numbers:
        check_frame(ds, number - 1, max_frame_bytes)
    frames = max(stored.frames, 1)
    if encapsulated:
        return _encapsulated_frames(fp, stored.value_offset, frames, numbers)
    frame_length = ds.Rows * ds.Columns * ds.SamplesPerPixel * bits // 8
    available = stored.file_size - stored.value_offset
    if max(numbers) * frame_length > available:  # check_native_length's refusal, before anything is read
        raise RenderError(
            f"the pixel data is shorter than frame {max(numbers)} needs ({available} bytes in the file, {max(numbers) * frame_length} needed)"
        )
    return _native_frames(fp, stored.value_offset, frame_length, numbers)


def _encapsulated_frames(fp: BinaryIO, offset: int, frames: int, numbers: list[int]) -> Iterator[bytes]:
    for number in numbers:
        fp.seek(offset)
        try:
            yield get_frame(fp, number - 1, number_of_frames=frames)
        except Exception as exc:
            raise RenderError(f"frame {number} cannot be read from the stored file ({type(exc).__name__})") from exc


def _native_frames(fp: BinaryIO, offset: int, length: int, numbers: list[int]) -> Iterator[bytes]:
    for number in numbers:
        fp.seek(offset + (number - 1) * length)
        data = fp.read(length)
        if len(data) != length:
            raise RenderError(f"frame {number} is cut short in the stored file")
        yield data


def _frame(fp: BinaryIO, pixels: PixelLayout, index: int, *, keep: bool) -> bytes:
    if keep and pixels.encapsulated and pixels.value_offset is not None:
        fp.seek(pixels.value_offset)
        try:
            return get_frame(fp, index, number_of_frames=pixels.frames)
        except Exception as exc:
            raise RenderError(f"frame {index + 1} cannot be read from the stored file ({type(exc).__name__})") from exc
    little = pixels.ds.original_encoding[1] is not False
    if pixels.frame_length and pixels.value_offset is not None and (keep or little):
        fp.seek(pixels.value_offset + index * pixels.frame_length)
        data = fp.read(pixels.frame_length)
        if len(data) != pixels.frame_length:
            raise RenderError(f"frame {index + 1} is cut short in the stored file")
        return data
    return _decoded(fp, pixels.ds, index)


def _decoded(fp: BinaryIO, ds: Dataset, index: int) -> bytes:
    """Decode one frame and write its samples as native little-endian bytes (1-bit frames packed)."""
    arr = decode_frame(fp, ds, index)
    if int(ds.get("BitsAllocated", 8) or 8) == 1:
        return pack_bits(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def to_explicit_little_endian(fp: BinaryIO, *, max_bytes: int) -> bytes:
    """The whole instance re-encoded as Explicit VR Little Endian, compressed pixel data decoded."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp)
        ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
        if ts.is_transfer_syntax and ts.is_compressed and "PixelData" in ds:
            if get_expected_length(ds, "bytes") > max_bytes:
                raise RenderError(f"decompressed, this instance would exceed {max_bytes} bytes; retrieve it with transfer-syntax=*")
            ds.decompress(generate_instance_uid=False)  # a change of transfer syntax keeps the identity (PS3.5 10)
        ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
        out = io.BytesIO()
        ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except RenderError:
        raise
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:
        raise RenderError(f"this instance cannot be converted to Explicit VR Little Endian ({type(exc).__name__})") from exc
    return out.getvalue()


def can_convert(transfer_syntax: str) -> bool:
    """Whether `to_explicit_little_endian` handles this stored transfer syntax."""
    ts = UID(transfer_syntax)
    # Big endian (retired) is not converted: its OW values would need swapping word by word.
    if not ts.is_transfer_syntax or ts == pydicom.uid.ExplicitVRBigEndian:
        return False
    if not ts.is_compressed:
        return True
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return get_decoder(ts).is_available
    except NotImplementedError:
        return False


def bulk_value(fp: BinaryIO, steps: list[int | str]) -> bytes | None:
    """The bytes of the value at a bulk data path ([tag, item, tag, ...]); None if there is none.

    Binary values are sent as stored; text values as their encoded bytes.
    """
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        current = ds
        for i, step in enumerate(steps):
            if i % 2 == 0:
                tag = int(str(step), 16)
                if tag not in current:
                    return None
                elem = current[tag]
                current = elem.value
            else:
                if not isinstance(current, pydicom.sequence.Sequence) or int(step) >= len(current):
                    return None
                current = current[int(step)]
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:
        raise RenderError(f"the stored file cannot be read ({type(exc).__name__})") from exc
    raw = current
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8")
    if isinstance(raw, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in raw).encode("utf-8")
    return None
