"""OHIF, the diagnostic viewer, served at /viewer/ from the same origin as the API.

The build comes from the npm registry at install time (`make viewer`: deploy/fetch_ohif.py, which prefixes
its paths with /viewer/) into DICOM_VIEWER_ROOT. Three kinds of request:

- /viewer/app-config.js: generated here, never the upstream file: one DICOMweb data source, this origin's
  /dicomweb/, no other URL (an offline clinical network has no CDN);
- a file of the build (bundles, wasm codecs, icons): served as it is, hashed names cached for a year;
- anything else is a route of the single-page app (/viewer/, /viewer/viewer?StudyInstanceUIDs=...): its
  index.html, for a logged-in user only (else the admin's login page, then back here).

Every answer carries cross-origin isolation (COOP same-origin, COEP require-corp), which OHIF needs for
SharedArrayBuffer (MPR, the codecs' threads). The studies a user sees are the DICOMweb routes' business: the
session authenticates there for safe methods only (studies.api.authentication.SameOriginSessionAuthentication).
"""

from __future__ import annotations

import json
import mimetypes
import re
from pathlib import Path

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import SuspiciousFileOperation
from django.http import FileResponse, Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils._os import safe_join
from django.utils.http import urlencode
from django.views.decorators.http import require_safe

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# webpack's content-hashed names (`1602.bundle.94f12cceab7c2762.js`, `0ddf166f7a343eda.wasm`) never change content.
HASHED_NAME = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|wasm)$")
ASSET_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")

NOT_INSTALLED = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Viewer not installed</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>The viewer is not installed</h1>
<p>This server has no OHIF build. Install it with <code>make viewer</code> (<code>make run</code> does it too):
it fetches OHIF {version} from the npm registry (or set DICOM_VIEWER_ROOT to a prepared build).</p>
<p>Everything else works without it: the <a href="/admin/">admin</a> has its own image viewer, and
<a href="/dicomweb/">DICOMweb</a> serves any other viewer.</p></body></html>"""


def study_url(study_uid: str, series_uid: str = "", sop_instance_uid: str = "") -> str:
    """The viewer's page for one study, opened at a series (and an instance of it) when they are given."""
    query = {"StudyInstanceUIDs": study_uid}
    if series_uid:
        query["initialSeriesInstanceUID"] = series_uid
    if sop_instance_uid:
        query["initialSOPInstanceUID"] = sop_instance_uid
    return f"{settings.DICOM_VIEWER_PREFIX}viewer?{urlencode(query)}"


def viewer_root() -> Path | None:
    """The prepared build's directory, or None when it is not installed."""
    root = Path(settings.DICOM_VIEWER_ROOT)
    return root if (root / "index.html").is_file() else None


def _isolated(response: HttpResponseBase) -> HttpResponseBase:
    for name, value in ISOLATION_HEADERS.items():
        response[name] = value
    return response


def app_config_js(dicomweb_root: str, *, router_basename: str | None = None, study_list: bool = True) -> str:
    """OHIF's window.config for this service: one DICOMweb data source at `dicomweb_root` (a path on this origin
    unless DICOMWEB_BASE_URL names another), the study list, nothing external. A share link's viewer has its own
    root and base path, and no study list (studies.http.shares)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "this archive",
            "name": "dicomweb",
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video,pdf",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": router_basename or settings.DICOM_VIEWER_PREFIX.rstrip("/"),
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": study_list,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    roots = ("wadoUriRoot", "qidoRoot", "wadoRoot")
    # The roots are absolute URLs (OHIF's DICOMweb client joins paths onto them): this page's origin unless set.
    root_expr = json.dumps(dicomweb_root) if "://" in dicomweb_root else f"window.location.origin + {json.dumps(dicomweb_root)}"
    lines = [
        "// Generated by the archive (studies/http/viewer.py): OHIF's configuration for this server.",
        f"window.config = {json.dumps(config, indent=2)};",
        "(function () {",
        f"  var root = {root_expr};",
        "  var source = window.config.dataSources[0].configuration;",
        *(f"  source.{name} = root;" for name in roots),
        "})();",
        "",
    ]
    return "\n".join(lines)


@require_safe
def app_config(request):
    response = HttpResponse(app_config_js(settings.DICOMWEB_BASE_URL or "/dicomweb"), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return _isolated(response)


@require_safe
def viewer(request, path: str = ""):
    root = viewer_root()
    if root is None:
        page = NOT_INSTALLED.format(version=settings.DICOM_VIEWER_VERSION)  # no server path shown to visitors
        return _isolated(HttpResponse(page, status=503, content_type="text/html; charset=utf-8"))
    if path and path != "index.html":
        try:
            file = Path(safe_join(root, path))
        except SuspiciousFileOperation:  # a path out of the build (../)
            raise Http404 from None
        if file.is_file():
            return _asset(file)
        if ASSET_SUFFIX.search(path):  # a file the build does not have, not an app route
            raise Http404
    if not (request.user.is_authenticated and request.user.is_active):
        return redirect_to_login(request.get_full_path(), login_url=reverse("admin:login"))
    response = HttpResponse((root / "index.html").read_bytes(), content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return _isolated(response)


def index_page(config_url: str) -> HttpResponseBase:
    """The build's index.html loading its configuration from `config_url` (a share link's viewer), or the 503 page."""
    root = viewer_root()
    if root is None:
        page = NOT_INSTALLED.format(version=settings.DICOM_VIEWER_VERSION)
        return _isolated(HttpResponse(page, status=503, content_type="text/html; charset=utf-8"))
    html = (root / "index.html").read_text(encoding="utf-8").replace(f"{settings.DICOM_VIEWER_PREFIX}app-config.js", config_url)
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "private, no-store"
    return _isolated(response)


def config_response(js: str) -> HttpResponseBase:
    response = HttpResponse(js, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return _isolated(response)


def _asset(file: Path) -> HttpResponseBase:
    content_type, encoding = mimetypes.guess_type(file.name)
    response = FileResponse(file.open("rb"), content_type=content_type or "application/octet-stream")
    if encoding:  # .gz and the like are served as the bytes they are
        response["Content-Type"] = "application/octet-stream"
    response["Cache-Control"] = "public, max-age=31536000, immutable" if HASHED_NAME.search(file.name) else "public, max-age=3600"
    return _isolated(response)
