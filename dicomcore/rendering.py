"""Render one frame of a DICOM file to a displayable image (PS3.3 C.11 display pipeline).

frame → modality LUT (rescale or LUT sequence) → VOI (window or LUT, else min-max)
      → MONOCHROME1 inversion → colour (RGB/YBR/palette) → encode (PNG by default)

Pure module: pydicom, numpy and Pillow only; no Django. Every failure becomes a
`RenderError` subclass carrying a clear reason.
"""

from __future__ import annotations

import copy
import io
import struct
from dataclasses import dataclass, replace
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, as_pixel_options, get_decoder, pixel_array
from pydicom.uid import UID

from .parsing import PIXEL_TAGS

# 8192 x 8192 x 4 bytes: larger frames are refused before anything is allocated.
DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024
GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422"})
# zlib level 1: ~3x faster than level 6 for files ~15% larger (measured: python -m bench run png_levels; docs/performance.md).
PNG_COMPRESS_LEVEL = 1
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


class RenderError(Exception):
    """The frame cannot be rendered; `str()` says why (HTTP 422 unless a subclass says otherwise)."""


class NoPixelData(RenderError):
    """The instance has no pixel data at all."""


class FrameOutOfRange(RenderError):
    """The requested frame does not exist."""


class InvalidRenderParameter(ValueError):
    """A request parameter (window, size, format...) is malformed; `str()` says which and why."""


# Common CT windows (center, width) in Hounsfield units.
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "soft-tissue": (50.0, 400.0),
    "abdomen": (60.0, 400.0),
}
PRESET_NAMES = (*PRESETS, "minmax", "default")
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
MAX_OUTPUT_SIDE = 4096
MAX_WINDOW_VALUE = 1e7
MIN_WINDOW_WIDTH = 1e-3


