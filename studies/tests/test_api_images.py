"""The HTTP contract of GET /api/instances/{id}/image/ and /thumbnail/: frames, windows and presets,
sizes, formats and Accept negotiation, 16-bit output, ETags and 304s, the render cache (local memory
or Redis), access control, and refusals that are clear 4xx answers rather than 500s.

Expected pixels are computed here independently, from pydicom's decoded arrays and the PS3.3
formulas, never by calling the service's own rendering code.
"""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.files.storage import default_storage
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from dicomcore import rendering
from studies import imaging
from studies.models import Instance

from .conftest import CT_SMALL, assert_error, client_for, dicom_bytes, pydicom_data_dir, upload

CT_FRAME_BYTES = 128 * 128 * 2
USES_REDIS = "redis" in django_settings.CACHES["default"]["BACKEND"].lower()
USES_LOCMEM = "locmem" in django_settings.CACHES["default"]["BACKEND"].lower()


# --- helpers ---------------------------------------------------------------------------------


def data_file(name: str) -> Path:
    path = pydicom_data_dir() / name
    assert path.is_file(), f"pydicom-data file {name} is missing"
    return path


def put(client, data: bytes, name: str = "scan.dcm") -> dict:
    """Upload and insist it was stored as a new instance."""
    response = upload(client, data, name)
    assert response.status_code == 201, response.content[:500]
    return response.json()


def encoded(ds: pydicom.Dataset) -> bytes:
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def fetch(client, instance_id: str, route: str = "image", query: str | dict = "", **headers):
    """GET the image or thumbnail; `query` is a raw query string or a dict of parameters."""
    url = f"/api/instances/{instance_id}/{route}/"
    if isinstance(query, str):
        return client.get(url + (f"?{query}" if query else ""), **headers)
    return client.get(url, query, **headers)


def ok_image(response, media_type: str = "image/png") -> Image.Image:
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == media_type
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def pixels(response) -> np.ndarray:
    return np.asarray(ok_image(response)).astype(np.int64)


def ct_values() -> np.ndarray:
    """CT_small's stored values through its modality LUT (Hounsfield units), as float64."""
    ds = pydicom.dcmread(CT_SMALL)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def ps33_window(x: np.ndarray, center: float, width: float, function: str = "linear") -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3.1 to [0, 1], written out from the standard."""
    if function == "linear":
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        y = ((x - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
        y = np.where(x <= low, 0.0, np.where(x > high, 1.0, y))
    elif function == "linear-exact":
        y = ((x - center) / width + 0.5).clip(0, 1)
    else:  # sigmoid
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    return y


def min_max(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def to_8bit(unit: np.ndarray) -> np.ndarray:
    return np.rint(unit * 255.0).astype(np.int64)


# --- fixtures: real files uploaded by `owner` ---------------------------------------------------


@pytest.fixture
def emri(api) -> dict:
    """pydicom-data's emri_small.dcm: 10 frames of 64 x 64 MR, no window (min-max per frame)."""
    return put(api, data_file("emri_small.dcm").read_bytes(), "emri_small.dcm")


@pytest.fixture
def tall(api) -> dict:
    """pydicom-data's JPEG-LL.dcm: 1024 rows x 256 columns, JPEG lossless greyscale."""
    return put(api, data_file("JPEG-LL.dcm").read_bytes(), "JPEG-LL.dcm")


@pytest.fixture
def monochrome1(api) -> dict:
    """pydicom-data's RG1_J2KI.dcm: a 1955 x 1841 MONOCHROME1 radiograph, window 15000/30000."""
    return put(api, data_file("RG1_J2KI.dcm").read_bytes(), "RG1_J2KI.dcm")


@pytest.fixture
def rgb(api) -> dict:
    return put(api, data_file("SC_rgb.dcm").read_bytes(), "SC_rgb.dcm")


# --- frame --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_frame_is_one_based_and_selects_that_frame_of_a_multiframe_file(api, emri):
    ds = pydicom.dcmread(data_file("emri_small.dcm"))
    frames = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    assert frames.shape == (10, 64, 64)

    first = pixels(fetch(api, emri["id"], query="frame=1"))
    last = pixels(fetch(api, emri["id"], query="frame=10"))

    assert np.abs(first - to_8bit(min_max(frames[0]))).max() <= 1
    assert np.abs(last - to_8bit(min_max(frames[9]))).max() <= 1
    assert np.abs(first - last).mean() > 5  # really different frames
    assert fetch(api, emri["id"]).content == fetch(api, emri["id"], query="frame=1").content  # default is frame 1


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["image", "thumbnail"])
def test_frame_after_the_last_is_400_naming_the_frame_count(api, emri, route):
    body = assert_error(fetch(api, emri["id"], route, "frame=11"), 400, "invalid_frame")
    assert "11" in body["error"] and "10" in body["error"]


