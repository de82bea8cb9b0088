"""dicomcore.deid (PS3.15 Annex E) against its table and both corpora: every attribute of Table E.1-1 under each
option, every readable corpus file written and searched byte by byte for the source's identifying values, the
same pixels, consistent UIDs, masks, and the burned-in check. Pure: no Django, no database."""

from __future__ import annotations

import copy
import datetime as dt
import functools
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UID_dictionary,
)

from dicomcore import deid
from dicomcore.deid_table import OPTION_COLUMNS

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, pydicom_data_dir

KEY = b"test-deid-key-0123456789abcdef!!"
DATE, DATETIME, TIME = "20010203", "20010203040506", "040506"
OPTION_SETS = [frozenset(), *(frozenset({o}) for o in deid.OPTIONS), frozenset(deid.OPTIONS)]
OPTION_IDS = ["basic", *deid.OPTIONS, "all"]
PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
PATIENT_FAMILY, PATIENT_GIVEN = "SECRETNAME", "SECRETGIVEN"
# The texts the options clean (descriptions, comments, a time zone...): in the synthetic data set they hold the
# patient's family name after a number, so that cleaning has something to remove and something to keep.
CLEANED = frozenset(tag for column in OPTION_COLUMNS.values() for tag, action in column.items() if action == "C")
TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "PN", "CS", "AE"})
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def shifted(date: str, days: int) -> str:
    day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:8])) - dt.timedelta(days=days)
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


# --- 1. every attribute of Table E.1-1 ----------------------------------------------------------------------------


def synthetic_value(tag: int, vr: str, n: int):
    """An identifying-looking value valid for `vr`; texts are SECRETVALUEnnn (fixed width: none is a part of another)."""
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"SECRETNESTED{n:03d}"
        item.ReferencedSOPInstanceUID = f"1.2.3.{n}.1"
        return Sequence([item])
    if vr in TEXT_VRS:
        return f"{n:03d}+{PATIENT_FAMILY}" if tag in CLEANED else f"SECRETVALUE{n:03d}"
    return {
        "DA": DATE, "DT": DATETIME, "TM": TIME, "AS": "045Y", "DS": "12.5", "IS": "42", "US": 7,
        "UR": f"http://secret.example/{n}", "UI": f"1.2.3.{n}", "OB": b"SECRET", "UN": b"SECRET",
    }[vr]  # fmt: skip  # a KeyError names a VR the table gained: give it a value


def synthetic_dataset() -> Dataset:
    """Every tag of BASIC_PROFILE pydicom's dictionary knows, plus the masked groups and a well-known SOP class.

    Left out: the 25 tags of the 2026c table pydicom 3.0's dictionary does not know yet (apply removes every
    unknown attribute, whatever the table says, and pydicom could not give them a VR), and (0002,0003) Media Storage
    SOP Instance UID, a file meta attribute: apply rebuilds the file meta from the data set (test_uids_...).
    The command group's (0000,1000) and (0000,1001) are in (a Dataset holds them; a file cannot: see write_back).
    """
    ds = Dataset()
    for n, tag in enumerate(sorted(deid.BASIC_PROFILE)):
        if tag >> 16 == 0x0002 or not dictionary_has_tag(tag):
            continue
        vr = dictionary_VR(tag)
        ds.add_new(tag, vr, synthetic_value(tag, vr, n))
    ds[PATIENT_NAME].value = f"{PATIENT_FAMILY}^{PATIENT_GIVEN}"
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions: (50xx,xxxx) X
    ds.add_new(0x50003000, "OB", b"CURVE!")  # Curve Data
    for group in (0x6000, 0x6002):
        ds.add_new(group << 16 | 0x0010, "US", 4)  # Overlay Rows: not in the table, kept
        ds.add_new(group << 16 | 0x3000, "OW", b"\x01\x02\x03\x04")  # Overlay Data: X
        ds.add_new(group << 16 | 0x4000, "LT", "SECRET OVERLAY COMMENT")  # Overlay Comments: X
    ds.SOPClassUID = CT_SOP_CLASS
    return ds


