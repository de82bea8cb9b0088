"""The token→user cache (studies/api/authentication.py): it saves the lookup, and never outlives a
revocation in the process that made it."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from studies.api.authentication import CachedTokenAuthentication, cache_key

from .conftest import client_for, dicom_bytes

pytestmark = pytest.mark.django_db


def token_queries(client, path: str = "/api/instances/") -> tuple[int, int]:
    """(status, number of queries that read the token table) of one GET."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    return response.status_code, sum('"authtoken_token"' in q["sql"] for q in queries.captured_queries)


def test_the_second_request_does_not_look_the_token_up_again(owner):
    client = client_for(owner)
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 0)
    assert token_queries(client) == (200, 0)


def test_a_setting_of_zero_looks_the_token_up_every_time(owner, settings):
    settings.DICOM_AUTH_CACHE_SECONDS = 0
    client = client_for(owner)
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 1)


def test_the_cache_holds_neither_the_token_nor_the_password_hash(owner):
    client = client_for(owner)
    key = Token.objects.get(user=owner).key
    client.get("/api/instances/")
    entry = cache.get(cache_key(key))
    assert entry is not None and owner.pk in entry and "owner" in entry
    assert key not in cache_key(key)
    assert not any(isinstance(value, str) and value.startswith(("pbkdf2", "md5", "argon2", "bcrypt")) for value in entry)
    assert owner.password not in entry


def test_a_deleted_token_is_refused_at_once(owner):
    client = client_for(owner)
    assert token_queries(client) == (200, 1)
    Token.objects.filter(user=owner).get().delete()
    assert client.get("/api/instances/").status_code == 401


def test_a_regenerated_token_replaces_the_old_one_at_once(owner):
    old = client_for(owner)
    assert old.get("/api/instances/").status_code == 200
    Token.objects.filter(user=owner).delete()
    new = client_for(owner)
    assert new.get("/api/instances/").status_code == 200
    assert old.get("/api/instances/").status_code == 401


def test_a_deactivated_user_is_refused_at_once(owner):
    client = client_for(owner)
    assert client.get("/api/instances/").status_code == 200
    owner.is_active = False
    owner.save()
    assert client.get("/api/instances/").status_code == 401


def test_a_deleted_user_is_refused_at_once(owner):
    client = client_for(owner)
    assert client.get("/api/instances/").status_code == 200
    owner.delete()
    assert client.get("/api/instances/").status_code == 401


def test_a_promotion_to_superuser_takes_effect_at_once(owner, other):
    theirs = client_for(other).post("/api/instances/", data=dicom_bytes(), content_type="application/dicom").json()["id"]
    client = client_for(owner)
    assert client.get(f"/api/instances/{theirs}/").status_code == 404
    owner.is_superuser = True
    owner.save()
    assert client.get(f"/api/instances/{theirs}/").status_code == 200


def test_a_cached_user_is_a_real_user_whose_other_fields_still_load(owner):
    owner.email = "owner@example.org"
    owner.save()
    client = client_for(owner)
    client.get("/api/instances/")
    user, _ = CachedTokenAuthentication().authenticate_credentials(Token.objects.get(user=owner).key)
    assert user.pk == owner.pk and user.get_username() == "owner" and user.is_authenticated
    assert user.email == "owner@example.org"  # deferred: read from the database on access
    assert user.check_password("pw-owner")



def permission_queries(client, path: str = "/api/instances/") -> tuple[int, int, int]:
    """(status, rows listed, number of permission queries) of one GET of the instance list."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    return response.status_code, response.json().get("count", 0), sum('"auth_permission"' in q["sql"] for q in queries.captured_queries)


@pytest.fixture
def others_instance(other):
    response = client_for(other).post("/api/instances/", dicom_bytes(), content_type="application/dicom")
    assert response.status_code == 201


def test_the_view_all_permission_is_cached_with_the_token_and_costs_no_query(owner, others_instance):
    client = client_for(owner)
    assert permission_queries(client) == (200, 0, 2)  # the first request: the user's and the groups' permissions
    assert permission_queries(client) == (200, 0, 0)
    assert permission_queries(client) == (200, 0, 0)


def test_granting_or_revoking_view_all_directly_takes_effect_at_once(owner, others_instance):
    from django.contrib.auth.models import Permission

    view_all = Permission.objects.get(codename="view_all", content_type__app_label="studies")
    client = client_for(owner)
    assert permission_queries(client)[:2] == (200, 0)
    owner.user_permissions.add(view_all)
    assert permission_queries(client)[:2] == (200, 1)
    assert permission_queries(client) == (200, 1, 0)
    owner.user_permissions.remove(view_all)
    assert permission_queries(client)[:2] == (200, 0)
    view_all.user_set.add(owner)  # the reverse side of the same relation
    assert permission_queries(client)[:2] == (200, 1)
    view_all.user_set.clear()
    assert permission_queries(client)[:2] == (200, 0)


def test_view_all_through_a_group_takes_effect_at_once_both_ways(owner, others_instance):
    from django.contrib.auth.models import Group, Permission

    view_all = Permission.objects.get(codename="view_all", content_type__app_label="studies")
    readers = Group.objects.create(name="readers")
    client = client_for(owner)
    owner.groups.add(readers)
    assert permission_queries(client)[:2] == (200, 0)
    readers.permissions.add(view_all)  # the group gains it: its members' entries go
    assert permission_queries(client)[:2] == (200, 1)
    view_all.group_set.remove(readers)  # taken back from the permission's side
    assert permission_queries(client)[:2] == (200, 0)
    readers.permissions.add(view_all)
    assert permission_queries(client)[:2] == (200, 1)
    readers.user_set.remove(owner)  # the member leaves the group
    assert permission_queries(client)[:2] == (200, 0)
