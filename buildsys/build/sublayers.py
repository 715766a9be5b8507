"""What one recipe's layer becomes: one OCI layer, or several when its ``[pip]`` set is split.

``plan`` asks the ecosystems which groups of what the lock pins get a layer of
their own (``pip_layers.pip_groups``: a pure function of recipe and lock), then
divides the layer's canonical entries between them (``oci/layer/split``). The
recipe's own layer, with everything no group owns, is always the top one.

A group's layer is expected to come out as it did the last time the same
distributions (same files, same pip) were installed on the same parent layers:
``Expected`` remembers that (``STORE/cache/groups``), so a build can leave out of
``docker load`` the groups docker already has and skip writing a blob the
store holds, after checking the digest it makes. A wrong expectation costs a
second pass, never a wrong image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from buildsys.build.records import LayerRecord
from buildsys.core.store import Store, atomic_write
from buildsys.ecosystems.pip import PipSection
from buildsys.ecosystems.pip_layers import PipGroup, owners, pip_groups
from buildsys.ecosystems.pip_resolve import PipRecipe
from buildsys.ecosystems.pypi import canonical_name
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe
from buildsys.oci.layer.entry import Item
from buildsys.oci.layer.normalize import NORMALIZER_VERSION
from buildsys.oci.layer.split import split_entries


@dataclass(frozen=True)
class SubLayer:
    """One OCI layer of a recipe's layer: a named group (``name``), or the recipe's own top layer (None)."""

    name: str | None
    what: str  # for its history line: "pip 19: nvidia-cublas-cu12, ..."
    entries: list[Item]
    key: str | None = None  # a group's: what its layer is expected from (``Expected``); None for the top one

    def label(self, recipe: str) -> str:
        """How messages name it: ``pytorch/cuda``, or ``pytorch`` for the top layer."""
        return f"{recipe}/{self.name}" if self.name else recipe


def groups(recipe: Recipe, lock: Lock) -> tuple[PipGroup, ...]:
    """The groups of ``recipe``'s layer that are layers of their own, bottom first (none: one layer). Asked
    before the layer's steps run, so a ``[[pip.layers]]`` that matches nothing fails before the install."""
    spec = recipe.get(PipRecipe)
    section = lock.get(PipSection)
    if spec is None or section is None:
        return ()
    sizes = {canonical_name(pin.name): sum(f.size or 0 for f in pin.chosen[:1]) for pin in section.packages}
    return pip_groups(recipe.name, spec.layers, spec.split, sizes, where=str(recipe.path))


def plan(lock: Lock, parent: LayerRecord, found: tuple[PipGroup, ...], entries: list[Item]) -> list[SubLayer]:
    """``entries`` (``normalize.canonical_entries``) as the recipe's layers, bottom first: one per group of
    ``found`` (``groups``), then the recipe's own."""
    if not found:
        return [SubLayer(None, "", entries)]
    parts = split_entries(entries, len(found), owners(entries, found).get)
    return [*(SubLayer(g.name, g.describe(), part, _group_key(lock, parent, g))
              for g, part in zip(found, parts, strict=False)),
            SubLayer(None, "", parts[-1])]


def _group_key(lock: Lock, parent: LayerRecord, group: PipGroup) -> str:
    """What a group's layer is made from: the parent's layers, the files the group installs, the pip installing
    them, the normalizer and the epoch its mtimes are clamped to."""
    section = lock.section(PipSection)
    pins = {canonical_name(p.name): p for p in section.packages}
    files = [[f.name, f.sha256] for n in group.distributions for f in pins[n].chosen]
    installer = [[f.name, f.sha256] for f in section.installer.chosen] if section.installer else None
    doc = {"parent": list(parent.diff_ids), "name": group.name, "files": files, "installer": installer,
           "normalizer": NORMALIZER_VERSION, "epoch": lock.source_date_epoch}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Expected:
    """A group's layer as it came out last time (``STORE/cache/groups/KEY.json``): its diff_id, and the image
    made with it (docker has the layer when it has that image)."""

    diff_id: str
    image: str

    @staticmethod
    def _path(store: Store, key: str) -> Path:
        return store.cache / "groups" / f"{key}.json"

    @classmethod
    def find(cls, store: Store, key: str | None) -> Expected | None:
        if key is None:
            return None
        try:
            d = json.loads(cls._path(store, key).read_text())
            return cls(str(d["diff_id"]), str(d["image"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def remember(cls, store: Store, parts: list[SubLayer], record: LayerRecord) -> None:
        """After a build: each group's layer of ``record`` (its own layers end the record's)."""
        own = record.diff_ids[len(record.diff_ids) - len(parts):]
        for part, diff_id in zip(parts, own, strict=True):
            if part.key is not None:
                doc = {"diff_id": diff_id, "image": record.config_digest}
                atomic_write(cls._path(store, part.key), json.dumps(doc, sort_keys=True).encode())
