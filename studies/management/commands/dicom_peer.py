"""The DICOM peers `manage.py dicomserver` knows (also in the admin):

    python manage.py dicom_peer add PACS1 --host 10.0.0.5 --port 104 --owner alice --allow store,find,move,get
    python manage.py dicom_peer list
    python manage.py dicom_peer remove PACS1

`add` of an AE title that exists replaces its settings (host, port, owner, what it may do).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ...models import DicomPeer


class Command(BaseCommand):
    help = "Add, list or remove the DICOM peers (AE title, host, port, owner, allowed services) of `manage.py dicomserver`."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="add a peer, or replace the settings of one with this AE title")
        add.add_argument("ae_title")
        add.add_argument("--host", required=True)
        add.add_argument("--port", type=int, required=True)
        add.add_argument("--owner", required=True, help="username whose catalogue the peer acts on")
        add.add_argument("--allow", default="", help=f"comma-separated, of {','.join(DicomPeer.SERVICES)} (default: nothing)")
        add.add_argument("--description", default="")
        actions.add_parser("list", help="every peer, one per line")
        remove = actions.add_parser("remove", help="forget a peer")
        remove.add_argument("ae_title")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _add(self, *, ae_title, host, port, owner, allow, description, **options):
        try:
            user = get_user_model().objects.get(username=owner)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named '{owner}'") from None
        services = [s.strip().lower() for s in allow.split(",") if s.strip()]
        unknown = sorted(set(services) - set(DicomPeer.SERVICES))
        if unknown:
            raise CommandError(f"--allow takes {', '.join(DicomPeer.SERVICES)}; not {', '.join(unknown)}")
        peer = DicomPeer.objects.filter(ae_title=ae_title).first() or DicomPeer(ae_title=ae_title)
        peer.host, peer.port, peer.owner, peer.description = host, port, user, description
        for service in DicomPeer.SERVICES:
            setattr(peer, f"may_{service}", service in services)
        try:
            peer.full_clean()
        except ValidationError as invalid:
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in invalid.message_dict.items())
            raise CommandError(problems) from None
        created = peer.pk is None
        peer.save()
        self.stdout.write(f"{'added' if created else 'updated'} {_line(peer)}")

    def _list(self, **options):
        peers = DicomPeer.objects.select_related("owner")
        if not peers:
            self.stdout.write("no DICOM peers")
        for peer in peers:
            self.stdout.write(_line(peer))

    def _remove(self, *, ae_title, **options):
        deleted, _ = DicomPeer.objects.filter(ae_title=ae_title).delete()
        if not deleted:
            raise CommandError(f"no DICOM peer with AE title '{ae_title}'")
        self.stdout.write(f"removed {ae_title}")


def _line(peer: DicomPeer) -> str:
    return f"{peer.ae_title} {peer.host}:{peer.port} owner={peer.owner.get_username()} allow={','.join(peer.allowed) or '-'}"
