"""Where the ecosystems' parts of a recipe or of a lock are registered, and what is made of them, once.

``model/`` cannot import ``ecosystems/``, so each ecosystem's ``RecipeSection`` and
``LockSection`` is handed to ``model/`` when ``buildsys.ecosystems`` is imported
(``register_recipe_sections``, ``register_sections``). A ``Sections`` holds one kind's
parts in the order they were registered (the order of their checks) and what the
reader makes of them all (the recipe schema, the lock's top level), made at its first
use and again only after another part registers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
D = TypeVar("D")


class Sections(Generic[K, D]):
    """The registered parts of one kind (``K``, a class), in order, and ``derive`` of them (``D``), cached."""

    def __init__(self, what: str, before: str, derive: Callable[[tuple[K, ...]], D]) -> None:
        self._what, self._before, self._derive = what, before, derive
        self._kinds: list[K] = []
        self._derived: D | None = None

    def register(self, *kinds: K) -> None:
        for kind in kinds:
            if kind not in self._kinds:
                self._kinds.append(kind)
        self._derived = None

    def kinds(self) -> tuple[K, ...]:
        if not self._kinds:  # a read before any ecosystem said what its part is would lose or refuse every part
            raise RuntimeError(f"no {self._what} is registered: import buildsys.ecosystems before {self._before}")
        return tuple(self._kinds)

    def derived(self) -> D:
        """``derive`` of the registered parts, made once until another registers."""
        if self._derived is None:
            self._derived = self._derive(self.kinds())
        return self._derived
