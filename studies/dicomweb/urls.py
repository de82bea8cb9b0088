"""DICOMweb routes (PS3.18 Table 8.1.2-1 / 10.4.1-1 / 10.6.1-2), mounted at /dicomweb/."""

from django.urls import path, register_converter

from . import views


class UidConverter:
    regex = r"[0-9.]{1,64}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UidConverter, "uid")

STUDY = "studies/<uid:study>"
SERIES = f"{STUDY}/series/<uid:series>"
INSTANCE = f"{SERIES}/instances/<uid:instance>"
FRAMES = f"{INSTANCE}/frames/<str:frames>"

urlpatterns = [
    path("studies", views.StudiesView.as_view(), name="dicomweb-studies"),
    path("series", views.SeriesSearchView.as_view(), name="dicomweb-series-search"),
    path("instances", views.InstanceSearchView.as_view(), name="dicomweb-instance-search"),
    path(STUDY, views.RetrieveView.as_view(), name="dicomweb-study"),
    path(f"{STUDY}/metadata", views.MetadataView.as_view(), name="dicomweb-study-metadata"),
    path(f"{STUDY}/rendered", views.RenderedView.as_view(), name="dicomweb-study-rendered"),
    path(f"{STUDY}/thumbnail", views.ThumbnailView.as_view(), name="dicomweb-study-thumbnail"),
    path(f"{STUDY}/series", views.SeriesSearchView.as_view(), name="dicomweb-study-series-search"),
    path(f"{STUDY}/labels", views.StudyLabelsView.as_view(), name="dicomweb-study-labels"),
    path(f"{STUDY}/labels/<str:name>", views.StudyLabelView.as_view(), name="dicomweb-study-label"),
    path(f"{STUDY}/instances", views.InstanceSearchView.as_view(), name="dicomweb-study-instance-search"),
    path(SERIES, views.RetrieveView.as_view(http_method_names=["get", "head", "options"]), name="dicomweb-series"),
    path(f"{SERIES}/metadata", views.MetadataView.as_view(), name="dicomweb-series-metadata"),
    path(f"{SERIES}/rendered", views.RenderedView.as_view(), name="dicomweb-series-rendered"),
    path(f"{SERIES}/thumbnail", views.ThumbnailView.as_view(), name="dicomweb-series-thumbnail"),
    path(f"{SERIES}/instances", views.InstanceSearchView.as_view(), name="dicomweb-series-instance-search"),
    path(INSTANCE, views.RetrieveView.as_view(http_method_names=["get", "head", "options"]), name="dicomweb-instance"),
    path(f"{INSTANCE}/metadata", views.MetadataView.as_view(), name="dicomweb-instance-metadata"),
    path(f"{INSTANCE}/rendered", views.RenderedView.as_view(), name="dicomweb-instance-rendered"),
    path(f"{INSTANCE}/thumbnail", views.ThumbnailView.as_view(), name="dicomweb-instance-thumbnail"),
    path(f"{INSTANCE}/bulkdata/<path:path>", views.BulkDataView.as_view(), name="dicomweb-instance-bulkdata"),
    path(FRAMES, views.FramesView.as_view(), name="dicomweb-frames"),
    path(f"{FRAMES}/rendered", views.RenderedView.as_view(), name="dicomweb-frames-rendered"),
    path(f"{FRAMES}/thumbnail", views.ThumbnailView.as_view(), name="dicomweb-frames-thumbnail"),
]
