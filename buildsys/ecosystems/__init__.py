"""Every ecosystem, in the order a recipe is locked, staged, checked and listed.

The order is the SBOM's (the image, the .debs, the wheels, the R packages, the
files) and the resolver's: apt comes before pip and CRAN, which resolve in an
image that has the layer's apt packages. Adding an ecosystem is a module with
an ``Ecosystem`` (with its parts of a recipe and of a lock, ``recipe_section``
and ``lock_section``, which are registered here with ``model/``) and one entry
here. The functions below read ``ECOSYSTEMS`` when called (a test may put a
fake one in).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from buildsys.core.store import Artifact, Store
from buildsys.ecosystems.apt_layer import APT
from buildsys.ecosystems.base import Component, Ecosystem, Pin
from buildsys.ecosystems.cran import CRAN
from buildsys.ecosystems.debian_root import DEBIAN_ROOT
from buildsys.ecosystems.files import FILES
from buildsys.ecosystems.pip import PIP
from buildsys.ecosystems.registry_image import REGISTRY_IMAGE
from buildsys.model.lockfile import Lock, register_sections
from buildsys.model.recipe import Recipe, register_recipe_sections
from buildsys.oci.layer.tree import ParentTree

ECOSYSTEMS: tuple[Ecosystem, ...] = (REGISTRY_IMAGE, DEBIAN_ROOT, APT, PIP, CRAN, FILES)
# Each one's part of a recipe and of a lock, for the recipe parser and the lock reader (in this order: the
# order in which a recipe's and a lock's parts are checked).
register_recipe_sections(*(eco.recipe_section for eco in ECOSYSTEMS if eco.recipe_section is not None))
register_sections(*(eco.lock_section for eco in ECOSYSTEMS if eco.lock_section is not None))


def artifacts(lock: Lock) -> list[Artifact]:
    """Every file ``fetch`` puts in the vendor store for ``lock``."""
    return [a for eco in ECOSYSTEMS for a in eco.artifacts(lock)]


def covers(recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
    """What ``lock`` lacks or holds against its recipe; empty when it covers it. ``above``: ancestors' locks."""
    return [problem for eco in ECOSYSTEMS for problem in eco.covers(recipe, lock, above)]


def closure_problems(store: Store, chain: Sequence[Lock], lock: Lock) -> list[tuple[Ecosystem, str]]:
    """(ecosystem, what is unmet) for what ``lock``'s vendored files need that no lock of ``chain`` pins (``build``
    refuses such a layer)."""
    return [(eco, problem) for eco in ECOSYSTEMS for problem in eco.closure_problems(store, chain, lock)]


def components(lock: Lock) -> list[Component]:
    return [c for eco in ECOSYSTEMS for c in eco.components(lock)]


def chain_components(chain: Sequence[Lock]) -> list[Component]:
    """The SBOM's components of the chain's top lock (``chain``: root first), which the chain makes precise."""
    return [c for eco in ECOSYSTEMS for c in eco.chain_components(chain)]


def declared_license(component: Component, path: Path) -> str | None:
    """The license ``component`` declares in its vendored file at ``path``, by its ecosystem; None if none."""
    return next((found for eco in ECOSYSTEMS if (found := eco.declared_license(component, path)) is not None), None)


def base_facts(chain: Sequence[Lock]) -> dict[str, str]:
    """What the chain stands on, for the SBOM's metadata (``Ecosystem.base_facts``)."""
    return {k: v for eco in ECOSYSTEMS for k, v in eco.base_facts(chain).items()}


def pins(lock: Lock) -> list[tuple[Ecosystem, Pin]]:
    return [(eco, p) for eco in ECOSYSTEMS for p in eco.pins(lock)]


def states(lock: Lock) -> list[Pin]:
    """The signed archive states ``lock`` was resolved against (``Ecosystem.states``)."""
    return [p for eco in ECOSYSTEMS for p in eco.states(lock)]


def checks(recipe: Recipe) -> list[tuple[str, str]]:
    """(label, shell command) of the checks ``buildsys test`` runs before a recipe's own [test] commands."""
    return [c for eco in ECOSYSTEMS for c in eco.checks(recipe)]


def check_built(chain: Sequence[Lock], output: str, below: ParentTree | None) -> list[tuple[Ecosystem, str]]:
    """(ecosystem, what is wrong) for each ecosystem whose part of a layer just built is not what the locks pin."""
    return [(eco, problem) for eco in ECOSYSTEMS if (problem := eco.check_built(chain, output, below))]


def downloader(url: str) -> Ecosystem | None:
    """The ecosystem that downloads ``url`` itself (by its scheme: a registry's blobs), if any."""
    scheme = urlsplit(url).scheme
    return next((eco for eco in ECOSYSTEMS if eco.url_scheme == scheme), None)


def failure_hint(output: str) -> str | None:
    """A next step that knows the failed step's ecosystem (an R package's missing header), if any."""
    return next((hint for eco in ECOSYSTEMS if (hint := eco.failure_hint(output))), None)
