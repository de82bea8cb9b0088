"""The admin, server side: per-user scope with only is_staff, constant query counts, the upload
page through the ingest service, deletes through the delete service, the instance page."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from pydicom.data import get_testdata_file

from studies.models import Instance, Series, Study

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, dicom_bytes, stored_files

LIST_URLS = {
    "instance": reverse("admin:studies_instance_changelist"),
    "study": reverse("admin:studies_study_changelist"),
    "series": reverse("admin:studies_series_changelist"),
}
UPLOAD_URL = reverse("admin:studies_instance_upload")


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def named(data: bytes, name: str) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def admin_upload(client: Client, *files: tuple[str, bytes]):
    return client.post(UPLOAD_URL, {"files": [named(data, name) for name, data in files]})


def results(response) -> list[tuple[str, str]]:
    """(filename, status) per row of the upload results table."""
    html = response.content.decode()
    rows = re.findall(r'<tr class="result-(\w+)">\s*<td>(.*?)</td>', html)
    return [(name, status) for status, name in rows]


def instance_ids(response) -> set[str]:
    html = response.content.decode()
    return set(re.findall(r"/admin/studies/instance/([0-9a-f-]{36})/change/", html))


@pytest.fixture
def staff_a(make_user):
    return make_user("alice", staff=True)


@pytest.fixture
def staff_b(make_user):
    return make_user("bob", staff=True)


def own_instance(client: Client, source=CT_SMALL, **attributes) -> Instance:
    before = set(Instance.objects.values_list("id", flat=True))
    response = admin_upload(client, ("scan.dcm", dicom_bytes(source, **attributes)))
    assert results(response) == [("scan.dcm", "created")], response.content.decode()[-2000:]
    (new,) = set(Instance.objects.values_list("id", flat=True)) - before
    return Instance.objects.get(pk=new)


# --- access with nothing but is_staff -----------------------------------------------------


def test_staff_without_permissions_sees_the_catalogue_in_the_admin_index(staff_a):
    response = browser(staff_a).get(reverse("admin:index"))
    assert response.status_code == 200
    for url in LIST_URLS.values():
        assert url in response.content.decode()


@pytest.mark.parametrize("route", sorted(LIST_URLS))
def test_staff_without_permissions_can_open_every_list(staff_a, route):
    assert browser(staff_a).get(LIST_URLS[route]).status_code == 200


def test_non_staff_users_are_sent_to_the_login_page(make_user):
    user = make_user("plain")
    response = browser(user).get(LIST_URLS["instance"])
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert browser(user).get(UPLOAD_URL).status_code == 302


def test_staff_see_only_their_own_uploads_in_lists_search_and_detail(staff_a, staff_b):
    alice, bob = browser(staff_a), browser(staff_b)
    mine = own_instance(alice, PatientName="Alice^Patient")
    theirs = own_instance(bob, PatientName="Bob^Patient")

    assert instance_ids(alice.get(LIST_URLS["instance"])) == {str(mine.pk)}
    assert instance_ids(bob.get(LIST_URLS["instance"])) == {str(theirs.pk)}
    assert instance_ids(alice.get(LIST_URLS["instance"], {"q": "Bob"})) == set()
    assert instance_ids(alice.get(LIST_URLS["instance"], {"q": theirs.sop_instance_uid})) == set()
    # Another user's object: the admin answers "does not exist" (a redirect), never its content.
    response = alice.get(reverse("admin:studies_instance_change", args=[theirs.pk]))
    assert response.status_code == 302
    assert "Bob^Patient" not in alice.get(LIST_URLS["study"]).content.decode()
    assert "Bob^Patient" not in alice.get(LIST_URLS["series"]).content.decode()


def test_view_all_staff_see_everyone_and_can_filter_by_owner_but_not_delete(make_user, staff_a, staff_b):
    viewer = make_user("viewer", staff=True, view_all=True)
    mine = own_instance(browser(staff_a))
    theirs = own_instance(browser(staff_b))
    client = browser(viewer)
    page = client.get(LIST_URLS["instance"])
    assert instance_ids(page) == {str(mine.pk), str(theirs.pk)}
    assert "owner__id__exact" in page.content.decode()  # the owner filter is offered
    assert instance_ids(client.get(LIST_URLS["instance"], {"owner__id__exact": staff_a.pk})) == {str(mine.pk)}

    response = client.post(reverse("admin:studies_instance_delete", args=[mine.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert Instance.objects.filter(pk=mine.pk).exists()


def test_staff_without_view_all_get_no_owner_filter(staff_a):
    own_instance(browser(staff_a))
    assert "owner__id__exact" not in browser(staff_a).get(LIST_URLS["instance"]).content.decode()


# --- query counts do not grow with rows ---------------------------------------------------


def _catalogue(owner, instances: int) -> None:
    """`instances` rows in 5 studies x series, sharing one stored file (rows only, as a list page sees them)."""
    studies = [Study.objects.create(owner=owner, study_instance_uid=f"1.2.3.{i}", patient_name=f"P^{i}") for i in range(5)]
    series = [Series.objects.create(owner=owner, study=s, series_instance_uid=f"1.2.4.{i}", modality="CT") for i, s in enumerate(studies)]
    Instance.objects.bulk_create(
        Instance(
            owner=owner,
            study=studies[i % 5],
            series=series[i % 5],
            file="dicom/00/00/shared.dcm",
            sha256=f"{i:064x}",
            size=1000,
            sop_instance_uid=f"1.2.5.{i}",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT",
            has_pixel_data=True,
            patient_name=f"P^{i % 5}",
        )
        for i in range(instances)
    )


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


@pytest.mark.parametrize("route", sorted(LIST_URLS))
def test_list_page_query_count_is_the_same_for_1_and_50_rows(make_user, route):
    small, large = make_user("small", staff=True), make_user("large", staff=True)
    _catalogue(small, 1)
    _catalogue(large, 50)
    assert _queries(browser(small), LIST_URLS[route]) == _queries(browser(large), LIST_URLS[route])


def test_instance_list_shows_lazy_thumbnails_and_never_opens_the_files(make_user, media_root):
    user = make_user("lister", staff=True)
    _catalogue(user, 3)  # the shared stored file does not exist: a page that read it would fail
    html = browser(user).get(LIST_URLS["instance"]).content.decode()
    thumbs = re.findall(r'<img class="dicom-thumb" src="(/api/instances/[0-9a-f-]{36}/thumbnail/)" loading="lazy"', html)
    assert len(thumbs) == 3


# --- upload page ------------------------------------------------------------------------------


def test_upload_page_reports_each_file_and_stores_through_the_ingest_service(staff_a, media_root):
    client = browser(staff_a)
    ct = dicom_bytes(CT_SMALL)
    response = admin_upload(
        client,
        ("ct.dcm", ct),
        ("mr.dcm", dicom_bytes(PYDICOM_TEST_FILES / "MR_small.dcm")),
        ("notes.txt", b"not a dicom file"),
        ("empty.dcm", b""),
    )
    assert response.status_code == 200
    assert results(response) == [("ct.dcm", "created"), ("mr.dcm", "created"), ("notes.txt", "refused"), ("empty.dcm", "refused")]
    html = response.content.decode()
    assert "2 created, 0 duplicate, 0 conflict, 2 refused" in html
    assert "the file is empty" in html
    assert Instance.objects.filter(owner=staff_a).count() == 2
    assert len(stored_files(media_root)) == 2

    again = admin_upload(client, ("ct-again.dcm", ct))
    assert results(again) == [("ct-again.dcm", "duplicate")]
    import pydicom

    changed = pydicom.dcmread(io.BytesIO(ct))
    changed.PatientName = "Changed^Name"
    buffer = io.BytesIO()
    changed.save_as(buffer)
    conflict = admin_upload(client, ("ct-changed.dcm", buffer.getvalue()))
    assert results(conflict) == [("ct-changed.dcm", "conflict")]
    assert len(stored_files(media_root)) == 2


def test_upload_without_files_says_so(staff_a):
    response = browser(staff_a).post(UPLOAD_URL, {}, follow=True)
    assert response.status_code == 200
    assert "Choose at least one file." in response.content.decode()


def test_the_instance_list_links_to_the_upload_page(staff_a):
    assert UPLOAD_URL in browser(staff_a).get(LIST_URLS["instance"]).content.decode()


# --- instance page -----------------------------------------------------------------------------


def test_instance_page_has_viewer_presets_download_and_tag_browser(staff_a):
    client = browser(staff_a)
    instance = own_instance(client)
    html = client.get(reverse("admin:studies_instance_change", args=[instance.pk])).content.decode()
    assert f'data-image-url="/api/instances/{instance.pk}/image/"' in html
    for preset in ("default", "lung", "bone", "brain", "soft-tissue", "abdomen", "minmax"):
        assert f'data-preset="{preset}"' in html
    assert f'href="/api/instances/{instance.pk}/file/"' in html
    assert 'id="tag-filter"' in html
    assert "<code>(0010,0010)</code>" in html
    assert "pixel data: 128 x 128, 1 frame(s), 16 bits allocated" in html
    assert 'id="frame-slider"' not in html  # single frame: no slider


def test_multi_frame_instance_page_has_a_frame_slider(staff_a):
    client = browser(staff_a)
    instance = own_instance(client, Path(get_testdata_file("emri_small.dcm")))
    html = client.get(reverse("admin:studies_instance_change", args=[instance.pk])).content.decode()
    assert f'id="frame-slider" min="1" max="{instance.number_of_frames}"' in html


def test_header_values_with_markup_are_escaped(staff_a):
    client = browser(staff_a)
    instance = own_instance(client, PatientName="<script>alert(1)</script>", StudyDescription='"><img src=x onerror=alert(2)>')
    for url in (reverse("admin:studies_instance_change", args=[instance.pk]), LIST_URLS["instance"], LIST_URLS["study"]):
        html = client.get(url).content.decode()
        assert "<script>alert(1)</script>" not in html
        assert "<img src=x onerror" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_private_tags_are_marked_and_sequences_nested(staff_a):
    client = browser(staff_a)
    instance = own_instance(client)  # CT_small holds private GE tags and a sequence
    html = client.get(reverse("admin:studies_instance_change", args=[instance.pk])).content.decode()
    assert 'class="tag-row private"' in html
    assert '<details class="sequence">' in html


def test_deleting_from_the_admin_goes_through_the_service(staff_a, media_root, django_capture_on_commit_callbacks):
    client = browser(staff_a)
    instance = own_instance(client)
    assert len(stored_files(media_root)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:studies_instance_delete", args=[instance.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Instance.objects.exists() and not Series.objects.exists() and not Study.objects.exists()
    assert stored_files(media_root) == []


def test_bulk_delete_action_removes_only_own_rows_and_their_files(make_user, staff_a, staff_b, media_root, django_capture_on_commit_callbacks):
    mine = own_instance(browser(staff_a))
    theirs = own_instance(browser(staff_b))
    with django_capture_on_commit_callbacks(execute=True):
        response = browser(staff_a).post(
            LIST_URLS["instance"], {"action": "delete_selected_instances", "_selected_action": [str(mine.pk), str(theirs.pk)]}
        )
    assert response.status_code == 302
    assert list(Instance.objects.values_list("pk", flat=True)) == [theirs.pk]
    assert len(stored_files(media_root)) == 1


@pytest.mark.parametrize("model", ["instance", "study", "series"])
def test_detail_pages_show_the_owner_as_text_not_a_link_staff_cannot_open(staff_a, model):
    client = browser(staff_a)
    instance = own_instance(client)
    pk = {"instance": instance.pk, "study": instance.study_id, "series": instance.series_id}[model]
    html = client.get(reverse(f"admin:studies_{model}_change", args=[pk])).content.decode()
    assert "alice" in html
    assert "/admin/auth/user/" not in html


def test_transfer_syntax_filter_names_the_syntaxes(staff_a):
    client = browser(staff_a)
    own_instance(client)
    html = client.get(LIST_URLS["instance"]).content.decode()
    assert "Explicit VR Little Endian" in html
    assert instance_ids(client.get(LIST_URLS["instance"], {"transfer_syntax_uid": "1.2.840.10008.1.2.4.90"})) == set()


# --- "Open in viewer" ---------------------------------------------------------------------------


def test_open_in_viewer_links_on_the_study_list_and_each_level_page(staff_a):
    client = browser(staff_a)
    instance = own_instance(client)
    study_uid, series_uid, sop_uid = instance.study.study_instance_uid, instance.series.series_instance_uid, instance.sop_instance_uid
    study_link = f'href="/viewer/viewer?StudyInstanceUIDs={study_uid}"'
    series_link = f'href="/viewer/viewer?StudyInstanceUIDs={study_uid}&amp;initialSeriesInstanceUID={series_uid}"'
    instance_link = series_link[:-1] + f'&amp;initialSOPInstanceUID={sop_uid}"'
    pages = {
        reverse("admin:studies_study_changelist"): study_link,
        reverse("admin:studies_study_change", args=[instance.study_id]): study_link,
        reverse("admin:studies_series_change", args=[instance.series_id]): series_link,
        reverse("admin:studies_instance_change", args=[instance.pk]): instance_link,
    }
    for url, link in pages.items():
        html = client.get(url).content.decode()
        assert re.search(rf'<a class="button open-in-viewer" {re.escape(link)} target="_blank" rel="noopener">Open in viewer</a>', html), url
