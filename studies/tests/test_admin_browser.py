"""End-to-end tests of the admin in a real Chromium against a live server.

A staff user with nothing but `is_staff` logs in, uploads files through the upload page, sees
thumbnails that really decode, searches, windows and pages through images, filters the tag
browser, downloads the original, and cannot see another staff user's files.

How it runs:
* The browser is the Debian package at /usr/bin/chromium (no browser download). It is required:
  if it is missing every test here fails with a message saying so (CI installs it).
* pytest-django's `live_server` serves the app from a thread of this process, so the test's
  `settings` changes (the temporary MEDIA_ROOT of conftest.py) and the local-memory cache apply
  to it; it needs `transaction=True` so that the server thread sees the rows the test commits.
* Playwright's sync API drives the browser from an asyncio event loop that it keeps in this
  thread (in a greenlet). Django then sees a "running event loop" in the test thread and refuses
  ORM calls there (SynchronousOnlyOperation) — in our fixtures (make_user) and in pytest-django's
  own database flush after each test. Those calls are plain synchronous code that never
  interleaves with a coroutine of that loop, so the `browser` fixture sets
  DJANGO_ALLOW_ASYNC_UNSAFE=true for as long as Playwright runs (and restores it afterwards).
  The live server's own threads have no event loop and are unaffected.
* Screenshots of the key steps go to test-artifacts/ at the repository root (gitignored).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, dicom_bytes, pydicom_data_dir

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 15_000

MR_SMALL = PYDICOM_TEST_FILES / "MR_small.dcm"
JPEG2000 = PYDICOM_TEST_FILES / "JPEG2000.dcm"  # JPEG 2000 compressed, NM, nested sequences


def emri_small() -> Path:
    return pydicom_data_dir() / "emri_small.dcm"  # MR, 10 frames, 64 x 64


def palette_file() -> Path:
    return pydicom_data_dir() / "OBXXXX1A.dcm"  # US, PALETTE COLOR, 800 x 600


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; each test gets fresh contexts (own cookies)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the admin browser tests need Chromium at {CHROMIUM} (Debian package `chromium`; "
            "Playwright's own browser downloads are not used)",
            pytrace=False,
        )
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    with pytest.MonkeyPatch.context() as patch:
        # See the module docstring: Playwright's loop in this thread makes Django refuse ORM calls.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
            try:
                yield chromium
            finally:
                chromium.close()


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Users are created and log in through the form: a cheap hasher saves ~1 s per test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class Tab:
    """A page in its own browser context, with what it reported: dialogs and uncaught JS errors."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    js_errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_tab(browser: Browser, live_server):
    """open_tab() → a Tab in a new context (a new, logged-out browser session) on the live server."""
    contexts = []

    def open_() -> Tab:
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900}, accept_downloads=True)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        tab = Tab(context.new_page())

        def on_dialog(dialog):
            tab.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        tab.page.on("dialog", on_dialog)
        tab.page.on("pageerror", lambda error: tab.js_errors.append(str(error)))
        return tab

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def staff_tab(make_user, open_tab) -> Tab:
    """A staff user (is_staff only, no permissions) logged in to the admin."""
    make_user("alice", staff=True)
    tab = open_tab()
    login(tab.page, "alice")
    yield tab
    assert tab.js_errors == [], f"uncaught JavaScript errors: {tab.js_errors}"


# --- helpers -------------------------------------------------------------------------------


def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def login(page: Page, username: str) -> None:
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-" + username)
    page.locator("#login-form [type=submit]").click()
    expect(page.locator("#user-tools")).to_contain_text(username)


def go_to_instances(page: Page) -> None:
    page.goto("/admin/")
    page.locator("#content-main").get_by_role("link", name="Instances", exact=True).click()
    expect(page).to_have_url(re.compile(r"/admin/studies/instance/$"))
    page.wait_for_load_state()


