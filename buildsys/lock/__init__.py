"""``buildsys lock``: resolve recipes into lock files, ancestors first.

One module per ecosystem (``base`` for Debian roots, ``apt``, ``pip``,
``cran``, ``files``); this module orders the work and decides what is stale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.build.builder import Builder, Reporter
from buildsys.core.errors import BuildsysError, LockError, MissingLock, StaleLock
from buildsys.core.store import Store
from buildsys.ecosystems.debian_root import lock_debian_root
from buildsys.ecosystems.files import lock_files
from buildsys.lock import parents as layer
from buildsys.model.graph import Graph
from buildsys.model.lockfile import (
    Lock,
    LockedArchive,
    check_fresh,
    dumps,
    hash_bytes,
    lock_path,
    read_lock,
    write_lock,
)
from buildsys.model.recipe import ImageBase, Recipe
from buildsys.oci.layer import ParentTree

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    from buildsys.engine import Engine


@dataclass(frozen=True)
class LockOutcome:
    recipe: str
    path: Path
    status: str  # "written" | "unchanged" | "fresh" | "stale" | "missing" | "would change"
    detail: str = ""
    changes: tuple[Change, ...] = ()  # what a relock changes (set by a dry run)


@dataclass(frozen=True)
class Change:
    """One pin that a relock moves: what ``lock --upgrade --check`` reports."""

    recipe: str
    kind: str  # "apt" | "pip" | "cran" | "files" | "image"
    name: str
    old: str  # "" when added
    new: str  # "" when removed
    source: str  # where the new one comes from: the archive's mirror, the index, the URL

    def __str__(self) -> str:
        move = f"{self.old or '(new)'} -> {self.new or '(removed)'}"
        return f"{self.recipe}: {self.kind} {self.name} {move}" + (f" ({self.source})" if self.source else "")


def diff_locks(old: Lock | None, new: Lock) -> list[Change]:
    """The pins that differ between two locks of one recipe, sorted."""

    def pins(lock: Lock | None) -> dict[tuple[str, str], tuple[str, str]]:
        if lock is None:
            return {}
        out = {("apt", d.name): (d.version, d.mirror)
               for d in (*(lock.base.packages if lock.base else ()), *lock.apt)}
        out.update({("pip", p.name): (p.version, "") for p in lock.pip})
        out.update({("files", f.name): (f.sha256[:12], f.url) for f in lock.files})
        out.update({("cran", c.name): (c.version, "") for c in lock.cran})
        if lock.image_base:  # a tag that moved upstream: the manifest it now names
            out[("image", lock.image_base.reference)] = (lock.image_base.manifest_digest[:19],
                                                          lock.image_base.platform)
        return out

    before, after = pins(old), pins(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        (v0, _), (v1, src) = before.get(key, ("", "")), after.get(key, ("", ""))
        if v0 != v1:
            changes.append(Change(new.recipe, key[0], key[1], v0, v1, src))
    return changes


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
    engine: Callable[[], Engine] | None = None,
    report: Callable[[LockOutcome], None] = lambda o: None,
    progress: Reporter = lambda r, s, d: None,
    dry_run: bool = False,
) -> list[LockOutcome]:
    """Lock ``names`` and their ancestors. A fresh lock is kept as it is unless upgrading.

    ``engine`` connects to docker, needed only when a layer's pip set must be
    resolved inside its parent image. ``dry_run`` resolves the same way and
    writes nothing: each outcome carries the pins a relock would move
    (``lock --upgrade --check``, the weekly question "what do new fixes change?").
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
                       upgrade_packages=upgrade_packages if name in selected else (), engine=engine,
                       progress=progress)
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
            engine: Callable[[], Engine] | None = None, progress: Reporter = lambda r, s, d: None) -> Lock:
    """Resolve one recipe against its (already locked) ancestors."""
    files = lock_files(recipe, store, warn=lambda message: progress(recipe.name, "warning", message))
    if recipe.is_root:
        if isinstance(recipe.base, ImageBase):
            from buildsys.ecosystems.registry_image import lock_image_root

            steps = [k for k, v in (("apt", recipe.apt_packages), ("pip", recipe.pip_packages),
                                    ("cran", recipe.cran_packages), ("files", recipe.files), ("run", recipe.run))
                     if v]
            if steps:
                raise LockError(f"{recipe.path}: a root on a registry image takes the image as it is; "
                                f"it cannot have {', '.join(steps)}",
                                f"move them to a child recipe with parents = [\"{recipe.name}\"]")
            progress(recipe.name, "lock", f"base: resolving {recipe.base.image} ({recipe.base.platform})")
            pinned, epoch = lock_image_root(recipe)
            return Lock(recipe=recipe.name, recipe_hash=recipe.recipe_hash, source_date_epoch=epoch,
                        image_base=pinned)
        if recipe.pip_packages:
            raise LockError(f"{recipe.path}: [pip] in a root recipe is not supported",
                            hint="put pip packages in a child recipe whose chain installs python3")
        if recipe.cran_packages:
            raise LockError(f"{recipe.path}: [cran] in a root recipe is not supported",
                            hint="put CRAN packages in a child recipe whose chain installs R (r-base-core)")
        base, epoch = lock_debian_root(recipe, store.cache / "apt")
        return Lock(recipe=recipe.name, recipe_hash=recipe.recipe_hash,
                    source_date_epoch=max([epoch, *files.epochs]), base=base, files=files.locked)

    cran_index = None
    if recipe.cran_packages:
        from buildsys.ecosystems.cran import check_repo

        progress(recipe.name, "lock", f"cran: reading the index of {recipe.cran_repo}")
        cran_index = check_repo(recipe)
    chain = graph.chain(recipe.name)
    ancestors = [locks[n] for n in chain[:-1]]
    layer.check_parents_agree(recipe, graph, locks)
    image_root = locks[chain[0]].image_base
    eng: Engine | None = None
    builder: Builder | None = None
    apt_archives: tuple[LockedArchive, ...] = ()
    in_image: tuple[str, ...] = ()
    apt_epochs: list[int] = []
    if recipe.apt_packages and image_root is not None:
        # The image's own packages are in no lock: read its dpkg status and release from the built parent.
        from buildsys.ecosystems.registry_apt import image_release, lock_apt_on_image

        if engine is None:
            raise LockError(f"{recipe.path}: resolving [apt] on a registry image needs the docker engine")
        eng = engine()
        builder = Builder(store, graph, locks, engine=eng, tag=False, report=progress)
        parent = layer.build_parent(builder, recipe, chain[:-1], store, progress, "to read its Debian release")
        tree = ParentTree.from_layers((builder.layout.blob_path(d) for d, _ in parent.layers),
                                      index_dir=store.cache / "index")
        release = image_release(recipe, image_root.reference, tree)
        progress(recipe.name, "lock", f"apt: {len(recipe.apt_packages)} packages against the image's dpkg "
                                      f"status and Debian's {release.suite} ({release.pretty})")
        debs, apt_archives, in_image, apt_epoch = lock_apt_on_image(recipe, image_root, release, ancestors,
                                                                    store.cache / "apt")
        apt = debs
        apt_epochs.append(apt_epoch)
    else:
        progress(recipe.name, "lock", f"apt: {len(recipe.apt_packages)} packages against the parent chain")
        apt = layer.lock_apt(recipe, locks[chain[0]], ancestors, store.cache / "apt")
    epoch = max([lk.source_date_epoch for lk in ancestors] + list(files.epochs) + apt_epochs)
    lock = Lock(recipe=recipe.name, recipe_hash=recipe.recipe_hash, source_date_epoch=epoch,
                parents={p: locks[p].lock_hash for p in recipe.parents}, apt=tuple(apt), apt_archives=apt_archives,
                apt_in_image=in_image, files=files.locked)
    if not recipe.pip_packages and cran_index is None:
        return lock
    if engine is None:
        raise LockError(f"{recipe.path}: resolving [pip] and [cran] needs the docker engine")
    from buildsys.ecosystems.cran import lock_cran
    from buildsys.ecosystems.pip import lock_pip

    eng = eng or engine()
    builder = builder or Builder(store, graph, locks, engine=eng, tag=False, report=progress)
    image, cleanup = layer.lock_image_with_apt(builder, recipe, chain[:-1], lock, store, progress)
    try:
        if recipe.pip_packages:
            progress(recipe.name, "lock", f"pip: resolving {len(recipe.pip_packages)} requirements inside the image")
            pip = lock_pip(eng, image, recipe, store, constraints=layer.chain_pips(ancestors),
                           previous=previous.pip if previous else (), upgrade=upgrade,
                           upgrade_packages=upgrade_packages,
                           previous_installer=previous.pip_installer if previous else None)
            lock = dataclasses.replace(lock, pip=pip.packages, python=pip.python, pip_installer=pip.installer,
                                       source_date_epoch=max(lock.source_date_epoch, pip.epoch))
        if cran_index is not None:
            cran = lock_cran(recipe, store, eng, image, {c.name: c.version for lk in ancestors for c in lk.cran},
                             cran_index, progress=lambda message: progress(recipe.name, "lock", message))
            lock = dataclasses.replace(lock, cran=cran.packages, cran_repo=recipe.cran_repo,
                                       cran_index_sha256=cran.index_sha256, r_version=cran.r_version)
    finally:
        cleanup()
    return lock
