"""The pure DICOMweb formats (studies.dicomweb.protocol) and frame reading (dicomcore.frames), without Django."""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomcore import frames, rendering
from studies.dicomweb import protocol as web
from studies.http.negotiation import NotAcceptable, parse_accept

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


# --- QIDO query parameters ---------------------------------------------------------------------


def test_parse_query_reads_keywords_tags_and_controls():
    query = web.parse_query(
        "series",
        [("PatientName", "*doe*"), ("0020000D", "1.2.3,1.2.4"), ("StudyDate", "20240101-20240131"), ("limit", "5"),
         ("offset", "10"), ("includefield", "00080021,SeriesDate\\all"), ("fuzzymatching", "TRUE"), ("Modality", "")],
    )
    kinds = {m.attribute.keyword: (m.kind, m.value) for m in query.matches}
    assert kinds["PatientName"] == ("wildcard", "*doe*")
    assert kinds["StudyInstanceUID"] == ("uids", ["1.2.3", "1.2.4"])
    assert kinds["StudyDate"] == ("range", (dt.date(2024, 1, 1), dt.date(2024, 1, 31)))
    assert kinds["Modality"] == ("universal", None)
    assert (query.limit, query.offset, query.fuzzy, query.include_all) == (5, 10, True, True)
    assert query.include == {"00080021"}


def test_parse_query_ignores_unmatchable_keys_with_a_warning_and_returns_them():
    query = web.parse_query("study", [("ReferencedSeriesSequence", "X"), ("PixelData", "y"), ("NumberOfStudyRelatedSeries", "2")])
    assert not query.matches
    assert query.include == {"00081115", "7FE00010", "00201206"}  # a sequence, bulk data, a computed count
    assert len(query.warnings) == 3


def test_parse_query_matches_keys_without_a_column_in_the_headers():
    query = web.parse_query("study", [("OperatorsName", "X"), ("SeriesDescription", "y")])
    assert [(m.attribute.keyword, m.kind, m.value, m.in_header) for m in query.matches] == [
        ("OperatorsName", "exact", "X", True),
        ("SeriesDescription", "exact", "y", True),  # a series column, not one of the study level
    ]
    assert query.include == {"00081070", "0008103E"} and not query.warnings


def test_limit_is_capped_with_a_warning():
    query = web.parse_query("study", [("limit", "5000")])
    assert query.limit == web.MAX_LIMIT and query.warnings


@pytest.mark.parametrize(
    "pair",
    [("limit", "0"), ("limit", "-1"), ("limit", "1e3"), ("offset", "x"), ("fuzzymatching", "yes"), ("Bogus", "1"),
     ("StudyDate", "2024"), ("StudyDate", "2024111"), ("StudyDate", "20240201-20240101"), ("StudyDate", "-"), ("StudyTime", "2500x"),
     ("StudyInstanceUID", "1.2.a"), ("SeriesNumber", "one"), ("includefield", "NotAKeyword")],
)
def test_parse_query_refuses_malformed_values(pair):
    with pytest.raises(web.QueryError):
        web.parse_query("instance", [pair])


def test_open_ranges_and_times():
    assert web.parse_match(web.BY_TAG["00080020"], "-20240101").value == (None, dt.date(2024, 1, 1))
    assert web.parse_match(web.BY_TAG["00080020"], "20240101").value == (dt.date(2024, 1, 1),) * 2
    with pytest.raises(web.QueryError):  # DA is YYYYMMDD; "-" separates a range
        web.parse_match(web.BY_TAG["00080020"], "2024-01-01")
    assert web.parse_match(web.BY_TAG["00080030"], "0930-1200").value == ("093000", "120000")


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [("D?e*", ["Doe^Jane", "Dxe"], ["Do", "xDoe"]), ("*.^(x)", ["a.^(x)"], ["a.^x"]), ("a*b", ["ab", "axxb"], ["abc"])],
)
def test_wildcards_become_anchored_regexes_with_everything_else_literal(pattern, matches, misses):
    regex = re.compile(web.wildcard_regex(pattern))
    assert all(regex.match(m) for m in matches)
    assert not any(regex.match(m) for m in misses)


def test_elements_are_dicom_json():
    assert web.element("PN", "Doe^Jane") == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert web.element("DA", dt.date(2024, 1, 5)) == {"vr": "DA", "Value": ["20240105"]}
    assert web.element("IS", 0) == {"vr": "IS", "Value": [0]}
    assert web.element("LO", "") == {"vr": "LO"}
    assert web.element("CS", ["CT", "MR"]) == {"vr": "CS", "Value": ["CT", "MR"]}


# --- Accept headers and transfer syntaxes ------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "stored", "convertible", "expected"),
    [
        ('multipart/related; type="application/dicom"; transfer-syntax=*', JPEG_BASELINE, False, JPEG_BASELINE),
        ('multipart/related; type="application/dicom"', JPEG_BASELINE, True, EXPLICIT_LE),
        ('multipart/related; type="application/dicom"', EXPLICIT_LE, True, EXPLICIT_LE),
        (f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}', J2K_LOSSLESS, True, J2K_LOSSLESS),
        ("*/*", "1.2.840.10008.1.2", True, EXPLICIT_LE),
    ],
)
def test_instance_transfer_syntax(accept, stored, convertible, expected):
    accepts = parse_accept(accept, default="application/dicom")
    assert web.instance_transfer_syntax(accepts, stored, can_transcode=convertible) == expected