def upload(page: Page, files) -> dict[str, tuple[str, str]]:
    """Upload through the admin page; {filename: (status, details text)} from the results table.

    `files` is a list of paths, or of Playwright file payloads ({name, mimeType, buffer}).
    """
    go_to_instances(page)
    page.locator("#upload-link").click()
    expect(page).to_have_url(re.compile(r"/admin/studies/instance/upload/$"))
    page.wait_for_load_state()  # upload.js (at the end of the page) listens for the input's change
    page.set_input_files("#id_files", files)
    expect(page.locator("#chosen")).to_have_text(f"{len(files)} file(s) chosen.")
    page.locator("#upload-submit").click()
    rows = page.locator("#upload-results tbody tr")
    expect(rows).to_have_count(len(files))
    cells = page.eval_on_selector_all(
        "#upload-results tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))"
    )
    return {name: (status, details) for name, status, details in cells}


def open_uploaded(page: Page, filename: str) -> None:
    """From the upload results, follow the "open" link of one file to its instance page."""
    page.locator("#upload-results tbody tr", has_text=filename).get_by_role("link", name="open").click()
    expect(page).to_have_url(re.compile(r"/admin/studies/instance/[0-9a-f-]{36}/change/$"))
    page.wait_for_load_state()  # viewer.js (at the end of the page) wires the buttons and the filter


def result_rows(page: Page):
    return page.locator("#result_list tbody tr")


# Draws an <img> on a canvas: a hash and the mean of its pixels (the image is same-origin, so readable).
_IMAGE_PIXELS_JS = """
(img) => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 2166136261, sum = 0;
  for (let i = 0; i < data.length; i++) {
    hash = Math.imul(hash ^ data[i], 16777619) >>> 0;
    if (i % 4 !== 3) sum += data[i];
  }
  return {src: img.src, width: canvas.width, height: canvas.height, hash: hash, mean: sum / (data.length / 4 * 3)};
}
"""


def viewer_pixels(page: Page, fragment: str) -> dict:
    """Wait until the viewer image's URL contains `fragment` and that image has loaded; its pixels' hash and mean."""
    page.wait_for_function(
        """(fragment) => {
            const img = document.getElementById("viewer-image");
            return img !== null && img.src.includes(fragment) && img.complete && img.naturalWidth > 0
                && !("loading" in document.getElementById("dicom-viewer").dataset);
        }""",
        arg=fragment,
    )
    expect(page.locator("#viewer-status")).to_have_text("")
    return page.locator("#viewer-image").evaluate(_IMAGE_PIXELS_JS)


def visible_top_level_keywords(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#tag-browser > tbody > tr.tag-row", "rows => rows.filter(r => !r.hidden).map(r => r.cells[1].textContent.trim())"
    )


# --- the tests -----------------------------------------------------------------------------


