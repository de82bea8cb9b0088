"""The scenarios: one module each, with `add_arguments(parser)` and `main(args) -> exit code`.

A scenario says what it measures and how it reports it; everything it starts comes from bench.harness. Its
module docstring is its `--help` text. `run_args` are what `python -m bench run` passes when the user does not
(the sizes the published tables were measured with), before the user's own options, which win.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Scenario:
    name: str
    module: str
    group: str  # "default": a plain `python -m bench run`; "long": added by --all; "tool": only by name
    run_args: tuple[str, ...] = ()

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("http", "http", "default"),
        Scenario("render", "render", "default", ("--n-cr", "5")),
        Scenario("import", "import_dicom", "default"),
        Scenario("dicomweb", "dicomweb", "default"),
        Scenario("viewer", "viewer", "default"),
        Scenario("dicom", "dicom", "default"),
        Scenario("scale", "scale", "long"),
        Scenario("search", "search", "long"),
        Scenario("memory", "memory", "long"),
        Scenario("load", "load", "long", ("--seconds", "120")),
        Scenario("cluster", "cluster", "long", ("--seconds", "120")),
        Scenario("profile", "profile_http", "tool"),
        Scenario("png_levels", "png_levels", "tool"),
    )
}
