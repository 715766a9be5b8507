"""A layer's parents at lock time: they must agree, and some ecosystems resolve inside their image.

pip and CRAN resolve inside an image of the parent chain plus this layer's apt
packages, so they see the Python, R and platform the image really has; apt on
a registry image reads the parent image's dpkg status. The ancestors are built
first when needed, by a ``ParentImages`` that the caller passes in (``build``'s
``Builder`` is one; ``lock`` sits below ``build`` and does not import it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from buildsys import ecosystems
from buildsys.core.errors import LockError
from buildsys.core.progress import Progress
from buildsys.core.store import Artifact, Store
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe
from buildsys.oci.image import OciLayout
from buildsys.oci.layer.tree import ParentTree

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    from buildsys.engine import Container, Engine, RunResult

# Puts locked files into the vendor store (``fetch.vendor.fetch``, wired in by the caller: fetch is above lock).
Vendor = Callable[[Sequence[Artifact]], object]


class ParentRecord(Protocol):
    """A built image of a chain prefix, as ``ParentImages`` hands it back."""

    @property
    def config_digest(self) -> str: ...

    @property
    def layers(self) -> Sequence[tuple[str, int]]: ...


R = TypeVar("R", bound=ParentRecord)


class ParentImages(Protocol[R]):
    """What resolution needs from a builder: build a chain prefix, load it, run a layer's install in it."""

    @property
    def layout(self) -> OciLayout: ...

    def docker(self) -> Engine | None: ...

    def build_prefix(self, chain: Sequence[str]) -> tuple[list[R], bool]: ...

    def load(self, record: R, tag: str | None = None) -> None: ...

    def run_steps(self, recipe: Recipe, lock: Lock, parent: R,
                  ) -> AbstractContextManager[tuple[Container, RunResult, Path]]: ...


# Makes a ParentImages over the locks resolved so far (the dict grows as the loop goes).
ParentImagesFactory = Callable[[Mapping[str, Lock]], "ParentImages[Any]"]  # Any: each builder its own record type


def check_parents_agree(recipe: Recipe, graph: Graph, locks: Mapping[str, Lock]) -> None:
    """Parents that share a package must pin it to the same version (apt, pip and CRAN alike)."""
    if len(recipe.parents) < 2:
        return
    seen: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, package) -> (version, recipe)
    for parent in recipe.parents:
        for name in graph.chain(parent):
            for eco, pin in ecosystems.pins(locks[name]):
                if eco.agree_as is None:
                    continue
                other = seen.setdefault((eco.agree_as, pin.name), (pin.version, name))
                if other[0] != pin.version:
                    both = " ".join(sorted({other[1], name}))
                    raise LockError(
                        f"{recipe.path}: parents disagree on {eco.agree_as} package '{pin.name}': {other[0]} "
                        f"(locked by '{other[1]}') vs {pin.version} (locked by '{name}')",
                        f"relock them against the same state: `buildsys lock --upgrade {both}`",
                    )


def build_parent(builder: ParentImages[R], vendor: Vendor, locks: Mapping[str, Lock], recipe: Recipe,
                 prefix: Sequence[str], progress: Progress, why: str) -> R:
    """The image of the parent chain ``prefix``, its inputs fetched first (built once per ``builder``)."""
    arts = {a.sha256: a for name in prefix for a in ecosystems.artifacts(locks[name])}
    vendor(list(arts.values()))
    progress(recipe.name, "lock", f"building the parent chain ({' -> '.join(prefix)}) {why}")
    records, _ = builder.build_prefix(prefix)
    return records[-1]


def parent_tree(builder: ParentImages[R], record: R, store: Store) -> ParentTree:
    """The files of a built parent image, read from its layer blobs."""
    return ParentTree.from_layers((builder.layout.blob_path(d) for d, _ in record.layers),
                                  index_dir=store.cache / "index")


def image_with(builder: ParentImages[R], vendor: Vendor, engine: Engine, locks: Mapping[str, Lock], recipe: Recipe,
               prefix: Sequence[str], lock: Lock, progress: Progress, why: str) -> tuple[str, Callable[[], None]]:
    """An image of the parent chain plus what ``lock`` installs so far (its apt packages), to resolve in.

    Returns the image reference and a function that removes it (when it is temporary).
    """
    inputs = ecosystems.artifacts(lock)
    vendor(inputs)
    parent = build_parent(builder, vendor, locks, recipe, prefix, progress, why)
    builder.load(parent)
    if not inputs:
        return parent.config_digest, lambda: None
    progress(recipe.name, "lock", f"installing the {len(inputs)} packages locked so far to resolve against them")
    # What is locked so far is installed, and no run step (it may need what is not resolved yet).
    with builder.run_steps(dataclasses.replace(recipe, run=()), lock, parent) as (container, _, _):
        image = container.commit()
    return image, lambda: engine.remove_image(image)