# --- window ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("window", "center", "width", "function"),
    [
        ("40,400", 40, 400, "linear"),
        ("-600,1500", -600, 1500, "linear"),
        ("300.5,2,linear", 300.5, 2, "linear"),
        ("40,400,linear-exact", 40, 400, "linear-exact"),
        ("40,0.5,linear-exact", 40, 0.5, "linear-exact"),
        ("40,400,sigmoid", 40, 400, "sigmoid"),
        (" 40 , 400 , SIGMOID ", 40, 400, "sigmoid"),
    ],
)
def test_window_renders_the_ps33_formula_on_the_rescaled_values(api, uploaded, window, center, width, function):
    expected = to_8bit(ps33_window(ct_values(), center, width, function))

    got = pixels(fetch(api, uploaded["id"], query={"window": window}))

    assert got.shape == (128, 128)
    assert np.abs(got - expected).max() <= 1
    assert len(np.unique(expected)) > 2 or width <= 2  # the window is inside the data, not all black/white


@pytest.mark.django_db
def test_different_windows_give_different_pixels(api, uploaded):
    default = pixels(fetch(api, uploaded["id"]))
    soft = pixels(fetch(api, uploaded["id"], query="window=40,400"))
    lung = pixels(fetch(api, uploaded["id"], query="window=-600,1500"))
    assert np.abs(soft - lung).mean() > 10
    assert np.abs(soft - default).mean() > 10


@pytest.mark.django_db
@pytest.mark.parametrize(
    "window",
    ["abc", "40", "40,0", "40,80,cubic", "40,-5", "abc,400", "40,400,linear,extra", ",", "nan,400", "40,inf", "40,0.5"],
)
def test_malformed_window_is_400_json_naming_window(api, uploaded, window):
    # Errors are JSON even when the client only accepts images.
    response = fetch(api, uploaded["id"], query={"window": window}, HTTP_ACCEPT="image/png")
    body = assert_error(response, 400, "invalid_parameter")
    assert "window" in body["error"]


@pytest.mark.django_db
def test_window_and_preset_together_is_400(api, uploaded):
    body = assert_error(fetch(api, uploaded["id"], query="window=40,400&preset=lung"), 400, "invalid_parameter")
    assert "window" in body["error"] and "preset" in body["error"]


@pytest.mark.django_db
def test_an_extreme_but_finite_window_width_is_refused_naming_the_bounds(api, uploaded):
    """LINEAR_EXACT allows any width > 0 (PS3.3 C.11.2.1.3.2), but 1e-300 would make the arithmetic
    meaningless: the service bounds the width to [0.001, 1e7] (rendering.MIN_WINDOW_WIDTH) and says so."""
    response = fetch(api, uploaded["id"], query={"window": "0,1e-300,linear-exact"})
    body = assert_error(response, 400, "invalid_parameter")
    assert body["error"] == "window center must be within ±1e+07 and width between 0.001 (1 for linear) and 1e+07"


# --- presets ----------------------------------------------------------------------------------

# The documented table (OpenAPI description of `preset`), restated here rather than imported.
PRESET_WINDOWS = {
    "lung": (-600, 1500), "bone": (400, 1800), "brain": (40, 80), "soft-tissue": (50, 400), "abdomen": (60, 400),
}  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize("preset", [*PRESET_WINDOWS, "minmax", "default", "LUNG"])
def test_each_preset_gives_the_documented_image(api, uploaded, preset):
    got = pixels(fetch(api, uploaded["id"], query={"preset": preset}))
    assert got.shape == (128, 128)
    values = ct_values()
    if preset.lower() in PRESET_WINDOWS:
        expected = to_8bit(ps33_window(values, *PRESET_WINDOWS[preset.lower()]))
    else:  # CT_small has no window of its own, so its default is min-max too
        expected = to_8bit(min_max(values))
    assert np.abs(got - expected).max() <= 1


@pytest.mark.django_db
def test_preset_default_is_the_files_own_window_and_minmax_ignores_it(api):
    with_window = put(api, dicom_bytes(WindowCenter="40", WindowWidth="400"))
    values = ct_values()

    default = pixels(fetch(api, with_window["id"], query="preset=default"))
    plain = pixels(fetch(api, with_window["id"]))
    minmax = pixels(fetch(api, with_window["id"], query="preset=minmax"))

    assert np.abs(default - to_8bit(ps33_window(values, 40, 400))).max() <= 1
    assert np.array_equal(default, plain)
    assert np.abs(minmax - to_8bit(min_max(values))).max() <= 1


