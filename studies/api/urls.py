"""API routes under /api/."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import tags, views

router = DefaultRouter()
# No ".json" suffix routes: a tag expression may contain dots.
router.include_format_suffixes = False
router.register("instances", views.InstanceViewSet, basename="instance")
router.register("studies", views.StudyViewSet, basename="study")
router.register("series", views.SeriesViewSet, basename="series")
router.register("sends", views.SendViewSet, basename="send")
router.register("deidentifications", views.DeidentificationViewSet, basename="deidentification")

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="auth-token"),
    path("tags/lookup/", tags.TagLookupView.as_view(), name="tag-lookup"),
    path("", include(router.urls)),
]
