"""The layer cache: a chain prefix's image found by a key of everything that makes it.

Key: parent manifest digest, recipe hash, lock hash, the git revision and
source the image's labels name (``core/vcs.py``), normalizer and builder
versions. An entry is a ``LayerRecord`` in the store's ``cache/layers``; a
registry can be a second, shared cache behind it (``LayerCache``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from buildsys.build.records import LayerRecord
from buildsys.core.store import Store, atomic_write
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe, canonical_json
from buildsys.oci.image import NO_META, DamagedBlob, ImageMeta, OciLayout
from buildsys.oci.layer.normalize import NORMALIZER_VERSION

# Bump when the way a layer is made changes (build steps, environment), so
# old cache entries stop matching. The normalizer has its own version.
BUILDER_VERSION = "5"  # 5: a big [pip] set is split into layers (issue 21); 4: OCI labels (issue 26)


class LayerCache(Protocol):
    """A shared cache beyond this store, keyed like the local one (``remote_cache.RemoteCache``)."""

    def fetch(self, key: str, recipe: Recipe, parent: LayerRecord | None, layout: OciLayout) -> LayerRecord | None:
        """The layer of ``key`` with its blobs checked and placed in ``layout``, or None on a miss."""

    def offer(self, key: str, record: LayerRecord, layout: OciLayout) -> None:
        """Share ``record`` under ``key`` (a no-op for a read-only cache)."""


def cache_key(recipe: Recipe, lock: Lock, parent: LayerRecord | None, meta: ImageMeta = NO_META) -> str:
    key = {
        # The labels that come from neither the recipe nor the lock (the base's come from the lock).
        "vcs": [meta.revision, meta.source] if meta.revision else None,
        "parent": parent.manifest_digest if parent else None,
        "recipe": recipe.recipe_hash,
        "lock": lock.lock_hash,
        "normalizer": NORMALIZER_VERSION,
        "builder": BUILDER_VERSION,
    }
    return hashlib.sha256(canonical_json(key)).hexdigest()


def layer_key(recipe: Recipe, lock: Lock, parent: LayerRecord | None) -> str:
    """The key of a layer's files alone: its parent chain's files (diff_ids), not what its parent's labels say.

    A miss of ``cache_key`` that hits this one is a relabel (``LayerMaker.relabel``): the
    layers are reused under a new config, nothing is built.
    """
    key = {
        "parent-files": list(parent.diff_ids) if parent else None,
        "recipe": recipe.recipe_hash,
        "lock": lock.lock_hash,
        "normalizer": NORMALIZER_VERSION,
        "builder": BUILDER_VERSION,
    }
    return "files-" + hashlib.sha256(canonical_json(key)).hexdigest()


@dataclass
class Cache:
    """This store's cache entries, one file per key."""

    store: Store
    no_cache: bool = False  # every lookup misses (entries are still written)

    @property
    def layout(self) -> OciLayout:
        return OciLayout(self.store.oci)

    def path(self, key: str) -> Path:
        return self.store.cache / "layers" / f"{key}.json"

    def get(self, key: str) -> LayerRecord | None:
        path = self.path(key)
        if self.no_cache or not path.is_file():
            return None
        try:
            record = LayerRecord.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is a miss
        layout = self.layout
        # An entry whose blobs were removed, or whose layer blobs changed size, is a miss, never
        # a half image. Same-size damage is caught where blob bytes are read (DamagedBlob).
        if not (layout.has_blob(record.config_digest) and layout.has_blob(record.manifest_digest)):
            return None
        for digest, size in record.layers:
            try:
                if layout.blob_path(digest).stat().st_size != size:
                    return None
            except FileNotFoundError:
                return None
        return record

    def put(self, key: str, record: LayerRecord) -> None:
        atomic_write(self.path(key), canonical_json(record.to_json()))

    def forget_blob(self, digest: str) -> int:
        """Remove the cache entries whose image uses ``digest``; return how many."""
        dropped = 0
        for path in sorted((self.store.cache / "layers").glob("*.json")):
            try:
                record = LayerRecord.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, OSError):
                path.unlink(missing_ok=True)  # unreadable: a miss anyway
                continue
            if digest in (record.config_digest, record.manifest_digest, *(d for d, _ in record.layers)):
                path.unlink(missing_ok=True)
                dropped += 1
        return dropped

    def imported(self, recipe: Recipe, lock: Lock | None) -> LayerRecord | None:
        """The image ``buildsys import`` put in the store for ``recipe``, when it is the current lock's image.

        An import brings the image, not the cache entries of its chain (the other machine's
        intermediate images are not in the archive), so it is found by the store's ref NAME and
        accepted only when its config's labels name this recipe's hash and this lock's hash (the
        lock pins its parents' locks). It is the image's own record alone.
        """
        layout = self.layout
        digest = layout.resolve(recipe.name)
        if digest is None or lock is None:
            return None
        try:
            manifest, config = layout.read_image(digest)
            labels = config.get("config", {}).get("Labels") or {}
            if (labels.get("io.buildsys.recipe-hash") != recipe.recipe_hash
                    or labels.get("io.buildsys.lock-hash") != lock.lock_hash):
                return None
            layers = tuple((str(d["digest"]), int(d["size"])) for d in manifest["layers"])
            record = LayerRecord(recipe=recipe.name, config_digest=str(manifest["config"]["digest"]),
                                 manifest_digest=digest, diff_ids=tuple(config["rootfs"]["diff_ids"]),
                                 layers=layers)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, DamagedBlob):
            return None
        if not all(layout.has_blob(d) for d, _ in layers):
            return None
        return record