@dataclass(frozen=True)
class Window:
    """A VOI window: center, width and the VOI LUT function (PS3.3 C.11.2.1.2-3)."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class RenderOptions:
    """Everything that changes the rendered bytes; `key()` is its normalised form for caching."""

    frame: int = 0  # 0-based
    window: Window | None = None
    preset: str | None = None  # a PRESETS name, "minmax" or "default" (the file's own VOI)
    size: int | None = None  # fit in size x size
    width: int | None = None
    height: int | None = None
    image_format: str = "png"
    quality: int = 90
    bits: int = 8

    def key(self) -> str:
        window = self.window
        if window is None and self.preset in PRESETS:
            window = Window(*PRESETS[self.preset])
        voi = f"w{window.center:g},{window.width:g},{window.function}" if window else (self.preset or "default")
        box = self.output_box()
        quality = self.quality if self.image_format != "png" else 0
        return f"f{self.frame}|{voi}|{box}|{self.image_format}|q{quality}|b{self.bits}"

    def output_box(self) -> str:
        if self.size:
            return f"{self.size}x{self.size}"
        if self.width or self.height:
            return f"{self.width or 0}x{self.height or 0}"
        return "full"


@dataclass(frozen=True)
class RenderedImage:
    """Encoded image bytes with their media type and size."""

    content: bytes
    media_type: str
    width: int
    height: int


def render(
    fp: BinaryIO,
    options: RenderOptions | None = None,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    **overrides,
) -> RenderedImage:
    """Decode one frame of the file and encode it as a display-ready image.

    `overrides` replace fields of `options` (e.g. `render(fp, frame=2, image_format="jpeg")`).
    """
    options = replace(options or RenderOptions(), **overrides)
    ds = read_attributes(fp)
    check_frame(ds, options.frame, max_frame_bytes)
    check_native_length(ds, options.frame)
    arr = decode_frame(fp, ds, options.frame)
    try:
        image = to_display(arr, ds, options)
    except (RenderError, MemoryError):
        raise
    except Exception as exc:
        raise RenderError(f"the image attributes cannot be applied ({type(exc).__name__})") from exc
    image = resize(image, options)
    return encode(image, options.image_format, quality=options.quality)


def _is_deflated(ds: Dataset) -> bool:
    return str(ds.file_meta.get("TransferSyntaxUID", "")) == pydicom.uid.DeflatedExplicitVRLittleEndian


def decode_frame(fp: BinaryIO, ds: Dataset, frame: int) -> np.ndarray:
    """Decode one frame (0-based) of the file whose header `ds` was read; every failure is a RenderError."""
    at = getattr(ds, "_pixel_element_at", None)
    if at is not None and not _is_deflated(ds):
        try:
            return _decode_at(fp, ds, frame, at)
        except (MemoryError, RecursionError) as exc:
            raise RenderError(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException:  # noqa: BLE001 - the path below decides, and words the failure
            pass
    fp.seek(0)
    try:
        if _is_deflated(ds):
            # pixel_array(file) cannot seek inside a deflated stream: decode from a full read
            # (its inflated size was bounded when the file was accepted).
            return pixel_array(pydicom.dcmread(fp), index=frame)
        return _decode_frame(fp, frame)
    except (MemoryError, RecursionError) as exc:
        raise RenderError(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    # Codecs raise many types on unsupported or corrupt input (NotImplementedError, RuntimeError,
    # ValueError, struct.error...); Rust codecs (pylibjpeg-rle) panic with pyo3's PanicException,
    # a BaseException. All of them mean the frame cannot be shown.
    except BaseException as exc:
        raise RenderError(_decode_failure(ds, exc)) from exc


def read_attributes(fp: BinaryIO) -> Dataset:
    """The header without pixel data (NoPixelData if there is none, RenderError if unreadable)."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        if _is_deflated(ds):
            # The reader's position is inside the inflated stream: look for pixel data in a full read.
            fp.seek(0)
            has_pixels = any(tag in pydicom.dcmread(fp, defer_size=1024) for tag in PIXEL_TAGS)
        else:
            here = fp.tell()
            head = fp.read(4)
            fp.seek(0, 2)
            ds._bytes_after_header = fp.tell() - here  # an upper bound of the pixel data's length
            ds._pixel_element_at = here  # where decode_frame finds the pixel data element again
            fp.seek(here)
            has_pixels = len(head) == 4 and (
                int.from_bytes(head[:2], "little") == 0x7FE0 or int.from_bytes(head[:2], "big") == 0x7FE0
            )
    except Exception as exc:
        raise RenderError(f"the stored file cannot be read ({type(exc).__name__})") from exc
    if not has_pixels:
        raise NoPixelData("this instance has no pixel data")
    return ds


_PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}


def _decode_at(fp: BinaryIO, ds: Dataset, frame: int, at: int) -> np.ndarray:
    """One frame decoded by pydicom's decoder from the pixel data element at `at`, with the options of the header
    already read (`ds`): what pixel_array(file) does, without reading the header a second time (it was 2 of the
    7.5 ms of a cold render of the bench's CT). Any failure sends decode_frame to pixel_array(file)."""
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    fp.seek(at)
    head = fp.read(8)
    little = "<" if ts.is_little_endian else ">"
    if ts.is_implicit_VR:
        group, element, _ = struct.unpack(f"{little}HHL", head)
        opts = as_pixel_options(ds, transfer_syntax_uid=ts)
    else:
        group, element, vr, _ = struct.unpack(f"{little}HH2sH", head)
        fp.read(4)
        opts = as_pixel_options(ds, transfer_syntax_uid=ts)
        opts["pixel_vr"] = vr.decode("ascii")
    opts["pixel_keyword"] = _PIXEL_KEYWORDS[(group << 16) | element]
    arr, _ = get_decoder(ts).as_array(fp, index=frame, validate=True, **opts)
    return arr


