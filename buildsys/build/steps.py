"""What a layer's build container sees and runs.

The inputs are staged into one folder of hardlinks into the vendor store,
mounted read-only at ``/buildsys``, each ecosystem its own part
(``Ecosystem.stage``: ``repo/`` the layer's .debs as a flat apt repository,
``wheels/`` the selected wheels, the pinned pip and a hashed requirements
file, ``cran/`` the R source tarballs and a Makevars, ``files/`` the
``[[files]]`` downloads by name), then ``steps/`` (one script per step: each
ecosystem's, then one per ``run`` step) and the script that runs them. The
container has no network; a marker is printed before each step so a failure
names it.

Every step is the first process of a fresh PID namespace (with its own
``/proc``), so the process IDs a step sees, and that a package may record (R's
cli keeps the PID of the R that installed it), are the same on every build.
Making a namespace needs CAP_SYS_ADMIN, which the build container is given for
``build.sh`` alone: before the first step runs, ``build.sh`` starts one
namespace per step, each waiting on a FIFO under ``/dev/shm`` with the
capability already dropped (util-linux's ``setpriv``), then releases them one at a
time and waits for each. So no program that a step could have written or
replaced is ever run with the capability. An image without util-linux's
``unshare``/``setpriv`` gets ``build-plain.sh`` in a container without the
capability (steps in order, PIDs as they come), and the build says so.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys import ecosystems
from buildsys.build.bootstrap import BUILD_ENV
from buildsys.core.store import Store
from buildsys.ecosystems.base import MOUNT, STEP_MARKER
from buildsys.engine import RunResult
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe

# Where they were before each ecosystem staged its own part; ``build`` reads them from here.
__all__ = ["MOUNT", "NO_NAMESPACES_EXIT", "NO_NAMESPACES_MARKER", "STEP_MARKER", "WARNING_MARKER",
           "Staged", "build_env", "failed_step", "failure_hint", "stage_layer"]


# What ``build.sh`` prints, and its exit status, when the image has no ``setpriv`` to drop the
# capability with: the layer is then built again with ``plain_command``.
NO_NAMESPACES_MARKER = "::buildsys-no-namespaces::"
NO_NAMESPACES_EXIT = 97
WARNING_MARKER = "::buildsys-warning::"
QUEUE = "/dev/shm/buildsys-steps"  # /dev is the engine's tmpfs: nothing here reaches the layer
_FRESH = "unshare --pid --fork --mount-proc --kill-child"
_DROP = "setpriv --bounding-set -sys_admin --"


@dataclass(frozen=True)
class Staged:
    folder: Path
    env: dict[str, str]
    command: list[str]  # needs CAP_SYS_ADMIN: each step in a fresh PID namespace, without it
    plain_command: list[str]  # the same steps in one PID namespace, for an image without setpriv


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
    """Link the layer's inputs into ``folder`` and write its steps: each ecosystem's, then ``run``."""
    folder.mkdir(parents=True)
    steps: list[tuple[str | None, str]] = []  # (marker the runner prints first, or None; script)
    for eco in ecosystems.ECOSYSTEMS:
        steps += [(None, script) for script in eco.stage(store, recipe, lock, folder)]
    steps += [(f"run[{i}]: {step}", step + "\n") for i, step in enumerate(recipe.run)]
    (folder / "steps").mkdir()
    for k, (_, script) in enumerate(steps, 1):
        (folder / "steps" / f"{k}.sh").write_text(script)
    (folder / "build.sh").write_text(_isolating_runner(steps))
    (folder / "wait.sh").write_text(f'read _ < "{QUEUE}/$1" || exit 1\nexec /bin/sh -e {MOUNT}/steps/"$1".sh\n')
    (folder / "build-plain.sh").write_text(_plain_runner(steps))
    return Staged(folder=folder, env=build_env(lock), command=["/bin/sh", f"{MOUNT}/build.sh"],
                  plain_command=["/bin/sh", f"{MOUNT}/build-plain.sh"])


def _marker(text: str | None) -> list[str]:
    return [f"echo {shlex.quote(STEP_MARKER + text)}"] if text is not None else []


def _isolating_runner(steps: Sequence[tuple[str | None, str]]) -> str:
    """``build.sh``: start every step's namespace (waiting, without the capability), then release each in turn."""
    warning = (f"{WARNING_MARKER}this engine gives no new PID namespace: process IDs may differ between builds "
               "(docs/reproducibility.md)")
    lines = [
        "#!/bin/sh",
        "# buildsys: each step is the first process of a fresh PID namespace (docs/reproducibility.md).",
        "# Only this script holds CAP_SYS_ADMIN; every namespace is made before the first step runs.",
        "set -u", "umask 022", "cd /",
        f"command -v setpriv >/dev/null 2>&1 || {{ echo '{NO_NAMESPACES_MARKER}'; exit {NO_NAMESPACES_EXIT}; }}",
        f"fresh='{_FRESH}'",
        f"$fresh {_DROP} /bin/sh -c : 2>/dev/null || {{ echo {shlex.quote(warning)}; fresh=''; }}",
        f"mkdir -p {QUEUE}",
        f"k=1; while [ $k -le {len(steps)} ]; do",
        f'  mkfifo "{QUEUE}/$k"',
        f'  $fresh {_DROP} /bin/sh {MOUNT}/wait.sh "$k" &',
        '  eval "pid$k=$!"; k=$((k + 1))',
        "done",
    ]
    for k, (marker, _) in enumerate(steps, 1):
        lines += [*_marker(marker), f'echo > "{QUEUE}/{k}"', f"wait $pid{k} || exit"]
    return "\n".join([*lines, f"echo '{STEP_MARKER}done'"]) + "\n"


def _plain_runner(steps: Sequence[tuple[str | None, str]]) -> str:
    lines = ["#!/bin/sh", "set -u", "umask 022", "cd /"]
    for k, (marker, _) in enumerate(steps, 1):
        lines += [*_marker(marker), f"/bin/sh -e {MOUNT}/steps/{k}.sh || exit"]
    return "\n".join([*lines, f"echo '{STEP_MARKER}done'"]) + "\n"


def lacks_namespaces(result: RunResult) -> bool:
    """Whether ``build.sh`` stopped before any step because the image has no ``setpriv``."""
    return result.exit_code == NO_NAMESPACES_EXIT and NO_NAMESPACES_MARKER in result.output


def failure_hint(output: str) -> str | None:
    """A next step that knows the failed step's ecosystem (an R package's missing header), if any."""
    return ecosystems.failure_hint(output)


def failed_step(output: str) -> str:
    """The step a build script was in when it stopped (its last marker)."""
    steps = [ln.split(STEP_MARKER, 1)[1] for ln in output.splitlines() if STEP_MARKER in ln]
    return steps[-1] if steps else "start of the build"
