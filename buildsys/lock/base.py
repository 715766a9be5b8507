"""Lock a Debian root: the bootstrap package set of a suite/variant, pinned."""

from __future__ import annotations

from pathlib import Path

from buildsys.errors import LockError
from buildsys.lock.apt import AptResolver
from buildsys.lockfile import DebianBaseLock, LockedDeb
from buildsys.recipe import DebianBase, Recipe


def lock_debian_root(recipe: Recipe, cache_dir: Path) -> tuple[DebianBaseLock, int]:
    """Resolve what mmdebstrap would install; return the [base] table and its epoch.

    The epoch is the signed Release file's ``Date``: every locked .deb was in
    the archive when that Release was signed, so no file in them is newer.
    It comes from the archive, never from the wall clock.
    """
    base = recipe.base
    assert isinstance(base, DebianBase)
    resolver = AptResolver(cache_dir, base.mirror, base.suite, base.components, base.architecture)
    try:
        release = resolver.update()
    except LockError as e:
        raise LockError(f"{recipe.path}: base.debian: {e.message}", e.hint) from e
    try:
        packages = resolver.bootstrap_set(base.variant, include=recipe.apt_packages)
    except LockError as e:
        raise LockError(f"{recipe.path}: apt.packages: {e.message}", e.hint) from e
    locked = tuple(
        LockedDeb(name=p.name, version=p.version, architecture=p.architecture, sha256=p.sha256, size=p.size,
                  path=p.filename, mirror=base.mirror)
        for p in packages
    )
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
    )
    return table, release.epoch