def _decode_frame(fp: BinaryIO, frame: int) -> np.ndarray:
    """Decode one frame straight from the file; if that fails, once more from a full read.

    pixel_array(file) re-reads the header strictly in the declared transfer syntax, while dcmread
    (used at upload) copes with a data set whose VR encoding differs from it, e.g. implicit VR
    under an encapsulated syntax (pydicom's SC_rgb_jpeg.dcm). A corrupt frame fails again in
    the retry and is reported as before.
    """
    try:
        return pixel_array(fp, index=frame, ds_out=Dataset())
    except (MemoryError, RecursionError):
        raise
    except Exception:  # noqa: BLE001 - see the docstring
        fp.seek(0)
        return pixel_array(pydicom.dcmread(fp), index=frame)


PALETTE_LUT_DATA = tuple(f"{colour}PaletteColorLookupTableData" for colour in ("Red", "Green", "Blue", "Alpha"))


def _palette_in_native_order(ds: Dataset) -> Dataset:
    """A copy whose palette LUT data are in the machine's byte order, as pydicom's apply_color_lut reads them.

    apply_color_lut (pydicom 3.0.2) reads non-segmented LUT data in native order, but in a Big
    Endian data set those OW values are big-endian 16-bit words (PS3.5 7.3). Segmented palettes
    are already read in the data set's byte order.
    """
    if ds.original_encoding[1] is not False or "RedPaletteColorLookupTableData" not in ds:
        return ds
    native = copy.deepcopy(ds)  # the header only: it was read without pixel data
    for keyword in PALETTE_LUT_DATA:
        raw = ds.get(keyword)
        if isinstance(raw, bytes) and len(raw) % 2 == 0:
            setattr(native, keyword, np.frombuffer(raw, ">u2").astype(np.uint16).tobytes())
    return native


