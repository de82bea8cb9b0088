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
import signal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from ... import dimse
from .. import logger_level


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
        connections.close_all()  # this thread only waits from here on; association threads open their own
        if not 0 <= port <= 65535:
            raise CommandError("--port must be between 0 and 65535")
        try:
            server = dimse.start_server(owner=user, port=port, ae_title=ae_title, host=host, block=False)
        except ValueError as exc:  # pynetdicom refuses an invalid AE title
            raise CommandError(f"invalid --ae-title: {exc}") from None
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

        # SIGTERM (docker stop, systemd) stops as cleanly as Ctrl-C.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        bound_host, bound_port = server.server_address[:2]
        self.stdout.write(
            self.style.SUCCESS(
                f"Listening on {bound_host}:{bound_port} as AE title {ae_title}, "
                f"storing for '{user.get_username()}' (Ctrl-C stops)"
            )
        )
        self.stdout.flush()
        try:
            dimse.serve_until_interrupted(server)
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write("Stopped.")


def _interrupt(signum, frame):
    raise KeyboardInterrupt