@pytest.mark.django_db
def test_preset_lung_is_window_minus_600_1500(api, uploaded):
    preset = fetch(api, uploaded["id"], query="preset=lung")
    window = fetch(api, uploaded["id"], query="window=-600,1500")
    assert preset.status_code == window.status_code == 200
    assert preset.content == window.content
    assert preset["ETag"] == window["ETag"]


@pytest.mark.django_db
@pytest.mark.parametrize("preset", ["liver", "lungs", "soft tissue", "-600,1500"])
def test_unknown_preset_is_400_listing_the_known_ones(api, uploaded, preset):
    body = assert_error(fetch(api, uploaded["id"], query={"preset": preset}), 400, "invalid_parameter")
    assert "preset" in body["error"] and "lung" in body["error"] and "minmax" in body["error"]


# --- size --------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (256, 1024)),
        ("size=128", (32, 128)),
        ("size=1024", (256, 1024)),
        ("width=64", (64, 256)),
        ("height=100", (25, 100)),
        ("width=200&height=100", (25, 100)),  # fits in the box
        ("width=100&height=2000", (100, 400)),
    ],
)
def test_size_width_and_height_fit_keeping_the_aspect_ratio(api, tall, query, expected):
    image = ok_image(fetch(api, tall["id"], query=query))
    assert image.size == expected


@pytest.mark.django_db
def test_resized_image_is_the_same_picture(api, tall):
    full = ok_image(fetch(api, tall["id"])).resize((32, 128), Image.Resampling.BOX)
    small = ok_image(fetch(api, tall["id"], query="size=128"))
    difference = np.abs(np.asarray(full, dtype=np.int64) - np.asarray(small, dtype=np.int64))
    assert difference.mean() < 8


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["image", "thumbnail"])
@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("size=0", "size"),
        ("size=-5", "size"),
        ("size=4097", "size"),
        ("size=99999999999999999999", "size"),
        ("size=abc", "size"),
        ("size=1.5", "size"),
        ("size=1e3", "size"),
        ("width=0", "width"),
        ("width=-1", "width"),
        ("height=100000", "height"),
        ("height=big", "height"),
        ("size=64&width=32", "size"),
    ],
)
def test_invalid_size_is_400_naming_the_parameter(api, uploaded, route, query, named):
    body = assert_error(fetch(api, uploaded["id"], route, query), 400, "invalid_parameter")
    assert named in body["error"]


@pytest.mark.django_db
def test_size_at_the_documented_maximum_is_accepted(api, uploaded):
    image = ok_image(fetch(api, uploaded["id"], query="size=4096&format=jpeg&quality=5"), "image/jpeg")
    assert image.size == (4096, 4096)


@pytest.mark.django_db
def test_no_output_side_exceeds_the_documented_maximum(api, tall):
    # 256 x 1024 scaled to width 1100 is 4400 pixels tall; the cap is 4096 per side.
    image = ok_image(fetch(api, tall["id"], query="width=1100&format=jpeg&quality=5"), "image/jpeg")
    assert max(image.size) <= rendering.MAX_OUTPUT_SIDE


# --- format and Accept negotiation --------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fmt", "media_type", "pil_format"),
    [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("jpg", "image/jpeg", "JPEG"),
     ("webp", "image/webp", "WEBP"), ("WebP", "image/webp", "WEBP")],
)  # fmt: skip
def test_format_parameter_picks_the_encoding(api, uploaded, fmt, media_type, pil_format):
    image = ok_image(fetch(api, uploaded["id"], query={"format": fmt}), media_type)
    assert image.format == pil_format
    assert image.size == (128, 128)


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["gif", "bmp", "tiff", "image/png"])
def test_unknown_format_is_400(api, uploaded, fmt):
    body = assert_error(fetch(api, uploaded["id"], query={"format": fmt}), 400, "invalid_parameter")
    assert "format" in body["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("route", "accept", "media_type"),
    [
        ("image", "image/jpeg", "image/jpeg"),
        ("image", "image/webp", "image/webp"),
        ("image", "image/png", "image/png"),
        ("image", "text/html,application/xhtml+xml,image/webp,*/*;q=0.8", "image/webp"),  # a browser
        ("image", "image/avif, image/jpeg;q=0.9", "image/jpeg"),  # the first one supported
        ("image", "text/html, */*;q=0.1", "image/png"),  # any type at all: the route's default
        ("image", "*/*", "image/png"),
        ("image", "image/*", "image/png"),
        ("image", "", "image/png"),
        ("thumbnail", "image/png", "image/png"),
        ("thumbnail", "image/webp", "image/webp"),
        ("thumbnail", "text/html, image/*", "image/jpeg"),
        ("thumbnail", "", "image/jpeg"),
    ],
)
def test_accept_header_negotiates_the_format(api, uploaded, route, accept, media_type):
    response = fetch(api, uploaded["id"], route, HTTP_ACCEPT=accept)
    image = ok_image(response, media_type)
    assert Image.MIME[image.format] == media_type
    assert "Accept" in [part.strip() for part in response["Vary"].split(",")]


