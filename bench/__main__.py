"""python -m bench: run the benchmarks and print one side-by-side table (run from the repository root).

    python -m bench run                          # http, render, import, dicomweb: service vs Orthanc 1.10
    python -m bench run http --n 50              # one scenario, with its options
    python -m bench run http render --n 20       # several: an option goes to every named scenario that has it
    python -m bench run --all                    # also the long ones: scale, memory, load
    python -m bench run http --help              # a scenario's options
    python -m bench run --report-only            # no run: the table from the last results
    python -m bench report [--markdown]          # the same table (or as Markdown, for docs/performance.md)
    python -m bench seed --instances 1000 ...    # synthetic catalogue rows (DATABASE_URL etc. from the env)
    python -m bench list                         # the scenarios

Scenarios run one after another in this process (they would disturb each other's timings on a small machine);
each starts the stack it needs and stops it again, writes bench/results/<name>.json, and the run ends with every
row side by side, service / Orthanc ratios, written to bench/results/all.json as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from . import RESULTS
from .harness.processes import log
from .harness.report import RATIO_LEGEND, command_line, load_results, markdown_table, summary_table
from .scenarios import SCENARIOS, Scenario


def scenario_parser(scenario: Scenario, results: Path = RESULTS) -> argparse.ArgumentParser:
    """The scenario's own options plus --json; no abbreviations, so an option shared by several cannot be misread."""
    module = scenario.load()
    ap = argparse.ArgumentParser(prog=f"python -m bench run {scenario.name}", description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)  # fmt: skip
    module.add_arguments(ap)
    ap.add_argument("--json", type=Path, default=results / f"{scenario.name}.json", help="where to write the results")
    return ap


def split_options(names: list[str], tokens: list[str], results: Path) -> dict[str, argparse.Namespace]:
    """Give each named scenario the options it knows; an option none of them knows is an error."""
    parsed, unknown_to = {}, []
    for name in names:
        scenario = SCENARIOS[name]
        ap = scenario_parser(scenario, results)
        mine, unknown = ap.parse_known_args([*scenario.run_args, *tokens])
        parsed[name] = (ap, mine, unknown)
        unknown_to.append({t.split("=", 1)[0] for t in unknown if t.startswith("-")})
    nobody = set.intersection(*unknown_to) if unknown_to else set()
    if nobody:
        raise SystemExit(f"no scenario among {', '.join(names)} takes {', '.join(sorted(nobody))} (see python -m bench run NAME --help)")
    out = {}
    for name, (ap, _, _) in parsed.items():
        own = set(ap._option_string_actions)
        kept: list[str] = []
        i = 0
        while i < len(tokens):  # keep the options this parser defines, with their values
            token = tokens[i]
            flag = token.split("=", 1)[0]
            if flag.startswith("-") and flag in own:
                action = ap._option_string_actions[flag]
                takes = 0 if "=" in token or action.nargs == 0 else 1
                kept += tokens[i : i + 1 + takes]
                i += 1 + takes
            else:
                i += 1
        out[name] = ap.parse_args([*SCENARIOS[name].run_args, *kept])
    return out


def run_one(name: str, args: argparse.Namespace) -> dict:
    """One scenario in this process; a crash is reported and the next scenario still runs."""
    print(f"\n=== {name}", flush=True)
    started = time.monotonic()
    try:
        code = SCENARIOS[name].load().main(args)
    except Exception:  # noqa: BLE001 - report it, run the others
        traceback.print_exc()
        code = 1
    return {"name": name, "exit": code, "seconds": round(time.monotonic() - started, 1), "json": str(args.json)}


def print_summary(names: list[str], runs: list[dict], results: Path) -> int:
    """The side-by-side table of `names`, and all.json with every result present."""
    table, machine, _ = load_results(names, results)
    print(f"\nmachine: {json.dumps({k: machine[k] for k in ('nproc', 'cpu_model', 'python')}) if machine else 'see each result file'}")
    print(f"command: {command_line()}")
    print(RATIO_LEGEND + "\n")
    print(summary_table(table) if table else f"no results in {results} for {', '.join(names)}")
    failed = [r for r in runs if r["exit"] != 0]
    for r in failed:
        print(f"\n{r['name']} exited with {r['exit']}: its rows above may be from an earlier run")
    everything, _, all_measured = load_results(list(SCENARIOS), results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "all.json").write_text(json.dumps({"runs": runs, "machine": machine, "measured_at": all_measured, "table": everything}, indent=2))
    print(f"\nwrote {results / 'all.json'}")
    return 1 if failed else 0


def cmd_run(argv: list[str]) -> int:
    names = []
    while argv and not argv[0].startswith("-"):
        if argv[0] not in SCENARIOS:
            raise SystemExit(f"unknown scenario {argv[0]!r}; one of: {', '.join(SCENARIOS)}")
        names.append(argv.pop(0))
    ap = argparse.ArgumentParser(prog="python -m bench run", add_help=False, allow_abbrev=False)
    ap.add_argument("--all", action="store_true", help="also the long scenarios (scale, memory, load, cluster)")
    ap.add_argument("--report-only", action="store_true", help="run nothing; the table from the last results")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results folder (default bench/results)")
    ap.add_argument("-h", "--help", action="store_true")
    own, rest = ap.parse_known_args(argv)
    if own.help:
        for name in names:
            scenario_parser(SCENARIOS[name], own.results).print_help()
        if not names:
            print(__doc__)
            ap.print_help()
        return 0
    if own.report_only:
        return print_summary(names or comparison_scenarios(), [], own.results)
    if not names:
        groups = ("default", "long") if own.all else ("default",)
        names = [n for n, s in SCENARIOS.items() if s.group in groups]
    per_scenario = split_options(names, rest, own.results)
    runs = []
    for name in names:
        runs.append(run_one(name, per_scenario[name]))
        log(f"{name}: exit {runs[-1]['exit']} after {runs[-1]['seconds']:.0f}s")
    return print_summary(names, runs, own.results)


def comparison_scenarios() -> list[str]:
    """What a report shows by default: the comparisons (default and long groups), not the tools' rows."""
    return [n for n, s in SCENARIOS.items() if s.group in ("default", "long")]


def cmd_report(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench report", description="The table of the last results, run nothing.")
    ap.add_argument("names", nargs="*", help=f"scenarios to show, of {', '.join(SCENARIOS)} (default: the comparisons with results)")
    ap.add_argument("--markdown", action="store_true", help="as a Markdown table (what docs/performance.md carries)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if set(args.names) - set(SCENARIOS):
        ap.error(f"unknown scenario(s) {', '.join(sorted(set(args.names) - set(SCENARIOS)))}")
    names = args.names or comparison_scenarios()
    if not args.markdown:
        return print_summary(names, [], args.results)
    table, machine, measured = load_results(names, args.results)
    if not table:
        raise SystemExit(f"no results in {args.results}: python -m bench run first")
    print(markdown_table(table, machine, measured))
    return 0


def cmd_seed(argv: list[str]) -> int:
    from . import seed

    ap = argparse.ArgumentParser(prog="python -m bench seed", description=seed.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    seed.add_arguments(ap)
    return seed.main(ap.parse_args(argv))


def cmd_list(argv: list[str]) -> int:
    for name, s in SCENARIOS.items():
        doc = (s.load().__doc__ or "").strip().splitlines()[0]
        print(f"{name:11} {s.group:8} {doc}")
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "seed": cmd_seed, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except BrokenPipeError:  # `python -m bench report | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
