"""``buildsys test``: run the inherited [test] commands inside an image, network off."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from buildsys.build import BuiltImage
from buildsys.engine import Engine
from buildsys.graph import Graph


@dataclass(frozen=True)
class TestResult:
    image: str
    recipe: str  # the recipe that declares the command
    command: str
    exit_code: int
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_tests(engine: Engine, graph: Graph, image: BuiltImage) -> Iterator[TestResult]:
    """Each command of the chain's recipes, ancestors first, in a fresh container of the image."""
    for recipe in image.chain:
        for command in graph.recipes[recipe].tests:
            started = time.monotonic()
            res = engine.run(image.record.config_digest, [command], entrypoint=["/bin/sh", "-c"], network="none")
            yield TestResult(image=image.recipe, recipe=recipe, command=command, exit_code=res.exit_code,
                             output=res.output, seconds=time.monotonic() - started)
