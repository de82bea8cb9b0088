"""OHIF (the real 3.13.2 build, `make viewer`) in a real Chromium, showing studies from a live server.

For each case of the corpus a user logs in, opens the study at /viewer/viewer?StudyInstanceUIDs=..., and the
viewport's canvas must really be drawn (its pixels vary); no request may fail and the browser console must stay
free of errors. The 200-slice CT is compared with the service's own render of the same frame at the window OHIF
shows, and scrolled through every slice. Another user's study does not open.

How it runs: as test_admin_browser.py (the Debian Chromium, pytest-django's live_server in a thread of this
process, `transaction=True`); its `browser` fixture is shared. One browser context for the module keeps OHIF's
50 MB of code in the HTTP cache between tests; each test logs in afresh. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import base64
import copy
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page, expect
from pydicom.uid import generate_uid

from studies.audit.models import AuditEvent

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, client_for, pydicom_data_dir, upload
from .test_admin_browser import ARTIFACTS, browser, fast_passwords  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.django_db(transaction=True)

DRAWN_WITHIN_S = 60  # the first test of a run also loads OHIF's code (50 MB) through the live server
CANVAS = "canvas.cornerstone-canvas"
CANVAS_PNG = f"() => {{ const c = document.querySelector('{CANVAS}'); return c ? c.toDataURL('image/png') : null; }}"


def _data(name: str) -> Path:
    return pydicom_data_dir() / name


# name: (file, attributes to delete). RG1's Pixel Spacing is 0\0, with which OHIF draws nothing (its geometry has
# no size); the service stores and serves the attribute as it is, so the case uses the file without it.
CORPUS = {
    "mr": (lambda: PYDICOM_TEST_FILES / "MR_small.dcm", ()),
    "cr-monochrome1": (lambda: _data("RG1_UNCR.dcm"), ("PixelSpacing",)),  # 1955 x 1841, a 7 MB frame
    "jpeg2000": (lambda: PYDICOM_TEST_FILES / "JPEG2000.dcm", ()),
    "jpeg-ls": (lambda: PYDICOM_TEST_FILES / "MR_small_jpeg_ls_lossless.dcm", ()),
    "rle-rgb": (lambda: PYDICOM_TEST_FILES / "SC_rgb_rle.dcm", ()),
    "rgb": (lambda: _data("SC_rgb.dcm"), ()),
    "ybr-full": (lambda: _data("SC_ybr_full_uncompressed.dcm"), ()),
    "ybr-jpeg-baseline": (lambda: PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", ()),
    "palette-us": (lambda: _data("OBXXXX1A.dcm"), ()),
    "multiframe-cine": (lambda: _data("emri_small.dcm"), ()),  # 10 frames
    "mr-16bit": (lambda: _data("MR2_UNCR.dcm"), ()),
}


def fresh(ds: pydicom.Dataset, *, study: str | None = None, series: str | None = None) -> bytes:
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stored(user, data: bytes) -> dict:
    response = upload(client_for(user), data)
    assert response.status_code == 201, response.content[:300]
    return response.json()


@dataclass
class Seen:
    """What the page reported while the viewer ran."""

    failed: list[str] = field(default_factory=list)  # HTTP >= 400 and requests that did not complete
    console_errors: list[str] = field(default_factory=list)
    frames: set[str] = field(default_factory=set)  # WADO-RS frame URLs answered 200
    qido: list[tuple[str, bytes]] = field(default_factory=list)  # study searches and their bodies
    elsewhere: list[str] = field(default_factory=list)  # requests to any other origin (there must be none)


@pytest.fixture(scope="module")
def context(browser, live_server):  # noqa: F811 - the shared fixture above
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(DRAWN_WITHIN_S * 1000)
    yield context
    context.close()


def log_in_through_the_viewer(context: BrowserContext, username: str, study_uid: str) -> None:
    """Open the viewer logged out: the admin's login page, then back to the viewer at the same study."""
    context.clear_cookies()
    page = context.new_page()
    target = f"/viewer/viewer?StudyInstanceUIDs={study_uid}"
    page.goto(target)
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/viewer/viewer"))
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-" + username)
    page.click("input[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(target) + "$"))
    page.close()


def watched_page(context: BrowserContext, origin: str) -> tuple[Page, Seen]:
    page = context.new_page()
    seen = Seen()

    def on_request(request) -> None:
        if not request.url.startswith((origin + "/", "data:", "blob:")):
            seen.elsewhere.append(request.url)

    def on_response(response) -> None:
        if response.status >= 400:
            seen.failed.append(f"{response.status} {response.url}")
        elif "/frames/" in response.url:
            seen.frames.add(response.url)
        elif re.search(r"/dicomweb/studies\?", response.url):
            seen.qido.append((response.url, response.body()))

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("requestfailed", lambda request: seen.failed.append(f"{request.failure} {request.url}"))
    page.on("console", lambda message: seen.console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: seen.console_errors.append(str(error)))
    return page, seen


def canvas_image(page: Page) -> Image.Image | None:
    url = page.evaluate(CANVAS_PNG)
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L") if url else None


def drawn_image(page: Page, *, within_s: float = DRAWN_WITHIN_S) -> Image.Image:
    """The viewport's pixels once they are really drawn (they vary: not a blank canvas), or the test fails."""
    deadline = time.monotonic() + within_s
    image = None
    while time.monotonic() < deadline:
        image = canvas_image(page)
        if image is not None and np.asarray(image, dtype=float).std() > 3:
            return image
        time.sleep(0.25)
    pytest.fail(f"the viewport was not drawn within {within_s:.0f} s (canvas {'absent' if image is None else 'blank'})")


def open_study(context: BrowserContext, origin: str, username: str, study_uid: str) -> tuple[Page, Seen]:
    log_in_through_the_viewer(context, username, study_uid)
    page, seen = watched_page(context, origin)
    page.goto(f"/viewer/viewer?StudyInstanceUIDs={study_uid}")
    return page, seen


def assert_clean(seen: Seen) -> None:
    assert seen.failed == [], f"failed requests: {seen.failed[:10]}"
    assert seen.elsewhere == [], f"requests off this server (a CDN?): {seen.elsewhere[:10]}"
    assert seen.console_errors == [], f"browser console errors: {seen.console_errors[:10]}"


# --- the corpus ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CORPUS))
def test_each_kind_of_image_is_drawn_by_ohif(case, make_user, context, live_server):
    source, dropped = CORPUS[case]
    ds = pydicom.dcmread(source())
    for keyword in dropped:
        delattr(ds, keyword)
    user = make_user("alice", staff=True)
    study_uid = stored(user, fresh(ds))["study_instance_uid"]
    page, seen = open_study(context, live_server.url, "alice", study_uid)
    image = drawn_image(page)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(ARTIFACTS / f"viewer-{case}.png"))
    assert np.unique(np.asarray(image)).size > 8, "the canvas holds a flat fill, not an image"
    assert len(seen.frames) >= 1
    assert_clean(seen)
    page.close()


