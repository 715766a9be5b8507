"""What a layer is checked against before and after it is made: the vendor store and dpkg's view.

The locks are the bill of materials: a layer is made only from vendored files
with their locked hashes, and dpkg must then hold exactly the locked packages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from buildsys.core import dpkg
from buildsys.core.errors import BuildError, NotVendored, StaleLock
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts, closure_problems
from buildsys.ecosystems.apt_layer import debs_of
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.fetch.vendor import verify_store
from buildsys.model.lockfile import Lock, lock_path
from buildsys.model.recipe import Recipe
from buildsys.oci.layer.tree import ParentTree


def check_packages(locks: Mapping[str, Lock], recipe: Recipe, prefix: Sequence[str],
                   installed: Mapping[str, str] | None, step: str, below: ParentTree | None = None) -> None:
    """dpkg must hold exactly the locked packages of the chain so far: the locks are the bill of materials.

    On a registry image, what the image itself installed is in no lock: it is read
    from the parent image's own dpkg status (``below``), and the locks add to it.
    """
    if installed is None:
        return
    expected: dict[str, str] = {}
    if locks[prefix[0]].get(ImageBaseLock) is not None and below is not None:
        expected.update(dpkg.installed(below.read("var/lib/dpkg/status") or b""))
    for name in prefix:
        expected.update({d.name: d.version for d in debs_of(locks[name])})
    if installed != expected:
        extra = sorted(set(installed) - set(expected))
        missing = sorted(set(expected) - set(installed))
        changed = sorted(n for n in set(installed) & set(expected) if installed[n] != expected[n])
        raise BuildError(recipe.name, step, f"installed but not locked: {extra or '-'}; locked but not "
                         f"installed: {missing or '-'}; other version: {changed or '-'}",
                         hint=f"relock: `buildsys lock --upgrade {recipe.name}`; if it persists, "
                              "this is a buildsys bug")


def check_vendored(store: Store, locks: Mapping[str, Lock], recipe: Recipe, prefix: Sequence[str]) -> None:
    """Every input of the layer is in the vendor store with its locked sha256, and the pip set is closed.

    A damaged file is removed (so ``fetch`` replaces it) and named; this costs
    one hash pass over the layer's inputs, and only on a cache miss. The
    closure is read from the wheels themselves (``Ecosystem.closure_problems``):
    pip installs with ``--no-deps`` and would not notice a missing one.
    """
    arts = artifacts(locks[recipe.name])
    missing = [a for a in arts if not store.vendor_path(a.sha256).is_file()]
    if missing:
        names = ", ".join(f"{a.name} {a.version}".strip() for a in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise NotVendored(recipe.name, f"{len(missing)} locked file(s) ({names}{more})")
    corrupt = verify_store(store, arts, remove=True)
    if corrupt:
        a = corrupt[0]
        raise NotVendored(recipe.name, f"{a.name} {a.version} ({a.filename})".replace("  ", " "),
                          f"damaged in the vendor store (its sha256 is not the locked {a.sha256}); "
                          f"{len(corrupt)} damaged file(s) were removed")
    lock = locks[recipe.name]
    if unmet := closure_problems(store, [locks[n] for n in prefix], lock):
        more = f" (and {len(unmet) - 3} more)" if len(unmet) > 3 else ""
        raise StaleLock(recipe.name, lock_path(recipe.path.parent.parent, recipe.name),
                        "its pip set is not closed: " + "; ".join(unmet[:3]) + more)
