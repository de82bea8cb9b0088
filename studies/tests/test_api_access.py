"""Who may do what: the owner / other / staff / view_all / superuser / anonymous matrix on every
endpoint, the ways to authenticate, the public routes, and that no route serves stored media."""

from __future__ import annotations

import base64
import re

import pytest
from rest_framework.test import APIClient

from studies.models import Instance

from .conftest import CT_SMALL, client_for, dicom_bytes, drain, stored_files, upload

ROLES = ["owner", "other", "staff", "viewer", "superuser", "anonymous"]
SEES_EVERYTHING = {"owner", "viewer", "superuser"}  # may read the owner's upload
DOES_NOT_SEE_IT = {"other", "staff"}  # authenticated, but it is not theirs

DETAIL_ROUTES = [
    "/api/instances/{instance}/",
    "/api/instances/{instance}/file/",
    "/api/instances/{instance}/tags/",
    "/api/instances/{instance}/tags/PatientName/",
    "/api/instances/{instance}/tags/?tag=PatientName",
    "/api/instances/{instance}/image/",
    "/api/studies/{study}/",
    "/api/series/{series}/",
]

LIST_ROUTES = {
    # route: the field of the instance upload response naming the listed object
    "/api/instances/": "id",
    "/api/studies/": "study",
    "/api/series/": "series",
}

SCHEMA_PATHS = [
    "/api/instances/",
    "/api/instances/{id}/",
    "/api/instances/{id}/file/",
    "/api/instances/{id}/tags/",
    "/api/instances/{id}/tags/{expr}/",
    "/api/instances/{id}/image/",
    "/api/studies/",
    "/api/studies/{id}/",
    "/api/series/",
    "/api/series/{id}/",
    "/api/auth/token/",
]


class Users:
    """The user of each role, created only when a test asks for it (anonymous is None)."""

    def __init__(self, request) -> None:
        self._request = request

    def __getitem__(self, role: str):
        return None if role == "anonymous" else self._request.getfixturevalue(role)


@pytest.fixture
def users(request) -> Users:
    return Users(request)


def client_as(users: Users, role: str) -> APIClient:
    return client_for(users[role])


def fill(route: str, uploaded: dict) -> str:
    return route.format(instance=uploaded["id"], study=uploaded["study"], series=uploaded["series"])


def assert_error_shape(response, status: int, code: str | None = None) -> dict:
    """A failure answered with the API's one error shape: JSON with a sentence and a code."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("code"), str) and body["code"]
    assert "detail" not in body  # DRF's default shape must not leak through
    if code is not None:
        assert body["code"] == code
    return body


def assert_not_authenticated(response) -> None:
    body = assert_error_shape(response, 401, "not_authenticated")
    assert set(body) == {"error", "code"}
    assert response["WWW-Authenticate"] == "Token"


def assert_not_found(response) -> None:
    body = assert_error_shape(response, 404, "not_found")
    assert set(body) == {"error", "code"}


@pytest.fixture
def catalogue(uploaded, other, staff) -> dict:
    """The owner's CT_small plus one upload each by `other` and `staff` (their own files)."""
    other_upload = upload(client_for(other), dicom_bytes(PatientName="Other^Person"), "o.dcm")
    staff_upload = upload(client_for(staff), dicom_bytes(PatientName="Staff^Person"), "s.dcm")
    assert other_upload.status_code == 201 and staff_upload.status_code == 201
    return {"owner": uploaded, "other": other_upload.json(), "staff": staff_upload.json()}


# --- the matrix ---------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("route", DETAIL_ROUTES)
@pytest.mark.parametrize("role", ROLES)
def test_detail_routes_answer_owner_and_viewers_hide_from_others_and_refuse_anonymous(users, uploaded, role, route):
    response = client_as(users, role).get(fill(route, uploaded))

    if role in SEES_EVERYTHING:
        assert response.status_code == 200, response.content[:500]
        if route.endswith("/file/"):
            assert response["Content-Type"] == "application/dicom"
            drain(response)
        elif route.endswith("/image/"):
            assert response["Content-Type"] == "image/png"
        elif route.startswith("/api/instances/{instance}/tags"):
            body = response.json()
            name = body["00100010"]["Value"][0]["Alphabetic"] if route.endswith("/tags/") else body["value"]
            assert name == "CompressedSamples^CT1"
        else:
            field = {"instances": "id", "studies": "study", "series": "series"}[route.split("/")[2]]
            assert response.json()["id"] == uploaded[field]
    elif role in DOES_NOT_SEE_IT:
        assert_not_found(response)  # 404, never 403: existence is not revealed
    else:
        assert_not_authenticated(response)


