"""Lock a layer on top of a chain: apt against the parent's packages, pip in the image.

apt resolves on this host with the parent chain's locked packages as the dpkg
status, from the same archive state as the chain's root (its InRelease hash):
a chain never mixes two states of the archive. pip resolves inside an image
of the parent chain plus this layer's apt packages, so it sees the Python and
platform the image really has; the ancestors are built first when needed.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from buildsys.build.builder import Builder
from buildsys.build.records import LayerRecord, Reporter
from buildsys.core.errors import LockError
from buildsys.core.store import Store
from buildsys.ecosystems.apt import AptPackage, AptResolver
from buildsys.fetch.vendor import fetch
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, LockedArchive, LockedDeb
from buildsys.model.recipe import Recipe


def chain_debs(locks: Sequence[Lock]) -> dict[str, LockedDeb]:
    """What a chain of layers has installed from Debian, by package name."""
    out: dict[str, LockedDeb] = {}
    for lk in locks:
        for d in (*(lk.base.packages if lk.base else ()), *lk.apt):
            out[d.name] = d
    return out


def chain_pips(locks: Sequence[Lock]) -> dict[str, str]:
    """The pip pins of a chain of layers, name -> version."""
    return {p.name: p.version for lk in locks for p in lk.pip}


def check_parents_agree(recipe: Recipe, graph: Graph, locks: Mapping[str, Lock]) -> None:
    """Parents that share a package must pin it to the same version (apt, pip and CRAN alike)."""
    if len(recipe.parents) < 2:
        return
    seen: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, package) -> (version, recipe)
    for parent in recipe.parents:
        for name in graph.chain(parent):
            lk = locks[name]
            pins = [("apt", d.name, d.version) for d in (*(lk.base.packages if lk.base else ()), *lk.apt)]
            pins += [("pip", p.name, p.version) for p in lk.pip]
            pins += [("CRAN", c.name, c.version) for c in lk.cran]
            for kind, pkg, version in pins:
                other = seen.setdefault((kind, pkg), (version, name))
                if other[0] != version:
                    both = " ".join(sorted({other[1], name}))
                    raise LockError(
                        f"{recipe.path}: parents disagree on {kind} package '{pkg}': {other[0]} (locked by "
                        f"'{other[1]}') vs {version} (locked by '{name}')",
                        f"relock them against the same state: `buildsys lock --upgrade {both}`",
                    )


def lock_apt(recipe: Recipe, root: Lock, ancestors: Sequence[Lock], cache: Path) -> list[LockedDeb]:
    """The closure of the recipe's apt packages minus what the ancestors installed."""
    if not recipe.apt_packages:
        return []
    base = root.base
    assert base is not None
    archives = base.all_archives
    resolver = AptResolver(cache, base.mirror, base.suite, base.components, base.architecture,
                           extra=[(a.mirror, a.suite) for a in archives[1:]])
    resolver.update(refresh=False)
    if _moved(resolver, archives):
        resolver.update(refresh=True)
    if moved := _moved(resolver, archives):
        locked, now = moved
        raise LockError(
            f"{recipe.path}: Debian's archive {locked.mirror} {locked.suite} changed since the root "
            f"'{root.recipe}' was locked (its Release: {locked.release_date}; now: {now}); a chain must not "
            "mix two archive states",
            f"relock from the root: `buildsys lock --upgrade {root.recipe} {recipe.name}`",
        )
    installed = chain_debs(ancestors)
    with tempfile.TemporaryDirectory() as tmp:
        status = Path(tmp) / "status"
        resolver.write_status([AptPackage(name=d.name, version=d.version, architecture=d.architecture,
                                          sha256=d.sha256, size=d.size, filename=d.path)
                               for d in installed.values()], status)
        try:
            packages = resolver.resolve(recipe.apt_packages, status=status)
        except LockError as e:
            raise LockError(f"{recipe.path}: apt.packages: {e.message}", e.hint) from e
    return [LockedDeb(name=p.name, version=p.version, architecture=p.architecture, sha256=p.sha256, size=p.size,
                      path=p.filename, mirror=p.mirror or base.mirror) for p in packages]


def _moved(resolver: AptResolver, archives: Sequence[LockedArchive]) -> tuple[LockedArchive, str] | None:
    """The first archive whose signed Release is not the one the root was locked against, and its date now."""
    for locked, now in zip(archives, resolver.releases(), strict=True):
        if now.inrelease_sha256 != locked.inrelease_sha256:
            return locked, now.date
    return None


def build_parent(builder: Builder, recipe: Recipe, prefix: Sequence[str], store: Store, report: Reporter,
                 why: str) -> LayerRecord:
    """The image of the parent chain ``prefix``, its inputs fetched first (built once per ``builder``)."""
    arts = {a.sha256: a for name in prefix for a in builder.locks[name].artifacts()}
    fetch(store, list(arts.values()), progress=False)
    report(recipe.name, "lock", f"building the parent chain ({' -> '.join(prefix)}) {why}")
    records, _ = builder.build_prefix(prefix)
    return records[-1]


def lock_image_with_apt(builder: Builder, recipe: Recipe, prefix: Sequence[str], apt_lock: Lock,
                        store: Store, report: Reporter) -> tuple[str, Callable[[], None]]:
    """An image of the parent chain plus this layer's apt packages, for resolving pip in it.

    Returns the image reference and a function that removes it (when it is temporary).
    """
    assert builder.engine is not None
    engine = builder.engine
    fetch(store, apt_lock.artifacts(), progress=False)
    parent = build_parent(builder, recipe, prefix, store, report, "to resolve pip in it")
    builder.load(parent)
    if not apt_lock.apt:
        return parent.config_digest, lambda: None
    report(recipe.name, "lock", f"installing {len(apt_lock.apt)} apt packages to resolve pip against them")
    apt_only = dataclasses.replace(recipe, run=(), files=(), pip_packages=())
    with builder.run_steps(apt_only, apt_lock, parent) as (container, _, _):
        image = container.commit()
    return image, lambda: engine.remove_image(image)
