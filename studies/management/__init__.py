"""Management commands (thin wrappers over the services) and what they share."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def logger_level(name: str, level: int | None) -> Iterator[None]:
    """Set a logger's level for the length of a command, then put it back (a command run with
    call_command shares the process, and its loggers, with whoever called it). None: unchanged."""
    logger = logging.getLogger(name)
    previous = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def serve_dicom(command, *, port: int, host: str, banner, **start) -> None:
    """Start `dimse.start_server(**start)` on (host, port) for a management command, print `banner(host, port)`,
    and serve until Ctrl-C or SIGTERM (docker stop, systemd), which stop as cleanly. Bad options are CommandErrors."""
    import signal

    from django.core.management.base import CommandError
    from django.db import connections

    from .. import dimse

    connections.close_all()  # this thread only waits from here on; association threads open their own
    if not 0 <= port <= 65535:
        raise CommandError("--port must be between 0 and 65535")
    try:
        server = dimse.start_server(port=port, host=host, block=False, **start)
    except ValueError as exc:  # pynetdicom refuses an invalid AE title
        raise CommandError(f"invalid --ae-title: {exc}") from None
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    command.stdout.write(command.style.SUCCESS(banner(*server.server_address[:2])))
    command.stdout.flush()
    try:
        dimse.serve_until_interrupted(server)
    finally:
        signal.signal(signal.SIGTERM, previous)
    command.stdout.write("Stopped.")
