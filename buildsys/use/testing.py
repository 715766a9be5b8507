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

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from buildsys import ecosystems
from buildsys.build.records import BuiltImage
from buildsys.engine import Engine, GpuRequest
from buildsys.model.graph import Graph
from buildsys.model.recipe import Recipe


def command_label(command: str) -> str:
    """What the table shows of a command: a multi-line script by its first line (say, a # comment)."""
    first, _, rest = command.strip().partition("\n")
    return f"{first} ..." if rest else first


def package_checks(recipe: Recipe) -> list[tuple[str, str]]:
    """(label, shell command) of the checks ``recipe``'s package lists imply, each ecosystem's own."""
    return ecosystems.checks(recipe)


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
