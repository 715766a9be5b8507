"""A Debian root: the bootstrap package set of a suite/variant, pinned (``[base] debian = {...}``).

Its ``[apt]`` packages are the bootstrap's ``include``; its .debs are listed,
fetched and described like a layer's (``apt_layer``), and ``build.bootstrap``
installs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

from buildsys.core.errors import LockError
from buildsys.core.store import Artifact
from buildsys.ecosystems.apt import AptResolver
from buildsys.ecosystems.apt_layer import deb_component, deb_pin
from buildsys.ecosystems.base import Component, Ecosystem, LockContext, Pin
from buildsys.model.lockfile import DebianBaseLock, Lock, LockedArchive, LockedDeb
from buildsys.model.recipe import DebianBase, Recipe


def lock_debian_root(recipe: Recipe, cache_dir: Path) -> tuple[DebianBaseLock, int]:
    """Resolve what mmdebstrap would install; return the [base] table and its epoch.

    The epoch is the newest signed Release ``Date`` of the archives (the suite,
    its -updates and -security): every locked .deb was in its archive when
    that Release was signed, so no file in them is newer. It comes from the
    archives, never from the wall clock.
    """
    base = recipe.base
    assert isinstance(base, DebianBase)
    resolver = AptResolver(cache_dir, base.mirror, base.suite, base.components, base.architecture,
                           extra=base.archives[1:])
    try:
        release = resolver.update()
        releases = resolver.releases()
    except LockError as e:
        raise LockError(f"{recipe.path}: base.debian: {e.message}", e.hint) from e
    try:
        packages = resolver.bootstrap_set(base.variant, include=recipe.apt_packages)
    except LockError as e:
        raise LockError(f"{recipe.path}: apt.packages: {e.message}", e.hint) from e
    locked = tuple(
        LockedDeb(name=p.name, version=p.version, architecture=p.architecture, sha256=p.sha256, size=p.size,
                  path=p.filename, mirror=p.mirror or base.mirror)
        for p in packages
    )
    archives = tuple(LockedArchive(mirror=r.mirror, suite=r.suite, codename=r.codename, release_date=r.date,
                                   inrelease_sha256=r.inrelease_sha256) for r in releases)
    table = DebianBaseLock(
        suite=base.suite,
        codename=release.codename,
        variant=base.variant,
        architecture=base.architecture,
        components=tuple(base.components),
        mirror=base.mirror,
        release_date=release.date,
        inrelease_sha256=release.inrelease_sha256,
        include=tuple(sorted(recipe.apt_packages)),
        packages=locked,
        # A lock of the suite alone keeps the old form (no archives table): nothing changes for it.
        archives=archives if len(archives) > 1 else (),
    )
    return table, max(r.epoch for r in releases)


class DebianRoot(Ecosystem):
    name = "debian"
    agree_as = "apt"  # one namespace with the layers' [apt]: dpkg knows one version of a package

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        if not (recipe.is_root and isinstance(recipe.base, DebianBase)):
            return lock
        base, epoch = lock_debian_root(recipe, ctx.store.cache / "apt")
        return dataclasses.replace(lock, base=base, source_date_epoch=max(lock.source_date_epoch, epoch))

    def artifacts(self, lock: Lock) -> list[Artifact]:
        return [p.artifact() for p in lock.base.packages] if lock.base else []

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        if lock.base is None or not isinstance(recipe.base, DebianBase):
            return []
        problems: list[str] = []
        b, want = lock.base, recipe.base
        for key, have, asked in (("suite", b.suite, want.suite), ("variant", b.variant, want.variant),
                                 ("architecture", b.architecture, want.architecture),
                                 ("mirror", b.mirror, want.mirror), ("components", b.components, want.components)):
            if have != asked:
                problems.append(f"[base] {key} is {have!r}, the recipe asks for {asked!r}")
        have_archives = [(a.mirror, a.suite) for a in b.all_archives]
        if have_archives != list(want.archives):
            problems.append(f"[base] is resolved from {_archives(have_archives)}, the recipe asks for "
                            f"{_archives(want.archives)}")
        if sorted(b.include) != sorted(recipe.apt_packages):
            problems.append(f"[base] include is {sorted(b.include)}, "
                            f"the recipe's [apt] is {sorted(recipe.apt_packages)}")
        return problems

    def components(self, lock: Lock) -> list[Component]:
        debs = lock.base.packages if lock.base else ()
        return [deb_component(d) for d in sorted(debs, key=lambda d: (d.name, d.architecture))]

    def pins(self, lock: Lock) -> list[Pin]:
        return [deb_pin(d) for d in lock.base.packages] if lock.base else []


def _archives(archives: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{mirror} {suite}" for mirror, suite in archives)


DEBIAN_ROOT = DebianRoot()
