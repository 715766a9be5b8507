"""``buildsys test``: run the inherited [test] commands inside an image, network off.

``[test] gpu`` commands need a GPU: without a GPU request they are reported
skipped (never passed, never failed); with one (``test --gpus all``) they run
with that device request, after ``doctor.require_gpu`` said the engine can
serve it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from buildsys.build import BuiltImage
from buildsys.engine import Engine, GpuRequest
from buildsys.graph import Graph


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
        for command, gpu in [(c, False) for c in r.tests] + [(c, True) for c in r.gpu_tests]:
            if gpu and not gpus:
                yield TestResult(image=image.recipe, recipe=recipe, command=command, exit_code=0, output="",
                                 seconds=0.0, gpu=True, skipped=True)
                continue
            started = time.monotonic()
            res = engine.run(image.record.config_digest, [command], entrypoint=["/bin/sh", "-c"], network="none",
                             gpus=gpus if gpu else ())
            yield TestResult(image=image.recipe, recipe=recipe, command=command, exit_code=res.exit_code,
                             output=res.output, seconds=time.monotonic() - started, gpu=gpu)
