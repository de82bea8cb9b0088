"""API routes under /api/."""

from django.urls import URLPattern, include, path, re_path
from rest_framework.routers import DefaultRouter

from . import lean, tags, views

router = DefaultRouter()
# No ".json" suffix routes: a tag expression may contain dots.
router.include_format_suffixes = False
router.register("instances", views.InstanceViewSet, basename="instance")
router.register("studies", views.StudyViewSet, basename="study")
router.register("series", views.SeriesViewSet, basename="series")
router.register("sends", views.SendViewSet, basename="send")
router.register("deidentifications", views.DeidentificationViewSet, basename="deidentification")
router.register("shares", views.ShareLinkViewSet, basename="share")

# The tag route answers its common case without DRF's dispatch (lean.py), in front of the router's own route.
(_tag_route,) = [route for route in router.urls if isinstance(route, URLPattern) and route.name == "instance-tag"]

urlpatterns = [
    re_path(_tag_route.pattern.regex.pattern, lean.instance_tag(_tag_route.callback), name="instance-tag"),
    path("auth/token/", views.TokenView.as_view(), name="auth-token"),
    path("me/", views.MeView.as_view(), name="me"),
    path("tags/lookup/", tags.TagLookupView.as_view(), name="tag-lookup"),
    path("", include(router.urls)),
]