def check(tag: int, before: DataElement, out: Dataset, options: frozenset[str], d: deid.Deidentifier, patient: str) -> str:
    """Assert that `out` holds what the resolved action of `tag` makes of `before`; returns the action."""
    vr = before.VR
    action = deid.action_for(tag, vr, options)
    where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag)} {vr} {action} {sorted(options)}"
    if action == "X":
        assert tag not in out, where
        return action
    assert tag in out, where
    after = out[tag]
    assert after.VR == vr, where
    if action in ("Z", "X/Z", "X/Z/D"):  # empty (type 2 stays); Z allows the patient's pseudonym in ID and Name
        if tag in (PATIENT_ID, PATIENT_NAME):
            assert after.value == d.pseudonym(patient), where
        elif vr == "SQ":
            assert len(after.value) == 0, where
        else:
            assert after.value is None, where
    elif action in ("D", "X/D", "Z/D"):  # a dummy of the VR, of non-zero length
        if tag in (PATIENT_ID, PATIENT_NAME):
            assert after.value == d.pseudonym(patient), where
        elif vr == "SQ":
            check_items(before, after, options, d, patient, where)
        elif vr == "UI":
            assert after.value == d.new_uid(before.value) != before.value, where
        else:
            expected = deid.DUMMY_BINARY if vr in ("OB", "UN") else 0 if vr == "US" else deid.DUMMY_BY_VR.get(vr, deid.DUMMY_TEXT)
            assert after.value == expected, where
            assert after.value != before.value and len(str(after.value)) > 0, where
    elif action == "U":
        assert vr == "UI", where
        assert after.value == d.new_uid(before.value), where
        assert after.value.startswith("2.25.") and after.value != before.value, where
    elif action == "K":
        if vr == "SQ":  # kept, its items de-identified all the same
            check_items(before, after, options, d, patient, where)
        else:
            assert after.value == before.value, where
    elif action == "C":
        if vr == "SQ":
            check_items(before, after, options, d, patient, where)
        elif vr == "DA":
            assert "retain_modified_dates" in options, where
            assert after.value == shifted(DATE, d.shift_days(patient)), where
        elif vr == "DT":
            assert "retain_modified_dates" in options, where
            assert after.value == shifted(DATE, d.shift_days(patient)) + DATETIME[8:], where
        elif vr in TEXT_VRS:  # the patient's family name cleaned out, the rest kept
            assert before.value == f"{before.value[:3]}+{PATIENT_FAMILY}", where
            assert after.value == f"{before.value[:3]}+*", where
        else:  # times, numbers, binary: a temporal or device option's C keeps them
            assert after.value == before.value, where
    elif action == "X/Z/U*":
        assert vr == "SQ", where
        check_items(before, after, options, d, patient, where)
    else:
        raise AssertionError(f"{where}: an action the test does not know")
    return action


def check_items(before: DataElement, after: DataElement, options, d, patient, where) -> None:
    """A sequence de-identified inside: its one item's Patient's Name and Referenced SOP Instance UID as their own
    actions say (the pseudonym; a new UID, or kept under Retain UIDs)."""
    assert len(after.value) == len(before.value) == 1, where
    (item_before,), (item_after,) = before.value, after.value
    assert sorted(item_after.keys()) == sorted(item_before.keys()), where
    for elem in item_before:
        check(int(elem.tag), elem, item_after, options, d, patient)
    uid = item_after.ReferencedSOPInstanceUID
    assert uid == (item_before.ReferencedSOPInstanceUID if "retain_uids" in options else d.new_uid(item_before.ReferencedSOPInstanceUID)), where


def write_back(ds: Dataset) -> Dataset:
    """`ds` written as a file and read again (the command group left out: pydicom refuses it in a file)."""
    ds = copy.deepcopy(ds)
    for tag in [t for t in ds.keys() if t >> 16 == 0]:
        del ds[tag]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("options", OPTION_SETS, ids=OPTION_IDS)