def check_frame(ds: Dataset, frame: int, max_frame_bytes: int) -> None:
    """Refuse out-of-range frames and frames too big to allocate, before decoding anything."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:
        raise RenderError("the image attributes (Rows, Columns, BitsAllocated...) are missing or invalid") from exc
    if rows <= 0 or columns <= 0:
        raise RenderError(f"the image has no pixels ({rows} x {columns})")
    frames = max(frames, 1)
    if not 0 <= frame < frames:
        raise FrameOutOfRange(f"frame {frame + 1} does not exist; this instance has {frames} frame(s)")
    # The decoded array is at least 8 bytes/sample in float during the pipeline; the cap is on the frame itself.
    frame_bytes = rows * columns * samples * max(1, (bits + 7) // 8)
    if frame_bytes > max_frame_bytes:
        raise RenderError(
            f"the frame is too large to render ({rows} x {columns} x {samples} samples, {frame_bytes} bytes; limit {max_frame_bytes})"
        )


def check_native_length(ds: Dataset, frame: int) -> None:
    """Refuse a native (uncompressed) frame that the file is too short to hold, before pydicom
    allocates the frame it claims (a 2 KB file claiming 8192 x 8192 would cost 128 MiB per request)."""
    available = getattr(ds, "_bytes_after_header", None)
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if available is None or not ts.is_transfer_syntax or ts.is_compressed:
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    pixels_per_frame = rows * columns * samples
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        pixels_per_frame = pixels_per_frame * 2 // 3  # two chroma samples shared by each pair of pixels
    needed = ((frame + 1) * pixels_per_frame * bits + 7) // 8  # 1-bit frames are packed across frames
    if needed > available:
        raise RenderError(
            f"the pixel data is shorter than frame {frame + 1} needs ({available} bytes in the file, {needed} needed)"
        )


def _decode_failure(ds: Dataset, exc: BaseException) -> str:
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    name = ts.name if ts.is_valid else str(ts)
    text = str(exc).lower()
    # pydicom says "...no plugins available" when nothing can decode the syntax, but "exceptions
    # were raised by all available plugins" when decoders exist and the data itself is bad.
    if isinstance(exc, (NotImplementedError, RuntimeError)) and "plugin" in text and "raised by all" not in text:
        return f"pixel data in transfer syntax {name} ({ts}) cannot be decoded here"
    if "raised by all" in text:
        return f"the pixel data is corrupt or truncated and cannot be decoded (transfer syntax {name})"
    return f"the pixel data cannot be decoded ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}; transfer syntax {name})"


def to_display(arr: np.ndarray, ds: Dataset, options: RenderOptions | None = None) -> Image.Image:
    """Apply the display pipeline to one decoded frame: an 8-bit (or 16-bit grey) Pillow image."""
    options = options or RenderOptions()
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, _palette_in_native_order(ds))
        except Exception as exc:
            raise RenderError(f"the palette colour lookup table is invalid ({type(exc).__name__})") from exc
        return _colour_image(_to_uint8_colour(rgb, 16 if rgb.dtype == np.uint16 else 8), options)
    if arr.ndim == 3 or photometric in COLOUR:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise RenderError(f"colour image with an unexpected shape {arr.shape}")
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
        return _colour_image(_to_uint8_colour(arr, bits), options)
    if photometric not in GREY:
        raise RenderError(f"photometric interpretation {photometric or '(none)'} is not supported")
    lut = _grey_lookup_table(arr, ds, options, photometric)
    if lut is not None:
        table, low = lut
        index = arr.astype(np.int32) - low if low else arr
        return Image.fromarray(table[index], "L" if options.bits == 8 else None)
    return Image.fromarray(_grey_levels(arr, ds, options, photometric), "L" if options.bits == 8 else None)


def _grey_levels(values: np.ndarray, ds: Dataset, options: RenderOptions, photometric: str) -> np.ndarray:
    """The grey pipeline (modality LUT, VOI, MONOCHROME1 inversion) to output levels, value by value."""
    unit = grey_to_unit(values, ds, options)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    if options.bits == 16:
        return np.rint(unit * 65535.0).astype(np.uint16)
    return np.rint(unit * 255.0).astype(np.uint8)


def _grey_lookup_table(arr: np.ndarray, ds: Dataset, options: RenderOptions, photometric: str) -> tuple[np.ndarray, int] | None:
    """For an integer frame shown through a linear window, the pipeline applied once to each stored value from the
    frame's lowest to its highest (the table) and that lowest value; None where the pipeline is not value by value
    (a min-max stretch depends on which values the frame holds, a sigmoid's exp is left to the direct path) or a
    table would not be smaller than the frame. Every step is elementwise, so frame[i] -> table[frame[i] - low] gives
    the very levels of the direct path (a test compares both on the corpora). The bench's 512 x 512 CT: 1.83-1.86 ms
    value by value, 0.82-0.84 ms through the table (to the PIL image included); a cold WADO-RS rendered request
    in-process 9.6-9.9 -> 7.5-7.8 ms."""
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        return None
    window = _chosen_window(ds, options)
    if window is None or window.function == "SIGMOID":
        return None
    low, high = int(arr.min()), int(arr.max())
    if high - low + 1 > arr.size // 4:
        return None
    domain = np.arange(low, high + 1, dtype=arr.dtype).reshape(1, -1)
    return _grey_levels(domain, ds, options, photometric)[0], low


def _chosen_window(ds: Dataset, options: RenderOptions) -> Window | None:
    """The window grey_to_unit applies, when it applies one (not min-max, not a VOI LUT table)."""
    if options.preset == "minmax":
        return None
    if options.window is not None:
        return options.window
    if options.preset in PRESETS:
        return Window(*PRESETS[options.preset])
    return first_window(ds)


def _colour_image(rgb: np.ndarray, options: RenderOptions) -> Image.Image:
    if options.bits == 16:
        raise RenderError("bits=16 is only for greyscale images; this one is colour")
    return Image.fromarray(rgb, "RGB")


def grey_to_unit(arr: np.ndarray, ds: Dataset, options: RenderOptions | None = None) -> np.ndarray:
    """Modality LUT then VOI, giving float32 values in [0, 1] (0 = black before MONOCHROME1 inversion).

    VOI order: the requested window or preset; else the file's first window (with its VOI LUT
    function); else the first VOI LUT Sequence item; else the frame's min-max.
    """
    options = options or RenderOptions()
    values = apply_modality_lut(arr, ds)
    if options.preset == "minmax":
        return min_max(values)
    window = _chosen_window(ds, options)
    if window is not None:
        return apply_window(values, window)
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        try:
            descriptor = ds.VOILUTSequence[0].LUTDescriptor
            out = apply_voi(values, ds, index=0).astype(np.float64)
            bits = int(descriptor[2]) if len(descriptor) > 2 else 16
            bits = bits if 1 <= bits <= 16 else 16
            return np.clip(out / float(2**bits - 1), 0.0, 1.0).astype(np.float32)
        except Exception:  # noqa: BLE001 - a broken VOI LUT falls back to min-max
            pass
    return min_max(values)


def _first_number(value) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def first_window(ds: Dataset) -> Window | None:
    """The file's first Window Center/Width with its VOI LUT Function, or None when absent or unusable."""
    try:
        center = ds.get("WindowCenter")
        width = ds.get("WindowWidth")
        if center is None or width is None:
            return None
        center, width = _first_number(center), _first_number(width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in WINDOW_FUNCTIONS.values():
        function = "LINEAR"
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return Window(center, width, function)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), mapped to [0, 1]."""
    x = values.astype(np.float32, copy=False)
    c, w = np.float32(window.center), np.float32(window.width)
    if window.function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -80.0, 80.0)))
    elif window.function == "LINEAR_EXACT":
        out = (x - c) / w + 0.5
    else:
        out = (x - (c - 0.5)) / max(w - 1.0, np.float32(1e-6)) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window to [0, 1]."""
    return apply_window(values, Window(center, width, "LINEAR"))