@pytest.mark.django_db
@pytest.mark.parametrize("route", list(LIST_ROUTES))
@pytest.mark.parametrize("role", ROLES)
def test_lists_show_each_user_their_own_and_view_all_users_everything(users, catalogue, role, route):
    response = client_as(users, role).get(route)

    if role == "anonymous":
        assert_not_authenticated(response)
        return
    assert response.status_code == 200
    listed = {row["id"] for row in response.json()["results"]}
    field = LIST_ROUTES[route]
    everything = {catalogue[who][field] for who in ("owner", "other", "staff")}
    expected = everything if role in {"viewer", "superuser"} else {catalogue[role][field]}
    assert listed == expected
    assert response.json()["count"] == len(expected)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ROLES)
def test_delete_succeeds_for_owner_and_superuser_and_leaves_row_and_file_for_everyone_else(
    users, uploaded, media_root, role
):
    instance_id = uploaded["id"]
    stored = media_root / uploaded["storage"]["key"]
    assert stored.is_file()

    response = client_as(users, role).delete(f"/api/instances/{instance_id}/")

    if role in {"owner", "superuser"}:
        assert response.status_code == 204
        assert not Instance.objects.filter(pk=instance_id).exists()
        assert not stored.exists()
        assert client_as(users, "owner").get(f"/api/instances/{instance_id}/").status_code == 404
        return
    if role == "viewer":
        # view_all lets a user see everything, not change it; they know it exists, so 403.
        assert_error_shape(response, 403, "permission_denied")
    elif role in DOES_NOT_SEE_IT:
        assert_not_found(response)
    else:
        assert_not_authenticated(response)
    assert Instance.objects.filter(pk=instance_id).exists()
    assert stored.read_bytes()[128:] == CT_SMALL.read_bytes()[128:]
    assert client_as(users, "owner").get(f"/api/instances/{instance_id}/").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_upload_of_the_owners_bytes_is_a_duplicate_only_for_the_owner(users, uploaded, media_root, role):
    """Every authenticated user may upload; deduplication is per owner, so nobody gets the owner's row."""
    files_before = stored_files(media_root)

    response = upload(client_as(users, role), CT_SMALL.read_bytes(), "CT_small.dcm")

    if role == "anonymous":
        assert_not_authenticated(response)
        assert stored_files(media_root) == files_before
        assert Instance.objects.count() == 1
    elif role == "owner":
        assert response.status_code == 200
        assert response.json()["duplicate"] is True
        assert response.json()["id"] == uploaded["id"]
        assert stored_files(media_root) == files_before
    else:
        assert response.status_code == 201, response.content[:500]
        body = response.json()
        assert body["duplicate"] is False
        assert body["owner"] == users[role].username
        assert body["id"] != uploaded["id"] and body["study"] != uploaded["study"]
        assert len(stored_files(media_root)) == len(files_before) + 1


@pytest.mark.django_db
def test_staff_flag_alone_does_not_reveal_other_owners_uploads(staff, uploaded):
    client = client_for(staff)
    assert client.get("/api/instances/").json()["count"] == 0
    assert client.get(f"/api/instances/{uploaded['id']}/").status_code == 404


# --- error shape ----------------------------------------------------------------------


@pytest.mark.django_db
def test_every_failure_is_json_with_error_and_code(api, uploaded, other):
    instance = f"/api/instances/{uploaded['id']}/"
    bad_token = APIClient()
    bad_token.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    failures = [
        (APIClient().get("/api/instances/"), 401, "not_authenticated"),
        (bad_token.get("/api/instances/"), 401, None),
        (client_for(other).get(instance), 404, "not_found"),
        (client_for(other).get(instance + "file/"), 404, "not_found"),
        (client_for(other).get(instance + "image/"), 404, "not_found"),
        (client_for(other).delete(instance), 404, "not_found"),
        (api.get(instance + "tags/NoSuchKeyword/"), 400, "invalid_tag_expression"),
        (api.get(instance + "tags/ProtocolName/"), 404, "element_not_found"),
        (api.get(instance + "image/?frame=7"), 400, None),
        (api.patch(instance, {}, format="json"), 405, "method_not_allowed"),
        (api.get("/api/instances/?page=99"), 404, None),
        (api.get("/api/no-such-endpoint/"), 404, "not_found"),
        (api.get("/api/instances/not-a-uuid/"), 404, "not_found"),
        (api.post("/api/instances/", {}, format="multipart"), 400, "missing_file"),
        (api.post("/api/instances/", b"hello", content_type="text/plain"), 415, None),
        (api.post("/api/instances/", b"not dicom at all" * 20, content_type="application/dicom"), 400, "invalid_dicom"),
        (APIClient().post("/api/auth/token/", {"username": "owner", "password": "wrong"}), 400, None),
    ]
    for response, status, code in failures:
        assert_error_shape(response, status, code)


