"""Create the first superuser for `make run` when the database has no users yet."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "If no user exists, create superuser 'admin' with DJANGO_SUPERUSER_PASSWORD or a random password "
        "printed once. Does nothing when any user exists, so it is safe to run at every start."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, verbosity: int, **options):
        User = get_user_model()
        if User.objects.exists():
            if verbosity >= 2:
                self.stdout.write("users exist; no superuser created")
            return
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(self.style.SUCCESS(f"Created superuser '{username}'."))
        if not os.environ.get("DJANGO_SUPERUSER_PASSWORD"):
            self.stdout.write(self.style.WARNING(f"Its password, shown only this once: {password}"))
