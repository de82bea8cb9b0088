"""What a share link opens, under /share/<secret>/ (studies/shares.py makes and checks the links):

- `/share/<secret>/`: what the link is (its study's UID, expiry, the URLs below) as JSON;
- `/share/<secret>/zip`: the study's files as a zip (de-identified on the fly for a de-identified link);
- `/share/<secret>/viewer?StudyInstanceUIDs=<uid>`: OHIF, configured with the DICOMweb routes below and no list;
- `/share/<secret>/dicomweb/...`: the DICOMweb read routes (QIDO-RS, WADO-RS, rendered) of that study only, the
  same views as /dicomweb/ with the link as their only authentication, GET only, any other study a 404.
"""

from __future__ import annotations

import copy
import functools

from django.http import Http404, JsonResponse
from django.urls import path, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_safe
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import IsAuthenticated

from .. import shares
from ..dicomweb import urls as dicomweb_urls
from ..errors import ServiceError
from . import viewer
from .errors import error_body


def _owner_view(link):
    """The link's owner as the views' scoping sees it: their own catalogue only, whatever their permissions."""
    owner = copy.copy(link.owner)
    owner.is_superuser = False
    owner.view_all_cached = False  # selectors.can_view_all reads this before any permission
    return owner


class ShareLinkAuthentication(BaseAuthentication):
    """The secret in the URL (never a header): the owner's catalogue, narrowed by ShareView to the link's study."""

    def authenticate(self, request):
        secret = getattr(request.parser_context["view"], "secret", "")  # ShareView.dispatch took it from the URL
        link = shares.open_link(secret, count=False)  # ShareNotFound (404), ShareExpired (410)
        request._request.share_link = link  # the audit trail records the use as the link's
        if link.deidentify:
            raise shares.ShareZipOnly()
        return _owner_view(link), link


class ShareView:
    """Mixed in front of a DICOMweb view: authenticated by the link, read-only, its study only."""

    authentication_classes = [ShareLinkAuthentication]
    permission_classes = [IsAuthenticated]
    http_method_names = ["get", "head", "options"]

    def dispatch(self, request, *args, secret: str = "", **kwargs):
        self.secret = secret
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        shared = request.auth.study.study_instance_uid
        if kwargs.get("study", shared) != shared:
            raise Http404

    def get(self, request, *args, **kwargs):
        if self.search_level:  # /studies, /series, /instances: within the link's study
            kwargs["study"] = request.auth.study.study_instance_uid
        return super().get(request, *args, **kwargs)

    def base_url(self) -> str:
        return self.request.build_absolute_uri(f"/share/{self.secret}/dicomweb")  # type: ignore[attr-defined]

    search_level = False


def _share_routes():
    """Every GET route of /dicomweb/ but the labels (the owner's own), as the same views behind ShareView."""
    routes = []
    for pattern in dicomweb_urls.urlpatterns:
        view_class = pattern.callback.view_class
        if pattern.name in ("dicomweb-study-labels", "dicomweb-study-label") or "get" not in view_class.http_method_names:
            continue
        top_level_search = str(pattern.pattern) in ("studies", "series", "instances")
        shared = type(f"Share{view_class.__name__}", (ShareView, view_class), {"search_level": top_level_search})
        routes.append(path(f"<str:secret>/dicomweb/{pattern.pattern}", shared.as_view(), name=f"share-{pattern.name}"))
    return routes


def _refusal(refused: ServiceError) -> JsonResponse:
    return JsonResponse(error_body(refused.message, refused.code), status=refused.status)


def live_link(view):
    """A recipient's view of the link in the URL: called with the live link (recorded for the audit trail), or the
    error for the recipient (404, 410) in the service's JSON shape."""

    @functools.wraps(view)
    def wrapped(request, secret: str):
        try:
            link = shares.open_link(secret)
        except ServiceError as refused:
            return _refusal(refused)
        request.share_link = link
        return view(request, secret, link)

    return require_safe(wrapped)


def addresses(request, secret: str, link) -> dict:
    """What the link opens, as absolute URLs (the answer that makes a link, and its landing): a de-identified link
    the zip only."""
    base = request.build_absolute_uri(f"/share/{secret}")
    viewer_url = f"{base}/viewer?{urlencode({'StudyInstanceUIDs': link.study.study_instance_uid})}"
    return {
        "link": f"{base}/",
        "zip": f"{base}/zip",
        "viewer": None if link.deidentify else viewer_url,
        "dicomweb": None if link.deidentify else f"{base}/dicomweb",
    }


@live_link
def landing(request, secret: str, link):
    body = {
        "study_instance_uid": None if link.deidentify else link.study.study_instance_uid,
        "expires_at": link.expires_at.isoformat(),
        "deidentified": link.deidentify,
        **addresses(request, secret, link),
    }
    response = JsonResponse(body)
    response["Cache-Control"] = "private, no-store"
    return response


@live_link
def archive(request, secret: str, link):
    from ..api.views import archive_response, deidentified_zip_response  # the API's own zips

    study = link.study
    if link.deidentify:
        return deidentified_zip_response(user=link.owner, level="study", obj=study, choices=shares.choices(link))
    return archive_response(study.instances.all(), f"study-{study.study_instance_uid}.zip")


@live_link
def viewer_page(request, secret: str, link):
    if link.deidentify:
        return _refusal(shares.ShareZipOnly())
    return viewer.index_page(reverse("share-viewer-config", args=[secret]))


@require_safe
def viewer_config(request, secret: str):
    # No use is counted for the configuration: it holds nothing of the study, only this link's own paths.
    return viewer.config_response(viewer.app_config_js(f"/share/{secret}/dicomweb", router_basename=f"/share/{secret}", study_list=False))


urlpatterns = [
    path("<str:secret>/", landing, name="share-landing"),
    path("<str:secret>/zip", archive, name="share-zip"),
    path("<str:secret>/viewer", viewer_page, name="share-viewer"),
    path("<str:secret>/app-config.js", viewer_config, name="share-viewer-config"),
    *_share_routes(),
]
