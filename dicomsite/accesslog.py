"""gunicorn's access log without share links' secrets: a link's path, /share/<secret>/..., is logged as
/share/-/... (the secret opens a study to anyone who has it; studies/shares.py). nginx's log does the same
(deploy/nginx.conf.template). Query strings are never logged (gunicorn.conf.py's access_log_format)."""

from __future__ import annotations

import re

from gunicorn.glogging import Logger

SHARE_SECRET = re.compile(r"(/share/)[^/\s?]+")


def masked(text: str) -> str:
    return SHARE_SECRET.sub(r"\1-", text)


class AccessLogger(Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("U", "r", "{raw_uri}"):
            if isinstance(atoms.get(key), str):
                atoms[key] = masked(atoms[key])
        return atoms