def test_instance_transfer_syntax_not_acceptable():
    accepts = parse_accept('multipart/related; type="application/dicom"', default="application/dicom")
    with pytest.raises(NotAcceptable):
        web.instance_transfer_syntax(accepts, "1.2.840.10008.1.2.2", can_transcode=False)
    accepts = parse_accept("application/pdf", default="application/dicom")
    with pytest.raises(NotAcceptable):
        web.instance_transfer_syntax(accepts, EXPLICIT_LE, can_transcode=True)


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        ('multipart/related; type="application/octet-stream"', EXPLICIT_LE, (True, "application/octet-stream")),
        ('multipart/related; type="application/octet-stream"', "1.2.840.10008.1.2", (True, "application/octet-stream")),
        ('multipart/related; type="application/octet-stream"', "1.2.840.10008.1.2.2", (False, "application/octet-stream")),
        ('multipart/related; type="application/octet-stream"', J2K_LOSSLESS, (False, "application/octet-stream")),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', J2K_LOSSLESS, (True, "image/jp2")),
        ('multipart/related; type="image/jpeg"', JPEG_BASELINE, (True, "image/jpeg")),
        ('multipart/related; type="*/*"', "1.2.840.10008.1.2.5", (True, "image/dicom-rle")),
    ],
)
def test_frame_encoding(accept, stored, expected):
    encoding = web.frame_encoding(parse_accept(accept, default="application/octet-stream"), stored)
    assert (encoding.keep, encoding.media_type) == expected


def test_frame_encoding_not_acceptable():
    with pytest.raises(NotAcceptable):
        web.frame_encoding(parse_accept('multipart/related; type="image/jp2"', default="x"), JPEG_BASELINE)


def test_multipart_chunks_frame_each_part():
    body = b"".join(web.multipart_chunks([({"Content-Type": "a/b"}, [b"one", b"two"]), ({}, [b""])], "B"))
    assert body == b"--B\r\nContent-Type: a/b\r\n\r\nonetwo\r\n--B\r\n\r\n\r\n--B--\r\n"


# --- metadata, bulk data, rendered, STOW -------------------------------------------------------


def test_bulkdata_uris_replace_summaries_at_every_depth():
    header = {
        "00020010": {"vr": "UI", "Value": ["1.2"]},
        "00282000": {"vr": "OB", "BulkData": {"length": 5000}},
        "00540016": {"vr": "SQ", "Value": [{"00181072": {"vr": "OB", "BulkData": {"length": 2000}}}]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A"}]},
    }
    out = web.with_bulkdata_uris(header, "http://h/i", pixel_data=True)
    assert "00020010" not in out
    assert out["00282000"] == {"vr": "OB", "BulkDataURI": "http://h/i/bulkdata/00282000"}
    assert out["00540016"]["Value"][0]["00181072"]["BulkDataURI"] == "http://h/i/bulkdata/00540016/0/00181072"
    assert out["7FE00010"]["BulkDataURI"] == "http://h/i/bulkdata/7FE00010"
    assert out["00100010"] == header["00100010"]
    assert web.parse_bulkdata_path("00540016/0/00181072") == ["00540016", 0, "00181072"]
    for bad in ("0054", "00540016/0", "00540016/x/00181072", "zzzzzzzz"):
        with pytest.raises(web.QueryError):
            web.parse_bulkdata_path(bad)


def test_stow_response_and_status():
    ok = web.StowAnswer("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "http://h/i")
    bad = web.StowAnswer("", "", failure=web.FAILURE_CANNOT_UNDERSTAND, message="not DICOM")
    body = web.stow_response([ok, bad], "http://h/s")
    assert body["00081190"]["Value"] == ["http://h/s"]
    assert body["00081199"]["Value"][0]["00081155"]["Value"] == ["1.2.3"]
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert [web.stow_status(x) for x in ([ok], [ok, bad], [bad])] == [200, 202, 409]


# --- frames straight from files ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm", "image_dfl.dcm"]
)
def test_read_frames_decoded_equal_pydicom(name):
    path = Path(get_testdata_file(name))
    ds = pydicom.dcmread(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    expected = ds.pixel_array if count > 1 else ds.pixel_array[np.newaxis]
    with path.open("rb") as handle:
        got = list(frames.read_frames(handle, [count, 1], keep=False, max_frame_bytes=2**28))
    for content, index in zip(got, (count - 1, 0)):
        assert np.array_equal(np.frombuffer(content, expected.dtype.newbyteorder("<")).reshape(expected.shape[1:]), expected[index])


def test_read_frames_kept_are_the_stored_fragments():
    path = Path(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
    stored = list(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=10))
    with path.open("rb") as handle:
        assert list(frames.read_frames(handle, [2, 9], keep=True, max_frame_bytes=2**28)) == [stored[1], stored[8]]


def test_read_frames_checks_every_number_before_reading():
    with Path(get_testdata_file("emri_small_RLE.dcm")).open("rb") as handle:
        with pytest.raises(rendering.FrameOutOfRange):
            next(frames.read_frames(handle, [1, 11], keep=True, max_frame_bytes=2**28))


def test_conversion_to_explicit_little_endian_keeps_identity_and_pixels():
    path = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    source = pydicom.dcmread(path)
    with path.open("rb") as handle:
        converted = pydicom.dcmread(io.BytesIO(frames.to_explicit_little_endian(handle, max_bytes=2**28)))
    assert converted.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert converted.SOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(converted.pixel_array, source.pixel_array)
    assert frames.can_convert(JPEG_BASELINE) and not frames.can_convert("1.2.840.10008.1.2.2")
    with path.open("rb") as handle, pytest.raises(rendering.RenderError):
        frames.to_explicit_little_endian(handle, max_bytes=1000)
