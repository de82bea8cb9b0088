"""`parse_dicom` and friends on real files (pydicom test data and files generated with pydicom)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicomcore import parsing
from dicomcore.parsing import InvalidDicom, StoredBytesHasher, clean_text, parse_dicom, zero_preamble

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, dicom_bytes, pydicom_data_dir

HEX_KEY = re.compile(r"^[0-9A-F]{8}$")
BOMB_ZEROS = 50_000_000
# CT_small.dcm already carries GE private groups 0009, 0011, 0019...0029 and 0043: use a free one.
PRIVATE_GROUP = 0x0071


def data_file(name: str) -> Path:
    """A file from pydicom's test files or pydicom-data; fails loudly if it is not installed."""
    for folder in (PYDICOM_TEST_FILES, pydicom_data_dir()):
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} is in neither {PYDICOM_TEST_FILES} nor {pydicom_data_dir()}")




def parse_path(path: Path, **kwargs: Any) -> parsing.ParsedDicom:
    with open(path, "rb") as fp:
        return parse_dicom(fp, **kwargs)


def parse_bytes(data: bytes, **kwargs: Any) -> parsing.ParsedDicom:
    return parse_dicom(io.BytesIO(data), **kwargs)


def save(ds: pydicom.Dataset, *, enforce: bool = True) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=enforce)
    return buffer.getvalue()


def keys_everywhere(header: dict[str, Any]) -> Iterator[str]:
    for key, element in header.items():
        yield key
        if element.get("vr") == "SQ":
            for item in element.get("Value") or []:
                yield from keys_everywhere(item)


# --- CT_small ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct() -> parsing.ParsedDicom:
    return parse_path(CT_SMALL)


def test_ct_small_catalogue_facts(ct: parsing.ParsedDicom) -> None:
    assert ct.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert ct.study_instance_uid == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert ct.series_instance_uid == "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
    assert ct.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert ct.transfer_syntax_uid == ExplicitVRLittleEndian
    assert ct.modality == "CT"
    assert ct.patient_name == "CompressedSamples^CT1"
    assert ct.patient_id == "1CT1"
    assert ct.study_date is not None and ct.study_date.isoformat() == "2004-01-19"
    assert ct.series_number == 1
    assert ct.instance_number == 1


def test_ct_small_image_attributes_and_pixel_data_info(ct: parsing.ParsedDicom) -> None:
    assert (ct.rows, ct.columns) == (128, 128)
    assert ct.number_of_frames == 1
    assert ct.samples_per_pixel == 1
    assert ct.photometric_interpretation == "MONOCHROME2"
    assert (ct.bits_allocated, ct.bits_stored, ct.pixel_representation) == (16, 16, 1)
    assert ct.has_pixel_data
    assert ct.pixel_data == parsing.PixelDataInfo(tag=0x7FE00010, vr="OW", length=128 * 128 * 2, encapsulated=False, value_offset=6300)
    data = CT_SMALL.read_bytes()  # the value starts right after the element's 12-byte header (tag, VR, reserved, length)
    assert data[6300 - 12 : 6300 - 8] == b"\xe0\x7f\x10\x00" and data[6300 - 8 : 6300 - 6] == b"OW"


def test_ct_small_header_keys_are_eight_upper_case_hex_digits(ct: parsing.ParsedDicom) -> None:
    keys = list(keys_everywhere(ct.header))
    assert len(keys) > 50
    assert [k for k in keys if not HEX_KEY.match(k)] == []


