#!/usr/bin/env python3
"""One entry point for the benchmarks: run them, then print one side-by-side table.

    .venv/bin/python bench/run.py                 # http, render, import, dicomweb (each against a throwaway Orthanc)
    .venv/bin/python bench/run.py --all           # also scale (1k vs 100k), memory (1 GB file) and load
    .venv/bin/python bench/run.py --only render   # one of them
    .venv/bin/python bench/run.py --report-only   # print the table from the last results, run nothing

Each benchmark is its own script (bench/<name>.py) that starts what it needs (gunicorn on a throwaway
PostgreSQL database, Orthanc 1.10 with a temporary config when the Debian package is installed, plus its
DICOMweb plugin for dicomweb) and stops it again; this script runs them one after another (they would
disturb each other's timings on a small machine), then reads their JSON results from bench/results/ and
prints every row with the service / Orthanc ratio, writing the lot to bench/results/all.json. Standard
library only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# name: (script, arguments, part of the default run)
BENCHES: dict[str, tuple[str, list[str], bool]] = {
    "http": ("http_bench.py", ["--n", "300"], True),
    "render": ("render_bench.py", ["--n", "50", "--n-cr", "5"], True),
    "import": ("import_bench.py", ["--n", "1000"], True),
    "dicomweb": ("dicomweb_bench.py", ["--n", "200"], True),
    "scale": ("scale_bench.py", [], False),
    "memory": ("memory_bench.py", [], False),
    "load": ("load_test.py", ["--seconds", "120"], False),
}


def run(name: str, python: str) -> dict:
    script, arguments, _ = BENCHES[name]
    target = RESULTS / f"{name}.json"
    command = [python, str(ROOT / "bench" / script), *arguments, "--json", str(target)]
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(command, cwd=ROOT)
    return {"name": name, "command": command, "exit": completed.returncode, "seconds": round(time.monotonic() - started, 1)}


def rows(name: str, data: dict) -> list[dict]:
    """The comparable rows of one benchmark's JSON: (row, service, orthanc, ratio, unit)."""
    out = []
    if name in ("render", "import", "http", "dicomweb"):
        for row in data.get("table", data.get("rows", [])):
            service = row.get("service", row.get("service_ms"))
            orthanc = row.get("orthanc", row.get("orthanc_ms"))
            unit = row.get("unit") or ("ms" if "service_ms" in row else "")
            out.append({"bench": name, "row": row["row"], "service": service, "orthanc": orthanc, "ratio": row.get("ratio"), "unit": unit})
    elif name == "scale":
        for row in data.get("table", []):
            label = f"{row['call']} p50 at {row['count_large']} vs {row['count_small']} rows (ratio 100k/1k, target {row['target']})"
            out.append({"bench": name, "row": label, "service": row["p50_large_ms"], "orthanc": None, "ratio": row["ratio"], "unit": "ms"})
    elif name == "load":
        for stats in data.get("kinds") or []:
            label = f"load {stats['kind']} p50 ({stats['count']} requests, {stats['rps']} req/s)"
            out.append({"bench": name, "row": label, "service": stats["p50_ms"], "orthanc": None, "ratio": None, "unit": "ms"})
        out.append({"bench": name, "row": "load 5xx responses", "service": data.get("count_5xx"), "orthanc": None, "ratio": None, "unit": ""})
    elif name == "memory":
        size_mib = (data.get("file") or {}).get("bytes", 0) / 2**20 or 0.0
        for phase in data.get("phases", []):
            peak = phase["max_peak_kib_over_workers"] / 1024
            ratio = round(peak / size_mib, 3) if size_mib else None
            label = f"worker peak RSS, {phase['phase']} (ratio: to the {size_mib:.0f} MiB file)"
            out.append({"bench": name, "row": label, "service": round(peak, 1), "orthanc": None, "ratio": ratio, "unit": "MiB"})
    return out


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also the long ones: scale, memory, load")
    parser.add_argument("--only", choices=sorted(BENCHES), action="append", help="run just these (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; table from the last results")
    args = parser.parse_args(argv)
    names = args.only or [name for name, (_, _, default) in BENCHES.items() if default or args.all]
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = [] if args.report_only else [run(name, sys.executable) for name in names]

    table, machine = [], None
    for name in (names if not args.report_only else list(BENCHES)):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        machine = machine or data.get("machine")
        table.extend({**row, "measured_at": data.get("generated_at")} for row in rows(name, data))

    width = max((len(r["row"]) for r in table), default=20)
    print(f"\nmachine: {json.dumps(machine) if machine else 'see each result file'}")
    print(f"command: {' '.join([Path(sys.executable).name, 'bench/run.py', *(argv if argv is not None else sys.argv[1:])])}")
    print("ratio = service / orthanc (latency: lower is better; throughput rows say 'files/s', 'MB/s' or 'req/s': higher is better)\n")
    print(f"{'bench':8}  {'row':{width}}  {'service':>9}  {'orthanc':>9}  {'ratio':>6}  unit")
    for r in table:
        print(f"{r['bench']:8}  {r['row']:{width}}  {fmt(r['service']):>9}  {fmt(r['orthanc']):>9}  {fmt(r['ratio']):>6}  {r['unit']}")
    failed = [r for r in runs if r["exit"] != 0]
    for r in failed:
        print(f"\n{r['name']} exited with {r['exit']}: its rows above may be from an earlier run")
    (RESULTS / "all.json").write_text(json.dumps({"runs": runs, "machine": machine, "table": table}, indent=2))
    print(f"\nwrote {RESULTS / 'all.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
