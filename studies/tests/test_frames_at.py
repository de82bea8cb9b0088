"""Frames read from the row's pixel data offset (dicomcore.frames.read_frames_at) against frames read through the
header (read_frames): the same bytes, or the same error, for every readable file of both corpora, both ways of
sending (as stored, native). Pure: no Django, no database."""

from __future__ import annotations

import io

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicomcore import frames
from dicomcore.parsing import InvalidDicom, parse_dicom
from dicomcore.rendering import FrameOutOfRange, RenderError

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, dicom_bytes, pydicom_data_dir

LIMIT = 64 * 1024**2  # DICOM_MAX_FRAME_PIXELS' default


def corpus() -> list:
    return sorted(p for root in (PYDICOM_TEST_FILES, pydicom_data_dir()) for p in root.rglob("*") if p.is_file())


def stored(data: bytes) -> frames.StoredPixels | None:
    """What ingest would put in the row for these bytes (None: no pixel data, or not addressable)."""
    try:
        parsed = parse_dicom(io.BytesIO(data))
    except InvalidDicom:
        return None
    if parsed.pixel_data is None or parsed.pixel_data.value_offset is None:
        return None
    return frames.StoredPixels(
        transfer_syntax=parsed.transfer_syntax_uid, value_offset=parsed.pixel_data.value_offset, file_size=len(data),
        frames=parsed.number_of_frames, rows=parsed.rows, columns=parsed.columns, samples_per_pixel=parsed.samples_per_pixel,
        bits_allocated=parsed.bits_allocated, photometric_interpretation=parsed.photometric_interpretation,
    )  # fmt: skip


def outcome(read) -> list[bytes] | tuple[type, str]:
    try:
        return list(read())
    except RenderError as refused:
        return type(refused), str(refused).split(" (")[0]


def test_every_corpus_file_gives_the_same_frames_both_ways():
    taken = {True: 0, False: 0}
    compared = 0
    for path in corpus():
        data = path.read_bytes()
        facts = stored(data)
        if facts is None:
            continue
        count = max(facts.frames, 1)
        numbers = sorted({1, min(2, count), count})
        for keep in (True, False):
            fast = frames.read_frames_at(io.BytesIO(data), facts, numbers, keep=keep, max_frame_bytes=LIMIT)
            if fast is None:
                continue
            taken[keep] += 1
            header_way = outcome(lambda k=keep: frames.read_frames(io.BytesIO(data), numbers, keep=k, max_frame_bytes=LIMIT))
            row_way = outcome(lambda f=fast: f)
            if isinstance(header_way, tuple):  # refused: the row's way refuses too (wording may differ)
                assert isinstance(row_way, tuple) and row_way[0] is header_way[0], (path.name, keep, header_way, row_way)
            else:
                assert row_way == header_way, (path.name, keep)
            compared += 1
    # Most of both corpora is native little endian or encapsulated: the fast path must have been the one tested.
    assert taken[True] >= 100 and taken[False] >= 50, taken
    assert compared == taken[True] + taken[False]


def test_ct_small_is_read_from_the_offset_and_a_frame_beyond_the_last_is_refused_first():
    data = CT_SMALL.read_bytes()
    facts = stored(data)
    assert facts is not None and facts.transfer_syntax == ExplicitVRLittleEndian and facts.value_offset > 0
    (frame,) = frames.read_frames_at(io.BytesIO(data), facts, [1], keep=True, max_frame_bytes=LIMIT)
    assert frame == data[facts.value_offset : facts.value_offset + 128 * 128 * 2]
    with pytest.raises(FrameOutOfRange, match="frame 2 does not exist"):
        frames.read_frames_at(io.BytesIO(data), facts, [1, 2], keep=True, max_frame_bytes=LIMIT)


def test_a_file_cut_inside_its_last_frame_is_refused_before_any_frame():
    data = dicom_bytes(CT_SMALL)
    facts = stored(data)
    assert facts is not None
    cut = facts.value_offset + 128 * 128 * 2 - 10
    short = frames.StoredPixels(**{**facts.__dict__, "file_size": cut})
    with pytest.raises(RenderError, match="shorter than frame 1"):
        frames.read_frames_at(io.BytesIO(data[:cut]), short, [1], keep=True, max_frame_bytes=LIMIT)


def test_big_endian_files_are_left_to_the_header_path_and_deflated_ones_have_no_offset():
    data = (PYDICOM_TEST_FILES / "MR_small_bigendian.dcm").read_bytes()
    facts = stored(data)
    assert facts is not None
    assert frames.read_frames_at(io.BytesIO(data), facts, [1], keep=False, max_frame_bytes=LIMIT) is None
    parsed = parse_dicom(io.BytesIO((PYDICOM_TEST_FILES / "image_dfl.dcm").read_bytes()))
    assert parsed.pixel_data is not None and parsed.pixel_data.value_offset is None