def min_max(values: np.ndarray) -> np.ndarray:
    """Stretch the frame's own range to [0, 1]; a flat frame becomes black."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.float32)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _to_uint8_colour(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(arr)
    bits = max(1, min(int(bits), 32))
    scaled = arr.astype(np.float64) * (255.0 / float(2**bits - 1))
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def output_size(width: int, height: int, options: RenderOptions) -> tuple[int, int]:
    """The output size: fit in size x size (or width x height), keeping the aspect ratio."""
    box_w = options.size or options.width
    box_h = options.size or options.height
    if not box_w and not box_h:
        return width, height
    scale = min(box_w / width if box_w else np.inf, box_h / height if box_h else np.inf)
    # One side alone must not drag the other beyond the cap (a 1 x 4096 frame asked for width=4096).
    scale = min(scale, MAX_OUTPUT_SIDE / width, MAX_OUTPUT_SIDE / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: Image.Image, options: RenderOptions) -> Image.Image:
    """Resample to the requested size (Lanczos, with a fast integer pre-reduction when shrinking a lot)."""
    target = output_size(image.width, image.height, options)
    if target == image.size:
        return image
    if image.mode == "I;16":  # Pillow resamples 16-bit grey in 32-bit float mode
        floats = image.convert("F").resize(target, Image.Resampling.LANCZOS)
        return Image.fromarray(np.clip(np.rint(np.asarray(floats)), 0, 65535).astype(np.uint16))
    return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(image: Image.Image, image_format: str = "png", *, quality: int = 90) -> RenderedImage:
    """Encode a Pillow image as PNG (fast compression), JPEG or WebP."""
    if image_format not in FORMATS:
        raise RenderError(f"unknown image format '{image_format}'; use one of {', '.join(FORMATS)}")
    pil_format, media_type = FORMATS[image_format]
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, pil_format, compress_level=PNG_COMPRESS_LEVEL)
    else:
        if image.mode not in ("L", "RGB"):
            raise RenderError(f"{image_format} cannot hold a {image.mode} image; use format=png")
        image.save(buffer, pil_format, quality=quality)
    return RenderedImage(buffer.getvalue(), media_type, image.width, image.height)
