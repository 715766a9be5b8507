"""``buildsys test``: run the inherited [test] commands inside an image, network off.

``[test] gpu`` commands need a GPU: without a GPU request they are reported
skipped (never passed, never failed); with one (``test --gpus all``) they run
with that device request, after ``doctor.require_gpu`` said the engine can
serve it.

Before a recipe's own commands come the checks its package lists imply, which
nobody has to write: every ``[pip]`` package imports (the module its
distribution installs, read from the image's ``importlib.metadata``, so
scikit-learn is imported as ``sklearn`` with no name map to keep), and every
``[cran]`` package loads with ``library()``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement

from buildsys.build.records import BuiltImage
from buildsys.engine import Engine, GpuRequest
from buildsys.model.graph import Graph
from buildsys.model.recipe import Recipe

# Runs in the image: import the module(s) each named distribution installs. The
# distribution -> module map is the image's own (importlib.metadata), so
# scikit-learn -> sklearn, PyYAML -> yaml, beautifulsoup4 -> bs4 need no table.
_IMPORT_CHECK = r"""
import importlib, importlib.metadata as md, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
modules = {}
for mod, dists in md.packages_distributions().items():
    if mod.isidentifier() and not mod.startswith("_"):
        for d in dists:
            modules.setdefault(norm(d), set()).add(mod)
failed = []
for want in sys.argv[1:]:
    try:
        md.distribution(want)
    except md.PackageNotFoundError:
        failed.append(f"{want}: not installed"); continue
    mods = sorted(modules.get(norm(want), ()))
    same = [m for m in mods if norm(m) == norm(want)]
    for mod in same or mods[:1]:
        try:
            importlib.import_module(mod)
            print(f"{want}: import {mod} ok")
        except Exception as e:
            failed.append(f"{want}: import {mod} failed: {type(e).__name__}: {e}")
    if not mods:
        print(f"{want}: installed, no module to import")
for f in failed:
    print(f, file=sys.stderr)
sys.exit(1 if failed else 0)
"""


def command_label(command: str) -> str:
    """What the table shows of a command: a multi-line script by its first line (say, a # comment)."""
    first, _, rest = command.strip().partition("\n")
    return f"{first} ..." if rest else first


def package_checks(recipe: Recipe) -> list[tuple[str, str]]:
    """(label, shell command) of the checks ``recipe``'s [pip] and [cran] lists imply."""
    checks = []
    names = []
    for spec in recipe.pip_packages:
        try:
            names.append(Requirement(spec).name)
        except InvalidRequirement:  # refused at recipe load already; never here
            continue
    if names:
        checks.append((f"import {', '.join(names)}",
                       shlex.join(["python3", "-c", _IMPORT_CHECK, *names])))
    if recipe.cran_packages:
        quoted = ", ".join(f'"{n}"' for n in recipe.cran_packages)
        script = (f"for (p in c({quoted})) {{ suppressPackageStartupMessages(library(p, character.only = TRUE)); "
                  f"cat(p, as.character(packageVersion(p)), \"ok\\n\") }}")
        checks.append((f"library({', '.join(recipe.cran_packages)})", shlex.join(["Rscript", "-e", script])))
    return checks


@dataclass(frozen=True)
class TestResult:
    image: str
    recipe: str  # the recipe that declares the command
    command: str
    exit_code: int
    output: str
    seconds: float
    gpu: bool = False  # a [test] gpu command
    skipped: bool = False  # a gpu command with no GPU asked for

    @property
    def ok(self) -> bool:
        return self.skipped or self.exit_code == 0

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.exit_code == 0 else "FAIL")


def run_tests(engine: Engine, graph: Graph, image: BuiltImage,
              gpus: Sequence[GpuRequest] = ()) -> Iterator[TestResult]:
    """Each command of the chain's recipes, ancestors first, in a fresh container of the image."""
    for recipe in image.chain:
        r = graph.recipes[recipe]
        planned = ([(label, command, False) for label, command in package_checks(r)]
                   + [(command_label(c), c, False) for c in r.tests]
                   + [(command_label(c), c, True) for c in r.gpu_tests])
        for label, command, gpu in planned:
            if gpu and not gpus:
                yield TestResult(image=image.recipe, recipe=recipe, command=label, exit_code=0, output="",
                                 seconds=0.0, gpu=True, skipped=True)
                continue
            started = time.monotonic()
            res = engine.run(image.record.config_digest, [command], entrypoint=["/bin/sh", "-c"], network="none",
                             gpus=gpus if gpu else ())
            yield TestResult(image=image.recipe, recipe=recipe, command=label, exit_code=res.exit_code,
                             output=res.output, seconds=time.monotonic() - started, gpu=gpu)