@pytest.mark.django_db
def test_format_parameter_wins_over_accept(api, uploaded):
    ok_image(fetch(api, uploaded["id"], query="format=png", HTTP_ACCEPT="image/jpeg"), "image/png")
    ok_image(fetch(api, uploaded["id"], "thumbnail", "format=webp", HTTP_ACCEPT="image/png"), "image/webp")


@pytest.mark.django_db
def test_a_type_refused_with_q_0_is_not_chosen(api, uploaded):
    ok_image(fetch(api, uploaded["id"], HTTP_ACCEPT="image/webp;q=0, image/png"), "image/png")


@pytest.mark.django_db
def test_negotiated_and_explicit_format_share_an_etag(api, uploaded):
    negotiated = fetch(api, uploaded["id"], HTTP_ACCEPT="image/jpeg")
    explicit = fetch(api, uploaded["id"], query="format=jpeg")
    assert negotiated["ETag"] == explicit["ETag"]
    assert negotiated.content == explicit.content
    assert negotiated["ETag"] != fetch(api, uploaded["id"], HTTP_ACCEPT="image/webp")["ETag"]


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lower_quality_gives_fewer_bytes(api, uploaded, fmt):
    sizes = {}
    for quality in (10, 50, 95):
        response = fetch(api, uploaded["id"], query={"format": fmt, "quality": quality, "window": "40,400"})
        ok_image(response, f"image/{fmt}")
        sizes[quality] = len(response.content)
    assert sizes[10] < sizes[50] < sizes[95]
    default = fetch(api, uploaded["id"], query={"format": fmt, "window": "40,400"})
    explicit = fetch(api, uploaded["id"], query={"format": fmt, "window": "40,400", "quality": 90})
    assert default.content == explicit.content  # the default quality is 90


@pytest.mark.django_db
def test_quality_does_not_change_a_png(api, uploaded):
    plain = fetch(api, uploaded["id"], query="format=png")
    low = fetch(api, uploaded["id"], query="format=png&quality=5")
    assert plain.content == low.content
    assert plain["ETag"] == low["ETag"]


@pytest.mark.django_db
@pytest.mark.parametrize("quality", ["0", "101", "-1", "abc", "50.5", "1e2"])
def test_invalid_quality_is_400(api, uploaded, quality):
    response = fetch(api, uploaded["id"], query={"format": "jpeg", "quality": quality})
    body = assert_error(response, 400, "invalid_parameter")
    assert "quality" in body["error"]


# --- 16-bit output -----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["window=40,400", "", "window=40,400,sigmoid"])
def test_bits_16_is_a_16_bit_grey_png_of_the_windowed_values(api, uploaded, query):
    wide = ok_image(fetch(api, uploaded["id"], query=f"{query}&bits=16"))
    narrow = pixels(fetch(api, uploaded["id"], query=query))

    assert wide.format == "PNG"
    assert wide.mode == "I;16"
    values = np.asarray(wide).astype(np.int64)
    assert values.shape == (128, 128)
    assert 0 <= values.min() and values.max() <= 65535

    params = dict(part.split("=") for part in query.split("&") if part)
    if "window" in params:
        center, width, *function = params["window"].split(",")
        unit = ps33_window(ct_values(), float(center), float(width), *(function or ["linear"]))
    else:
        unit = min_max(ct_values())
    assert np.abs(values - np.rint(unit * 65535)).max() <= 2
    assert np.abs((values >> 8) - narrow).max() <= 1
    assert len(np.unique(values)) > len(np.unique(narrow))  # real 16-bit precision, not 8 bits shifted


@pytest.mark.django_db
def test_bits_16_survives_resizing(api, uploaded):
    wide = ok_image(fetch(api, uploaded["id"], query="bits=16&size=64&window=40,400"))
    narrow = pixels(fetch(api, uploaded["id"], query="size=64&window=40,400"))
    assert wide.mode == "I;16" and wide.size == (64, 64)
    difference = np.abs((np.asarray(wide).astype(np.int64) >> 8) - narrow)
    # Lanczos ringing next to clipped (saturated) regions is clamped between passes in 8 bits but
    # not in the float path used for 16 bits, so a few edge pixels differ by more than 1.
    assert np.percentile(difference, 99) <= 2
    assert difference.mean() < 0.5


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "accept"),
    [("bits=16&format=jpeg", ""), ("bits=16&format=webp", "")],
)
def test_bits_16_with_a_lossy_format_is_400(api, uploaded, query, accept):
    body = assert_error(fetch(api, uploaded["id"], query=query, HTTP_ACCEPT=accept), 400, "invalid_parameter")
    assert "png" in body["error"].lower()


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["image", "thumbnail"])
def test_bits_16_without_a_named_format_negotiates_png_whatever_the_accept_header(api, uploaded, route):
    # A browser's Accept lists webp/jpeg; a 16-bit request still gets the only format that holds it.
    response = fetch(api, uploaded["id"], route, "bits=16", HTTP_ACCEPT="image/webp,image/jpeg,*/*")
    assert response["Content-Type"] == "image/png"
    assert ok_image(response).mode == "I;16"
    assert_error(fetch(api, uploaded["id"], route, "bits=16&format=jpeg"), 400, "invalid_parameter")


