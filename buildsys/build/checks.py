"""What a layer is checked against before and after it is made: the vendor store and dpkg's view.

The locks are the bill of materials: a layer is made only from vendored files
with their locked hashes, and dpkg must then hold exactly the locked packages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from buildsys import ecosystems
from buildsys.core.errors import BuildError, NotVendored, StaleLock
from buildsys.core.store import Store
from buildsys.fetch.vendor import verify_store
from buildsys.model.lockfile import Lock, lock_path
from buildsys.model.recipe import Recipe
from buildsys.oci.layer.tree import ParentTree


def check_built(locks: Mapping[str, Lock], recipe: Recipe, prefix: Sequence[str], output: str,
                below: ParentTree | None) -> None:
    """Each ecosystem's part of the layer just built is what the chain's locks pin: the locks are the bill of
    materials (dpkg holds exactly the locked packages, on a registry image with what the image itself had)."""
    for eco, problem in ecosystems.check_built([locks[name] for name in prefix], output, below):
        raise not_as_locked(recipe.name, eco.name, problem)


def not_as_locked(recipe: str, step: str, problem: str) -> BuildError:
    return BuildError(recipe, step, problem, hint=f"relock: `buildsys lock --upgrade {recipe}`; if it persists, "
                                                  "this is a buildsys bug")


def check_vendored(store: Store, locks: Mapping[str, Lock], recipe: Recipe, prefix: Sequence[str]) -> None:
    """Every input of the layer is in the vendor store with its locked sha256, and the pip set is closed.

    A damaged file is removed (so ``fetch`` replaces it) and named; this costs
    one hash pass over the layer's inputs, and only on a cache miss. The
    closure is read from the wheels themselves (``Ecosystem.closure_problems``):
    pip installs with ``--no-deps`` and would not notice a missing one.
    """
    arts = ecosystems.artifacts(locks[recipe.name])
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
    if unmet := ecosystems.closure_problems(store, [locks[n] for n in prefix], lock):
        # Named by the word for each one's packages ("pip", "CRAN"), as when parents disagree on one.
        kinds = list(dict.fromkeys(eco.agree_as or eco.name for eco, _ in unmet))
        sets = f"{kinds[0]} package set is" if len(kinds) == 1 else f"{' and '.join(kinds)} package sets are"
        more = f" (and {len(unmet) - 3} more)" if len(unmet) > 3 else ""
        raise StaleLock(recipe.name, lock_path(recipe.path.parent.parent, recipe.name),
                        f"its {sets} not closed: " + "; ".join(problem for _, problem in unmet[:3]) + more)