def ct_series(count: int) -> list[bytes]:
    """`count` slices of CT_small, 5 mm apart, one study and series."""
    template = pydicom.dcmread(CT_SMALL)
    study, series = generate_uid(), generate_uid()
    x, y, z = (float(v) for v in template.ImagePositionPatient)
    slices = []
    for index in range(count):
        ds = copy.deepcopy(template)
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [x, y, z + 5.0 * index]
        ds.SliceLocation = z + 5.0 * index
        slices.append(fresh(ds, study=study, series=series))
    return slices


def test_a_200_slice_ct_matches_the_services_render_and_scrolls_through_every_slice(make_user, context, live_server):
    user = make_user("alice", staff=True)
    api = client_for(user)
    answers = [stored(user, data) for data in ct_series(200)]
    ids, study_uid = [a["id"] for a in answers], answers[0]["study_instance_uid"]
    page, seen = open_study(context, live_server.url, "alice", study_uid)
    image = drawn_image(page)
    page.screenshot(path=str(ARTIFACTS / "viewer-ct-first.png"))

    # The window OHIF applied (the overlay's W/L: CT_small has none, so the pixel range), rendered by the service.
    overlay = page.inner_text("body")
    width, center = (float(v) for v in re.search(r"W:\s*([-\d.]+)\s+L:\s*([-\d.]+)", overlay).groups())
    shown = re.search(r"I:(\d+) \((\d+)/(\d+)\)", overlay)
    assert shown and shown.group(3) == "200", overlay[-500:]
    rendered = api.get(f"/api/instances/{ids[int(shown.group(1)) - 1]}/image/", {"window": f"{center},{width}", "format": "png"})
    assert rendered.status_code == 200
    ours = np.asarray(Image.open(io.BytesIO(rendered.getvalue())).convert("L"), dtype=float)
    # The image is fitted to the viewport's shorter side and centred: crop that square, back to 128 x 128.
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    theirs = np.asarray(image.crop((left, top, left + side, top + side)).resize(ours.shape[::-1], Image.BILINEAR), dtype=float)
    assert np.abs(ours - theirs).mean() < 3.0  # grey levels (1.2 measured)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99

    # Scroll through all 200 slices with the mouse wheel, as a reader does.
    box = page.locator(CANVAS).first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(199):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(20)
    expect(page.locator("body")).to_contain_text(re.compile(r"\(200/200\)"), timeout=30_000)
    deadline = time.monotonic() + 60
    while len(seen.frames) < 200 and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert len(seen.frames) == 200, f"{len(seen.frames)} of 200 frames fetched"
    drawn_image(page)
    page.screenshot(path=str(ARTIFACTS / "viewer-ct-last.png"))
    assert_clean(seen)
    page.close()

    # Opening the study was audited: the viewer's reads of it, by this user, by the study's UID.
    reads = AuditEvent.objects.filter(user=user, object_type="study", object_id=study_uid, outcome="success")
    assert reads.exists()


