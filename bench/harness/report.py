"""Results: comparison rows, the text tables printed after a run, the JSON files, and a Markdown table for the docs.

Every scenario writes `bench/results/<name>.json` with a `rows` list of the same shape,
{"row", "service", "orthanc", "ratio", "unit", "better"}, so the side-by-side table of `python -m bench run` and
the Markdown of `python -m bench report --markdown` read all of them the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import RESULTS
from .measure import describe_machine, machine_info, rounded

RATIO_LEGEND = ("ratio = service / orthanc (latency rows, ms: lower is better; throughput rows, files/s, MB/s or req/s: "
                "higher is better; the 'better' column says which per row)")  # fmt: skip


def comparison(label: str, service: float | None, orthanc: float | None, unit: str = "ms", better: str = "lower",
               digits: int = 2) -> dict:  # fmt: skip
    """One row of a service-vs-Orthanc table; the ratio is service / orthanc whenever both were measured."""
    ratio = service / orthanc if service is not None and orthanc else None
    return {"row": label, "service": rounded(service, digits), "orthanc": rounded(orthanc, digits), "ratio": rounded(ratio, 3),
            "unit": unit, "better": better}  # fmt: skip


def command_line() -> str:
    """How this run was started, as one would type it from the repo root."""
    exe = sys.executable
    if exe.startswith(os.getcwd() + os.sep):
        exe = os.path.relpath(exe)
    return shlex.join([exe, "-m", "bench", *sys.argv[1:]])


def _cell(value: object, kind: str) -> str:
    if kind == "number":
        return "n/a" if value is None else f"{value:.1f}"
    if kind == "ratio":
        return "-" if value is None else f"{value:.2f}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] | None = None) -> str:
    """Rows as aligned text columns; `columns` are (key, kind) with kind text | number | ratio."""
    columns = columns or [("row", "text"), ("service", "number"), ("orthanc", "number"), ("ratio", "ratio"), ("unit", "text"),
                          ("better", "text")]  # fmt: skip
    cells = [[_cell(r.get(key), kind) for key, kind in columns] for r in rows]
    widths = [max([len(key), *(len(c[i]) for c in cells)]) for i, (key, _) in enumerate(columns)]
    aligns = ["<" if kind == "text" else ">" for _, kind in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(values, aligns, widths)).rstrip()

    return "\n".join([line([key for key, _ in columns]), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def print_report(header: Iterable[str], rows: Sequence[dict], notes: Sequence[str] = (), *, legend: Sequence[str] = ()) -> None:
    """A scenario's own output: header lines, its table, then the notes."""
    print("\n" + "\n".join(header) + "\n")
    if rows:
        print(format_table(rows))
    for line in legend:
        print("  " + line)
    if notes:
        print("\nnotes:\n" + "\n".join(f"  - {note}" for note in notes))


def write_result(path: Path, rows: Sequence[dict], *, info: dict | None = None, **data: object) -> dict:
    """The scenario's JSON: when, how, on what, its comparison rows, and whatever detail it adds."""
    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "machine": info or machine_info(),
        "rows": list(rows),
        **data,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    elapsed = data.get("elapsed_s")
    print(f"\nwrote {path}" + (f" ({elapsed:.0f}s total)" if isinstance(elapsed, (int, float)) else ""))
    return out


# --------------------------------------------------------------------------- all results side by side


def load_results(names: Iterable[str], results: Path = RESULTS) -> tuple[list[dict], dict | None, dict[str, str]]:
    """(rows of every result file present, each with its bench name; the first machine info; when each was measured)."""
    table: list[dict] = []
    machine = None
    measured: dict[str, str] = {}
    for name in names:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        machine = machine or data.get("machine")
        measured[name] = data.get("generated_at", "?")
        table.extend({"bench": name, **row} for row in data.get("rows", []))
    return table, machine, measured


def _short(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def summary_table(rows: Sequence[dict]) -> str:
    """The side-by-side table of `python -m bench run` (bench, row, service, orthanc, ratio, unit)."""
    width = max((len(r["row"]) for r in rows), default=20)
    lines = [f"{'bench':9} {'row':{width}}  {'service':>9}  {'orthanc':>9}  {'ratio':>6}  unit"]
    for r in rows:
        lines.append(f"{r['bench']:9} {r['row']:{width}}  {_short(r['service']):>9}  {_short(r['orthanc']):>9}  "
                     f"{_short(r['ratio']):>6}  {r.get('unit') or ''}".rstrip())  # fmt: skip
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict], machine: dict | None, measured: dict[str, str]) -> str:
    """The same rows as a Markdown table, with where and when they were measured, for docs/performance.md."""
    lines = []
    if machine:
        lines.append(f"Measured on {describe_machine(machine).removeprefix('machine: ')}; repo {machine.get('git', {}).get('commit', '?')}.")
    if measured:
        lines.append("Results: " + ", ".join(f"{name} {when}" for name, when in measured.items()) + ".")
    lines.append(RATIO_LEGEND[0].upper() + RATIO_LEGEND[1:] + ".")
    lines += ["", "| bench | row | service | orthanc | ratio | unit |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        row = r["row"].replace("|", "\\|")
        lines.append(f"| {r['bench']} | {row} | {_short(r['service'])} | {_short(r['orthanc'])} | {_short(r['ratio'])} | {r.get('unit') or ''} |")
    return "\n".join(lines)
