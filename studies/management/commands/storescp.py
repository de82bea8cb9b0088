"""Receive DICOM instances over the network (C-STORE SCP, with C-ECHO) into one owner's catalogue.

    python manage.py storescp --port 11112 --ae-title DICOMSITE --owner alice

Listens on all interfaces by default (modalities connect from the network; use --host 127.0.0.1
to accept local senders only). Each file goes through the same ingest service as an upload and
gets a DIMSE status (see studies/dimse.py); one log line per file names its id, size and status,
never patient data. Ctrl-C (or SIGTERM) stops accepting, closes open associations and lets a file
being catalogued finish, so only whole records are left.
"""

from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ... import dimse
from .. import logger_level, serve_dicom


class Command(BaseCommand):
    help = "Run a DICOM C-STORE receiver (SCP, with C-ECHO) that catalogues every instance it receives for one owner."

    def add_arguments(self, parser):
        parser.add_argument("--owner", required=True, help="username that will own the received instances")
        parser.add_argument("--port", type=int, default=dimse.DEFAULT_PORT, help=f"TCP port (default {dimse.DEFAULT_PORT})")
        parser.add_argument(
            "--ae-title",
            default=dimse.DEFAULT_AE_TITLE,
            help=f"this node's AE title; senders must call it (default {dimse.DEFAULT_AE_TITLE})",
        )
        parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: all interfaces)")

    def handle(self, *args, verbosity, **options):
        # pynetdicom narrates every association at INFO/DEBUG; our own lines say what happened.
        with logger_level("pynetdicom", logging.WARNING if verbosity < 3 else None):
            return self._serve(**options)

    def _serve(self, *, owner, port, ae_title, host, **options):
        try:
            user = get_user_model().objects.get(username=owner)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named '{owner}'") from None
        serve_dicom(
            self, port=port, host=host, owner=user, ae_title=ae_title,
            banner=lambda h, p: f"Listening on {h}:{p} as AE title {ae_title}, storing for '{user.get_username()}' (Ctrl-C stops)",
        )  # fmt: skip
