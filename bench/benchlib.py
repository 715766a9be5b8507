"""What the bench scripts share: a recorder of the Builder's progress events, and a timer."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

MB = 1e6
T = TypeVar("T")


@dataclass
class Events:
    """The Builder's progress events (its ``report`` callback), each with the moment it arrived."""

    t0: float = field(default_factory=time.monotonic)
    seen: list[tuple[float, str, str, str]] = field(default_factory=list)

    def __call__(self, recipe: str, stage: str, detail: str) -> None:
        self.seen.append((time.monotonic(), recipe, stage, detail))

    def stages(self, recipe: str) -> list[str]:
        return [s for _, r, s, _ in self.seen if r == recipe]

    def at(self, recipe: str, stage: str, detail: str | None = None) -> float | None:
        return next((t for t, r, s, d in self.seen if r == recipe and s == stage and detail in (None, d)), None)

    def built_seconds(self) -> dict[str, float]:
        """Each layer's own time, from the "built" event's "in N.Ns"."""
        out: dict[str, float] = {}
        for _, recipe, stage, detail in self.seen:
            m = re.search(r" in ([0-9.]+)s$", detail) if stage == "built" else None
            if m:
                out[recipe] = float(m.group(1))
        return out


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result
