"""`render` on real files, checked against an independent computation from pydicom's pixel_array."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomcore import parsing, rendering
from dicomcore.rendering import FrameOutOfRange, NoPixelData, RenderError, encode, render

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, pydicom_data_dir


def data_file(name: str) -> Path:
    """A file from pydicom's test files or pydicom-data; fails loudly if it is not installed."""
    for folder in (PYDICOM_TEST_FILES, pydicom_data_dir()):
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} is in neither {PYDICOM_TEST_FILES} nor {pydicom_data_dir()}")


def as_bytes(ds: Dataset, *, enforce: bool = True) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=enforce)
    return buffer.getvalue()


def rendered(source: Path | bytes, **kwargs) -> tuple[rendering.RenderedImage, Image.Image, np.ndarray]:
    """Render a path or file bytes; return the result, the decoded Pillow image and its pixels."""
    if isinstance(source, Path):
        with open(source, "rb") as fp:
            result = render(fp, **kwargs)
    else:
        result = render(io.BytesIO(source), **kwargs)
    image = Image.open(io.BytesIO(result.content))
    image.load()
    return result, image, np.asarray(image)


def render_error(source: Path | bytes, **kwargs) -> RenderError:
    with pytest.raises(RenderError) as caught:
        rendered(source, **kwargs)
    return caught.value


# --- independent reference computations (PS3.3 C.11) -------------------------------------------