@pytest.mark.django_db
@pytest.mark.parametrize("bits", ["12", "0", "32", "abc", "8.0"])
def test_bits_other_than_8_or_16_is_400(api, uploaded, bits):
    body = assert_error(fetch(api, uploaded["id"], query={"bits": bits}), 400, "invalid_parameter")
    assert "bits" in body["error"]


@pytest.mark.django_db
def test_bits_16_of_a_colour_image_is_422(api, rgb):
    ok_image(fetch(api, rgb["id"]))  # the file itself renders
    body = assert_error(fetch(api, rgb["id"], query="bits=16"), 422, "cannot_render")
    assert "colour" in body["error"]


# --- ETag, 304, caching headers -----------------------------------------------------------------

ETAG = re.compile(r'^"[0-9a-f]{40}"$')


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["image", "thumbnail"])
def test_response_headers_carry_a_strong_etag_private_caching_and_vary(api, uploaded, route):
    response = fetch(api, uploaded["id"], route)
    assert response.status_code == 200
    assert ETAG.match(response["ETag"]), response["ETag"]  # strong: no W/ prefix
    cache_control = [part.strip() for part in response["Cache-Control"].split(",")]
    assert "private" in cache_control and "public" not in cache_control
    assert {"Accept", "Authorization"} <= {part.strip() for part in response["Vary"].split(",")}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("window=40,400", "window=40.0,400"),
        ("window=40,400", "window=40,400.00,linear"),
        ("window=40,400", "window=+40,4e2"),
        ("", "frame=1"),
        ("", "preset=default"),
        ("", "preset=DEFAULT"),
        ("preset=bone", "window=400,1800"),
        ("format=jpeg", "format=jpg"),
        ("format=jpeg", "format=jpeg&quality=90"),
        ("", "format=png&quality=3"),
        ("", "bits=8"),
        ("size=", ""),
    ],
)
def test_equivalent_parameters_share_the_etag_and_bytes(api, uploaded, first, second):
    a = fetch(api, uploaded["id"], query=first)
    b = fetch(api, uploaded["id"], query=second)
    assert a.status_code == b.status_code == 200
    assert a["ETag"] == b["ETag"]
    assert a.content == b.content


@pytest.mark.django_db
def test_different_parameters_or_files_give_different_etags(api, uploaded):
    queries = [
        "", "window=40,400", "window=40,401", "window=41,400", "window=40,400,linear-exact", "window=40,400,sigmoid",
        "preset=lung", "preset=minmax", "size=64", "size=65", "width=64", "height=64", "format=jpeg",
        "format=jpeg&quality=50", "format=webp", "bits=16",
    ]  # fmt: skip
    tags = [fetch(api, uploaded["id"], query=query)["ETag"] for query in queries]
    assert len(set(tags)) == len(queries)
    other_file = put(api, dicom_bytes())
    assert fetch(api, other_file["id"])["ETag"] not in tags


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["image", "thumbnail"])
@pytest.mark.parametrize("form", ["exact", "weak", "in-a-list"])
def test_if_none_match_gives_304_without_a_body(api, uploaded, route, form):
    first = fetch(api, uploaded["id"], route, "window=40,400")
    tag = first["ETag"]
    header = {"exact": tag, "weak": f"W/{tag}", "in-a-list": f'"0123", {tag} , "abc"'}[form]

    again = fetch(api, uploaded["id"], route, "window=40,400", HTTP_IF_NONE_MATCH=header)

    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == tag
    assert "private" in again["Cache-Control"]
    assert "Accept" in again["Vary"]


@pytest.mark.django_db
def test_if_none_match_with_another_etag_renders_again(api, uploaded):
    lung = fetch(api, uploaded["id"], query="preset=lung")
    response = fetch(api, uploaded["id"], query="preset=bone", HTTP_IF_NONE_MATCH=lung["ETag"])
    assert response.status_code == 200
    assert response.content and response.content != lung.content
    stale = fetch(api, uploaded["id"], query="preset=lung", HTTP_IF_NONE_MATCH=lung["ETag"][:-3] + 'ff"')
    assert stale.status_code == 200 and stale.content == lung.content


