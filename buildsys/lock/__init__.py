"""``buildsys lock``: resolve recipes into lock files, ancestors first.

Each ecosystem (``ecosystems.ECOSYSTEMS``) locks its own part of a recipe;
this module orders the work, decides what is stale (``freshness``) and gives
the ecosystems what they ask for while they resolve (``LockContext``): the
parent chain's image, built by a ``ParentImages`` the caller passes in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys import ecosystems
from buildsys.core.errors import BuildsysError, LockError, MissingLock, StaleLock
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store
from buildsys.lock import parents as layer
from buildsys.lock.freshness import Change, LockOutcome, check_fresh, check_locks, fresh_locks
from buildsys.lock.parents import ParentImages, ParentImagesFactory, Vendor
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, dumps, hash_bytes, lock_path, read_lock, write_lock
from buildsys.model.recipe import Recipe
from buildsys.oci.layer.tree import ParentTree

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    from buildsys.engine import Engine

__all__ = ["Change", "LockOutcome", "ParentImages", "check_fresh", "check_locks", "diff_locks", "fresh_locks",
           "lock_recipes", "resolve"]


def diff_locks(old: Lock | None, new: Lock) -> list[Change]:
    """The pins that differ between two locks of one recipe, sorted."""

    def pins(lock: Lock | None) -> dict[tuple[str, str], tuple[str, str]]:
        if lock is None:
            return {}
        every = [p for _, p in ecosystems.pins(lock)] + ecosystems.states(lock)  # packages, and archive states
        return {(p.kind, p.name): (p.version, p.source) for p in every}

    before, after = pins(old), pins(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        (v0, _), (v1, src) = before.get(key, ("", "")), after.get(key, ("", ""))
        if v0 != v1:
            changes.append(Change(new.recipe, key[0], key[1], v0, v1, src))
    return changes


def lock_recipes(
    project: Path,
    store: Store,
    graph: Graph,
    names: Sequence[str],
    *,
    upgrade: bool = False,
    upgrade_packages: Sequence[str] = (),
    parent_images: ParentImagesFactory | None = None,
    vendor: Vendor = lambda artifacts: None,
    report: Callable[[LockOutcome], None] = lambda o: None,
    progress: Progress = NO_PROGRESS,
    dry_run: bool = False,
) -> list[LockOutcome]:
    """Lock ``names`` and their ancestors. A fresh lock is kept as it is unless upgrading.

    ``parent_images`` makes a builder of parent images (``build.Builder`` over
    the locks so far), needed only when an ecosystem resolves inside its
    parent's image (pip, CRAN, apt on a registry image); ``vendor`` fetches
    the parents' locked files first (``fetch.vendor.fetch``). ``dry_run`` resolves
    the same way and writes nothing: each outcome carries the pins a relock
    would move (``lock --upgrade --check``, the weekly question "what do new
    fixes change?").
    """
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
        previous = _previous(path)
        lock = resolve(recipe, store, graph, locks, previous=previous, upgrade=upgrade and name in selected,
                       upgrade_packages=upgrade_packages if name in selected else (), parent_images=parent_images,
                       vendor=vendor, progress=progress)
        if dry_run:
            data = dumps(lock)
            locks[name] = dataclasses.replace(lock, lock_hash=hash_bytes(data))
            changed = not path.is_file() or path.read_bytes() != data
            moved = tuple(diff_locks(previous, lock))
            outcome = LockOutcome(name, path, "would change" if changed else "unchanged",
                                  f"{len(moved)} pin(s) move" if moved else "", changes=moved)
            outcomes.append(outcome)
            report(outcome)
            continue
        written, changed, locks[name] = write_lock(project, lock)
        outcome = LockOutcome(name, written, "written" if changed else "unchanged")
        outcomes.append(outcome)
        report(outcome)
    return outcomes


def _previous(path: Path) -> Lock | None:
    """The lock being replaced, for keeping its pins (pip-compile's semantics)."""
    try:
        return read_lock(path) if path.is_file() else None
    except BuildsysError:
        return None


def resolve(recipe: Recipe, store: Store, graph: Graph, locks: dict[str, Lock], *, previous: Lock | None = None,
            upgrade: bool = False, upgrade_packages: Sequence[str] = (),
            parent_images: ParentImagesFactory | None = None, vendor: Vendor = lambda artifacts: None,
            progress: Progress = NO_PROGRESS) -> Lock:
    """Resolve one recipe against its (already locked) ancestors: each ecosystem in turn adds its part."""
    chain = graph.chain(recipe.name)
    ancestors = [locks[n] for n in chain[:-1]]
    ctx = _Resolution(recipe, store, chain, locks, previous, upgrade, upgrade_packages, parent_images, vendor,
                      progress)
    for eco in ecosystems.ECOSYSTEMS:
        eco.prepare(ctx)  # an unreachable index or a refused section says so before anything is built
    layer.check_parents_agree(recipe, graph, locks)
    lock = Lock(recipe=recipe.name, recipe_hash=recipe.recipe_hash,
                source_date_epoch=max((lk.source_date_epoch for lk in ancestors), default=0),
                parents={p: locks[p].lock_hash for p in recipe.parents})
    try:
        for eco in ecosystems.ECOSYSTEMS:
            lock = eco.lock(ctx, lock)
    finally:
        ctx.close()
    return lock


class _Resolution:
    """The ``LockContext`` of one recipe: its chain, and the parent images built (once) on demand."""

    def __init__(self, recipe: Recipe, store: Store, chain: Sequence[str], locks: Mapping[str, Lock],
                 previous: Lock | None, upgrade: bool, upgrade_packages: Sequence[str],
                 parent_images: ParentImagesFactory | None, vendor: Vendor, progress: Progress) -> None:
        self.recipe = recipe
        self.store = store
        self.ancestors = [locks[n] for n in chain[:-1]]
        self.previous = previous
        self.upgrade = upgrade
        self.upgrade_packages = upgrade_packages
        self.notes: MutableMapping[str, Any] = {}
        self._prefix = list(chain[:-1])
        self._locks = locks
        self._factory = parent_images
        self._vendor = vendor
        self._progress = progress
        self._builder: ParentImages[Any] | None = None
        self._image: str | None = None
        self._cleanups: list[Callable[[], None]] = []

    def progress(self, message: str) -> None:
        self._progress(self.recipe.name, "lock", message)

    def warn(self, message: str) -> None:
        self._progress(self.recipe.name, "warning", message)

    def _parents(self, why: str) -> ParentImages[Any]:
        if self._builder is None:
            if self._factory is None or not self._prefix:
                raise LockError(f"{self.recipe.path}: building the parent chain {why} needs the docker engine")
            self._builder = self._factory(self._locks)
        return self._builder

    def engine(self) -> Engine:
        engine = self._parents("to resolve in it").docker()
        if engine is None:
            raise LockError(f"{self.recipe.path}: resolving in the parent image needs the docker engine")
        return engine

    def parent_tree(self, why: str) -> ParentTree:
        builder = self._parents(why)
        record = layer.build_parent(builder, self._vendor, self._locks, self.recipe, self._prefix, self._progress, why)
        return layer.parent_tree(builder, record, self.store)

    def image(self, lock: Lock, why: str) -> str:
        if self._image is None:
            builder = self._parents(why)
            self._image, cleanup = layer.image_with(builder, self._vendor, self.engine(), self._locks, self.recipe,
                                                    self._prefix, lock, self._progress, why)
            self._cleanups.append(cleanup)
        return self._image

    def close(self) -> None:
        while self._cleanups:
            self._cleanups.pop()()