def test_every_attribute_of_table_e1_1_gets_its_action(options):
    source = synthetic_dataset()
    assert len(source) > 600
    d = deid.Deidentifier(deid.Options(options), KEY)
    out = d.apply(copy.deepcopy(source))
    patient = source.PatientID
    seen = set()
    for elem in source:
        tag = int(elem.tag)
        if tag in deid.BASIC_PROFILE:
            seen.add(check(tag, elem, out, options, d, patient))
    # Every kind of action of the table (and the options' K and C) was met and checked.
    basic = {"X", "Z", "D", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"} - ({"U", "X/Z/U*"} if "retain_uids" in options else set())
    assert basic <= seen, seen  # Retain UIDs makes every U (and U*) a K
    assert ("K" in seen) == bool(options & {"retain_patient_characteristics", "retain_device_identity", "retain_uids"}), seen
    assert ("C" in seen) == bool(options & {"clean_descriptors", "retain_modified_dates", "retain_patient_characteristics"}), seen
    # The masked groups: curves, overlay data and comments removed; the rest of an overlay kept.
    for tag in (0x50000005, 0x50003000, 0x60003000, 0x60004000, 0x60023000, 0x60024000):
        assert tag not in out, hex(tag)
    assert out[0x60000010].value == out[0x60020010].value == 4
    assert out.SOPClassUID == CT_SOP_CLASS
    # What every output says of itself.
    assert out.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", *(deid.OPTION_CODES[o][0] for o in deid.OPTIONS if o in options)]
    assert out.LongitudinalTemporalInformationModified == ("MODIFIED" if "retain_modified_dates" in options else "REMOVED")
    # Without Retain UIDs every UID of the source is gone from the output, at any depth, but for those an option
    # keeps (Retain Device Identity: Device UID, Manufacturer's Device Class UID).
    if "retain_uids" not in options:
        new = {str(e.value) for e in out.iterall() if e.VR == "UI"}
        old = {str(e.value) for e in source.iterall() if e.VR == "UI"} - set(UID_dictionary)
        kept = {str(e.value) for e in source if e.VR == "UI" and deid.action_for(int(e.tag), "UI", options) == "K"}
        assert old & new == kept
        assert len(kept) == (2 if "retain_device_identity" in options else 0)
    # The dummies and cleaned values are valid for their VRs: the output is written and read back alike.
    back = write_back(out)
    assert back.PatientName == d.pseudonym(patient) and back.StudyInstanceUID == out.StudyInstanceUID


def hand_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID-12345"
    ds.PatientAge = "045Y"
    ds.AccessionNumber = "ACC0001"
    ds.InstitutionName = "General Hospital"
    ds.StationName = "CT-SCANNER-7"
    ds.StudyDescription = "CT head of John Doe 20010203"
    ds.StudyDate = DATE
    ds.StudyInstanceUID = "1.2.3.4.5.6.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.8"
    ds.SOPClassUID = CT_SOP_CLASS
    ds.Modality = "CT"
    return ds


def test_well_known_rows_by_hand():
    assert [deid.basic_action(t) for t in (0x00100010, 0x00080050, 0x00080080, 0x0020000D, 0x00101010)] == ["Z", "Z", "X/Z/D", "U", "X"]
    assert deid.action_for(0x00101010, "AS", {"retain_patient_characteristics"}) == "K"
    assert deid.action_for(0x00081010, "SH", {"retain_device_identity"}) == "K"
    assert deid.action_for(0x00081030, "LO", ()) == "X"
    assert deid.action_for(0x00081030, "LO", {"clean_descriptors"}) == "C"
    assert deid.action_for(0x00080020, "DA", {"retain_modified_dates"}) == "C"
    assert deid.action_for(0x00080018, "UI", {"retain_uids"}) == "K"
    assert deid.action_for(0x00080070, "LO", deid.OPTIONS) is None  # Manufacturer: not in the table
    assert deid.basic_action(0x50123000) == deid.basic_action(0x601E3000) == deid.basic_action(0x60004000) == "X"
    assert deid.basic_action(0x60000010) is None

    def run(*options: str) -> tuple[Dataset, deid.Deidentifier]:
        d = deid.Deidentifier(deid.Options(frozenset(options)), KEY)
        return d.apply(hand_dataset()), d

    out, d = run()
    assert out.PatientName == out.PatientID == d.pseudonym("PID-12345")
    assert out.PatientID.startswith("ANON") and len(out.PatientID) == 16
    for keyword in ("AccessionNumber", "InstitutionName", "StationName", "StudyDate"):  # present (type 2), empty
        assert out[keyword].value is None, keyword
    assert out.StudyInstanceUID == d.new_uid("1.2.3.4.5.6.7") == d.uid_map["1.2.3.4.5.6.7"]
    assert out.StudyInstanceUID.startswith("2.25.") and len(out.StudyInstanceUID) <= 64
    assert "PatientAge" not in out and "StudyDescription" not in out
    assert out.Modality == "CT" and out.SOPClassUID == CT_SOP_CLASS

    out, _ = run("retain_patient_characteristics")
    assert out.PatientAge == "045Y"
    out, _ = run("retain_device_identity")
    assert out.StationName == "CT-SCANNER-7"
    out, _ = run("clean_descriptors")
    assert out.StudyDescription == "CT head of * *"  # "John Doe" and the date cleaned out, the rest kept
    out, d = run("retain_modified_dates")
    assert 1 <= d.shift_days("PID-12345") <= deid.MAX_SHIFT_DAYS
    assert out.StudyDate == shifted(DATE, d.shift_days("PID-12345")) != DATE
    out, d = run("retain_uids")
    assert out.SOPInstanceUID == "1.2.3.4.5.6.7.8" and out.StudyInstanceUID == "1.2.3.4.5.6.7"


def test_attributes_the_table_does_not_name():
    """Kept, except: UIDs replaced (kept under Retain UIDs, as every U is), dates blanked (shifted under Modified
    Dates), and a kept text loses the identifying values (names, dates, UIDs) found elsewhere."""
    ds = hand_dataset()
    ds.SOPInstanceUIDOfConcatenationSource = "1.2.3.4.5.6.7.8"  # (0020,0242): a reference to an instance
    ds.ExpiryDate = "20000101"  # (0014,1020) DA
    ds.ExpirationDateTime = "20000101101010"  # (0008,0416) DT
    ds.TimeOfGainCalibration = "101010"  # (0014,3077) TM
    ds.Manufacturer = "ACME for John Doe, study 1.2.3.4.5.6.7, 20010203"
    ds.BodyPartExamined = "HEAD"
    ds.PositionReferenceIndicator = "CT head of John Doe 20010203"  # the Study Description again
    ds.add_new(0x00090010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091001, "LO", "private value")

    d = deid.Deidentifier(deid.Options(), KEY)
    out = d.apply(copy.deepcopy(ds))
    assert out.SOPInstanceUIDOfConcatenationSource == out.SOPInstanceUID == d.new_uid("1.2.3.4.5.6.7.8")
    assert out.ExpiryDate is None and out.ExpirationDateTime is None and out.TimeOfGainCalibration == "101010"
    assert out.Manufacturer == "ACME for *, study *, *"
    assert out.PositionReferenceIndicator == "*"  # a removed description is identifying wherever it is repeated
    assert out.BodyPartExamined == "HEAD"
    assert not any(e.tag.is_private for e in out)

    d = deid.Deidentifier(deid.Options(frozenset({"retain_uids", "retain_modified_dates"})), KEY)
    out = d.apply(copy.deepcopy(ds))
    assert out.SOPInstanceUIDOfConcatenationSource == out.SOPInstanceUID == "1.2.3.4.5.6.7.8"
    days = d.shift_days("PID-12345")
    assert out.ExpiryDate == shifted("20000101", days) and out.ExpirationDateTime == shifted("20000101", days) + "101010"
    assert out.Manufacturer == "ACME for *, study 1.2.3.4.5.6.7, *"  # retained UIDs are not identifying here

    out = deid.Deidentifier(deid.Options(frozenset({"clean_descriptors"})), KEY).apply(copy.deepcopy(ds))
    assert out.StudyDescription == out.PositionReferenceIndicator == "CT head of * *"  # a cleaned one is not


def test_dates_far_back_are_blanked_or_padded_not_crashed():
    """A shift before year 1 blanks the date (it raised OverflowError); a year before 1000 keeps four digits."""
    d = deid.Deidentifier(deid.Options(frozenset({"retain_modified_dates"})), KEY)
    days = d.shift_days("PID-12345")
    assert shifted("05000615", days).startswith("04")  # the case strftime("%Y") wrote in 7 digits
    for value, expected in (("00010101", ""), ("05000615", shifted("05000615", days)), ("2001", ""), ("2001.02.03", "")):
        ds = hand_dataset()
        ds.StudyDate = value
        assert d.apply(ds).StudyDate == expected, value


def test_scrub_text_and_options():
    assert deid.scrub_text("Seen by DOE, john doe and JOHN", ["John Doe", "Doe", "John"]) == "Seen by *, * and *"
    assert deid.scrub_text("nothing here", ["John"]) == "nothing here"
    with pytest.raises(deid.DeidError, match="unknown option 'retain_everything'"):
        deid.Options(frozenset({"retain_everything"}))
    assert set(deid.OPTIONS) == set(deid.OPTION_CODES) and deid.PROFILE_CODE[0] == "113100" and deid.CLEAN_PIXELS_CODE[0] == "113101"


# --- 2. the whole corpus ---------------------------------------------------------------------------------------------

IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "OperatorsName",
)  # fmt: skip
DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")  # at the top level
KEPT = ("SOPClassUID", "Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "Modality", "PhotometricInterpretation", "NumberOfFrames")
# Constant values the profile writes, whatever the source: a source value inside one of them is found in every
# output (eCT_Supplemental.dcm's Patient ID and Accession Number "0010" are inside the dummy date 19000101).
DUMMIES = (deid.DUMMY_TEXT, *map(str, deid.DUMMY_BY_VR.values()), "ANON")


# The transfer syntax of a file read without one (forced): the encoding it was read with.
ENCODINGS = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian, (False, False): ExplicitVRBigEndian}