@pytest.mark.django_db
def test_if_none_match_star_gives_304(api, uploaded):
    assert fetch(api, uploaded["id"], HTTP_IF_NONE_MATCH="*").status_code == 304


@pytest.mark.django_db
def test_304_needs_neither_the_stored_file_nor_the_cache(api, uploaded, media_root):
    tag = fetch(api, uploaded["id"], query="size=64")["ETag"]
    default_storage.delete(uploaded["storage"]["key"])  # the local folder or S3 alike
    cache.clear()

    response = fetch(api, uploaded["id"], query="size=64", HTTP_IF_NONE_MATCH=tag)
    assert response.status_code == 304


# --- the render cache -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_rendered_image_is_served_from_the_cache_once_the_stored_file_is_gone(api, uploaded, media_root):
    before = fetch(api, uploaded["id"], query="window=40,400&size=100")
    thumb = fetch(api, uploaded["id"], "thumbnail")
    assert before.status_code == thumb.status_code == 200
    default_storage.delete(uploaded["storage"]["key"])

    after = fetch(api, uploaded["id"], query="window=40.0,400&size=100")  # same normalised options
    assert after.status_code == 200
    assert after.content == before.content
    assert after["ETag"] == before["ETag"]
    assert fetch(api, uploaded["id"], "thumbnail").content == thumb.content

    # Anything not yet rendered needs the file: a clear 422, not a 500.
    body = assert_error(fetch(api, uploaded["id"], query="window=40,401&size=100"), 422, "cannot_render")
    assert "missing" in body["error"]
    assert_error(fetch(api, uploaded["id"], "thumbnail", "size=64"), 422, "cannot_render")


def rendered_key(instance_id: str, **options) -> str:
    """The cache key the service uses, for these RenderOptions (frame 0-based, as the engine takes it)."""
    return imaging.cache_key(Instance.objects.get(pk=instance_id), rendering.RenderOptions(**options))


@pytest.mark.django_db
def test_rendered_bytes_are_stored_in_the_configured_cache(api, uploaded):
    key = rendered_key(uploaded["id"], window=rendering.Window(40.0, 400.0), image_format="jpeg", quality=70)
    assert cache.get(key) is None

    response = fetch(api, uploaded["id"], query="window=40,400&format=jpeg&quality=70")

    assert response.status_code == 200
    content, media_type, width, height = cache.get(key)
    assert content == response.content
    assert (media_type, width, height) == ("image/jpeg", 128, 128)
    assert response["ETag"] == f'"{key.split(":", 1)[1]}"'


@pytest.mark.django_db
def test_thumbnail_is_cached_under_its_own_options(api, uploaded, settings):
    key = rendered_key(uploaded["id"], size=settings.DICOM_THUMBNAIL_SIZE, image_format="jpeg")
    response = fetch(api, uploaded["id"], "thumbnail")
    assert cache.get(key)[0] == response.content


@pytest.mark.django_db
@pytest.mark.skipif(not USES_REDIS, reason="the Redis cache is configured only when REDIS_URL is set")
def test_rendered_bytes_are_in_redis_with_the_configured_lifetime(api, uploaded, settings):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    key = rendered_key(uploaded["id"], preset="bone")
    stored_key = cache.make_and_validate_key(key)
    assert not client.exists(stored_key)

    response = fetch(api, uploaded["id"], query="preset=bone")

    assert response.status_code == 200
    assert client.exists(stored_key)
    assert 0 < client.ttl(stored_key) <= settings.DICOM_RENDER_CACHE_SECONDS
    raw = client.get(stored_key)
    assert response.content[:64] in raw  # the pickled tuple holds the PNG bytes themselves
    assert cache.get(key)[0] == response.content


@pytest.mark.django_db
@pytest.mark.skipif(not USES_LOCMEM, reason="the local-memory cache is configured only without REDIS_URL")
def test_rendered_bytes_are_in_the_local_memory_cache_with_the_configured_lifetime(api, uploaded, settings):
    import time

    from django.core.cache import caches

    backend = caches["default"]
    key = rendered_key(uploaded["id"], preset="bone")
    stored_key = cache.make_and_validate_key(key)
    assert stored_key not in backend._cache

    response = fetch(api, uploaded["id"], query="preset=bone")

    assert response.status_code == 200
    assert stored_key in backend._cache
    lifetime = backend._expire_info[stored_key] - time.time()
    assert settings.DICOM_RENDER_CACHE_SECONDS - 60 < lifetime <= settings.DICOM_RENDER_CACHE_SECONDS
    assert cache.get(key)[0] == response.content