def test_another_users_study_does_not_open(make_user, context, live_server):
    owner = make_user("alice", staff=True)
    make_user("bob", staff=True)
    study_uid = stored(owner, fresh(pydicom.dcmread(CT_SMALL)))["study_instance_uid"]
    page, seen = open_study(context, live_server.url, "bob", study_uid)
    expect(page.locator("body")).to_contain_text("One or more of the requested studies are not available")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(3000)
    page.screenshot(path=str(ARTIFACTS / "viewer-other-users-study.png"))
    searches = [body for url, body in seen.qido if study_uid in url]
    assert searches and all(body == b"[]" for body in searches)  # bob's search for it finds nothing
    assert seen.frames == set()
    image = canvas_image(page)
    assert image is None or np.asarray(image, dtype=float).std() == 0
    page.close()


# --- share links ---------------------------------------------------------------------------------------


def test_a_share_link_opens_its_study_in_ohif_without_an_account(make_user, context, live_server):
    """The recipient has no account and no session: the link's own viewer page draws the study from the link's
    DICOMweb routes; another study of the same owner, asked for under the same link, does not open."""
    owner = make_user("alice", staff=True)
    study_uid = stored(owner, fresh(pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small.dcm")))["study_instance_uid"]
    other_uid = stored(owner, fresh(pydicom.dcmread(CT_SMALL)))["study_instance_uid"]
    study_id = client_for(owner).get("/api/studies/", {"StudyInstanceUID": study_uid}).json()["results"][0]["id"]
    link = client_for(owner).post(f"/api/studies/{study_id}/share/", {}, format="json").json()
    base = link["link"].removeprefix("http://testserver").rstrip("/")
    context.clear_cookies()
    page, seen = watched_page(context, live_server.url)
    page.goto(f"{base}/viewer?StudyInstanceUIDs={study_uid}")
    image = drawn_image(page)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(ARTIFACTS / "viewer-share-link.png"))
    assert np.unique(np.asarray(image)).size > 8
    assert seen.frames and all(url.startswith(f"{live_server.url}{base}/dicomweb/") for url in seen.frames)
    assert_clean(seen)
    assert AuditEvent.objects.filter(object_type="share", action="share-dicomweb-frames", outcome="success").exists()
    page.close()

    page, seen = watched_page(context, live_server.url)
    page.goto(f"{base}/viewer?StudyInstanceUIDs={other_uid}")
    expect(page.locator("body")).to_contain_text("One or more of the requested studies are not available")
    page.wait_for_load_state("networkidle")
    assert seen.frames == set()
    page.close()
