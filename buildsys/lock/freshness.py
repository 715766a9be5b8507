"""Is a lock still the lock of its recipe? (``lock --check``, and the first step of every build.)

The recipe hash tells that the recipe did not change since the lock was
written; it says nothing about the lock itself, which can be edited (an entry
deleted in a pull request, a mirror swapped). So each ecosystem also compares
the lock with its recipe and its ancestors' locks (``Ecosystem.covers``): every
requested package and file is there, pins meet the recipe's specifiers, and
every URL comes from a source the recipe declares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys import ecosystems
from buildsys.core.errors import MissingLock, StaleLock
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, load_lock, lock_path
from buildsys.model.recipe import Recipe


@dataclass(frozen=True)
class Change:
    """One pin that a relock moves: what ``lock --upgrade --check`` reports."""

    recipe: str
    kind: str  # "apt" | "pip" | "cran" | "files" | "image"; "apt-archive" | "apt-source": a signed Release state
    name: str
    old: str  # "" when added
    new: str  # "" when removed
    source: str  # where the new one comes from: the archive's mirror, the index, the URL

    def __str__(self) -> str:
        move = f"{self.old or '(new)'} -> {self.new or '(removed)'}"
        return f"{self.recipe}: {self.kind} {self.name} {move}" + (f" ({self.source})" if self.source else "")


@dataclass(frozen=True)
class LockOutcome:
    recipe: str
    path: Path
    status: str  # "written" | "unchanged" | "fresh" | "stale" | "missing" | "would change"
    detail: str = ""
    changes: tuple[Change, ...] = ()  # what a relock changes (set by a dry run)


def ancestors(lock: Lock, locks: Mapping[str, Lock]) -> list[Lock]:
    """The locks of every ancestor of ``lock`` that ``locks`` holds (following ``parents``)."""
    seen: dict[str, Lock] = {}
    todo = list(lock.parents)
    while todo:
        name = todo.pop()
        if name in seen or name not in locks:
            continue
        seen[name] = locks[name]
        todo += list(locks[name].parents)
    return [seen[n] for n in sorted(seen)]


def check_fresh(project: Path, recipe: Recipe, locks: Mapping[str, Lock]) -> Lock:
    """The recipe's lock, if it still matches the recipe and its parents' locks.

    ``locks`` holds the already-checked locks of the ancestors.
    """
    lock = load_lock(project, recipe.name)
    path = lock_path(project, recipe.name)
    if lock.recipe != recipe.name:
        raise StaleLock(recipe.name, path, f"it was written for recipe '{lock.recipe}'")
    if lock.recipe_hash != recipe.recipe_hash:
        files = f" or a file it names ({', '.join(p for p, _ in recipe.inputs)})" if recipe.inputs else ""
        raise StaleLock(recipe.name, path, f"recipes/{recipe.name}.toml{files} changed since it was locked")
    if set(lock.parents) != set(recipe.parents):
        raise StaleLock(recipe.name, path, f"the recipe's parents are now {sorted(recipe.parents)}, "
                                           f"the lock has {sorted(lock.parents)}")
    for p in recipe.parents:
        if lock.parents[p] != locks[p].lock_hash:
            raise StaleLock(recipe.name, path, f"parent '{p}' was relocked since")
    problems = ecosystems.covers(recipe, lock, ancestors(lock, locks))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StaleLock(recipe.name, path, "it does not cover its recipe: " + "; ".join(problems[:3]) + more)
    return lock


def check_locks(project: Path, graph: Graph, names: Sequence[str]) -> list[LockOutcome]:
    """``lock --check``: report every missing or stale lock; write nothing."""
    outcomes: list[LockOutcome] = []
    locks: dict[str, Lock] = {}
    for name in graph.closure(names):
        recipe = graph.recipes[name]
        try:
            if any(p not in locks for p in recipe.parents):
                raise StaleLock(name, lock_path(project, name), "a parent's lock is missing or stale")
            locks[name] = check_fresh(project, recipe, locks)
            outcomes.append(LockOutcome(name, lock_path(project, name), "fresh"))
        except MissingLock as e:
            outcomes.append(LockOutcome(name, lock_path(project, name), "missing", e.message))
        except StaleLock as e:
            outcomes.append(LockOutcome(name, lock_path(project, name), "stale", e.reason))
    return outcomes


def fresh_locks(project: Path, graph: Graph, names: Sequence[str]) -> dict[str, Lock]:
    """The locks of ``names`` and their ancestors, all checked; raise on the first stale one."""
    locks: dict[str, Lock] = {}
    for name in graph.closure(names):
        locks[name] = check_fresh(project, graph.recipes[name], locks)
    return locks