@pytest.mark.django_db
def test_invalid_token_is_refused_with_a_challenge(uploaded):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    response = client.get(f"/api/instances/{uploaded['id']}/")
    assert_error_shape(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"] == "Token"


# --- ways to authenticate ---------------------------------------------------------------


@pytest.mark.django_db
def test_session_login_lists_the_users_uploads(uploaded):
    client = APIClient()
    assert client.login(username="owner", password="pw-owner")
    response = client.get("/api/instances/")
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [uploaded["id"]]


@pytest.mark.django_db
def test_basic_auth_lists_the_users_uploads_and_refuses_a_wrong_password(uploaded):
    good = base64.b64encode(b"owner:pw-owner").decode()
    bad = base64.b64encode(b"owner:nope").decode()

    response = APIClient().get("/api/instances/", HTTP_AUTHORIZATION=f"Basic {good}")
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [uploaded["id"]]

    assert_error_shape(APIClient().get("/api/instances/", HTTP_AUTHORIZATION=f"Basic {bad}"), 401)


@pytest.mark.django_db
def test_token_endpoint_issues_a_token_that_authenticates(uploaded):
    response = APIClient().post("/api/auth/token/", {"username": "owner", "password": "pw-owner"}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert re.fullmatch(r"[0-9a-f]{40}", token)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    listed = client.get("/api/instances/")
    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["results"]] == [uploaded["id"]]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "credentials",
    [{"username": "owner", "password": "wrong"}, {"username": "nobody", "password": "pw-owner"}, {"username": "owner"}],
    ids=["wrong-password", "unknown-user", "no-password"],
)
def test_token_endpoint_refuses_bad_credentials_with_error_shape(owner, credentials):
    response = APIClient().post("/api/auth/token/", credentials, format="json")
    assert_error_shape(response, 400)
    assert "token" not in response.json()


# --- public routes --------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_needs_no_login():
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["/api/schema/", "/api/docs/", "/api/redoc/"])
def test_api_documentation_needs_no_login(route):
    assert APIClient().get(route).status_code == 200


@pytest.mark.django_db
def test_swagger_ui_loads_its_assets_locally_not_from_a_cdn():
    client = APIClient()
    html = client.get("/api/docs/").content.decode()
    for cdn in ("cdn.", "unpkg", "jsdelivr"):
        assert cdn not in html
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/static/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        drain(served)


@pytest.mark.django_db
def test_redoc_loads_its_bundle_locally():
    client = APIClient()
    html = client.get("/api/redoc/").content.decode()
    bundle = re.search(r'<script src="([^"]+redoc[^"]*\.js)"', html).group(1)
    assert bundle.startswith("/static/")
    served = client.get(bundle)
    assert served.status_code == 200
    drain(served)


@pytest.mark.django_db
def test_redoc_page_makes_no_third_party_requests():
    html = APIClient().get("/api/redoc/").content.decode()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)


@pytest.mark.django_db
def test_schema_documents_every_endpoint():
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    missing = [path for path in SCHEMA_PATHS if path not in paths]
    assert not missing
    assert {"get", "delete"} <= set(paths["/api/instances/{id}/"])
    assert {"get", "post"} <= set(paths["/api/instances/"])


# --- stored media is never public ---------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", ["/media/", "/_private-media-not-served/", "/static/", "/"])
@pytest.mark.parametrize("logged_in", [False, True], ids=["anonymous", "owner-session"])
def test_no_public_route_serves_stored_files(uploaded, media_root, prefix, logged_in):
    key = uploaded["storage"]["key"]
    assert (media_root / key).is_file()
    client = APIClient()
    if logged_in:
        client.login(username="owner", password="pw-owner")
    response = client.get(prefix + key)
    assert response.status_code == 404
    drain(response)