# --- who may see it ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["other", "staff"])
@pytest.mark.parametrize("route", ["image", "thumbnail"])
def test_other_users_get_404_even_with_the_owners_etag(api, uploaded, request, who, route):
    owners = fetch(api, uploaded["id"], route)
    assert owners.status_code == 200
    stranger = client_for(request.getfixturevalue(who))

    plain = fetch(stranger, uploaded["id"], route)
    revalidating = fetch(stranger, uploaded["id"], route, HTTP_IF_NONE_MATCH=owners["ETag"])
    unknown = fetch(stranger, str(uuid.uuid4()), route, HTTP_IF_NONE_MATCH=owners["ETag"])

    for response in (plain, revalidating, unknown):
        assert_error(response, 404, "not_found")
        assert not response.has_header("ETag")
    assert plain.json() == revalidating.json() == unknown.json()


@pytest.mark.django_db
def test_bad_parameters_answer_the_same_for_a_hidden_and_an_unknown_instance(uploaded, other):
    stranger = client_for(other)
    hidden = fetch(stranger, uploaded["id"], query="window=abc")
    unknown = fetch(stranger, str(uuid.uuid4()), query="window=abc")
    assert hidden.status_code == unknown.status_code
    assert hidden.json() == unknown.json()


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["viewer", "superuser"])
def test_view_all_users_get_the_same_image_and_can_revalidate(api, uploaded, request, who):
    owners = fetch(api, uploaded["id"], query="preset=lung")
    client = client_for(request.getfixturevalue(who))

    theirs = fetch(client, uploaded["id"], query="preset=lung")
    assert theirs.status_code == 200
    assert theirs.content == owners.content and theirs["ETag"] == owners["ETag"]
    assert fetch(client, uploaded["id"], query="preset=lung", HTTP_IF_NONE_MATCH=owners["ETag"]).status_code == 304
    ok_image(fetch(client, uploaded["id"], "thumbnail"), "image/jpeg")


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["image", "thumbnail"])
def test_anonymous_is_refused_without_an_image(uploaded, route):
    response = fetch(client_for(None), uploaded["id"], route)
    assert_error(response, 401, "not_authenticated")
    assert not response.has_header("ETag")


# --- refusals are 4xx, never 500 ---------------------------------------------------------------


@pytest.mark.django_db
def test_thumbnail_of_an_instance_without_pixel_data_is_404_no_pixel_data(api):
    body = put(api, dicom_bytes(PixelData=None))
    assert_error(fetch(api, body["id"], "thumbnail"), 404, "no_pixel_data")


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["image", "thumbnail"])
def test_a_tiny_file_claiming_a_huge_frame_is_422_naming_its_size(api, route):
    ds = pydicom.dcmread(CT_SMALL)
    ds.Rows = ds.Columns = 65535
    ds.PixelData = bytes(1024)
    data = encoded(ds)
    assert len(data) < 8 * 1024

    response = upload(api, data, "huge.dcm")
    assert response.status_code == 201, response.content  # the header is valid DICOM, so it is catalogued
    assert (response.json()["rows"], response.json()["columns"]) == (65535, 65535)

    body = assert_error(fetch(api, response.json()["id"], route), 422, "cannot_render")
    assert "65535 x 65535" in body["error"]
    assert "too large" in body["error"]


