"""Lock a Debian root: the bootstrap package set of a suite/variant, pinned."""

from __future__ import annotations

from pathlib import Path

from buildsys.core.errors import LockError
from buildsys.ecosystems.apt import AptResolver
from buildsys.model.lockfile import DebianBaseLock, LockedArchive, LockedDeb
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
