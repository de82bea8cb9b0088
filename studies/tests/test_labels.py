"""Labels on studies and series: set over the API, the DICOMweb-style route and the admin; filtered in lists,
QIDO-RS (`label=`) and the admin; each user's own."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from studies.models import Instance, Label

from .conftest import assert_error, client_for, dicom_bytes, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def two(api):
    """Two of the owner's studies (one instance each): (instance, instance)."""
    return [Instance.objects.get(pk=upload(api, dicom_bytes()).json()["id"]) for _ in range(2)]


def test_put_get_delete_one_label_and_replace_them_all(api, two):
    study = two[0].study_id
    assert api.put(f"/api/studies/{study}/labels/teaching/").status_code == 201
    assert api.put(f"/api/studies/{study}/labels/teaching/").status_code == 200  # already there
    assert api.put(f"/api/studies/{study}/labels/trial 7/").json() == {"labels": ["teaching", "trial 7"]}
    assert api.get(f"/api/studies/{study}/labels/").json() == {"labels": ["teaching", "trial 7"]}
    assert api.delete(f"/api/studies/{study}/labels/teaching/").status_code == 204
    assert_error(api.delete(f"/api/studies/{study}/labels/teaching/"), 404, "not_found")
    assert api.put(f"/api/studies/{study}/labels/", {"labels": ["a", "b", "a"]}, format="json").json() == {"labels": ["a", "b"]}


@pytest.mark.parametrize(
    "body, code",
    [
        ({"labels": [""]}, "invalid"),  # the body's own checks (DRF): blank, too long, not a list, missing
        ({"labels": ["x" * 65]}, "invalid"),
        ({"labels": "a"}, "invalid"),
        ({}, "invalid"),
        ({"labels": ["tab\there"]}, "invalid_parameter"),  # the label's own rules (labels.clean)
        ({"labels": ["a/b"]}, "invalid_parameter"),
    ],
)
def test_bad_labels_are_400(api, two, body, code):
    assert_error(api.put(f"/api/studies/{two[0].study_id}/labels/", body, format="json"), 400, code)
    assert not Label.objects.exists()


def test_list_and_qido_filter_by_label_at_every_level(api, two):
    labelled, other = two
    api.put(f"/api/studies/{labelled.study_id}/labels/teaching/")
    api.put(f"/api/series/{other.series_id}/labels/review/")
    assert [s["id"] for s in api.get("/api/studies/?label=teaching").json()["results"]] == [str(labelled.study_id)]
    assert [s["id"] for s in api.get("/api/series/?label=teaching").json()["results"]] == [str(labelled.series_id)]  # via its study
    assert [s["id"] for s in api.get("/api/series/?label=review").json()["results"]] == [str(other.series_id)]
    assert api.get("/api/studies/?label=teaching&label=review").json()["results"] == []  # every label must match
    qido = api.get("/dicomweb/studies?label=teaching", HTTP_ACCEPT="application/dicom+json").json()
    assert [s["0020000D"]["Value"][0] for s in qido] == [labelled.study.study_instance_uid]
    instances = api.get("/dicomweb/instances?label=review", HTTP_ACCEPT="application/dicom+json").json()
    assert [i["00080018"]["Value"][0] for i in instances] == [other.sop_instance_uid]


def test_labels_are_each_users_own(api, two, viewer, other):
    study = two[0].study_id
    api.put(f"/api/studies/{study}/labels/mine/")
    looker = client_for(viewer)  # view_all: sees the study, not the owner's labels
    assert looker.get(f"/api/studies/{study}/labels/").json() == {"labels": []}
    looker.put(f"/api/studies/{study}/labels/theirs/")
    assert api.get(f"/api/studies/{study}/labels/").json() == {"labels": ["mine"]}
    assert looker.get("/api/studies/?label=mine").json()["results"] == []
    assert_error(client_for(other).put(f"/api/studies/{study}/labels/x/"), 404, "not_found")  # cannot see it


def test_the_dicomweb_style_route_by_study_uid(api, two):
    uid = two[0].study.study_instance_uid
    assert api.put(f"/dicomweb/studies/{uid}/labels/teaching").status_code == 201
    assert api.get(f"/dicomweb/studies/{uid}/labels").json() == {"labels": ["teaching"]}
    assert api.delete(f"/dicomweb/studies/{uid}/labels/teaching").status_code == 204
    assert api.delete(f"/dicomweb/studies/{uid}/labels/teaching").status_code == 404
    assert api.put("/dicomweb/studies/1.2.3/labels/x").status_code == 404


def test_admin_actions_column_and_filter(two, owner):
    owner.is_staff = True
    owner.save()
    browser = Client()
    browser.force_login(owner)
    changelist = reverse("admin:studies_study_changelist")
    selected = [str(two[0].study_id)]
    response = browser.post(changelist, {"action": "add_label", "label": "from the admin", "_selected_action": selected}, follow=True)
    assert "&#x27;from the admin&#x27; on 1 of 1 selected" in response.content.decode()
    assert list(Label.objects.values_list("owner", "study", "name")) == [(owner.pk, two[0].study_id, "from the admin")]
    listing = browser.get(changelist + "?label=from+the+admin").content.decode()
    assert listing.count('<td class="field-label_list">from the admin</td>') == 1
    assert str(two[1].study_id) not in listing
    refused = browser.post(changelist, {"action": "add_label", "label": "", "_selected_action": selected}, follow=True)
    assert "No label changed" in refused.content.decode()
    browser.post(changelist, {"action": "remove_label", "label": "from the admin", "_selected_action": selected})
    assert not Label.objects.exists()
    series_list = browser.post(
        reverse("admin:studies_series_changelist"), {"action": "add_label", "label": "s", "_selected_action": [str(two[1].series_id)]}
    )
    assert series_list.status_code == 302 and Label.objects.get().series_id == two[1].series_id