def corrupt_frame(name: str, how: str) -> bytes:
    """pydicom's compressed test file with its single encapsulated frame truncated or garbled."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    if how == "truncated":
        frame = frame[: len(frame) // 4]
    else:
        garbled = bytearray(frame)
        for i in range(32, len(garbled), 5):
            garbled[i] ^= 0xFF
        frame = bytes(garbled)
    ds.PixelData = encapsulate([frame])
    return encoded(ds)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "syntax"), [("JPEG2000.dcm", "JPEG 2000 Image Compression"), ("SC_rgb_rle.dcm", "RLE Lossless")]
)
@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_corrupt_compressed_pixel_data_is_422_naming_the_transfer_syntax(api, name, syntax, how):
    from pydicom.data import get_testdata_file

    intact = put(api, Path(get_testdata_file(name)).read_bytes(), name)
    ok_image(fetch(api, intact["id"]))  # the original decodes here, so the 422 is about the corruption

    broken = put(api, corrupt_frame(name, how), name)
    for route in ("image", "thumbnail"):
        body = assert_error(fetch(api, broken["id"], route), 422, "cannot_render")
        # The service names both faults in one message, whichever it was.
        assert body["error"] == f"the pixel data is corrupt or truncated and cannot be decoded (transfer syntax {syntax})"


@pytest.mark.django_db
@pytest.mark.parametrize("photometric", ["HSV", "CMYK", "ARGB"])
def test_unsupported_photometric_interpretation_is_422_naming_it(api, photometric):
    body = put(api, dicom_bytes(PhotometricInterpretation=photometric))
    for route in ("image", "thumbnail"):
        error = assert_error(fetch(api, body["id"], route), 422, "cannot_render")
        assert photometric in error["error"]


@pytest.mark.django_db
def test_frame_size_cap_setting_refuses_larger_frames_with_422(api, uploaded, settings):
    settings.DICOM_MAX_FRAME_PIXELS = CT_FRAME_BYTES // 2 - 1  # below CT_small's frame in pixels and in bytes
    body = assert_error(fetch(api, uploaded["id"]), 422, "cannot_render")
    assert "128 x 128" in body["error"] and "too large" in body["error"]
    assert_error(fetch(api, uploaded["id"], "thumbnail"), 422, "cannot_render")

    settings.DICOM_MAX_FRAME_PIXELS = CT_FRAME_BYTES - 1  # README: the cap is on the frame's bytes
    assert_error(fetch(api, uploaded["id"], query="size=64"), 422, "cannot_render")

    settings.DICOM_MAX_FRAME_PIXELS = CT_FRAME_BYTES
    ok_image(fetch(api, uploaded["id"]))


# --- thumbnail ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fixture", "expected"),
    [("tall", (64, 256)), ("monochrome1", (241, 256)), ("emri", (256, 256)), ("uploaded", (256, 256))],
)
def test_thumbnail_is_a_jpeg_fitting_256_keeping_the_aspect_ratio(api, request, fixture, expected):
    instance = request.getfixturevalue(fixture)
    image = ok_image(fetch(api, instance["id"], "thumbnail"), "image/jpeg")
    assert image.format == "JPEG"
    assert max(image.size) <= 256
    assert image.size == expected


@pytest.mark.django_db
def test_thumbnail_honours_size_format_and_accept(api, tall):
    assert ok_image(fetch(api, tall["id"], "thumbnail", "size=64"), "image/jpeg").size == (16, 64)
    assert ok_image(fetch(api, tall["id"], "thumbnail", "format=png"), "image/png").size == (64, 256)
    assert ok_image(fetch(api, tall["id"], "thumbnail", HTTP_ACCEPT="image/png"), "image/png").size == (64, 256)
    assert ok_image(fetch(api, tall["id"], "thumbnail", "width=32"), "image/jpeg").size == (32, 128)


@pytest.mark.django_db
def test_thumbnail_matches_the_full_image_reduced(api, tall):
    thumb = np.asarray(ok_image(fetch(api, tall["id"], "thumbnail", "format=png")), dtype=np.int64)
    full = ok_image(fetch(api, tall["id"])).resize((64, 256), Image.Resampling.LANCZOS)
    assert np.abs(thumb - np.asarray(full, dtype=np.int64)).mean() < 3


@pytest.mark.django_db
def test_monochrome1_thumbnail_is_inverted_once(api, monochrome1):
    ds = pydicom.dcmread(data_file("RG1_J2KI.dcm"))
    values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    windowed = ps33_window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    inverted_mean = 255.0 * (1.0 - windowed).mean()  # MONOCHROME1: low values are white
    uninverted_mean = 255.0 * windowed.mean()
    assert abs(inverted_mean - uninverted_mean) > 60  # the check below can tell them apart

    thumb = np.asarray(ok_image(fetch(api, monochrome1["id"], "thumbnail"), "image/jpeg"), dtype=np.float64)
    assert abs(thumb.mean() - inverted_mean) < 5

    full = ok_image(fetch(api, monochrome1["id"], query="format=png"))
    assert full.size == (1841, 1955)
    reduced = np.asarray(full.resize(thumb.shape[::-1], Image.Resampling.LANCZOS), dtype=np.float64)
    assert abs(thumb.mean() - reduced.mean()) < 3


@pytest.mark.django_db
def test_monochrome1_renders_as_the_inverse_of_the_same_pixels_as_monochrome2(api):
    mono2 = put(api, dicom_bytes(WindowCenter="40", WindowWidth="400"))
    mono1 = put(api, dicom_bytes(WindowCenter="40", WindowWidth="400", PhotometricInterpretation="MONOCHROME1"))

    assert np.abs(pixels(fetch(api, mono1["id"])) - (255 - pixels(fetch(api, mono2["id"])))).max() <= 1
    thumb1 = np.asarray(ok_image(fetch(api, mono1["id"], "thumbnail"), "image/jpeg"), dtype=np.float64)
    thumb2 = np.asarray(ok_image(fetch(api, mono2["id"], "thumbnail"), "image/jpeg"), dtype=np.float64)
    assert np.abs(thumb1 - (255.0 - thumb2)).mean() < 4
