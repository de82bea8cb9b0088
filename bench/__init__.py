"""Benchmarks of the DICOM catalogue service against Orthanc 1.10: `python -m bench run [names...]`.

The package is laid out so that each benchmark (a *scenario*) is a small module in `bench/scenarios/` that only
describes what it measures; starting and stopping the stack (throwaway PostgreSQL database, Redis, gunicorn,
Orthanc), timing, sampling memory and printing/writing results live once in `bench/harness/`. App code is
imported in two modules only, `bench/seed.py` and `bench/app.py`, so that renames in the app touch bench there.
Run it from the repository root (`python -m bench ...`): nothing here edits `sys.path`.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
