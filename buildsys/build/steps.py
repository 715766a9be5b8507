"""What a layer's build container sees and runs.

The inputs are staged into one folder of hardlinks into the vendor store,
mounted read-only at ``/buildsys``, each ecosystem its own part
(``Ecosystem.stage``: ``repo/`` the layer's .debs as a flat apt repository,
``wheels/`` the selected wheels, the pinned pip and a hashed requirements
file, ``cran/`` the R source tarballs and a Makevars, ``files/`` the
``[[files]]`` downloads by name), then ``steps/`` (one script per ``run``
step) and ``build.sh``. The container has no network; the script prints a
marker before each step so a failure names it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from buildsys import ecosystems
from buildsys.build.bootstrap import BUILD_ENV
from buildsys.core.store import Store
from buildsys.ecosystems.base import MOUNT, STEP_MARKER
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe

# Where they were before each ecosystem staged its own part; ``build`` reads them from here.
__all__ = ["MOUNT", "STEP_MARKER", "Staged", "build_env", "failed_step", "failure_hint", "stage_layer"]


@dataclass(frozen=True)
class Staged:
    folder: Path
    env: dict[str, str]
    command: list[str]


def build_env(lock: Lock) -> dict[str, str]:
    """The fixed environment of every build step (docs/design.md), plus pip's isolation."""
    return {
        **{k: v for k, v in BUILD_ENV.items() if k != "PATH"},
        "SOURCE_DATE_EPOCH": str(lock.source_date_epoch),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_NO_INPUT": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


def stage_layer(store: Store, recipe: Recipe, lock: Lock, folder: Path) -> Staged:
    """Link the layer's inputs into ``folder`` and write its build script: each ecosystem's part, then ``run``."""
    folder.mkdir(parents=True)
    script = ["#!/bin/sh", "set -eu", "umask 022", "cd /"]
    for eco in ecosystems.ECOSYSTEMS:
        script += eco.stage(store, recipe, lock, folder)
    if recipe.run:
        (folder / "steps").mkdir()
        for i, step in enumerate(recipe.run, 1):
            (folder / "steps" / f"{i}.sh").write_text(step + "\n")
            script += [f"echo {shlex.quote(f'{STEP_MARKER}run[{i - 1}]: {step}')}",
                       f"/bin/sh -e {MOUNT}/steps/{i}.sh"]
    script.append(f"echo '{STEP_MARKER}done'")
    (folder / "build.sh").write_text("\n".join(script) + "\n")
    return Staged(folder=folder, env=build_env(lock), command=["/bin/sh", f"{MOUNT}/build.sh"])


def failure_hint(output: str) -> str | None:
    """A next step that knows the failed step's ecosystem (an R package's missing header), if any."""
    return ecosystems.failure_hint(output)


def failed_step(output: str) -> str:
    """The step a build script was in when it stopped (its last marker)."""
    steps = [ln.split(STEP_MARKER, 1)[1] for ln in output.splitlines() if STEP_MARKER in ln]
    return steps[-1] if steps else "start of the build"