def test_ct_small_header_stores_person_names_as_alphabetic_objects(ct: parsing.ParsedDicom) -> None:
    assert ct.header["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}


def test_ct_small_header_includes_the_file_meta_information(ct: parsing.ParsedDicom) -> None:
    assert ct.header["00020010"] == {"vr": "UI", "Value": [ExplicitVRLittleEndian]}
    assert ct.header["00020003"]["Value"] == [ct.sop_instance_uid]


def test_ct_small_header_never_holds_pixel_bytes(ct: parsing.ParsedDicom) -> None:
    pixel = ct.header["7FE00010"]
    assert pixel["vr"] == "OW"
    assert "InlineBinary" not in pixel and "Value" not in pixel
    assert pixel["BulkData"]["length"] == 32768
    assert len(json.dumps(ct.header)) < 20_000


# --- compressed and multi-frame files -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "transfer_syntax", "frames", "encapsulated"),
    [
        ("MR_small_RLE.dcm", RLELossless, 1, True),
        ("JPEG2000.dcm", JPEG2000, 1, True),
        ("emri_small.dcm", ExplicitVRLittleEndian, 10, False),
        ("emri_small_jpeg_2k_lossless.dcm", JPEG2000Lossless, 10, True),
    ],
)
def test_parse_reports_encapsulation_and_frame_count(name: str, transfer_syntax: str, frames: int, encapsulated: bool) -> None:
    path = data_file(name)
    parsed = parse_path(path)
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    assert parsed.transfer_syntax_uid == transfer_syntax
    assert parsed.number_of_frames == frames
    assert parsed.pixel_data is not None
    assert parsed.pixel_data.encapsulated is encapsulated
    assert (parsed.rows, parsed.columns) == (reference.Rows, reference.Columns)
    summary = parsed.header["7FE00010"]["BulkData"]
    assert summary["frames"] == frames
    assert summary["encapsulated"] is encapsulated
    assert summary["transfer_syntax_uid"] == transfer_syntax
    file_size = path.stat().st_size
    if encapsulated:
        assert 0 < parsed.pixel_data.length < file_size
    else:
        assert parsed.pixel_data.length == reference.Rows * reference.Columns * frames * reference.BitsAllocated // 8


# --- refusals ------------------------------------------------------------------------------


def _without_any_sop_instance_uid() -> bytes:
    ds = pydicom.dcmread(CT_SMALL)
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    return save(ds, enforce=False)  # pydicom refuses to enforce the format without (0002,0003)


REFUSED = [
    pytest.param(lambda: b"", "the file is empty", id="empty"),
    pytest.param(lambda: b"PatientName: Doe^John\nStudy: 1\n" * 20, "not a DICOM Part-10 file", id="plain-text"),
    pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + bytes(256), "not a DICOM Part-10 file", id="png-signature"),
    pytest.param(lambda: CT_SMALL.read_bytes()[:200], "it is truncated", id="truncated-header"),
    pytest.param(lambda: bytes(128) + b"DICM", "no Transfer Syntax UID", id="empty-file-meta"),
    pytest.param(_without_any_sop_instance_uid, "no SOP Instance UID", id="no-sop-instance-uid"),
    pytest.param(lambda: dicom_bytes(StudyInstanceUID=None), "no Study Instance UID", id="no-study-uid"),
    pytest.param(lambda: dicom_bytes(SeriesInstanceUID=None), "no Series Instance UID", id="no-series-uid"),
    pytest.param(lambda: data_file("meta_missing_tsyntax.dcm").read_bytes(), "no Transfer Syntax UID", id="no-transfer-syntax"),
    pytest.param(lambda: data_file("no_meta.dcm").read_bytes(), "not a DICOM Part-10 file", id="no-file-meta"),
]


@pytest.mark.parametrize(("make", "reason"), REFUSED)
def test_parse_refuses_non_catalogue_input_with_invalid_dicom(make, reason: str) -> None:
    with pytest.raises(InvalidDicom) as caught:
        parse_bytes(make())
    assert reason in str(caught.value)


def test_parse_falls_back_to_media_storage_sop_instance_uid_when_sop_instance_uid_is_missing() -> None:
    data = dicom_bytes(SOPInstanceUID=None)  # keeps a fresh (0002,0003) Media Storage SOP Instance UID
    meta_uid = pydicom.dcmread(io.BytesIO(data)).file_meta.MediaStorageSOPInstanceUID
    assert parse_bytes(data).sop_instance_uid == meta_uid


