"""The README's tour runs as written: its shell block, pasted into bash after the service started on a fresh
database with the password the README chooses, succeeds line by line (curl -f fails on any error answer) and
leaves what the comments promise."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest

from .processes import free_port, stop, wait_until_up

PROJECT = Path(__file__).resolve().parents[2]
README = PROJECT / "README.md"
PASSWORD = "choose-a-password"  # the one the README's tour chooses


API_DOC = PROJECT / "docs" / "api.md"
DICOMWEB_DOC = PROJECT / "docs" / "dicomweb.md"


def sh_blocks(path: Path) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S)


def tour_block() -> str:
    """The README's shell block that talks to the running service (the one that sets BASE)."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    (tour,) = [block for block in blocks if block.startswith("BASE=")]
    return tour


def json_documents(text: str) -> list:
    """The JSON answers curl printed one after another (curl adds no newline between them)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def test_the_readme_chooses_the_password_the_tour_uses():
    assert f"DJANGO_SUPERUSER_PASSWORD='{PASSWORD}' make run" in README.read_text()
    assert f"PASSWORD='{PASSWORD}'" in tour_block()


@pytest.fixture
def fresh_server(tmp_path):
    """The service as `make run` starts it (migrate, ensure_admin with the README's password, runserver) on a
    fresh SQLite database and media folder; its base URL, and a shell folder that sees the project's .venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "DICOM_", "DJANGO_"))}
    env.update(
        DJANGO_DEBUG="1",
        DJANGO_SECRET_KEY="readme-test-key",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DICOM_MEDIA_ROOT=str(tmp_path / "media"),
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
    )
    manage = [sys.executable, str(PROJECT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True, timeout=120)
    subprocess.run([*manage, "ensure_admin"], env=env, check=True, timeout=60, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/healthz", server)
        work = tmp_path / "shell"
        work.mkdir()
        (work / ".venv").symlink_to(PROJECT / ".venv")  # the blocks call .venv/bin/python, as from the project
        yield base, work
    finally:
        stop(server)


def run_blocks(blocks: list[str], base: str, work: Path) -> subprocess.CompletedProcess:
    """The blocks as written, in order, in one bash that stops at the first failure; only BASE differs."""
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("BASE=http://127.0.0.1:8000", f"BASE={base}", 1)
    return subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=300)


def test_the_readme_tour_runs_against_a_fresh_server(fresh_server):
    base, work = fresh_server
    done = run_blocks([tour_block()], base, work)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    uploaded, tag, studies, ready = json_documents(done.stdout)
    assert uploaded["duplicate"] is False
    assert tag["value"] == "CompressedSamples^CT1"
    assert len(studies) == 1
    assert ready["status"] == "ready"
    assert (work / "ct.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (original,) = work.glob("*.dcm")
    assert original.name == f"{pydicom.dcmread(original).SOPInstanceUID}.dcm"


def test_the_readmes_deidentification_examples_run_after_the_tour(fresh_server):
    base, work = fresh_server
    (deid,) = [block for block in sh_blocks(README) if "/deidentify/" in block]
    done = run_blocks([tour_block(), deid], base, work)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    plain, with_options, listed = json_documents(done.stdout)[4:]
    assert plain["study"]["study_instance_uid"].startswith("2.25.") and plain["uid_map"] is None
    assert with_options["options"]["options"] == ["clean_descriptors", "retain_modified_dates", "retain_patient_characteristics"]
    assert with_options["uid_map"][pydicom.dcmread(next(work.glob("*.dcm"))).StudyInstanceUID] == with_options["study"]["study_instance_uid"]
    assert listed["count"] == 3
    with zipfile.ZipFile(work / "deid.zip") as archive:
        (name,) = archive.namelist()
        masked = pydicom.dcmread(io.BytesIO(archive.read(name)))
    assert masked.PatientIdentityRemoved == "YES" and not masked.pixel_array[:16, :128].any()


def test_the_api_pages_examples_run_in_order_against_a_fresh_server(fresh_server):
    base, work = fresh_server
    blocks = sh_blocks(API_DOC)
    assert blocks[0].startswith("BASE=") and len(blocks) >= 10
    done = run_blocks(blocks, base, work)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    # The revalidation and the delete print their statuses, as the comments say (curl adds no newline between answers).
    assert re.search(r"(?<![0-9])304\n", done.stdout) and re.search(r"(?<![0-9])204\n", done.stdout)
    for name in ("ct.png", "lung.png", "f3.jpg", "ct.webp", "ct16.png", "thumb.jpg", "tags.csv", "study.zip", "series.zip"):
        assert (work / name).stat().st_size > 0, name


def test_the_dicomweb_pages_examples_run_after_the_api_pages(fresh_server):
    base, work = fresh_server
    done = run_blocks(sh_blocks(API_DOC) + [block for block in sh_blocks(DICOMWEB_DOC) if "$W" in block or "W=" in block], base, work)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    for name in ("study.multipart", "frames.multipart", "pixels.multipart", "mr.png", "frame3.jpg", "study.jpg"):
        assert (work / name).stat().st_size > 0, name
