"""Token authentication that remembers a token's user for a short while.

DRF's TokenAuthentication looks the token and its user up in the database on every request; on
this stack that join is about a fifth of a tag lookup's CPU (python -m bench run http). The answer is
kept in Django's cache (Redis when REDIS_URL is set, else per process) for
DICOM_AUTH_CACHE_SECONDS (0: off), under a digest of the token, never the token itself. Only the
user's id, username and flags are kept: the user comes back as a model instance whose other
fields (the password hash among them) load from the database if anything reads them.

A deleted token, or a user saved (deactivated, demoted) or deleted, drops the entry at once in
the shared cache; with the per-process default cache, other worker processes can go on accepting
a revoked token until their entry expires (at most DICOM_AUTH_CACHE_SECONDS).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

# Enough for permission checks, scoping, audit events and the admin flags; the rest is deferred.
CACHED_USER_FIELDS = ("id", "username", "is_active", "is_staff", "is_superuser")


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
        if entry is not None:
            return model.from_db(DEFAULT_DB_ALIAS, fields, entry), None
        user, auth = super().authenticate_credentials(key)  # AuthenticationFailed for unknown/inactive
        cache.set(cache_key(key), [getattr(user, field) for field in fields], seconds)
        return user, auth


def forget_token(sender, instance, **kwargs) -> None:
    cache.delete(cache_key(instance.key))


def forget_user(sender, instance, **kwargs) -> None:
    keys = [cache_key(key) for key in Token.objects.filter(user_id=instance.pk).values_list("key", flat=True)]
    if keys:
        cache.delete_many(keys)


def connect_signals() -> None:
    post_delete.connect(forget_token, sender=Token, dispatch_uid="auth-cache-token-delete")
    post_save.connect(forget_token, sender=Token, dispatch_uid="auth-cache-token-save")
    user_model = get_user_model()
    post_save.connect(forget_user, sender=user_model, dispatch_uid="auth-cache-user-save")
    # pre_delete would still find the tokens; post_delete of each cascaded Token (above) covers a deleted user.
