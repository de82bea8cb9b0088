"""The seams stay where they are: the DICOM core and the protocol/negotiation/outcome modules import
no Django (they are plain functions over pydicom/numpy, usable from import workers and scripts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DICOMCORE = sorted(f"dicomcore.{p.stem}" for p in (ROOT / "dicomcore").glob("*.py") if p.stem != "__init__")
PURE = [*DICOMCORE, "studies.outcome", "studies.http.negotiation", "studies.http.params", "studies.dicomweb.protocol"]
FRAMEWORKS = ("django", "rest_framework", "drf_spectacular")


def imported_by(module: str) -> set[str]:
    """Top-level packages loaded by importing `module` in a fresh interpreter (no settings configured)."""
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_core_package_has_every_module_listed():
    assert {"dicomcore.parsing", "dicomcore.tags", "dicomcore.rendering", "dicomcore.frames", "dicomcore.sources"} <= set(DICOMCORE)


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_framework(module):
    assert imported_by(module).isdisjoint(FRAMEWORKS)


@pytest.mark.parametrize("module", DICOMCORE)
def test_the_dicom_core_imports_nothing_of_the_service(module):
    assert "studies" not in imported_by(module) and "dicomsite" not in imported_by(module)


def test_the_check_itself_sees_django_when_a_module_imports_it():
    assert "django" in imported_by("studies.uploads")  # staging is Django glue: the check must notice
