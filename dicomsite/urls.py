"""Top-level routes. Note what is absent: no route serves MEDIA_ROOT; files go through ownership checks."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from studies.http import viewer
from studies.http.health import healthz, readyz

handler404 = "studies.http.errors.not_found"
handler500 = "studies.http.errors.server_error"

urlpatterns = [
    path("", RedirectView.as_view(url="/api/docs/", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api-auth/", include("rest_framework.urls")),
    path("api/", include("studies.api.urls")),
    path("dicomweb/", include("studies.dicomweb.urls")),
    path("share/", include("studies.http.shares")),
    path("viewer/app-config.js", viewer.app_config, name="viewer-config"),
    path("viewer/", viewer.viewer, name="viewer"),
    re_path(r"^viewer/(?P<path>.+)$", viewer.viewer, name="viewer-path"),
]
