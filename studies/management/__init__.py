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
