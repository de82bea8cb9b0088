"""Every error under /api/ and /dicomweb/ is the service's JSON shape, in DEBUG (make run) as in production:
unknown routes, malformed ids, unsupported methods, and an Accept an image route cannot satisfy."""

from __future__ import annotations

import pytest

from .conftest import assert_error

pytestmark = pytest.mark.django_db

UNROUTED = ["/api/nothing/", "/api/instances/not-a-uuid/", "/dicomweb/foo", "/dicomweb/studies/1.2%203"]


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
@pytest.mark.parametrize("path", UNROUTED)
def test_an_unrouted_api_path_is_a_json_404(api, settings, debug, path):
    settings.DEBUG = debug
    body = assert_error(api.get(path), 404, "not_found")
    assert body == {"error": "no such endpoint", "code": "not_found"}


def test_pages_outside_the_api_keep_djangos_html(client, settings):
    settings.DEBUG = True
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_an_unsupported_method_is_a_json_405(api, uploaded, settings, debug):
    settings.DEBUG = debug
    assert_error(api.put(f"/api/instances/{uploaded['id']}/tags/"), 405, "method_not_allowed")


@pytest.mark.parametrize("route", ["image", "thumbnail"])
@pytest.mark.parametrize("accept", ["image/gif", "text/html"])
def test_an_image_accept_the_route_cannot_satisfy_is_a_406_naming_the_formats(api, uploaded, route, accept):
    body = assert_error(api.get(f"/api/instances/{uploaded['id']}/{route}/", HTTP_ACCEPT=accept), 406, "not_acceptable")
    assert body["error"].startswith("images are image/png, image/jpeg, image/webp")
    ok = api.get(f"/api/instances/{uploaded['id']}/{route}/", HTTP_ACCEPT=f"{accept}, */*;q=0.1")
    assert ok.status_code == 200 and ok["Content-Type"] == {"image": "image/png", "thumbnail": "image/jpeg"}[route]
