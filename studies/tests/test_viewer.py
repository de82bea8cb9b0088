"""The bundled viewer's routes (/viewer/: studies/http/viewer.py), its build's preparation (deploy/fetch_ohif.py) and
the session login on DICOMweb that the viewer reads with. The browser tests of OHIF itself are in
test_viewer_browser.py.

The routing tests serve a small build of real files written here (an index.html, a hashed bundle, a wasm file);
the preparation tests read the real prepared build (`make viewer`, which `make test` runs first)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

from .conftest import CT_SMALL, client_for, dicom_bytes, upload

BASE_DIR = Path(__file__).resolve().parents[2]
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
INDEX = b'<!doctype html><html><head><script>window.PUBLIC_URL="/viewer/"</script></head><body>OHIF</body></html>'


def fetch_ohif():
    spec = importlib.util.spec_from_file_location("fetch_ohif", BASE_DIR / "deploy" / "fetch_ohif.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def build(settings, tmp_path) -> Path:
    root = tmp_path / "ohif"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "app.bundle.0f6159c501addfe9.js").write_text("console.log('app');")
    (root / "0ddf166f7a343eda.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00")
    (root / "assets" / "favicon.ico").write_bytes(b"\x00\x00\x01\x00")
    (tmp_path / "secret.txt").write_text("outside the build")
    settings.DICOM_VIEWER_ROOT = root
    return root


@pytest.fixture
def staff_session(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


# --- the routes ---------------------------------------------------------------------------------


def test_a_visitor_without_a_login_is_sent_to_the_login_page_and_back(build, client):
    response = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/viewer/viewer%3FStudyInstanceUIDs%3D1.2.3"


def test_a_logged_in_user_gets_the_app_with_cross_origin_isolation(build, staff_session):
    for path in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/index.html"):
        response = staff_session.get(path)
        assert response.status_code == 200, path
        assert response.content == INDEX
        assert response["Content-Type"] == "text/html; charset=utf-8"
        assert response["Cache-Control"] == "no-cache"
        for name, value in ISOLATION.items():
            assert response[name] == value


def test_files_of_the_build_are_served_without_a_login_with_their_types_and_cache_lifetimes(build, client):
    wasm = client.get("/viewer/0ddf166f7a343eda.wasm")
    assert wasm.status_code == 200
    assert wasm["Content-Type"] == "application/wasm"
    assert wasm["Cache-Control"] == "public, max-age=31536000, immutable"
    assert b"".join(wasm.streaming_content) == b"\x00asm\x01\x00\x00\x00"
    bundle = client.get("/viewer/app.bundle.0f6159c501addfe9.js")
    assert bundle["Content-Type"] == "text/javascript"
    assert bundle["Cache-Control"] == "public, max-age=31536000, immutable"
    icon = client.get("/viewer/assets/favicon.ico")
    assert icon.status_code == 200
    assert icon["Cache-Control"] == "public, max-age=3600"
    for response in (wasm, bundle, icon):
        assert response["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_a_file_the_build_lacks_or_a_path_out_of_it_is_404(build, staff_session):
    assert staff_session.get("/viewer/nothing.bundle.js").status_code == 404
    assert staff_session.get("/viewer/../secret.txt").status_code == 404
    assert staff_session.get("/viewer/%2e%2e/secret.txt").status_code == 404
    assert b"outside the build" not in staff_session.get("/viewer/..%2fsecret.txt").content


def test_only_safe_methods_are_answered(build, staff_session):
    assert staff_session.post("/viewer/").status_code == 405
    assert staff_session.post("/viewer/app-config.js").status_code == 405
    assert staff_session.head("/viewer/0ddf166f7a343eda.wasm").status_code == 200


def test_without_the_build_the_viewer_says_how_to_install_it_and_the_rest_works(settings, tmp_path, staff_session):
    settings.DICOM_VIEWER_ROOT = tmp_path / "absent"
    response = staff_session.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert response.status_code == 503
    assert b"The viewer is not installed" in response.content and b"make viewer" in response.content
    assert str(tmp_path).encode() not in response.content  # no server path shown
    assert staff_session.get("/admin/").status_code == 200


def test_the_generated_config_names_this_origins_dicomweb_and_nothing_external(build, client):
    response = client.get("/viewer/app-config.js")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    script = response.content.decode()
    assert "://" not in script  # no CDN, no demo server, no analytics
    assert 'var root = window.location.origin + "/dicomweb";' in script
    assert '"routerBasename": "/viewer"' in script
    assert len(re.findall(r'"sourceName":', script)) == 1


def test_a_public_dicomweb_url_is_what_the_config_names(build, client, settings):
    settings.DICOMWEB_BASE_URL = "https://pacs.example.org/dicomweb"
    script = client.get("/viewer/app-config.js").content.decode()
    assert 'var root = "https://pacs.example.org/dicomweb";' in script


# --- the session on DICOMweb ----------------------------------------------------------------------


def test_the_admin_session_reads_dicomweb_and_sees_only_its_own_studies(staff, other, staff_session):
    mine = upload(client_for(staff), dicom_bytes(CT_SMALL))
    assert mine.status_code == 201
    theirs = upload(client_for(other), dicom_bytes(CT_SMALL))
    assert theirs.status_code == 201
    response = staff_session.get("/dicomweb/studies", HTTP_SEC_FETCH_SITE="same-origin")
    assert response.status_code == 200
    assert [study["0020000D"]["Value"][0] for study in response.json()] == [mine.json()["study_instance_uid"]]
    theirs_uid = theirs.json()["study_instance_uid"]
    assert staff_session.get(f"/dicomweb/studies/{theirs_uid}/metadata").status_code == 404


def test_the_session_is_not_taken_for_writes_nor_from_another_site(staff, staff_session):
    stored = staff_session.post(
        "/dicomweb/studies", data=b"--x\r\n\r\n--x--", content_type='multipart/related; type="application/dicom"; boundary=x'
    )
    assert stored.status_code == 401
    assert stored.json()["code"] == "not_authenticated"
    for site in ("cross-site", "same-site"):
        assert staff_session.get("/dicomweb/studies", HTTP_SEC_FETCH_SITE=site).status_code == 401
    assert staff_session.get("/dicomweb/studies", HTTP_SEC_FETCH_SITE="none").status_code == 200  # typed in the address bar


def test_opening_a_study_in_the_viewer_is_audited(staff, staff_session):
    from studies.audit.models import AuditEvent

    uid = upload(client_for(staff), dicom_bytes(CT_SMALL)).json()["study_instance_uid"]
    assert staff_session.get(f"/dicomweb/studies/{uid}/series").status_code == 200
    event = AuditEvent.objects.latest("id")
    assert (event.user_id, event.object_type, event.object_id, event.outcome) == (staff.pk, "study", uid, "success")


# --- the prepared build --------------------------------------------------------------------------


def test_the_settings_name_the_version_the_fetch_script_pins():
    assert django_settings.DICOM_VIEWER_VERSION == fetch_ohif().VERSION


def test_the_prepared_build_asks_for_nothing_at_the_origins_root_nor_elsewhere():
    root = BASE_DIR / "viewer" / "ohif" / fetch_ohif().VERSION
    assert (root / "index.html").is_file(), "the OHIF build is missing: `make viewer` (make test runs it)"
    index = (root / "index.html").read_text()
    assert re.findall(r'(?:href|src)="(/[^"]*)"', index), "index.html names no assets"
    assert all(path.startswith("/viewer/") for path in re.findall(r'(?:href|src)="(/[^"]*)"', index))
    assert 'window.PUBLIC_URL="/viewer/"' in index and "init-service-worker" not in index
    assert "://" not in index
    assert not (root / "app-config.js").exists()  # the service's own is served instead
    for sheet in root.glob("*.css"):
        assert not re.search(r"url\(['\"]?/(?!viewer/)", sheet.read_text()), sheet.name
    public_paths = [p for b in root.glob("*.js") for p in re.findall(rb'__webpack_require__\.p = "([^"]*)"', b.read_bytes())]
    assert len(public_paths) >= 8 and set(public_paths) == {b"/viewer/"}  # the app bundle's and each worker's runtime


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path):
    module = fetch_ohif()
    forged = tmp_path / "ohif-app.tgz"
    forged.write_bytes(b"not the registry's tarball")
    with pytest.raises(module.Failed, match="is not the pinned"):
        module.prepare(forged, tmp_path / "dest")
