"""After `make run`, manage.py commands work in a plain shell: the .env it writes gives DEBUG and a key,
read by manage.py only when the environment sets no key (production, tests and CI never read it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SHOW = "from django.conf import settings; print(settings.DEBUG, settings.SECRET_KEY)"


def manage_shell(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "REDIS_", "DICOM_"))}
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", SHOW], cwd=PROJECT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def test_manage_py_reads_the_dotenv_when_the_shell_sets_no_key(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# written by make run\nDJANGO_DEBUG=1\nDJANGO_SECRET_KEY='from-the-dotenv-file'\n")
    done = manage_shell({"DJANGO_DOTENV": str(dotenv)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "from-the-dotenv-file"]


def test_a_key_in_the_environment_wins_and_the_dotenv_is_not_read(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DJANGO_DEBUG=1\nDJANGO_SECRET_KEY=from-the-dotenv-file\n")
    done = manage_shell({"DJANGO_DOTENV": str(dotenv), "DJANGO_SECRET_KEY": "from-the-environment"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "from-the-environment"]


def test_without_a_dotenv_or_a_key_manage_py_still_refuses_clearly(tmp_path):
    done = manage_shell({"DJANGO_DOTENV": str(tmp_path / "absent.env")})
    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off" in done.stderr
