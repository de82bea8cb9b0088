"""Token authentication that remembers a token's user for a short while.

DRF's TokenAuthentication looks the token and its user up in the database on every request; on
this stack that join is about a fifth of a tag lookup's CPU (python -m bench run http). The answer is
kept in Django's cache (Redis when REDIS_URL is set, else per process) for
DICOM_AUTH_CACHE_SECONDS (0: off), under a digest of the token, never the token itself. Only the
user's id, username and flags are kept: the user comes back as a model instance whose other
fields (the password hash among them) load from the database if anything reads them.

Whether the user holds the view_all permission is kept too. A deleted token, a user saved
(deactivated, demoted) or deleted, or a change of a user's permissions or groups (or of a group's
permissions or members) drops the entry at once in
the shared cache; with the per-process default cache, other worker processes can go on accepting
a revoked token until their entry expires (at most DICOM_AUTH_CACHE_SECONDS).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Q
from django.db.models.signals import m2m_changed, post_delete, post_save
from rest_framework.authentication import BaseAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.permissions import SAFE_METHODS

from ..selectors import VIEW_ALL_PERMISSION

# Enough for permission checks, scoping, audit events and the admin flags; the rest is deferred.
CACHED_USER_FIELDS = ("id", "username", "is_active", "is_staff", "is_superuser")
# Kept with them: whether the user holds studies.view_all (selectors.VIEW_ALL_PERMISSION). Every scoped read asks,
# and without it each request paid two permission queries (the user's, the groups'): 2 of a WADO-RS frame's 4 queries.


def cache_key(token_key: str) -> str:
    return "auth:token:" + hashlib.sha256(token_key.encode()).hexdigest()


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key):
        seconds = settings.DICOM_AUTH_CACHE_SECONDS
        if seconds <= 0:
            return super().authenticate_credentials(key)
        model = get_user_model()
        # from_db() takes a partial row's values in the model's field order; the others are deferred.
        fields = [field.attname for field in model._meta.concrete_fields if field.attname in CACHED_USER_FIELDS]
        entry = cache.get(cache_key(key))
        if entry is not None and len(entry) == len(fields) + 1:
            user = model.from_db(DEFAULT_DB_ALIAS, fields, entry[:-1])
            setattr(user, "view_all_cached", entry[-1])  # selectors.can_view_all reads it instead of two permission queries
            return user, None
        user, auth = super().authenticate_credentials(key)  # AuthenticationFailed for unknown/inactive
        cache.set(cache_key(key), [*(getattr(user, field) for field in fields), user.has_perm(VIEW_ALL_PERMISSION)], seconds)
        return user, auth


def forget_token(sender, instance, **kwargs) -> None:
    cache.delete(cache_key(instance.key))


def forget_user(sender, instance, **kwargs) -> None:
    keys = [cache_key(key) for key in Token.objects.filter(user_id=instance.pk).values_list("key", flat=True)]
    if keys:
        cache.delete_many(keys)


def forget_permission_holders(sender, instance, action: str, reverse: bool, model, pk_set, **kwargs) -> None:
    """A user's permissions or groups, or a group's permissions, changed: drop the affected users' entries (their
    cached view_all flag) at once, as a saved user's are."""
    user_model = get_user_model()
    if action == "pre_clear":  # clear() names no one afterwards: note who is affected while the rows still exist
        instance._auth_cache_affected = list(_affected(user_model, instance, model, None))
        return
    if not action.startswith("post_"):
        return
    users = instance.__dict__.pop("_auth_cache_affected", None) if action == "post_clear" else _affected(user_model, instance, model, pk_set)
    for user in users or ():
        forget_user(user_model, user)


def _affected(user_model, instance, model, pk_set):
    """The users whose view_all may change when this side of a permission/group relation changes."""
    if isinstance(instance, user_model):  # user.user_permissions / user.groups
        return [instance]
    if isinstance(instance, Group):  # group.permissions / group.user_set: its members (and those added or removed)
        return user_model.objects.filter(Q(groups=instance) | Q(pk__in=pk_set or () if model is user_model else ())).distinct()
    if model is user_model:  # permission.user_set: the users added or removed, or all holders (clear)
        return user_model.objects.filter(pk__in=pk_set) if pk_set is not None else user_model.objects.filter(user_permissions=instance)
    # permission.group_set: the members of those groups, or of every group holding it (clear)
    groups = pk_set if pk_set is not None else Group.objects.filter(permissions=instance).values("pk")
    return user_model.objects.filter(groups__in=groups).distinct()


def connect_signals() -> None:
    post_delete.connect(forget_token, sender=Token, dispatch_uid="auth-cache-token-delete")
    post_save.connect(forget_token, sender=Token, dispatch_uid="auth-cache-token-save")
    user_model = get_user_model()
    post_save.connect(forget_user, sender=user_model, dispatch_uid="auth-cache-user-save")
    # pre_delete would still find the tokens; post_delete of each cascaded Token (above) covers a deleted user.
    for through in (user_model.user_permissions.through, user_model.groups.through, Group.permissions.through):
        m2m_changed.connect(forget_permission_holders, sender=through, dispatch_uid=f"auth-cache-m2m-{through._meta.label}")


class ViewerSessionAuthentication(BaseAuthentication):
    """The admin's login session on DICOMweb, for the bundled viewer (/viewer/): safe methods only.

    A browser page of this origin (OHIF) reads with the session cookie. Writes (STOW-RS) never take it, so no
    other site can store through a logged-in user's browser, with or without a CSRF token. A request the browser
    marks as sent by another site (`Sec-Fetch-Site: cross-site` / `same-site`) is not authenticated by the session
    either: a viewer on another origin uses a token (and CORS, DICOMWEB_CORS_ORIGINS). No CSRF check is needed for
    methods that change nothing, so this is not DRF's SessionAuthentication.
    """

    def authenticate(self, request):
        if request.method not in SAFE_METHODS:
            return None
        if request.META.get("HTTP_SEC_FETCH_SITE", "same-origin") not in ("same-origin", "none"):
            return None
        user = getattr(request._request, "user", None)
        if user is None or not user.is_active:
            return None
        return user, None
