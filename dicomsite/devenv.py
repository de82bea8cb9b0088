"""A developer's defaults for `manage.py`: the git-ignored `.env` that `make run` writes.

`make run` writes `.env` once (DJANGO_DEBUG=1 and a generated DJANGO_SECRET_KEY, mode 0600), so that every
`manage.py` command the docs show works in a developer's shell after it. It is read only by `manage.py`, and
only when the environment gives no DJANGO_SECRET_KEY: production (gunicorn, `make serve`, any environment that
sets a key), the tests and CI never see it, and a variable already set always wins over the file.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent / ".env"


def load(path: str | os.PathLike | None = None) -> bool:
    """Set the variables of the `.env` file that are not set yet; False when it is not read."""
    if os.environ.get("DJANGO_SECRET_KEY"):
        return False
    target = Path(path or os.environ.get("DJANGO_DOTENV") or DEFAULT_PATH)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        os.environ.setdefault(name.strip(), value.strip().strip("'\""))
    return True