def test_upload_page_reports_each_file_then_list_shows_thumbnails_and_search_finds_patient(staff_tab, tmp_path):
    page = staff_tab.page
    notes = tmp_path / "notes.txt"
    notes.write_text("not a DICOM file\n")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    dicom_files = [CT_SMALL, MR_SMALL, JPEG2000, emri_small(), palette_file()]

    results = upload(page, [*dicom_files, notes, empty])
    shot(page, "admin-upload-results.png")

    for path in dicom_files:
        status, details = results[path.name]
        assert status == "created", (path.name, details)
        assert details == "open"
    status, details = results["notes.txt"]
    assert status == "refused"
    assert "not a DICOM Part-10 file" in details
    assert results["empty.dcm"] == ("refused", "the file is empty")
    expect(page.locator("#upload-summary")).to_have_text("5 created, 0 duplicate, 0 conflict, 2 refused.")
    expect(page.locator("#upload-results .status-refused")).to_have_count(2)

    # The same bytes again: a duplicate that points at the existing instance.
    again = upload(page, [CT_SMALL])
    assert again == {"CT_small.dcm": ("duplicate", "open")}
    expect(page.locator("#upload-summary")).to_have_text("0 created, 1 duplicate, 0 conflict, 0 refused.")
    shot(page, "admin-upload-duplicate.png")

    # The list: one row per created file, every (lazy) thumbnail decoded by the browser.
    go_to_instances(page)
    expect(result_rows(page)).to_have_count(len(dicom_files))
    thumbs = page.locator("#result_list img.dicom-thumb")
    expect(thumbs).to_have_count(len(dicom_files))
    for index in range(len(dicom_files)):
        thumb = thumbs.nth(index)
        thumb.scroll_into_view_if_needed()  # loading="lazy": bring each into view
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    widths = page.eval_on_selector_all("img.dicom-thumb", "imgs => imgs.map(img => img.naturalWidth)")
    assert len(widths) == len(dicom_files) and all(width > 0 for width in widths), widths
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "admin-list.png")

    # Search by patient name: the full name, a part of it, and a name nobody has.
    search = page.locator("#searchbar")
    search.fill("CompressedSamples^CT1")
    search.press("Enter")
    expect(result_rows(page)).to_have_count(1)
    expect(result_rows(page).first.locator(".field-patient_name")).to_have_text("CompressedSamples^CT1")
    expect(result_rows(page).first.locator(".field-modality")).to_have_text("CT")
    shot(page, "admin-search.png")

    page.locator("#searchbar").fill("compressedsamples")
    page.locator("#searchbar").press("Enter")
    expect(result_rows(page)).to_have_count(3)
    names = sorted(page.locator("#result_list .field-patient_name").all_text_contents())
    assert names == ["CompressedSamples^CT1", "CompressedSamples^MR1", "CompressedSamples^NM1"]

    page.locator("#searchbar").fill("Nobody^Here")
    page.locator("#searchbar").press("Enter")
    expect(page.locator("#result_list")).to_have_count(0)
    expect(page.locator(".paginator")).to_contain_text("0 instances")


def test_instance_viewer_presets_custom_window_and_frames(staff_tab):
    page = staff_tab.page
    results = upload(page, [CT_SMALL, emri_small()])
    assert {status for status, _ in results.values()} == {"created"}, results
    multi_frame_url = page.locator("#upload-results tbody tr", has_text="emri_small.dcm").get_by_role("link").get_attribute("href")

    open_uploaded(page, "CT_small.dcm")
    default = viewer_pixels(page, "preset=default")
    assert default["width"] == 128 and default["height"] == 128, default
    expect(page.locator('button.preset[data-preset="default"]')).to_have_class(re.compile(r"\bactive\b"))

    page.locator('button.preset[data-preset="bone"]').click()
    bone = viewer_pixels(page, "preset=bone")
    expect(page.locator('button.preset[data-preset="bone"]')).to_have_class(re.compile(r"\bactive\b"))
    expect(page.locator('button.preset[data-preset="default"]')).not_to_have_class(re.compile(r"\bactive\b"))
    assert bone["src"] != default["src"]
    assert bone["hash"] != default["hash"], "the Bone preset did not change the pixels"
    assert bone["mean"] != pytest.approx(default["mean"], abs=1), (bone, default)  # visibly, not one pixel
    shot(page, "admin-instance-bone.png", full_page=False)

    # The rendered bytes differ too (fetched with the page's session cookie).
    bone_bytes = page.request.get(bone["src"])
    default_bytes = page.request.get(default["src"])
    assert bone_bytes.ok and default_bytes.ok
    assert bone_bytes.headers["content-type"] == "image/png"
    assert bone_bytes.body() != default_bytes.body()

    # A custom window: a width below 1 is refused in the page, a valid one is applied.
    page.fill("#window-center", "40")
    page.fill("#window-width", "0")
    page.locator("#window-apply").click()
    expect(page.locator("#viewer-status")).to_have_text("Enter a center and a width of at least 1.")
    assert page.locator("#viewer-image").evaluate("img => img.src") == bone["src"]
    expect(page.locator('button.preset[data-preset="bone"]')).to_have_class(re.compile(r"\bactive\b"))

    page.fill("#window-width", "80")
    page.locator("#window-apply").click()
    brain = viewer_pixels(page, "window=40%2C80")
    assert brain["hash"] not in {bone["hash"], default["hash"]}
    expect(page.locator("button.preset.active")).to_have_count(0)
    shot(page, "admin-instance-window.png", full_page=False)

    # A multi-frame file: the slider moves through frames and the picture changes.
    page.goto(multi_frame_url)
    slider = page.locator("#frame-slider")
    expect(slider).to_have_attribute("max", "10")
    expect(page.locator("#frame-label")).to_have_text("1 / 10")
    first = viewer_pixels(page, "frame=1&")
    slider.fill("5")
    expect(page.locator("#frame-label")).to_have_text("5 / 10")
    fifth = viewer_pixels(page, "frame=5&")
    assert fifth["hash"] != first["hash"], "frame 5 looks exactly like frame 1"
    slider.fill("10")
    expect(page.locator("#frame-label")).to_have_text("10 / 10")
    tenth = viewer_pixels(page, "frame=10&")
    assert tenth["hash"] not in {first["hash"], fifth["hash"]}
    shot(page, "admin-instance-frames.png", full_page=False)