@pytest.mark.parametrize(
    ("keyword", "label"),
    [("StudyInstanceUID", "Study Instance UID"), ("SeriesInstanceUID", "Series Instance UID"), ("SOPInstanceUID", "SOP Instance UID")],
)
def test_parse_refuses_a_uid_longer_than_64_characters(keyword: str, label: str) -> None:
    too_long = "1.2." + "3" * 61
    assert len(too_long) == 65
    with pytest.raises(InvalidDicom) as caught:
        parse_bytes(dicom_bytes(**{keyword: too_long}))
    assert f"the {label} is longer than 64 characters" in str(caught.value)


def test_parse_accepts_a_uid_of_exactly_64_characters() -> None:
    longest = "1.2." + "3" * 60
    assert len(longest) == 64
    assert parse_bytes(dicom_bytes(StudyInstanceUID=longest)).study_instance_uid == longest


# --- summarised values ------------------------------------------------------------------------


def ct_small_with_free_private_group() -> pydicom.Dataset:
    ds = pydicom.dcmread(CT_SMALL)
    assert len(ds.group_dataset(PRIVATE_GROUP)) == 0
    return ds


def _with_private_ob(*sizes: int) -> bytes:
    ds = ct_small_with_free_private_group()
    block = ds.private_block(PRIVATE_GROUP, "TEST BULK", create=True)
    for offset, size in enumerate(sizes):
        block.add_new(0x10 + offset, "OB", bytes(range(256)) * (size // 256) + bytes(size % 256))
    return save(ds)


def test_values_over_one_kib_are_summarised_as_bulk_data() -> None:
    header = parse_bytes(_with_private_ob(4000)).header
    assert header["00710010"]["Value"] == ["TEST BULK"]
    assert header["00711010"] == {"vr": "OB", "BulkData": {"length": 4000}}


def test_inline_binary_limit_is_inclusive_at_one_kib() -> None:
    header = parse_bytes(_with_private_ob(1024, 1026)).header
    assert header["00711010"]["vr"] == "OB"
    assert base64.b64decode(header["00711010"]["InlineBinary"]) == bytes(range(256)) * 4
    assert header["00711011"] == {"vr": "OB", "BulkData": {"length": 1026}}


def test_a_larger_inline_binary_limit_keeps_the_value_inline() -> None:
    header = parse_bytes(_with_private_ob(4000), inline_binary_limit=8000).header
    assert len(base64.b64decode(header["00711010"]["InlineBinary"])) == 4000


def test_text_over_the_text_limit_is_summarised() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.TextValue = "x" * 70_000  # (0040,A160) UT: a 4-byte length, so it really is 70,000 characters of UT
    header = parse_bytes(save(ds)).header
    assert header["0040A160"] == {"vr": "UT", "BulkData": {"length": 70_000}}
    inline = parse_bytes(save(ds), inline_text_limit=100_000).header
    assert inline["0040A160"] == {"vr": "UT", "Value": ["x" * 70_000]}


# --- text cleaning ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("AB\x00CD", "ABCD"), ("\x00\x00", ""), ("Müller^東京", "Müller^東京"), ("plain", "plain")],
)
def test_clean_text_removes_nul_characters_and_keeps_the_rest(text: str, expected: str) -> None:
    assert clean_text(text) == expected


@pytest.mark.parametrize("text", ["ab\ud800c", "\udfff", "x\ud83dy\x00z"])
def test_clean_text_leaves_no_lone_surrogates(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")  # would raise UnicodeEncodeError on a lone surrogate
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in cleaned)
    assert "\x00" not in cleaned
    assert [c for c in cleaned if c.isalpha()] == [c for c in text if c.isalpha() and not 0xD800 <= ord(c) <= 0xDFFF]


def test_header_values_with_nul_and_nan_are_cleaned_for_json() -> None:
    ds = ct_small_with_free_private_group()
    block = ds.private_block(PRIVATE_GROUP, "TEST CLEAN", create=True)
    block.add_new(0x01, "LO", "AB\x00CD")
    block.add_new(0x02, "FD", float("nan"))
    header = parse_bytes(save(ds)).header
    assert header["00711001"]["Value"] == ["ABCD"]
    assert header["00711002"]["Value"] == ["nan"]
    json.dumps(header, allow_nan=False)


# --- hashing and preamble -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_bytes() -> bytes:
    data = CT_SMALL.read_bytes()
    assert data[:128] != bytes(128), "CT_small.dcm must have a non-zero preamble for these tests to mean anything"
    return data


@pytest.mark.parametrize("chunk_size", [1, 7, 128, 129, 4096])
def test_stored_bytes_hasher_counts_the_preamble_as_zeros_whatever_the_chunk_size(stored_bytes: bytes, chunk_size: int) -> None:
    hasher = StoredBytesHasher()
    for start in range(0, len(stored_bytes), chunk_size):
        hasher.update(stored_bytes[start : start + chunk_size])
    expected = hashlib.sha256(bytes(128) + stored_bytes[128:]).hexdigest()
    assert hasher.hexdigest() == expected
    assert hasher.hexdigest() != hashlib.sha256(stored_bytes).hexdigest()
    assert hasher.size == len(stored_bytes)


def test_stored_bytes_hasher_of_a_short_input_is_all_zeros() -> None:
    hasher = StoredBytesHasher()
    hasher.update(b"\xff" * 50)
    hasher.update(b"\xee" * 10)
    assert hasher.hexdigest() == hashlib.sha256(bytes(60)).hexdigest()
    assert hasher.size == 60


def test_zero_preamble_zeroes_only_the_first_128_bytes(stored_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "stored.dcm"
    path.write_bytes(stored_bytes)
    with open(path, "r+b") as fp:
        fp.seek(500)
        zero_preamble(fp)
        assert fp.tell() == 0
    after = path.read_bytes()
    assert len(after) == len(stored_bytes)
    assert after[:128] == bytes(128)
    assert after[128:] == stored_bytes[128:]
    hasher = StoredBytesHasher()
    hasher.update(stored_bytes)
    assert hashlib.sha256(after).hexdigest() == hasher.hexdigest()
    assert parse_path(path).sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


# --- deflate ---------------------------------------------------------------------------------------------


def data_set_offset(data: bytes) -> int:
    """Where the data set starts: after the preamble, 'DICM' and the file meta group (whose length is at 140)."""
    (group_length,) = struct.unpack("<L", data[140:144])
    return 144 + group_length


def bytes_after_deflate_stream(data: bytes) -> bytes:
    """What follows the end of the deflate stream (pydicom pads an odd-length stream with one byte)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[data_set_offset(data) :])
    assert inflater.eof
    return inflater.unused_data


def deflated_file(zeros: int, *, trailing: bool) -> tuple[bytes, int]:
    """CT_small without pixels as Deflated Explicit VR Little Endian, with a private OB of about `zeros` zero bytes.

    The OB size is stepped until pydicom's deflated stream is (trailing=True) or is not followed by a padding
    byte. Returns the file and the exact OB length.
    """
    for step in range(40):
        size = zeros + 500 * step
        ds = ct_small_with_free_private_group()
        del ds.PixelData
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.private_block(PRIVATE_GROUP, "TEST BOMB", create=True).add_new(0x10, "OB", bytes(size))
        data = save(ds)
        if bool(bytes_after_deflate_stream(data)) is trailing:
            return data, size
    raise AssertionError(f"could not make a deflated file with trailing={trailing}")


@pytest.fixture(scope="module")
def deflate_bomb() -> tuple[bytes, int]:
    """A ~50 KB deflated file whose data set inflates to more than 50 MB (no byte after the deflate stream)."""
    data, size = deflated_file(BOMB_ZEROS, trailing=False)
    assert len(data) < 200_000
    assert size >= BOMB_ZEROS
    return data, size


def test_a_deflate_bomb_is_refused_past_max_inflated_bytes(deflate_bomb: tuple[bytes, int]) -> None:
    with pytest.raises(InvalidDicom) as caught:
        parse_bytes(deflate_bomb[0], max_inflated_bytes=1_000_000)
    assert "inflates beyond 1000000 bytes" in str(caught.value)


def test_a_deflated_file_within_the_limit_is_accepted(deflate_bomb: tuple[bytes, int]) -> None:
    data, size = deflate_bomb
    parsed = parse_bytes(data)
    assert parsed.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert parsed.patient_name == "CompressedSamples^CT1"
    assert parsed.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert parsed.header["00711010"] == {"vr": "OB", "BulkData": {"length": size}}
    assert parsed.pixel_data is None


def test_a_deflate_bomb_is_refused_without_inflating_it_in_memory(deflate_bomb: tuple[bytes, int]) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidDicom):
            parse_bytes(deflate_bomb[0], max_inflated_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"peak allocation {peak} bytes for a 1 MB limit"


PARSE_IN_CHILD = """
import sys
from dicomcore.parsing import parse_dicom
with open(sys.argv[1], "rb") as fp:
    print(parse_dicom(fp).header["00711010"]["BulkData"]["length"])
"""


def test_a_deflated_file_with_padding_after_the_stream_is_parsed_in_bounded_time(tmp_path: Path) -> None:
    data, size = deflated_file(2_000_000, trailing=True)
    assert bytes_after_deflate_stream(data)  # pydicom wrote a padding byte after the deflate stream
    assert pydicom.dcmread(io.BytesIO(data))[0x00711010].VM == 1  # pydicom itself reads the file
    path = tmp_path / "padded-deflated.dcm"
    path.write_bytes(data)
    project = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            [sys.executable, "-c", PARSE_IN_CHILD, str(path)], cwd=project, capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parse_dicom did not return within 10 s on a 2 MB deflated file")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(size)


def test_a_corrupt_deflated_stream_is_invalid_dicom() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = bytearray(save(ds))
    start = data_set_offset(bytes(data))
    for i in range(start + 50, start + 150):
        data[i] ^= 0xFF
    with pytest.raises(InvalidDicom):
        parse_bytes(bytes(data))


def test_a_truncated_deflated_stream_is_invalid_dicom() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = save(ds)
    with pytest.raises(InvalidDicom):
        parse_bytes(data[: data_set_offset(data) + 500])


def test_a_deflated_image_reports_its_pixel_data_length() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    parsed = parse_bytes(save(ds))
    assert parsed.pixel_data is not None
    assert parsed.pixel_data.length == 128 * 128 * 2


def test_an_implicit_vr_file_reports_a_valid_pixel_data_vr() -> None:
    parsed = parse_path(data_file("MR_small_implicit.dcm"))
    assert parsed.pixel_data is not None
    assert parsed.pixel_data.length == 64 * 64 * 2
    assert parsed.header["7FE00010"]["vr"] == "OW"


# --- corpus ---------------------------------------------------------------------------------------------------


def test_every_test_file_either_parses_to_strict_json_or_is_invalid_dicom() -> None:
    files = sorted(p for folder in (PYDICOM_TEST_FILES, pydicom_data_dir()) for p in folder.rglob("*") if p.is_file())
    assert len(files) > 150
    parsed, refused, unexpected = 0, 0, []
    for path in files:
        try:
            result = parse_path(path)
        except InvalidDicom as exc:
            assert str(exc), path
            refused += 1
            continue
        except Exception as exc:  # noqa: BLE001 - exactly what this test is looking for
            unexpected.append(f"{path.name}: {type(exc).__name__}: {exc}")
            continue
        json.dumps(result.header, allow_nan=False)
        assert result.sop_instance_uid and result.study_instance_uid and result.series_instance_uid
        parsed += 1
    print(f"\ncorpus: {len(files)} files, {parsed} parsed, {refused} refused as InvalidDicom")
    assert unexpected == []
    assert parsed > 150
    assert refused > 0


def _every_test_file() -> list[Path]:
    return sorted(p for root in (PYDICOM_TEST_FILES, pydicom_data_dir()) for p in root.rglob("*") if p.is_file())


def test_raw_json_fast_path_gives_exactly_what_pydicoms_conversion_gives(monkeypatch):
    """The raw-bytes → JSON path (most elements) against pydicom's DataElement.to_json_dict path, on every
    readable file of both test sets (charsets, PN groups, DS/IS oddities, multi-values, big endian...)."""
    compared = 0
    for path in _every_test_file():
        try:
            fast = parsing.dataset_to_json(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception:  # noqa: BLE001 - not a DICOM file, or one pydicom cannot read at all
            continue
        with monkeypatch.context() as patched:
            patched.setattr(parsing, "RAW_JSON_VRS", frozenset())
            reference = parsing.dataset_to_json(pydicom.dcmread(path, stop_before_pixels=True))
        assert json.dumps(fast, sort_keys=True) == json.dumps(reference, sort_keys=True), path.name
        compared += 1
    assert compared > 200


def test_raw_json_fast_path_cleans_text_and_summarises_long_values():
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(PatientName="Bad\x00Name=Ideo", StudyDescription="x" * 70_000)))
    header = parsing.dataset_to_json(ds)
    assert header["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "BadName", "Ideographic": "Ideo"}]}
    assert header["00081030"]["BulkData"] == {"length": 70_000}  # written as UN: too long for LO's 16-bit length


ODD_VALUES = {
    "DS": ["1", " 2.5", "1e3", "-0", "+5", "5.", ".5", "NaN", "1e400", "", "  ", "1\\", "\\2", "1\\\\2", "x", "1\\ 2 "],
    "IS": ["1", " 2", "+3", "-0", "1.0", "", "1\\", "x", "2\\ 3", "99999999999"],
    "CS": ["A ", " B", "A\\B ", "", "  ", "A\\\\", "\tX"],
    "UI": ["1.2.3\x00", "1.2 ", "1.2\\3.4\x00", "\x00"],
    "AE": [" AE ", "A\\ B ", "  ", "A\x00"],
    "DA": ["20200101", "2020.01.01", "20200101\\20210101", " "],
    "TM": ["120000.5 ", "12\\13"],
    "SH": ["Ünïcode ", "a\\b\x00", "\\", "x\x00\x00"],
    "LO": ["déjà vu\\  ", "  lead"],
    "LT": ["line\\with\\backslashes  ", "\x00\x00"],
    "UT": ["tail \x00", ""],
    "US": [b"\x01\x00\x02\x00", b"\x01\x00\x02"],
    "FL": [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x3f\x00\x00\x00\x40"],
    "FD": [b"\x00\x00\x00\x00\x00\x00\xf0\x7f", b"\x01"],
}


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6\\ISO 2022 IR 87"])
def test_the_quick_value_path_agrees_with_pydicom_on_odd_values(monkeypatch, charset):
    """Padding, blanks, backslashes, NUL, non-ASCII text, unparseable numbers, short binary values:
    the quick converter gives what pydicom gives, or leaves the element to pydicom."""
    from pydicom.dataelem import RawDataElement

    def build() -> pydicom.Dataset:  # afresh for each pass: a failed conversion changes the data set
        ds = pydicom.Dataset()
        if charset:
            ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
        encodings = pydicom.charset.convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6")
        tag = 0x00091010
        for vr, values in ODD_VALUES.items():
            for value in values:
                text_encoding = encodings[0] if vr in ("SH", "LO", "LT", "UT") else "latin-1"
                data = value if isinstance(value, bytes) else value.encode(text_encoding, "replace")
                ds[tag] = RawDataElement(pydicom.tag.Tag(tag), vr, len(data), data, 0, False, True)
                tag += 1
        return ds

    quick = parsing.dataset_to_json(build())
    with monkeypatch.context() as patched:
        patched.setattr(parsing, "RAW_JSON_VRS", frozenset())
        reference = parsing.dataset_to_json(build())
    assert json.dumps(quick, sort_keys=True) == json.dumps(reference, sort_keys=True)
