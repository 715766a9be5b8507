"""``buildsys lock``: resolve recipes into lock files, ancestors first.

One module per ecosystem (``base`` for Debian roots, ``apt``, ``pip``,
``files``); this module orders the work and decides what is stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys.errors import BuildsysError, LockError, MissingLock, StaleLock
from buildsys.graph import Graph
from buildsys.lockfile import Lock, check_fresh, dumps, hash_bytes, lock_path, write_lock
from buildsys.recipe import DebianBase, ImageBase, Recipe
from buildsys.store import Store


@dataclass(frozen=True)
class LockOutcome:
    recipe: str
    path: Path
    status: str  # "written" | "unchanged" | "fresh" | "stale" | "missing"
    detail: str = ""


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


def lock_recipes(
    project: Path,
    store: Store,
    graph: Graph,
    names: Sequence[str],
    *,
    upgrade: bool = False,
    upgrade_packages: Sequence[str] = (),
    report: Callable[[LockOutcome], None] = lambda o: None,
) -> list[LockOutcome]:
    """Lock ``names`` and their ancestors. A fresh lock is kept as it is unless upgrading."""
    outcomes: list[LockOutcome] = []
    locks: dict[str, Lock] = {}
    selected = set(graph.select(names))
    for name in graph.closure(names):
        recipe = graph.recipes[name]
        path = lock_path(project, name)
        # Upgrades apply to the recipes asked for; ancestors are only relocked when stale.
        wants_upgrade = name in selected and (upgrade or bool(upgrade_packages))
        if not wants_upgrade:
            try:
                locks[name] = check_fresh(project, recipe, locks)
                outcome = LockOutcome(name, path, "fresh")
                outcomes.append(outcome)
                report(outcome)
                continue
            except (MissingLock, StaleLock):
                pass
        lock = resolve(recipe, store, locks)
        written, changed = write_lock(project, lock)
        locks[name] = Lock(**{**lock.__dict__, "lock_hash": hash_bytes(dumps(lock))})
        outcome = LockOutcome(name, written, "written" if changed else "unchanged")
        outcomes.append(outcome)
        report(outcome)
    return outcomes


def resolve(recipe: Recipe, store: Store, parents: dict[str, Lock]) -> Lock:
    """Resolve one recipe against its (already locked) parents."""
    from buildsys.lock.files import lock_files

    cache = store.cache
    files = lock_files(recipe, store)
    if recipe.is_root:
        if isinstance(recipe.base, ImageBase):
            raise LockError(f"{recipe.path}: base.image: registry bases are not supported yet",
                            hint='use [base] debian = { suite = "bookworm" } (no registry is reachable here)')
        assert isinstance(recipe.base, DebianBase)
        from buildsys.lock.base import lock_debian_root

        base, epoch = lock_debian_root(recipe, cache / "apt")
        if recipe.pip_packages:
            raise LockError(f"{recipe.path}: [pip] in a root recipe is not supported",
                            hint="put pip packages in a child recipe whose chain installs python3")
        epoch = max([epoch, *files.epochs])
        return Lock(recipe=recipe.name, recipe_hash=recipe.recipe_hash, source_date_epoch=epoch,
                    base=base, files=files.locked)
    raise BuildsysError(f"{recipe.path}: locking layers on top of a root is not implemented yet",
                        hint="only Debian root recipes can be locked in this version")
