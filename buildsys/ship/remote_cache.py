"""A registry repository as a layer cache shared between machines (``build --cache-from/--cache-to``).

An entry is the canonical image of a chain prefix, pushed like ``publish``
pushes (blobs, then the manifest by digest) and tagged ``bs-<cache key>``:
the cache key (parent manifest digest, recipe hash, lock hash, normalizer and
builder versions) is the one the local cache uses, so a hit here is the same
layer a build here would make.

What an entry says is checked, not trusted: its manifest must build on the
parent's layers exactly (same digests and sizes), its config's diff_ids must
be those layers, its recipe-hash label the recipe's, and every blob fetched is
hashed against the digest the manifest promises before it enters the store.
An entry that fails a check is a miss (said in the progress); a registry that
cannot be reached is a miss too, so a cache outage slows a build, never stops
it. Pushing (``--cache-to``) does fail the build on an error: it was asked for.

Entries go up compressed as ``publish`` sends them (gzip by default, each layer
compressed once and kept in the store); a fetched layer is decompressed and
checked against the config's diff_id, and the store keeps it uncompressed, as
builds need it, under the manifest a build here would have written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from buildsys.build.records import LayerRecord
from buildsys.core import names
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store
from buildsys.model.recipe import Recipe
from buildsys.oci.compress import (
    DEFAULT,
    CompressedBlobs,
    CompressionError,
    built_descriptor,
    compressed_image,
    decompress_stream,
    inflate_limit,
    media_format,
    method,
)
from buildsys.oci.image import MANIFEST_MEDIA_TYPE, OciLayout, canonical_bytes, digest_bytes
from buildsys.oci.registry import (
    NotInRegistry,
    Reference,
    Registry,
    RegistryDataError,
    RegistryError,
    parse_manifest,
)
from buildsys.ship.publish import push_image

TAG_PREFIX = "bs-"


class RemoteCache:
    def __init__(self, cache_from: str | None, cache_to: str | None, *, insecure: bool = False,
                 progress: Progress = NO_PROGRESS, compression: str = DEFAULT) -> None:
        self.method = method(compression)
        self.sources = Reference.parse(cache_from) if cache_from else None
        self.target = Reference.parse(cache_to) if cache_to else None
        self.progress = progress
        self._registries: dict[str, Registry] = {}
        self.insecure = insecure

    def __str__(self) -> str:
        return str(self.sources or self.target)

    def _registry(self, host: str) -> Registry:
        if host not in self._registries:
            self._registries[host] = Registry(host, insecure=self.insecure, attempts=2)
        return self._registries[host]

    @staticmethod
    def tag(key: str) -> str:
        return TAG_PREFIX + key

    def fetch(self, key: str, recipe: Recipe, parent: LayerRecord | None, layout: OciLayout) -> LayerRecord | None:
        if self.sources is None:
            return None
        ref = self.sources
        reg = self._registry(ref.host)
        try:
            return self._fetch(reg, ref.repository, key, recipe, parent, layout)
        except NotInRegistry:
            return None
        except RegistryDataError as e:  # an answer that is no entry of ours
            self.progress(recipe.name, "remote miss", f"entry {self.tag(key)[:19]} is not a manifest buildsys "
                                                    f"wrote ({e.field}: {e.problem.rsplit(': ', 1)[-1]}); ignored")
            return None
        except (RegistryError, CompressionError) as e:
            self.progress(recipe.name, "remote miss", e.message)
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # an answer that is no entry of ours
            self.progress(recipe.name, "remote miss", f"entry {self.tag(key)[:19]} is not a manifest buildsys "
                                                    f"wrote ({type(e).__name__}: {e}); ignored")
            return None

    def _fetch(self, reg: Registry, repo: str, key: str, recipe: Recipe, parent: LayerRecord | None,
               layout: OciLayout) -> LayerRecord | None:
        manifest_bytes, _, _ = reg.get_manifest(repo, self.tag(key))
        manifest = parse_manifest(reg.host, f"cache entry {self.tag(key)[:19]}", manifest_bytes)
        layers = [(d["digest"], int(d["size"]), media_format(str(d.get("mediaType")))) for d in manifest["layers"]]
        if not all(isinstance(d, str) and names.DIGEST.fullmatch(d) for d, _, _ in layers):
            raise ValueError("a layer digest is not sha256:<64 hex>")
        below = list(parent.layers) if parent else []
        if manifest.get("mediaType") != MANIFEST_MEDIA_TYPE or len(layers) <= len(below) or \
                any(fmt is None for _, _, fmt in layers):
            self.progress(recipe.name, "remote miss", f"entry {self.tag(key)[:19]} does not build on the parent "
                                                    "layers; ignored")
            return None
        config_digest = manifest["config"]["digest"]
        if not isinstance(config_digest, str) or not names.DIGEST.fullmatch(config_digest):
            raise ValueError("the config digest is not sha256:<64 hex>")
        config_bytes = reg.get_blob_bytes(repo, config_digest, manifest["config"].get("size"))
        config = json.loads(config_bytes)
        diff_ids = tuple(config.get("rootfs", {}).get("diff_ids", []))
        labels = (config.get("config") or {}).get("Labels") or {}
        # The layers below are the parent's (by diff_id: the entry's may be compressed another way).
        if diff_ids[:len(below)] != tuple(d for d, _ in below) or len(diff_ids) != len(layers) or \
                labels.get("io.buildsys.recipe-hash") != recipe.recipe_hash:
            self.progress(recipe.name, "remote miss", f"entry {self.tag(key)[:19]} is not this recipe's layer; "
                                                    "ignored")
            return None
        own: list[tuple[str, int]] = []  # the recipe's layers (several: a split layer), bottom first
        for (blob, size, fmt), diff_id in zip(layers[len(below):], diff_ids[len(below):], strict=True):
            if not isinstance(diff_id, str) or not names.DIGEST.fullmatch(diff_id):
                raise ValueError("a diff_id is not sha256:<64 hex>")
            if layout.has_blob(diff_id):
                own.append((diff_id, layout.blob_path(diff_id).stat().st_size))
                continue
            self.progress(recipe.name, "remote fetch", f"layer {blob[:19]} ({size / 1e6:.1f} MB, {fmt})")
            own.append((diff_id, self._fetch_layer(reg, repo, blob, size, fmt or "none", diff_id, layout)))
        assert digest_bytes(config_bytes) == config_digest
        layout.add_blob_bytes(config_bytes)
        # The manifest a build here writes: the entry's, with the uncompressed layer descriptors.
        uncompressed = [*below, *own]
        local = canonical_bytes({**manifest, "layers": [built_descriptor(desc, d, n) for desc, (d, n)
                                                        in zip(manifest["layers"], uncompressed, strict=True)]})
        manifest_digest = layout.add_blob_bytes(local)
        return LayerRecord(recipe=recipe.name, config_digest=config_digest, manifest_digest=manifest_digest,
                           diff_ids=diff_ids, layers=tuple(uncompressed))

    @staticmethod
    def _fetch_layer(reg: Registry, repo: str, digest: str, size: int, fmt: str, diff_id: str,
                     layout: OciLayout) -> int:
        """Fetch one layer blob (hashed against ``digest``), decompress it into the store as ``diff_id``
        (hashed against it: ``CompressionError`` if it is another layer); its uncompressed size."""
        layout.blobs.mkdir(parents=True, exist_ok=True)
        tmps = []
        try:
            for _ in range(2):
                fd, tmp = tempfile.mkstemp(dir=layout.root, prefix=".remote-", suffix=".tmp")
                os.close(fd)
                tmps.append(tmp)
            with open(tmps[0], "wb") as out:
                reg.get_blob(repo, digest, out, size)  # stops at size + 1; hashed: BlobMismatch if not ``digest``
            with open(tmps[0], "rb") as src, open(tmps[1], "wb") as out:
                got, n = decompress_stream(fmt, src, out, inflate_limit(size))
            if got != diff_id:
                raise CompressionError(f"registry {reg.host}: layer {digest} of {repo} decompresses to {got}, "
                                       f"not the config's diff_id {diff_id}", "the entry is damaged; ignored")
            layout.add_blob_file(Path(tmps[1]), digest=diff_id)
            return n
        finally:
            for tmp in tmps:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def offer(self, key: str, record: LayerRecord, layout: OciLayout) -> None:
        if self.target is None:
            return
        reg = self._registry(self.target.host)
        repo, tag = self.target.repository, self.tag(key)
        if reg.has_manifest(repo, tag):
            return
        self.progress(record.recipe, "cache push", f"{self.target.host}/{repo}:{tag[:19]}...")
        # The store is the one around the builder's layout (STORE/oci): its compressed blobs are kept there.
        blobs = CompressedBlobs(Store(layout.root.parent))
        shipped = compressed_image(blobs, record.manifest_digest, self.method,
                                   progress=lambda stage, detail: self.progress(record.recipe, stage, detail))
        push_image(reg, repo, layout, shipped)
        reg.put_manifest(repo, tag, shipped.manifest_bytes, MANIFEST_MEDIA_TYPE)
