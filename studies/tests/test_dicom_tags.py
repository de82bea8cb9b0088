"""Tag expressions (`parse_expression`) and lookups (`lookup`) over headers parsed from real files."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicomcore import parsing, tags
from dicomcore.tags import ElementNotFound, Step, TagExpressionError, lookup, parse_expression, person_name_text

from .conftest import CT_SMALL

PATIENT_NAME = 0x00100010
IMAGE_TYPE = 0x00080008
REFERENCED_IMAGE_SEQUENCE = 0x00081140
REFERENCED_SOP_INSTANCE_UID = 0x00081155


def parsed_header(source: Path | bytes) -> dict[str, Any]:
    """The DICOM JSON header of a real file, exactly as the upload path produces it."""
    if isinstance(source, bytes):
        return parsing.parse_dicom(io.BytesIO(source)).header
    with open(source, "rb") as fp:
        return parsing.parse_dicom(fp).header


def find(header: dict[str, Any], expression: str) -> tags.TagValue:
    return lookup(header, parse_expression(expression))


@pytest.fixture(scope="module")
def ct_header() -> dict[str, Any]:
    return parsed_header(CT_SMALL)


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    """CT_small with its own group 0009 removed, an ACME private block and a 2-item ReferencedImageSequence."""
    ds = pydicom.dcmread(CT_SMALL)
    for element in list(ds.group_dataset(0x0009)):
        del ds[element.tag]
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "secret")
    uids = [generate_uid(), generate_uid()]
    items = []
    for uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedImageSequence = Sequence(items)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return {"header": parsed_header(buffer.getvalue()), "uids": uids}


# --- parse_expression: accepted forms ---------------------------------------------------

ACCEPTED = [
    ("(0010,0010)", (Step(PATIENT_NAME),)),
    ("( 0010 , 0010 )", (Step(PATIENT_NAME),)),
    ("0010,0010", (Step(PATIENT_NAME),)),
    ("00100010", (Step(PATIENT_NAME),)),
    ("0x00100010", (Step(PATIENT_NAME),)),
    ("0X00100010", (Step(PATIENT_NAME),)),
    ("(7fe0,0010)", (Step(0x7FE00010),)),
    ("(7FE0,0010)", (Step(0x7FE00010),)),
    ("7fE00010", (Step(0x7FE00010),)),
    ("PatientName", (Step(PATIENT_NAME),)),
    ("patientname", (Step(PATIENT_NAME),)),
    ("PATIENTNAME", (Step(PATIENT_NAME),)),
    ("  PatientName  ", (Step(PATIENT_NAME),)),
    ("(0009,1001)", (Step(0x00091001),)),
    ("(0009,0010)", (Step(0x00090010),)),
    (
        "ReferencedImageSequence[0].ReferencedSOPInstanceUID",
        (Step(REFERENCED_IMAGE_SEQUENCE, 0), Step(REFERENCED_SOP_INSTANCE_UID)),
    ),
    ("(0008,1140)[0].(0008,1155)", (Step(REFERENCED_IMAGE_SEQUENCE, 0), Step(REFERENCED_SOP_INSTANCE_UID))),
    ("00081140[3].referencedsopinstanceuid", (Step(REFERENCED_IMAGE_SEQUENCE, 3), Step(REFERENCED_SOP_INSTANCE_UID))),
    ("ImageType[1]", (Step(IMAGE_TYPE, 1),)),
    ("ImageType[ 2 ]", (Step(IMAGE_TYPE, 2),)),
    ("(0008,0008)[0]", (Step(IMAGE_TYPE, 0),)),
]


@pytest.mark.parametrize(("expression", "expected"), ACCEPTED, ids=[a for a, _ in ACCEPTED])
def test_parse_expression_accepts_every_documented_form(expression: str, expected: tuple[Step, ...]) -> None:
    assert parse_expression(expression) == expected


def test_parse_expression_accepts_exactly_the_maximum_length_and_depth() -> None:
    longest = "(" + " " * (tags.MAX_EXPRESSION_LENGTH - 11) + "0010,0010)"
    assert len(longest) == tags.MAX_EXPRESSION_LENGTH
    assert parse_expression(longest) == (Step(PATIENT_NAME),)

    deepest = ".".join(["ReferencedImageSequence[0]"] * (tags.MAX_STEPS - 1) + ["ReferencedSOPInstanceUID"])
    steps = parse_expression(deepest)
    assert len(steps) == tags.MAX_STEPS
    assert steps[-1] == Step(REFERENCED_SOP_INSTANCE_UID)


# --- parse_expression: malformed expressions --------------------------------------------

TOO_DEEP = ".".join(["ReferencedImageSequence[0]"] * tags.MAX_STEPS + ["ReferencedSOPInstanceUID"])

REJECTED = [
    pytest.param("", "the tag expression is empty", id="empty"),
    pytest.param("   ", "the tag expression is empty", id="blank"),
    pytest.param("(0010,001)", "cannot read a tag at position 1", id="short-element"),
    pytest.param("(0010,0010", "cannot read a tag at position 1", id="unclosed-parenthesis"),
    pytest.param("0010-0010", "expected (gggg,eeee), gggg,eeee, ggggeeee or a keyword", id="dash-separator"),
    pytest.param("001000100", "cannot read a tag at position 1", id="nine-hex-digits"),
    pytest.param("NotAKeyword", "'NotAKeyword' is not a DICOM keyword", id="unknown-keyword"),
    pytest.param("PatientName..X", "cannot read a tag at position 13", id="double-dot"),
    pytest.param("PatientName.", "cannot read a tag at position 13", id="trailing-dot"),
    pytest.param(".PatientName", "cannot read a tag at position 1", id="leading-dot"),
    pytest.param("PatientName[-1]", "index [-1] is negative", id="negative-index"),
    pytest.param("PatientName[x]", "unexpected '[' at position 12", id="non-numeric-index"),
    pytest.param("PatientName[]", "unexpected '[' at position 12", id="empty-index"),
    pytest.param("(0010,0010)(0010,0020)", "separate path steps with '.'", id="missing-separator"),
    pytest.param("P" * (tags.MAX_EXPRESSION_LENGTH + 1), "longer than 512 characters", id="too-long"),
    pytest.param(TOO_DEEP, "deeper than 16 elements", id="too-deep"),
]


@pytest.mark.parametrize(("expression", "reason"), REJECTED)
def test_parse_expression_rejects_malformed_input_with_a_useful_reason(expression: str, reason: str) -> None:
    with pytest.raises(TagExpressionError) as caught:
        parse_expression(expression)
    assert reason in str(caught.value)


def test_parse_expression_treats_none_as_empty() -> None:
    with pytest.raises(TagExpressionError, match="empty"):
        parse_expression(None)  # type: ignore[arg-type]


def test_lookup_errors_are_the_documented_exception_families() -> None:
    assert issubclass(TagExpressionError, ValueError)
    assert issubclass(ElementNotFound, LookupError)


# --- lookup over real headers ------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    ["(0010,0010)", "( 0010 , 0010 )", "0010,0010", "00100010", "0x00100010", "PatientName", "patientname", "PatientName[0]"],
)
def test_lookup_finds_ct_small_patient_name_by_every_form(ct_header: dict[str, Any], expression: str) -> None:
    found = find(ct_header, expression)
    assert found.value == "CompressedSamples^CT1"
    assert found.tag == "(0010,0010)"
    assert found.keyword == "PatientName"
    assert found.name == "Patient's Name"
    assert found.vr == "PN"
    assert found.private_creator is None
    assert "private_creator" not in found.as_dict()


def test_lookup_reports_the_path_with_keywords(ct_header: dict[str, Any]) -> None:
    assert find(ct_header, "0x00100010").path == "PatientName"
    assert find(ct_header, "(0008,0008)[2]").path == "ImageType[2]"


def test_lookup_reads_file_meta_elements(ct_header: dict[str, Any]) -> None:
    found = find(ct_header, "(0002,0010)")
    assert found.keyword == "TransferSyntaxUID"
    assert found.value == "1.2.840.10008.1.2.1"


def test_lookup_of_a_missing_element_raises_element_not_found_naming_the_tag(ct_header: dict[str, Any]) -> None:
    assert "00104000" not in ct_header
    with pytest.raises(ElementNotFound) as caught:
        find(ct_header, "PatientComments")
    assert "(0010,4000)" in str(caught.value)
    assert "PatientComments" in str(caught.value)
    assert "not present" in str(caught.value)


def test_lookup_of_a_missing_private_element_names_the_tag(ct_header: dict[str, Any]) -> None:
    with pytest.raises(ElementNotFound, match=r"\(0011,1001\)"):
        find(ct_header, "(0011,1001)")


def test_lookup_into_a_non_sequence_raises_tag_expression_error(ct_header: dict[str, Any]) -> None:
    with pytest.raises(TagExpressionError) as caught:
        find(ct_header, "PatientName[0].PatientID")
    assert "(0010,0010) PatientName is not a sequence" in str(caught.value)


def test_lookup_through_a_sequence_without_an_index_raises_tag_expression_error(generated: dict[str, Any]) -> None:
    with pytest.raises(TagExpressionError) as caught:
        find(generated["header"], "ReferencedImageSequence.ReferencedSOPInstanceUID")
    assert "(0008,1140) ReferencedImageSequence is a sequence" in str(caught.value)
    assert "[0]" in str(caught.value)


def test_lookup_of_an_item_index_out_of_range_raises_element_not_found(generated: dict[str, Any]) -> None:
    with pytest.raises(ElementNotFound) as caught:
        find(generated["header"], "ReferencedImageSequence[2].ReferencedSOPInstanceUID")
    assert "has no item [2] (it has 2)" in str(caught.value)


def test_lookup_of_an_element_missing_inside_an_item_says_which_item(generated: dict[str, Any]) -> None:
    with pytest.raises(ElementNotFound) as caught:
        find(generated["header"], "ReferencedImageSequence[1].PatientName")
    message = str(caught.value)
    assert "(0010,0010) PatientName is not present" in message
    assert "in item 1 of (0008,1140) ReferencedImageSequence" in message


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for inner in value.values():
            yield from _walk(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _walk(inner)


def test_lookup_of_pixel_data_answers_a_summary_never_bytes(ct_header: dict[str, Any]) -> None:
    found = find(ct_header, "PixelData")
    assert found.tag == "(7FE0,0010)"
    assert found.vr == "OW"
    assert found.value == {
        "length": 128 * 128 * 2,
        "encapsulated": False,
        "frames": 1,
        "rows": 128,
        "columns": 128,
        "bits_allocated": 16,
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
    }
    assert not any(isinstance(v, (bytes, bytearray, memoryview)) for v in _walk(found.as_dict()))
    json.dumps(found.as_dict(), allow_nan=False)


def test_lookup_of_multi_valued_image_type_gives_a_list_and_an_index_gives_one_value(ct_header: dict[str, Any]) -> None:
    assert find(ct_header, "ImageType").value == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert find(ct_header, "ImageType[0]").value == "ORIGINAL"
    assert find(ct_header, "ImageType[1]").value == "PRIMARY"
    assert find(ct_header, "imagetype[2]").value == "AXIAL"


def test_lookup_of_a_value_index_out_of_range_raises_element_not_found(ct_header: dict[str, Any]) -> None:
    with pytest.raises(ElementNotFound) as caught:
        find(ct_header, "ImageType[3]")
    assert "(0008,0008) ImageType has no value [3] (it has 3)" in str(caught.value)


def test_lookup_finds_a_generated_private_tag_and_its_creator(generated: dict[str, Any]) -> None:
    found = find(generated["header"], "(0009,1001)")
    assert found.value == "secret"
    assert found.vr == "LO"
    assert found.private_creator == "ACME 1.0"
    assert found.keyword == ""
    assert found.name == "Private tag (ACME 1.0)"
    assert found.as_dict()["private_creator"] == "ACME 1.0"


def test_lookup_of_the_private_creator_element_itself(generated: dict[str, Any]) -> None:
    found = find(generated["header"], "(0009,0010)")
    assert found.value == "ACME 1.0"
    assert found.name == "Private Creator"
    assert found.private_creator is None


def test_lookup_names_a_known_private_tag_from_pydicoms_private_dictionary(ct_header: dict[str, Any]) -> None:
    # CT_small.dcm carries GE's (0009,1001) "Full fidelity" under creator GEMS_IDEN_01.
    found = find(ct_header, "(0009,1001)")
    assert found.private_creator == "GEMS_IDEN_01"
    assert found.name == "Full fidelity"
    assert found.value == "GE_GENESIS_FF"


@pytest.mark.parametrize(
    "expression",
    ["ReferencedImageSequence[1].ReferencedSOPInstanceUID", "(0008,1140)[1].(0008,1155)", "00081140[1].00081155"],
)
def test_lookup_follows_a_nested_sequence_path_to_the_second_item(generated: dict[str, Any], expression: str) -> None:
    found = find(generated["header"], expression)
    assert found.value == generated["uids"][1]
    assert found.tag == "(0008,1155)"
    assert found.vr == "UI"
    assert found.path == "ReferencedImageSequence[1].ReferencedSOPInstanceUID"


def test_lookup_of_the_first_item_differs_from_the_second(generated: dict[str, Any]) -> None:
    first = find(generated["header"], "ReferencedImageSequence[0].ReferencedSOPInstanceUID").value
    assert first == generated["uids"][0]
    assert first != generated["uids"][1]


def test_lookup_of_a_whole_sequence_returns_its_items(generated: dict[str, Any]) -> None:
    found = find(generated["header"], "ReferencedImageSequence")
    assert found.vr == "SQ"
    assert [item["00081155"]["Value"][0] for item in found.value] == generated["uids"]
    assert find(generated["header"], "ReferencedImageSequence[1]").value["00081155"]["Value"] == [generated["uids"][1]]


def test_lookup_of_a_pn_with_three_component_groups_joins_them_with_equals() -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    header = parsed_header(buffer.getvalue())
    assert header["00100010"]["Value"] == [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]
    assert find(header, "PatientName").value == "Yamada^Tarou=山田^太郎=やまだ^たろう"


# --- person_name_text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"Alphabetic": "Doe^John"}, "Doe^John"),
        ({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}, "Yamada^Tarou=山田^太郎"),
        ({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}, "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ({"Ideographic": "山田^太郎"}, "=山田^太郎"),
        ({"Phonetic": "やまだ^たろう"}, "==やまだ^たろう"),
        ({"Alphabetic": "Doe^John", "Phonetic": "do^jon"}, "Doe^John==do^jon"),
        ({"Alphabetic": "Doe^John", "Ideographic": ""}, "Doe^John"),
        ({}, ""),
    ],
    ids=["alphabetic", "alpha+ideo", "all-three", "ideo-only", "phonetic-only", "alpha+phonetic", "empty-ideo", "none"],
)
def test_person_name_text_joins_component_groups_in_dicom_order(value: dict[str, str], text: str) -> None:
    assert person_name_text(value) == text


# --- header_rows: the tag browser's view of a whole header -----------------------------------------


def test_header_rows_lists_every_top_level_element_in_tag_order(ct_header: dict[str, Any]) -> None:
    rows = tags.header_rows(ct_header)
    assert [row.tag for row in rows] == sorted(row.tag for row in rows)
    assert len(rows) == len(ct_header)
    by_tag = {row.tag: row for row in rows}
    name = by_tag["(0010,0010)"]
    assert (name.keyword, name.vr, name.value, name.private) == ("PatientName", "PN", "CompressedSamples^CT1", False)
    assert by_tag["(0008,0008)"].value == "ORIGINAL\\PRIMARY\\AXIAL"  # multiple values, DICOM's separator
    assert by_tag["(7FE0,0010)"].value.startswith("pixel data: 128 x 128, 1 frame(s), 16 bits allocated, 32768 bytes")


def test_header_rows_marks_private_tags_and_names_them_from_the_private_dictionary(ct_header: dict[str, Any]) -> None:
    private = [row for row in tags.header_rows(ct_header) if row.private]
    assert private and all(int(row.tag[1:5], 16) % 2 == 1 for row in private)
    assert any(row.name not in ("", "Private tag") for row in private)


def test_header_rows_nests_sequence_items() -> None:
    ds = Dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    inner = Dataset()
    inner.CodeValue = "T-D3000"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    rows = tags.header_rows(parsing.dataset_to_json(ds))
    (sequence,) = rows
    assert (sequence.keyword, sequence.vr, sequence.value, len(sequence.items)) == ("ReferencedImageSequence", "SQ", "2 item(s)", 2)
    first = {row.keyword: row for row in sequence.items[0]}
    assert first["ReferencedSOPInstanceUID"].value == "1.2.3"
    assert first["PurposeOfReferenceCodeSequence"].items[0][0].value == "T-D3000"
    assert sequence.items[1] == ()
    assert "t-d3000" not in sequence.search_text  # each row matches its own text; the browser walks items


def test_header_rows_stops_at_the_depth_limit() -> None:
    ds = Dataset()
    current = ds
    for _ in range(tags.MAX_BROWSE_DEPTH + 5):
        child = Dataset()
        current.ReferencedImageSequence = Sequence([child])
        current = child
    depth, rows = 0, tags.header_rows(parsing.dataset_to_json(ds))
    while rows and rows[0].items:
        rows, depth = rows[0].items[0], depth + 1
    assert depth == tags.MAX_BROWSE_DEPTH - 1
    assert rows[0].value.endswith("nested too deep to show")


def test_header_rows_shortens_long_values_and_keeps_markup_as_plain_text() -> None:
    header = {
        "00081030": {"vr": "LO", "Value": ["x" * 1000]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "<script>alert(1)</script>"}]},
        "00091001": {"vr": "OB", "InlineBinary": "AAAA"},
    }
    rows = {row.tag: row for row in tags.header_rows(header)}
    assert rows["(0008,1030)"].value == "x" * tags.MAX_DISPLAY_CHARS + "… (1000 characters)"
    assert rows["(0010,0010)"].value == "<script>alert(1)</script>"  # escaping is the template's job
    assert rows["(0009,1001)"].value == "binary data (3 bytes)" and rows["(0009,1001)"].private


def test_header_rows_search_text_holds_both_tag_spellings_keyword_and_value(ct_header: dict[str, Any]) -> None:
    row = next(row for row in tags.header_rows(ct_header) if row.tag == "(0010,0010)")
    for needle in ("(0010,0010)", "00100010", "patientname", "patient's name", "compressedsamples^ct1"):
        assert needle in row.search_text


@pytest.mark.parametrize(
    ("exprs", "keys"),
    [
        (["PatientName"], ("00100010",)),
        (["(0009,1001)"], ("00091001", "00090010")),  # a private element brings its creator
        (["(0009,0010)"], ("00090010",)),
        (["ReferencedImageSequence[0].(0009,1001)"], ("00081140",)),  # nested creators are inside the item
        (["PatientName", "(0010,0010)", "Rows"], ("00100010", "00280010")),
    ],
)
def test_header_keys_are_what_a_lookup_reads(exprs, keys):
    assert tags.header_keys(*[tags.parse_expression(e) for e in exprs]) == keys