def test_tag_browser_filter_shows_matching_rows_and_opens_sequences(staff_tab):
    page = staff_tab.page
    upload(page, [CT_SMALL])
    open_uploaded(page, "CT_small.dcm")

    rows = page.locator("#tag-browser > tbody > tr.tag-row")
    total = rows.count()
    assert total > 50
    patient_name = rows.filter(has=page.locator("td.keyword", has_text=re.compile(r"^PatientName$")))
    expect(patient_name).to_have_count(1)
    expect(patient_name.locator("td.value")).to_have_text("CompressedSamples^CT1")

    tag_filter = page.locator("#tag-filter")
    tag_filter.fill("PatientName")
    expect(patient_name).to_be_visible()
    visible = visible_top_level_keywords(page)
    assert "PatientName" in visible and len(visible) <= 3, visible
    shot(page, "admin-tags-filter.png")

    tag_filter.fill("0010,0010")
    expect(patient_name).to_be_visible()
    assert visible_top_level_keywords(page) == ["PatientName"]

    # A value found only inside OtherPatientIDsSequence: its sequence row stays, and opens on it.
    sequence = rows.filter(has=page.locator("td.keyword", has_text=re.compile(r"^OtherPatientIDsSequence$")))
    nested = sequence.locator("table.nested tr.tag-row", has_text="ABCD1234")
    expect(nested).to_have_count(1)
    expect(nested).to_be_hidden()  # inside a closed <details>
    tag_filter.fill("ABCD1234")
    expect(nested).to_be_visible()
    expect(sequence.locator("details.sequence")).to_have_js_property("open", True)
    assert visible_top_level_keywords(page) == ["OtherPatientIDsSequence"]
    # Within the open sequence, only the matching element shows (not its sibling TypeOfPatientID).
    expect(sequence.locator("table.nested tr.tag-row:visible")).to_have_count(1)
    shot(page, "admin-tags-nested.png")

    # Clearing the filter shows every row again.
    tag_filter.fill("")
    expect(page.locator("#tag-browser > tbody > tr.tag-row:visible")).to_have_count(total)


def test_tag_browser_filter_reaches_two_levels_of_sequences(staff_tab):
    page = staff_tab.page
    upload(page, [JPEG2000])
    open_uploaded(page, "JPEG2000.dcm")
    # SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeMeaning
    page.locator("#tag-filter").fill("uncompressed predecessor")
    deep = page.locator("#tag-browser table.nested table.nested tr.tag-row", has_text="Uncompressed predecessor")
    expect(deep).to_be_visible()
    assert visible_top_level_keywords(page) == ["SourceImageSequence"]