def read(path: Path) -> Dataset | None:
    """A corpus file as pydicom reads it; files without a preamble (no_meta.dcm, rtstruct.dcm...) forced, if they
    turn out to be a data set with a SOP Instance UID; None for the rest (text, JSON, ICC profiles...)."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - not DICOM at all
        return None
    return ds if "SOPInstanceUID" in ds else None


@functools.cache
def corpus() -> tuple[tuple[Path, bytes], ...]:
    """Every file of both corpora that is a writable instance: pydicom reads it, it is no DICOMDIR, and it has SOP
    Class and Instance UIDs (in the data set or the file meta: a file without them cannot be written with
    enforce_file_format; empty_charset_LEI.dcm, meta_missing_tsyntax.dcm and nested_priv_SQ.dcm are fragments)."""
    found = []
    for path in sorted(p for root in (PYDICOM_TEST_FILES, pydicom_data_dir()) for p in root.rglob("*") if p.is_file()):
        ds = read(path)
        if ds is None or "DirectoryRecordSequence" in ds:
            continue
        meta = getattr(ds, "file_meta", None) or {}
        if not (ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")):
            continue
        if not (ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")):
            continue
        found.append((path, path.read_bytes()))
    return tuple(found)


def load(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        return pydicom.dcmread(io.BytesIO(data), force=True)


def deidentify(data: bytes, options: frozenset[str] = frozenset(), key: bytes = KEY) -> tuple[Dataset, bytes, deid.Deidentifier]:
    d = deid.Deidentifier(deid.Options(options), key)
    ds = d.apply(load(data))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return ds, buffer.getvalue(), d


def identifying_values(src: Dataset) -> set[str]:
    """The source's values the output must not hold: the IDENTIFYING attributes at any depth (names also by
    component of 3+ characters) and every UID but the well-known ones, file meta included."""
    found: set[str] = set()
    for elem in src.iterall():
        values = [str(v or "").strip().rstrip("\x00") for v in (elem.value if elem.VM > 1 else [elem.value])] if elem.VR != "SQ" else []
        if elem.keyword in IDENTIFYING:
            found.update(v for v in values if len(v.encode()) >= 4)
            if elem.VR == "PN":
                found.update(part.strip() for v in values for part in re.split(r"[\^=]", v) if len(part.strip()) >= 3)
        if elem.VR == "UI":
            found.update(v for v in values if v and v not in UID_dictionary)
    for elem in getattr(src, "file_meta", None) or []:
        if elem.VR == "UI" and elem.value and str(elem.value) not in UID_dictionary:
            found.add(str(elem.value))
    # Legitimately in every output: values inside the profile's constant dummies, and pydicom's own UIDs (the new
    # file meta names pydicom as its implementation; files pydicom wrote carry that UID, and rtstruct.dcm's
    # Instance Creator UID is pydicom's root, a prefix of it). Neither is derived from the source.
    return {v for v in found if not any(v in dummy for dummy in DUMMIES) and v not in PYDICOM_IMPLEMENTATION_UID}


def leaks(src: Dataset, written: bytes, values: set[str]) -> list[str]:
    """The values found in the written file, its pixel data left out (kept byte for byte, asserted apart: a value
    of 3 or 4 bytes matches somewhere in pixels, RG1_UNCR.dcm's name component RG1 does)."""
    haystack = written
    if "PixelData" in src and src.PixelData:
        haystack = haystack.replace(src.PixelData, b"")
    return sorted(v for v in values if v.encode() in haystack)


def test_every_corpus_file_is_written_without_the_sources_identifying_values():
    processed = 0
    for path, data in corpus():
        src = load(data)
        _, written, _ = deidentify(data)
        back = pydicom.dcmread(io.BytesIO(written))
        assert back.PatientIdentityRemoved == "YES", path.name
        assert back.DeidentificationMethodCodeSequence[0].CodeValue == "113100", path.name
        assert not any(e.tag.is_private for e in back.iterall()), path.name
        assert back.get("PixelData") == src.get("PixelData"), path.name
        for keyword in KEPT:
            assert back.get(keyword) == src.get(keyword), (path.name, keyword)
        # Every SOP class of the corpora is a well-known UID: kept (four files name it in their file meta only).
        sop_class = src.get("SOPClassUID") or src.file_meta.MediaStorageSOPClassUID
        assert sop_class in UID_dictionary and back.file_meta.MediaStorageSOPClassUID == sop_class, path.name
        assert back.file_meta.TransferSyntaxUID == (src.file_meta.get("TransferSyntaxUID") or ENCODINGS[src.original_encoding]), path.name
        assert leaks(src, written, identifying_values(src)) == [], path.name
        processed += 1
    assert processed >= 200, processed


def test_every_corpus_file_with_modified_dates_moves_its_dates_back():
    processed = dated = 0
    for path, data in corpus():
        src = load(data)
        _, written, d = deidentify(data, frozenset({"retain_modified_dates"}))
        back = pydicom.dcmread(io.BytesIO(written))
        assert back.LongitudinalTemporalInformationModified == "MODIFIED", path.name
        assert leaks(src, written, identifying_values(src)) == [], path.name
        days = d.shift_days(str(src.get("PatientID", "") or src.get("PatientName", "") or ""))
        for keyword in DATES:
            original = str(src.get(keyword) or "").strip()
            if keyword == "PatientBirthDate":  # Z, never kept by the temporal option: present and empty, or absent
                assert (back[keyword].value if keyword in back else None) == ("" if keyword in src else None), path.name
            elif re.fullmatch(r"\d{8}", original):
                assert back.get(keyword) == shifted(original, days), (path.name, keyword)
                dated += keyword == "StudyDate"
        processed += 1
    assert processed >= 200 and dated >= 100, (processed, dated)


# --- 3. the same pixels ----------------------------------------------------------------------------------------------


def pixel_sample() -> list[tuple[Path, bytes]]:
    """A file of each transfer syntax whose pixels pydicom decodes (512 x 512 pixels in all at most, to be quick),
    then a second of each, 15 files in all."""
    by_syntax: dict[str, list[tuple[Path, bytes]]] = {}
    for path, data in corpus():
        ds = load(data)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if (
            "PixelData" not in ds
            or len(by_syntax.get(syntax, [])) >= 2
            or ds.get("Rows", 0) * ds.get("Columns", 0) * int(ds.get("NumberOfFrames", 1) or 1) > 512 * 512
        ):
            continue
        try:
            ds.pixel_array  # decodable here: a codec is installed, the data are whole
        except Exception:  # noqa: BLE001 - not decodable: not part of the sample
            continue
        by_syntax.setdefault(syntax, []).append((path, data))
    return ([files[0] for files in by_syntax.values()] + [files[1] for files in by_syntax.values() if len(files) > 1])[:15]


def test_the_output_renders_the_same_pixels():
    sample = pixel_sample()
    syntaxes = {str(load(data).file_meta.TransferSyntaxUID) for _, data in sample}
    assert len(sample) == 15 and len(syntaxes) >= 11, syntaxes  # 12 syntaxes decodable here
    for path, data in sample:
        _, written, _ = deidentify(data)
        assert np.array_equal(pydicom.dcmread(io.BytesIO(written)).pixel_array, load(data).pixel_array), path.name


def test_every_renderable_corpus_file_renders_the_same_image_through_the_services_renderer():
    """The whole corpus, as the service shows it (dicomcore.rendering, first frame, PNG): the display attributes
    (windows, LUTs, rescale, photometric) survive de-identification along with the pixel data."""
    from dicomcore import rendering
    from studies.deidentify import CannotDeidentify, deidentify_file

    compared, refused = 0, []
    for path, data in corpus():
        try:
            before = rendering.render(io.BytesIO(data)).content
        except (rendering.RenderError, rendering.InvalidRenderParameter, InvalidDicomError, ValueError, MemoryError):
            continue  # the service cannot render the source either (no pixels, no codec, a broken fragment)
        if "PixelData" not in load(data):  # pydicom drops a pixel data element that ends early: the copy is refused
            with pytest.raises(CannotDeidentify, match="truncated"):
                deidentify_file(path, Path(tempfile.mkdtemp()) / "out.dcm", deid.Deidentifier(deid.Options(), KEY), has_pixels=True)
            refused.append(path.name)
            continue
        _, written, _ = deidentify(data)
        assert rendering.render(io.BytesIO(written)).content == before, path.name
        compared += 1
    assert compared >= 100, compared
    assert refused == ["emri_small_jpeg_2k_lossless_too_short.dcm"]


# --- 4. UIDs ----------------------------------------------------------------------------------------------------------


def two_of_one_study() -> tuple[bytes, bytes]:
    by_study: dict[str, list[bytes]] = {}
    for _, data in corpus():
        ds = load(data)
        if ds.get("StudyInstanceUID") and ds.get("SOPInstanceUID"):
            by_study.setdefault(ds.StudyInstanceUID, []).append(data)
    files = next(f for f in by_study.values() if len({load(x).SOPInstanceUID for x in f}) >= 2)
    first = files[0]
    second = next(x for x in files if load(x).SOPInstanceUID != load(first).SOPInstanceUID)
    return first, second


def test_uids_map_consistently_under_one_key_and_differ_under_another():
    first, second = two_of_one_study()
    src1, src2 = load(first), load(second)
    d = deid.Deidentifier(deid.Options(), KEY)
    out1, out2 = d.apply(load(first)), d.apply(load(second))
    assert out1.StudyInstanceUID == out2.StudyInstanceUID == d.new_uid(src1.StudyInstanceUID) == d.uid_map[src1.StudyInstanceUID]
    assert out1.StudyInstanceUID != src1.StudyInstanceUID
    assert out1.SOPInstanceUID != out2.SOPInstanceUID
    assert (out1.PatientID == out2.PatientID) == (src1.get("PatientID") == src2.get("PatientID"))

    again = deid.Deidentifier(deid.Options(), KEY)
    twice = again.apply(load(first))
    assert [e.value for e in twice.iterall() if e.VR == "UI"] == [e.value for e in out1.iterall() if e.VR == "UI"]
    assert again.uid_map and again.uid_map.items() <= d.uid_map.items()

    other = deid.Deidentifier(deid.Options(), b"another key")
    elsewhere = other.apply(load(first))
    assert elsewhere.StudyInstanceUID != out1.StudyInstanceUID and elsewhere.SOPInstanceUID != out1.SOPInstanceUID
    assert other.pseudonym("PID-12345") != d.pseudonym("PID-12345")

    for src, out in ((src1, out1), (src2, out2)):
        assert out.SOPClassUID == src.SOPClassUID and src.SOPClassUID in UID_dictionary
        assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert out.file_meta.MediaStorageSOPClassUID == src.SOPClassUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == d.new_uid(src.SOPInstanceUID)
        assert out.file_meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID


def test_the_file_meta_follows_the_data_set_or_maps_its_own():
    """The written meta's SOP Instance UID is the new one; a data set without SOP UIDs takes the old meta's, mapped
    alike (kept under Retain UIDs); a data set read without a transfer syntax keeps the encoding it was read with."""
    ds = pydicom.dcmread(CT_SMALL)
    original = ds.SOPInstanceUID
    d = deid.Deidentifier(deid.Options(), KEY)
    d.apply(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID == d.new_uid(original)

    for options, expected in ((frozenset(), d.new_uid(original)), (frozenset({"retain_uids"}), original)):
        ds = pydicom.dcmread(CT_SMALL)
        del ds.SOPInstanceUID
        out = deid.Deidentifier(deid.Options(options), KEY).apply(ds)
        assert out.file_meta.MediaStorageSOPInstanceUID == expected

    for name, syntax in (("ExplVR_BigEndNoMeta.dcm", ExplicitVRBigEndian), ("ExplVR_LitEndNoMeta.dcm", ExplicitVRLittleEndian)):
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / name, force=True)
        assert "TransferSyntaxUID" not in ds.file_meta
        d.apply(ds)
        assert ds.file_meta.TransferSyntaxUID == syntax
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert pydicom.dcmread(io.BytesIO(buffer.getvalue())).PatientIdentityRemoved == "YES"


# --- 5. masks ---------------------------------------------------------------------------------------------------------

RECT = deid.Rect(3, 4, 5, 6)  # columns 3..7, rows 4..9


def generated(samples: int, bits: int = 8, frames: int = 1) -> Dataset:
    rows, cols = 16, 20
    shape = (frames, rows, cols, samples)
    pixels = np.random.default_rng(7).integers(1, 2**bits if bits < 16 else 4096, size=shape, dtype=np.uint8 if bits == 8 else np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SC_SOP_CLASS, "1.2.3.4.99"
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "PID-9", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return ds


def masked(source: Dataset, rects=(RECT,)) -> tuple[Dataset, np.ndarray]:
    """The source masked, written and read back; and the source's pixels with the rectangles set to 0 by hand."""
    expected = source.pixel_array.copy()
    view = expected if int(source.get("NumberOfFrames", 1) or 1) > 1 else expected[None, ...]
    for r in rects:
        view[:, r.y : r.y + r.height, r.x : r.x + r.width, ...] = 0
    d = deid.Deidentifier(deid.Options(masks=tuple(rects)), KEY)
    ds = d.apply(copy.deepcopy(source))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue())), expected


