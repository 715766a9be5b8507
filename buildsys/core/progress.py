"""One progress protocol for long work: lock, fetch, build, publish, export, bundle.

A step reports ``(recipe, stage, detail)`` as it goes: ``("jupyter", "install",
"apt: 212 packages")``. The core only calls it; what the person sees (a live
table on a terminal, one line per event in a log) is the CLI's business
(``buildsys.cli.render``). Work that is not about one recipe (a bundle, a
registry round trip) names what it works on in the first field.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, str, str], None]  # (recipe, stage, detail)


def _discard(recipe: str, stage: str, detail: str) -> None:
    """Report nowhere: the default of every function that takes a progress."""


NO_PROGRESS: Progress = _discard
