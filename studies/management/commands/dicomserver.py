"""The DICOM node: Verification, Storage and Query/Retrieve SCP (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET).

    python manage.py dicom_peer add WORKSTATION --host 10.0.0.7 --port 11112 --owner alice --allow store,find,move,get
    python manage.py dicomserver --port 11112 --ae-title DICOMSITE

Answers the known peers (`manage.py dicom_peer`, or the admin), each acting for its owner and allowed some of
store / find / move / get. An unknown calling AE is refused at association; with `--unknown-owner U` its C-STOREs
are catalogued for U instead (what `manage.py storescp --owner U` does for everyone), and nothing else is
allowed to it. C-MOVE sends only to a known peer (its host and port). Ctrl-C or SIGTERM stops cleanly.
"""

from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ... import dimse
from .. import logger_level, serve_dicom


class Command(BaseCommand):
    help = "Run the DICOM node: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET for the known peers (manage.py dicom_peer)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=dimse.DEFAULT_PORT, help=f"TCP port (default {dimse.DEFAULT_PORT})")
        parser.add_argument(
            "--ae-title", default=dimse.DEFAULT_AE_TITLE, help=f"this node's AE title; peers must call it (default {dimse.DEFAULT_AE_TITLE})"
        )
        parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: all interfaces)")
        parser.add_argument(
            "--unknown-owner", default=None, metavar="USERNAME",
            help="accept C-STOREs from AEs that are not known peers, for this user (default: refuse them at association)",
        )  # fmt: skip

    def handle(self, *args, verbosity, **options):
        with logger_level("pynetdicom", logging.WARNING if verbosity < 3 else None):
            return self._serve(**options)

    def _serve(self, *, port, ae_title, host, unknown_owner, **options):
        owner = None
        if unknown_owner:
            try:
                owner = get_user_model().objects.get(username=unknown_owner)
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user named '{unknown_owner}'") from None
        unknown = f"C-STOREs of unknown AEs for '{owner.get_username()}'" if owner else "unknown AEs refused"
        serve_dicom(
            self, port=port, host=host, owner=owner, ae_title=ae_title, peers=True,
            banner=lambda h, p: f"DICOM node {ae_title} on {h}:{p}: known peers, {unknown} (Ctrl-C stops)",
        )  # fmt: skip