def assert_masked(out: Dataset, expected: np.ndarray, source: Dataset) -> None:
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113101"]
    pixels = out.pixel_array
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected)
    assert not np.array_equal(pixels, source.pixel_array)  # the rectangle held non-zero pixels: something changed


def test_masks_on_generated_grey_colour_and_multiframe_images():
    grey = generated(1)
    out, expected = masked(grey)
    assert_masked(out, expected, grey)
    assert (out.pixel_array[4:10, 3:8] == 0).all() and (grey.pixel_array[4:10, 3:8] != 0).all()
    outside = np.ones(grey.pixel_array.shape, bool)
    outside[4:10, 3:8] = False
    assert np.array_equal(out.pixel_array[outside], grey.pixel_array[outside])

    rgb = generated(3)
    out, expected = masked(rgb)
    assert_masked(out, expected, rgb)
    assert (out.pixel_array[4:10, 3:8, :] == 0).all() and out.PhotometricInterpretation == "RGB"

    frames = generated(1, bits=16, frames=3)  # every frame masked; a rectangle past the edge clipped
    rects = (RECT, deid.Rect(15, 12, 100, 100))
    out, expected = masked(frames, rects)
    assert_masked(out, expected, frames)
    assert (out.pixel_array[:, 12:, 15:] == 0).all() and (out.pixel_array[:, :12, :3] == frames.pixel_array[:, :12, :3]).all()


