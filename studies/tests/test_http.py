"""The shared HTTP layer's pure parts: the one Accept parser, media type choice, and the one
render-parameter parser in both its dialects (REST and DICOMweb)."""

from __future__ import annotations

import pytest

from dicomcore import rendering
from dicomcore.rendering import InvalidRenderParameter
from studies.http import params
from studies.http.images import if_none_match
from studies.http.negotiation import Acceptable, NotAcceptable, choose, matches_type, parse_accept

# --- negotiation --------------------------------------------------------------------------------------


def test_parse_accept_with_and_without_quotes_and_q_zero():
    accepts = parse_accept(
        'multipart/related; type=application/octet-stream; transfer-syntax=*, multipart/related; type="image/jp2"; q=0',
        default="application/octet-stream",
    )
    assert accepts == [Acceptable("application/octet-stream", "*", True)]
    assert parse_accept("", default="application/dicom") == [Acceptable("application/dicom", None, True)]


def test_rendered_options_from_table_8_3_5_1():
    options = params.rendered_options({"window": "40,400,sigmoid", "viewport": "64,32", "quality": "70"}, "image/png", frame=3)
    assert options == rendering.RenderOptions(
        frame=2, window=rendering.Window(40.0, 400.0, "SIGMOID"), width=64, height=32, image_format="png", quality=70
    )
    assert params.rendered_options({}, "").image_format == "jpeg"
    assert params.rendered_options({"accept": "image/webp"}, "image/png").image_format == "webp"
    assert params.rendered_options({}, "", thumbnail_size=128).size == 128
    with pytest.raises(NotAcceptable):
        params.rendered_options({}, "image/gif")



def test_choose_follows_the_clients_order_and_wildcards_only_when_allowed():
    offered = ["image/png", "image/jpeg", "image/webp"]
    assert choose(parse_accept("image/webp, image/png", default=""), offered) == "image/webp"
    assert choose(parse_accept("image/*", default=""), offered) == "image/png"
    assert choose(parse_accept("image/*", default=""), offered, wildcards=False) is None
    assert choose(parse_accept("image/gif; q=1, image/jpeg; q=0", default=""), offered) is None
    assert choose(parse_accept("", default=""), offered) is None


@pytest.mark.parametrize(
    ("accepted", "offered", "expected"),
    [("*/*", "image/png", True), ("image/*", "image/png", True), ("image/*", "text/csv", False), ("image/png", "image/png", True)],
)
def test_matches_type(accepted, offered, expected):
    assert matches_type(accepted, offered) is expected


def test_if_none_match_reads_strong_weak_and_star():
    assert if_none_match('"a", W/"b" ,*') == {'"a"', '"b"', "*"}
    assert if_none_match("") == set()


# --- the REST dialect -----------------------------------------------------------------------------------


def test_rest_options_defaults_and_every_parameter():
    assert params.rest_options({}) == rendering.RenderOptions(image_format="png", quality=90)
    options = params.rest_options(
        {"frame": "2", "window": "40,400,linear-exact", "width": "100", "format": "jpg", "quality": "70"}
    )
    assert options == rendering.RenderOptions(
        frame=1, window=rendering.Window(40.0, 400.0, "LINEAR_EXACT"), width=100, image_format="jpeg", quality=70
    )
    assert params.rest_options({"preset": "default"}).preset is None
    assert params.rest_options({"preset": "lung"}).preset == "lung"
    assert params.rest_options({"bits": "16"}, accept="image/jpeg") == rendering.RenderOptions(image_format="png", bits=16)
    assert params.rest_options({}, default_format="jpeg", default_size=256).size == 256


@pytest.mark.parametrize(
    ("accept", "expected"),
    [("image/webp", "webp"), ("image/gif, image/jpeg", "jpeg"), ("image/webp; q=0, image/png", "png"), ("image/*", "png"), ("", "png")],
)
def test_rest_format_from_accept_names_types_exactly(accept, expected):
    assert params.rest_options({}, accept=accept).image_format == expected


@pytest.mark.parametrize("accept", ["image/gif", "application/json", "image/png; q=0"])
def test_rest_format_an_accept_that_names_no_offered_image_type_is_not_acceptable(accept):
    with pytest.raises(NotAcceptable, match="images are image/png, image/jpeg, image/webp"):
        params.rest_options({}, accept=accept)


def test_rest_format_any_image_or_anything_takes_the_routes_default():
    assert params.rest_options({}, accept="image/avif, */*;q=0.8", default_format="jpeg").image_format == "jpeg"
    assert params.rest_options({"format": "webp"}, accept="image/gif").image_format == "webp"  # format= wins


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"frame": "0"}, "frame must be a whole number from 1"),
        ({"quality": "101"}, "quality must be a whole number from 1 to 100"),
        ({"quality": "x"}, "quality must be a whole number from 1 to 100"),
        ({"window": "40"}, "window must be 'center,width"),
        ({"window": "a,b"}, "must be numbers"),
        ({"window": "40,0.5"}, "width between"),
        ({"window": "40,400,cubic"}, "window function must be one of"),
        ({"preset": "liver"}, "preset must be one of"),
        ({"preset": "lung", "window": "40,400"}, "either window or preset"),
        ({"size": "10", "width": "10"}, "either size or width/height"),
        ({"size": "5000"}, "size must be a whole number from 1 to 4096"),
        ({"format": "gif"}, "format must be one of"),
        ({"bits": "12"}, "bits must be 8 or 16"),
        ({"bits": "16", "format": "jpeg"}, "bits=16 needs format=png"),
    ],
)
def test_rest_options_refuse_bad_values_naming_the_parameter(query, words):
    with pytest.raises(InvalidRenderParameter, match=words):
        params.rest_options(query)


# --- the DICOMweb dialect validates the shared fields the same way -----------------------------------------


@pytest.mark.parametrize("query", [{"quality": "0"}, {"quality": "abc"}, {"window": "40"}, {"window": "40,400,cubic"}])
def test_both_dialects_refuse_the_same_bad_shared_fields_with_the_same_sentence(query):
    with pytest.raises(InvalidRenderParameter) as rest:
        params.rest_options(query)
    with pytest.raises(InvalidRenderParameter) as dicomweb:
        params.rendered_options(query, "")
    assert str(rest.value) == str(dicomweb.value)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"annotation": "patient"}, "annotation is not supported"),
        ({"iccprofile": "srgb"}, "iccprofile is not supported"),
        ({"viewport": "1,2,3,4,5,6"}, "viewport cropping"),
        ({"viewport": "1"}, "viewport must be 'vw,vh'"),
        ({"viewport": "0,10"}, "viewport sizes must be whole numbers"),
    ],
)
def test_rendered_options_refuse_what_table_8_3_5_1_allows_but_we_do_not(query, words):
    with pytest.raises(InvalidRenderParameter, match=words):
        params.rendered_options(query, "")