def modality_values(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return arr.astype(np.float64) * slope + intercept


def window_to_8bit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin, clipped."""
    low_edge = center - 0.5 - (width - 1) / 2
    high_edge = center - 0.5 + (width - 1) / 2
    inside = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    out = np.where(values <= low_edge, 0.0, np.where(values > high_edge, 255.0, inside))
    return np.clip(np.round(out), 0, 255).astype(np.int32)


def min_max_to_8bit(values: np.ndarray) -> np.ndarray:
    lo, hi = values.min(), values.max()
    return np.round((values - lo) / (hi - lo) * 255.0).astype(np.int32)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def ct_small_with(**attributes) -> bytes:
    ds = pydicom.dcmread(CT_SMALL)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return as_bytes(ds)


# --- greyscale ----------------------------------------------------------------------------------------


def test_ct_small_renders_as_an_8_bit_greyscale_png_of_its_size() -> None:
    result, image, pixels = rendered(CT_SMALL)
    assert result.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert result.media_type == "image/png"
    assert (result.width, result.height) == (128, 128)
    assert image.format == "PNG"
    assert image.mode == "L"
    assert image.size == (128, 128)
    assert pixels.dtype == np.uint8


def test_ct_small_without_a_window_renders_min_max_from_its_rescaled_values() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    assert "WindowCenter" not in ds and "WindowWidth" not in ds and "VOILUTSequence" not in ds
    values = modality_values(ds, ds.pixel_array)
    _, _, pixels = rendered(CT_SMALL)
    assert max_abs_diff(pixels, min_max_to_8bit(values)) <= 1
    assert pixels.flat[int(np.argmin(values))] == 0
    assert pixels.flat[int(np.argmax(values))] == 255
    assert len(np.unique(pixels)) > 100


def test_ct_small_with_a_window_renders_the_first_window_by_the_ps3_3_linear_formula() -> None:
    data = ct_small_with(WindowCenter=[40, 300], WindowWidth=[400, 1500])
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    values = modality_values(ds, ds.pixel_array)
    expected_first = window_to_8bit(values, 40, 400)
    expected_second = window_to_8bit(values, 300, 1500)
    _, image, pixels = rendered(data)
    assert image.mode == "L"
    assert max_abs_diff(pixels, expected_first) <= 1
    assert max_abs_diff(pixels, expected_second) > 10  # the first pair is used, not the second
    # the window really clips on both sides and grades in between
    assert (pixels == 0).any() and (pixels == 255).any() and ((pixels > 0) & (pixels < 255)).any()


def test_mr_small_renders_with_its_own_window() -> None:
    path = data_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert (center, width) == (600.0, 1600.0)
    _, _, pixels = rendered(path)
    assert max_abs_diff(pixels, window_to_8bit(modality_values(ds, ds.pixel_array), center, width)) <= 1


@pytest.mark.parametrize(
    "window", [{}, {"WindowCenter": 40, "WindowWidth": 400}], ids=["min-max", "windowed"]
)
def test_monochrome1_renders_as_the_inverse_of_monochrome2(window: dict) -> None:
    _, _, mono2 = rendered(ct_small_with(**window))
    _, image, mono1 = rendered(ct_small_with(PhotometricInterpretation="MONOCHROME1", **window))
    assert image.mode == "L"
    assert max_abs_diff(mono1, 255 - mono2.astype(np.int32)) <= 1
    assert max_abs_diff(mono1, mono2) > 100


def test_an_unsupported_photometric_interpretation_is_a_render_error() -> None:
    error = render_error(ct_small_with(PhotometricInterpretation="HSV"))
    assert "photometric interpretation HSV is not supported" in str(error)


# --- colour ------------------------------------------------------------------------------------------------


def test_rgb_file_renders_rgb_with_pydicoms_pixel_values() -> None:
    path = data_file("SC_rgb.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == 8
    result, image, pixels = rendered(path)
    assert image.mode == "RGB"
    assert image.size == (ds.Columns, ds.Rows) == (result.width, result.height)
    assert tuple(pixels[5, 5]) == (255, 0, 0)  # the red band at the top
    assert tuple(pixels[50, 50]) == tuple(ds.pixel_array[50, 50]) == (128, 128, 255)
    assert np.array_equal(pixels, ds.pixel_array)


def test_16_bit_rgb_file_is_scaled_to_8_bits() -> None:
    path = data_file("SC_rgb_16bit.dcm")
    ds = pydicom.dcmread(path)
    assert ds.BitsStored == 16
    expected = np.round(ds.pixel_array.astype(np.float64) * 255.0 / 65535.0).astype(np.int32)
    _, image, pixels = rendered(path)
    assert image.mode == "RGB"
    assert max_abs_diff(pixels, expected) <= 1
    assert tuple(pixels[5, 5]) == (255, 0, 0)


def test_palette_colour_file_renders_rgb_through_its_lookup_tables() -> None:
    path = data_file("OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    entries, first_mapped, bits = ds.RedPaletteColorLookupTableDescriptor
    assert (entries, first_mapped, bits) == (256, 0, 16)
    luts = [
        np.frombuffer(ds[keyword].value, "<u2")
        for keyword in ("RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData")
    ]
    index = np.clip(ds.pixel_array.astype(np.int64) - first_mapped, 0, entries - 1)
    expected16 = np.stack([lut[index] for lut in luts], axis=-1).astype(np.float64)
    expected = np.round(expected16 * 255.0 / 65535.0).astype(np.int32)
    result, image, pixels = rendered(path)
    assert image.mode == "RGB"
    assert (result.width, result.height) == (ds.Columns, ds.Rows) == (800, 600)
    assert max_abs_diff(pixels, expected) <= 1
    assert (pixels[..., 0] != pixels[..., 2]).any()  # really colour, not grey


# --- frames ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emri() -> tuple[Path, np.ndarray]:
    path = data_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 10
    return path, modality_values(ds, ds.pixel_array)


@pytest.mark.parametrize("frame", [0, 5, 9])
def test_frame_selection_renders_the_requested_frame(emri: tuple[Path, np.ndarray], frame: int) -> None:
    path, values = emri
    _, image, pixels = rendered(path, frame=frame)
    assert image.size == (64, 64)
    assert max_abs_diff(pixels, min_max_to_8bit(values[frame])) <= 1


def test_frames_0_and_5_of_a_multi_frame_file_differ(emri: tuple[Path, np.ndarray]) -> None:
    path, _ = emri
    _, _, first = rendered(path, frame=0)
    _, _, sixth = rendered(path, frame=5)
    assert max_abs_diff(first, sixth) > 50


@pytest.mark.parametrize("frame", [10, 99, -1])
def test_a_frame_outside_the_instance_is_frame_out_of_range(emri: tuple[Path, np.ndarray], frame: int) -> None:
    error = render_error(emri[0], frame=frame)
    assert isinstance(error, FrameOutOfRange)
    assert "this instance has 10 frame(s)" in str(error)


def test_frame_1_of_a_single_frame_file_is_out_of_range() -> None:
    error = render_error(CT_SMALL, frame=1)
    assert isinstance(error, FrameOutOfRange)
    assert "frame 2 does not exist; this instance has 1 frame(s)" in str(error)


# --- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_a_file_without_pixel_data_is_no_pixel_data(name: str) -> None:
    path = data_file(name)
    assert "PixelData" not in pydicom.dcmread(path)
    error = render_error(path)
    assert isinstance(error, NoPixelData)
    assert str(error) == "this instance has no pixel data"


def huge_claim_file() -> bytes:
    """A ~1.5 KB Secondary Capture file whose header claims a 65535 x 65535 16-bit frame."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = 65535
    ds.Columns = 65535
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OW", bytes(1024))
    return as_bytes(ds)


def test_a_small_file_claiming_a_huge_frame_is_refused_before_allocating() -> None:
    data = huge_claim_file()
    assert len(data) <= 2048
    assert parsing.parse_dicom(io.BytesIO(data)).rows == 65535  # it is a valid upload
    tracemalloc.start()
    try:
        with pytest.raises(RenderError) as caught:
            render(io.BytesIO(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(caught.value) is RenderError
    assert "the frame is too large to render (65535 x 65535 x 1 samples, 8589672450 bytes" in str(caught.value)
    assert f"limit {rendering.DEFAULT_MAX_FRAME_BYTES}" in str(caught.value)
    assert peak < 20_000_000


def test_check_frame_refuses_by_max_frame_bytes_alone() -> None:
    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    rendering.check_frame(ds, 0, 128 * 128 * 2)  # exactly the frame size: allowed
    with pytest.raises(RenderError, match="too large"):
        rendering.check_frame(ds, 0, 128 * 128 * 2 - 1)


def test_check_frame_refuses_missing_image_attributes() -> None:
    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    del ds.Rows
    with pytest.raises(RenderError, match="missing or invalid"):
        rendering.check_frame(ds, 0, rendering.DEFAULT_MAX_FRAME_BYTES)


def _truncated(name: str, fraction: float) -> bytes:
    data = data_file(name).read_bytes()
    info = parsing.parse_dicom(io.BytesIO(data)).pixel_data
    assert info is not None
    value_start = len(data) - info.length  # pixel data is the last element of these files
    return data[: value_start + int(info.length * fraction)]


# Native pixel data shorter than the frame is refused before decoding (nothing is allocated); a cut
# compressed frame fails in the decoder (pydicom then reports the cut element as missing).
SHORTER = "the pixel data is shorter than frame {frame} needs ({have} bytes in the file, {need} needed)"
UNDECODABLE = "the pixel data cannot be decoded (AttributeError: "


@pytest.mark.parametrize(
    ("name", "fraction", "frame", "message"),
    [
        ("CT_small.dcm", 0.1, 0, SHORTER.format(frame=1, have=3426, need=32768)),
        ("CT_small.dcm", 0.5, 0, SHORTER.format(frame=1, have=16534, need=32768)),
        ("CT_small.dcm", 0.9, 0, SHORTER.format(frame=1, have=29641, need=32768)),
        ("MR_small_RLE.dcm", 0.5, 0, UNDECODABLE),
        ("JPEG2000.dcm", 0.5, 0, UNDECODABLE),
        ("emri_small.dcm", 0.5, 9, SHORTER.format(frame=10, have=40972, need=81920)),
    ],
)
def test_truncated_pixel_data_is_a_render_error(name: str, fraction: float, frame: int, message: str) -> None:
    data = _truncated(name, fraction)
    error = render_error(data, frame=frame)
    assert type(error) is RenderError
    assert str(error).startswith(message), str(error)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_garbage_in_a_compressed_frame_is_a_render_error(name: str) -> None:
    ds = pydicom.dcmread(data_file(name))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    ds.PixelData = encapsulate([b"\x5a" * len(f) for f in frames])
    error = render_error(as_bytes(ds, enforce=False))
    assert type(error) is RenderError


def test_corrupt_data_in_a_supported_transfer_syntax_is_not_reported_as_unsupported() -> None:
    rendered(data_file("MR_small_RLE.dcm"))  # RLE Lossless can be decoded here
    error = render_error(_truncated("MR_small_RLE.dcm", 0.5))
    assert "cannot be decoded here" not in str(error)


def test_a_deflated_image_renders_like_its_uncompressed_original() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = as_bytes(ds)
    assert parsing.parse_dicom(io.BytesIO(deflated)).has_pixel_data
    _, _, original = rendered(CT_SMALL)
    _, _, pixels = rendered(deflated)
    assert np.array_equal(pixels, original)


# --- encoding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "pil_format", "media_type", "magic"),
    [
        ("png", "PNG", "image/png", b"\x89PNG"),
        ("jpeg", "JPEG", "image/jpeg", b"\xff\xd8\xff"),
        ("webp", "WEBP", "image/webp", b"RIFF"),
    ],
)
def test_render_encodes_the_requested_format(image_format: str, pil_format: str, media_type: str, magic: bytes) -> None:
    result, image, pixels = rendered(CT_SMALL, image_format=image_format)
    assert result.media_type == media_type
    assert result.content.startswith(magic)
    assert image.format == pil_format
    assert image.size == (128, 128)
    _, _, png = rendered(CT_SMALL)
    assert np.abs(np.asarray(image.convert("L"), dtype=np.int32) - png.astype(np.int32)).mean() < 8


@pytest.mark.parametrize("image_format", ["jpeg", "webp"])
def test_encode_writes_colour_images_too(image_format: str) -> None:
    image = Image.new("RGB", (20, 10), (200, 30, 40))
    result = encode(image, image_format)
    decoded = Image.open(io.BytesIO(result.content))
    assert decoded.format == image_format.upper()
    assert (result.width, result.height) == decoded.size == (20, 10)
    r, g, b = decoded.convert("RGB").getpixel((10, 5))
    assert abs(r - 200) < 12 and abs(g - 30) < 12 and abs(b - 40) < 12


@pytest.mark.parametrize("image_format", ["gif", "PNG", "", "../png"])
def test_an_unknown_format_is_a_render_error(image_format: str) -> None:
    with pytest.raises(RenderError) as caught:
        encode(Image.new("L", (4, 4)), image_format)
    assert f"unknown image format '{image_format}'" in str(caught.value)
    assert "png, jpeg, webp" in str(caught.value)
    with pytest.raises(RenderError, match="unknown image format"):
        rendered(CT_SMALL, image_format=image_format)