@pytest.mark.parametrize(
    "name, syntax", [("SC_rgb_rle.dcm", RLELossless), ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit), ("MR_small_bigendian.dcm", ExplicitVRBigEndian)]
)
def test_masks_on_compressed_and_big_endian_corpus_files(name, syntax):
    """Decoded, masked, written native little endian (a big endian file's other binary values swapped)."""
    source = pydicom.dcmread(PYDICOM_TEST_FILES / name)
    assert source.file_meta.TransferSyntaxUID == syntax
    out, expected = masked(source, (deid.Rect(20, 24, 10, 8),))  # inside the picture, not its black margin
    assert_masked(out, expected, source)
    if source.SamplesPerPixel == 3:
        assert out.PhotometricInterpretation == "RGB" and out.PlanarConfiguration == 0


def test_a_1_bit_image_cannot_be_masked():
    ds = generated(1)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = np.packbits(np.ones((16, 20), np.uint8)).tobytes()
    with pytest.raises(deid.DeidError, match="only 8, 16 and 32 bits allocated"):
        deid.Deidentifier(deid.Options(masks=(RECT,)), KEY).apply(ds)


# --- 6. burned-in annotation ----------------------------------------------------------------------------------------


def test_burned_in_risk():
    assert deid.burned_in_risk(burned_in="YES", modality="CT", sop_class_uid=CT_SOP_CLASS) == "Burned In Annotation is YES"
    assert deid.burned_in_risk(burned_in="NO", modality="US", sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1") is None
    assert deid.burned_in_risk(burned_in=None, modality="US", sop_class_uid=None) == "a US image without Burned In Annotation: it may carry burned-in text"
    assert (
        deid.burned_in_risk(burned_in=None, modality="OT", sop_class_uid=SC_SOP_CLASS)
        == "a secondary capture without Burned In Annotation: it may carry burned-in text"
    )
    assert (
        deid.burned_in_risk(burned_in="", modality="CT", sop_class_uid=SC_SOP_CLASS + ".4")
        == "a secondary capture without Burned In Annotation: it may carry burned-in text"
    )
    assert deid.burned_in_risk(burned_in=None, modality="CT", sop_class_uid=CT_SOP_CLASS) is None
