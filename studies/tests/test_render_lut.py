"""The grey lookup table of dicomcore.rendering.to_display against the value-by-value pipeline: the same levels for
every greyscale frame of both corpora, with the file's own window and with requested ones (LINEAR, LINEAR_EXACT, a
preset, 16-bit output). Pure: no Django."""

from __future__ import annotations

import io

import numpy as np

from dicomcore import rendering
from dicomcore.rendering import RenderError, RenderOptions, Window

from .conftest import PYDICOM_TEST_FILES, pydicom_data_dir

OPTIONS = [
    RenderOptions(),
    RenderOptions(window=Window(40.0, 400.0, "LINEAR")),
    RenderOptions(window=Window(-600.0, 1500.0, "LINEAR_EXACT")),
    RenderOptions(preset="bone"),
    RenderOptions(window=Window(300.0, 2000.0, "LINEAR"), bits=16),
]


def grey_frames():
    for path in sorted(p for root in (PYDICOM_TEST_FILES, pydicom_data_dir()) for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        try:
            ds = rendering.read_attributes(io.BytesIO(data))
            rendering.check_frame(ds, 0, 64 * 1024**2)
            arr = rendering.decode_frame(io.BytesIO(data), ds, 0)
        except (RenderError, Exception):  # noqa: BLE001 - unreadable or no pixels: nothing to compare
            continue
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        if photometric in rendering.GREY and arr.ndim == 2:
            yield path.name, ds, arr, photometric


def test_the_table_gives_the_levels_of_the_value_by_value_pipeline_on_every_grey_frame():
    tabled = compared = 0
    for name, ds, arr, photometric in grey_frames():
        for options in OPTIONS:
            try:
                direct = rendering._grey_levels(arr, ds, options, photometric)
            except Exception:  # noqa: BLE001 - a pipeline failure is to_display's RenderError either way
                continue
            shown = np.asarray(rendering.to_display(arr, ds, options))
            assert np.array_equal(shown, direct), (name, options)
            tabled += rendering._grey_lookup_table(arr, ds, options, photometric) is not None
            compared += 1
    # The table must be what was compared for many of them (440 and 200 here), or this would prove nothing about it.
    assert compared >= 400 and tabled >= 150, (compared, tabled)


def test_no_table_for_min_max_sigmoid_or_frames_with_more_values_than_a_table_saves():
    arr = np.arange(64, dtype=np.uint16).reshape(8, 8)  # 64 distinct values in 64 pixels
    ds = rendering.read_attributes(io.BytesIO((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()))  # no window of its own
    window = RenderOptions(window=Window(40.0, 400.0, "LINEAR"))
    assert rendering._grey_lookup_table(arr, ds, window, "MONOCHROME2") is None
    flat = np.zeros((64, 64), np.int16)
    assert rendering._grey_lookup_table(flat, ds, window, "MONOCHROME2") is not None
    assert rendering._grey_lookup_table(flat, ds, RenderOptions(), "MONOCHROME2") is None  # min-max: no window
    assert rendering._grey_lookup_table(flat, ds, RenderOptions(preset="minmax"), "MONOCHROME2") is None
    assert rendering._grey_lookup_table(flat, ds, RenderOptions(window=Window(0.0, 100.0, "SIGMOID")), "MONOCHROME2") is None


def test_decoding_from_the_header_already_read_gives_pixel_arrays_frames_on_the_whole_corpus():
    """rendering._decode_at (pydicom's decoder fed the options of the header read once) against pixel_array(file)
    (which reads the header again): the same array, dtype and all, for the first and last frame of every file both
    can decode; where pixel_array fails, decode_frame falls back to it, so only agreement matters here."""
    compared = 0
    for path in sorted(p for root in (PYDICOM_TEST_FILES, pydicom_data_dir()) for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        try:
            ds = rendering.read_attributes(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - no pixels or unreadable: nothing to decode
            continue
        at = getattr(ds, "_pixel_element_at", None)
        if at is None:
            continue
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1) if str(ds.get("NumberOfFrames", "1")).strip().isdigit() else 1
        for frame in sorted({0, frames - 1}):
            try:
                expected = rendering._decode_frame(io.BytesIO(data), frame)
            except BaseException:  # noqa: BLE001 - codecs raise anything (pyo3 panics too)
                continue
            try:
                got = rendering._decode_at(io.BytesIO(data), ds, frame, at)
            except BaseException:  # noqa: BLE001 - decode_frame then uses pixel_array: same result by construction
                continue
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (path.name, frame)
            compared += 1
    assert compared >= 150, compared