def test_header_value_with_markup_is_shown_as_text(staff_tab):
    page = staff_tab.page
    markup = "<script>alert(1)</script>"
    payload = {"name": "markup.dcm", "mimeType": "application/dicom", "buffer": dicom_bytes(PatientName=markup)}
    results = upload(page, [payload])
    assert results["markup.dcm"] == ("created", "open")

    go_to_instances(page)
    expect(result_rows(page)).to_have_count(1)
    expect(result_rows(page).first.locator(".field-patient_name")).to_have_text(markup)

    result_rows(page).first.locator(".field-patient_name a").click()
    expect(page).to_have_url(re.compile(r"/change/$"))
    page.wait_for_load_state()
    cell = page.locator("#tag-browser > tbody > tr.tag-row", has=page.locator("td.keyword", has_text=re.compile(r"^PatientName$"))).locator("td.value")
    expect(cell).to_have_text(markup)
    expect(page.locator(".field-patient_name .readonly")).to_have_text(markup)
    # No element was created from the value: no injected <script>, and no dialog ever opened.
    injected = page.evaluate("() => Array.from(document.scripts).filter(s => s.textContent.includes('alert(1)')).length")
    assert injected == 0
    page.locator("#tag-filter").fill("<script>")
    expect(cell).to_be_visible()
    shot(page, "admin-instance-markup.png")
    assert staff_tab.dialogs == []


def test_other_staff_user_sees_none_of_the_first_users_uploads(staff_tab, make_user, open_tab):
    page = staff_tab.page
    upload(page, [CT_SMALL])
    open_uploaded(page, "CT_small.dcm")
    change_url = page.url
    image_url = page.locator("#dicom-viewer").get_attribute("data-image-url")
    file_url = page.locator("#download-original").get_attribute("href")

    make_user("bob", staff=True)
    bob = open_tab()
    login(bob.page, "bob")
    go_to_instances(bob.page)
    expect(bob.page.locator("#result_list")).to_have_count(0)
    expect(bob.page.locator(".paginator")).to_contain_text("0 instances")
    expect(bob.page.locator("#content")).not_to_contain_text("CompressedSamples")
    shot(bob.page, "admin-other-user-list.png")

    bob.page.goto(change_url)
    expect(bob.page).to_have_url(re.compile(r"/admin/$"))  # the admin redirects to its index
    expect(bob.page.locator(".messagelist")).to_contain_text("doesn’t exist")
    expect(bob.page.locator("#dicom-viewer")).to_have_count(0)
    shot(bob.page, "admin-other-user-instance.png")

    # Nor do the API URLs behind the page answer for him.
    for url in (image_url, file_url, image_url.replace("/image/", "/thumbnail/")):
        response = bob.page.request.get(url)
        assert response.status == 404, (url, response.status)
    assert bob.js_errors == []


def test_download_link_returns_the_stored_dicom_file(staff_tab):
    page = staff_tab.page
    upload(page, [CT_SMALL])
    open_uploaded(page, "CT_small.dcm")
    link = page.locator("#download-original")
    expect(link).to_have_text("Download original")

    with page.expect_download() as info:
        link.click()
    download = info.value
    original = pydicom.dcmread(CT_SMALL)
    assert download.suggested_filename == f"{original.SOPInstanceUID}.dcm"
    data = Path(download.path()).read_bytes()
    # The stored file is the upload with its 128-byte preamble zeroed (CT_small's holds a TIFF header).
    source = CT_SMALL.read_bytes()
    assert data[:128] == bytes(128)
    assert data[128:] == source[128:]
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == original.SOPInstanceUID

    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    assert response.headers["content-type"] == "application/dicom"
    assert "attachment" in response.headers["content-disposition"]
    assert hashlib.sha256(response.body()).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_the_api_docs_show_the_error_shape_with_its_placeholders(open_tab, path):
    """Swagger UI and ReDoc render the API description as Markdown: the error shape must survive it."""
    tab = open_tab()
    tab.page.goto(path)
    expect(tab.page.get_by_text('"code": "<a machine code>"', exact=False).first).to_be_visible()
    expect(tab.page.get_by_text('{"error": "the file is empty", "code": "invalid_dicom"}', exact=False).first).to_be_visible()
    assert tab.js_errors == []
