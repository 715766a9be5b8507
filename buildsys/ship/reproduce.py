"""``buildsys reproduce REF``: prove that a published image is what this project's locks build, from nothing.

Anyone with the project (its recipes and locks, a checkout of the commit the
image's ``org.opencontainers.image.revision`` label names) and a docker engine
can run it; no store, no cache, no trust in whoever published:

1. the manifest, by the digest REF names (a tag is resolved once and the digest
   used from then on), and, with ``--key``, its cosign signature checked first;
2. its config: the ``io.buildsys.lock-hash`` and ``recipe-hash`` labels name
   the recipe whose current lock and recipe built it (none here: a named error
   that says which commit to check out);
3. the chain's locked artifacts fetched (hash-checked), then the chain built
   from nothing into a throw-away store (no cache, fresh containers), as
   ``build --verify``'s second build;
4. compared: docker's image ID (the config digest: labels, history, diff_ids),
   every layer's diff_id, and the manifest digest itself: the layers are
   compressed again by the method each published descriptor names
   (``io.buildsys.compression``; ``oci/compress.py``), so the published
   digest is checked byte for byte, not only what it decompresses to.

Equal: exit 0. Not: exit 3, naming the first layer that differs and its files
(the published layer is downloaded, decompressed and diffed against the
rebuilt one) or the config keys that differ.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.build.builder import Builder
from buildsys.build.records import BuiltImage
from buildsys.build.verify import config_differences, layer_name
from buildsys.core.errors import BuildsysError
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts as locked_artifacts
from buildsys.engine import Engine
from buildsys.fetch.vendor import fetch
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, lock_path, read_lock
from buildsys.oci import compress
from buildsys.oci.image import OciLayout
from buildsys.oci.layer.diff import FileDifference, diff_layers
from buildsys.oci.registry import MANIFEST_TYPES, Reference, Registry, parse_config, parse_manifest
from buildsys.ship.keys import Verifier
from buildsys.ship.signing import Verified, verify_manifest

LOCK_LABEL, RECIPE_LABEL = "io.buildsys.lock-hash", "io.buildsys.recipe-hash"
REVISION_LABEL = "org.opencontainers.image.revision"


class NotBuildsysImage(BuildsysError):
    """The published config has no buildsys labels: nothing says which recipe and lock made it."""


class NoRecipeBuildsIt(BuildsysError):
    """No recipe of this project, at its current lock, is the one that built the published image."""


@dataclass
class Reproduced:
    reference: str  # HOST/REPO@DIGEST
    recipe: str
    published_id: str  # the published config's digest (docker's image ID after a pull)
    rebuilt: BuiltImage
    manifest: str  # what was compared of the manifest: "digest", or why not
    rebuilt_manifest: str | None = None  # the rebuilt image's manifest as it would be published
    layer: tuple[int, str] | None = None  # the first differing layer: (index, recipe)
    diff_ids: tuple[str, str] | None = None
    files: list[FileDifference] = field(default_factory=list)
    config: list[str] = field(default_factory=list)
    signature: Verified | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return (self.layer is None and not self.config and self.published_id == self.rebuilt.record.config_digest
                and self.manifest == "digest")

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "recipe": self.recipe, "equal": self.equal,
                "image_id": self.published_id, "rebuilt_image_id": self.rebuilt.record.config_digest,
                "rebuilt_manifest_digest": self.rebuilt_manifest, "manifest": self.manifest,
                "first_differing_layer": ({"index": self.layer[0], "recipe": self.layer[1],
                                           "diff_ids": list(self.diff_ids or ())} if self.layer else None),
                "files": [{"path": d.path, "what": list(d.what)} for d in self.files],
                "config": self.config, "signed": self.signature is not None,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def _find_recipe(project: Path, graph: Graph, labels: Mapping[str, str], reference: str) -> str:
    lock_hash, recipe_hash = labels.get(LOCK_LABEL), labels.get(RECIPE_LABEL)
    if not lock_hash or not recipe_hash:
        raise NotBuildsysImage(f"{reference}: its config has no {LOCK_LABEL} and {RECIPE_LABEL} labels",
                               "only images buildsys built can be reproduced from a project")
    for name, recipe in sorted(graph.recipes.items()):
        path = lock_path(project, name)
        if recipe.recipe_hash == recipe_hash and path.is_file():
            try:
                if read_lock(path).lock_hash == lock_hash:
                    return name
            except BuildsysError:
                continue
    revision = labels.get(REVISION_LABEL)
    raise NoRecipeBuildsIt(
        f"{reference}: no recipe in {project} at its current lock built it (the image names recipe "
        f"{recipe_hash[:19]}, lock {lock_hash[:19]})",
        f"check out the commit it was built from (`git checkout {revision}`, its {REVISION_LABEL} label), "
        "then run `buildsys reproduce` again" if revision else
        "check out the project's commit the image was built from (its labels name none), then try again")


def _published(reg: Registry, ref: Reference, progress: Progress) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(digest, manifest, config) of what ``ref`` names, each checked against its digest."""
    data, media, digest = reg.get_manifest(ref.repository, ref.digest or ref.tag or "latest")
    where = f"manifest {digest} in {ref.repository}"
    if media in MANIFEST_TYPES[1::2]:  # an OCI index or a docker manifest list
        raise NotBuildsysImage(f"{ref}: names an index of several images, not one image",
                               "give the digest of the platform's own manifest (buildsys publishes one image)")
    manifest = parse_manifest(reg.host, where, data)
    progress("*", "published", f"{ref.repository}@{digest}")
    desc = manifest["config"]
    config = parse_config(reg.host, f"config of {where}",
                          reg.get_blob_bytes(ref.repository, desc["digest"], int(desc["size"])))
    return digest, manifest, config


def _methods(manifest: Mapping[str, Any]) -> compress.Method | str:
    """The one compression method the published layers say they were made with, or why there is none."""
    seen = set()
    for desc in manifest["layers"]:
        fmt = compress.media_format(str(desc.get("mediaType")))
        if fmt is None:
            return f"a layer of media type {desc.get('mediaType')} that buildsys does not write"
        said = (desc.get("annotations") or {}).get(compress.ANNOTATION)
        seen.add((fmt, said if fmt != "none" else "none"))
    if len(seen) != 1:
        return f"the layers were compressed in {len(seen)} ways"
    ((fmt, said),) = seen
    m = compress.method(fmt)
    if said != m.describe():
        return f"the layers were compressed by '{said}', this buildsys compresses by '{m.describe()}'"
    return m


def _layer_recipe(image: BuiltImage, index: int, config: Mapping[str, Any]) -> str:
    """The recipe of the chain whose step added layer ``index`` (a registry root adds several), with the group
    of a split layer as its history names it (``tools/six``)."""
    recipe = next(r.recipe for r in image.layers if len(r.diff_ids) > index)
    named = layer_name(config, index)
    return named if named.partition("/")[0] == recipe else recipe


def _published_layer(reg: Registry, repo: str, desc: Mapping[str, Any], into: Path) -> Path:
    """The published layer ``desc``, downloaded and decompressed to a tar at ``into``."""
    packed = into.with_suffix(".blob")
    with open(packed, "wb") as f:
        reg.get_blob(repo, desc["digest"], f, int(desc["size"]))
    with open(packed, "rb") as src, open(into, "wb") as dst:
        compress.decompress_stream(compress.media_format(str(desc["mediaType"])) or "none", src, dst,
                                   compress.inflate_limit(int(desc["size"])))
    packed.unlink()
    return into


def reproduce(project: Path, store: Store, graph: Graph, reference: str, *, engine: Engine | None = None,
              insecure: bool = False, verifier: Verifier | None = None, jobs: int = 8,
              locks_for: Any = None, progress: Progress = NO_PROGRESS) -> Reproduced:
    """Rebuild what ``reference`` names from this project's locks and compare (module docstring).

    ``locks_for(recipe)`` gives the chain's fresh locks (``lock.fresh_locks``); a stale one is refused there.
    """
    seconds: dict[str, float] = {}
    t = time.monotonic()
    ref = Reference.parse(reference)
    reg = Registry(ref.host, insecure=insecure)
    digest, manifest, config = _published(reg, ref, progress)
    pinned = ref.with_digest(digest)
    signature = verify_manifest(reg, ref.repository, digest, verifier) if verifier is not None else None
    labels = (config.get("config") or {}).get("Labels") or {}
    recipe = _find_recipe(project, graph, labels, pinned)
    locks: Mapping[str, Lock] = locks_for(recipe)
    seconds["registry"] = time.monotonic() - t

    t = time.monotonic()
    progress(recipe, "fetch", "the chain's locked artifacts, hash-checked")
    wanted = {a.sha256: a for name in graph.chain(recipe) for a in locked_artifacts(locks[name])}
    fetch(store, sorted(wanted.values(), key=lambda a: (a.kind, a.filename)), jobs=jobs)
    seconds["fetch"] = time.monotonic() - t

    with store.scratch("reproduce") as tmp:
        t = time.monotonic()
        fresh = Store(Path(tmp) / "store", vendor_root=store.vendor_root)
        progress(recipe, "rebuild", "from nothing: no cache, fresh store, fresh containers")
        m = _methods(manifest)
        # The published method, applied to each layer as it is written: the comparison below reads none again.
        (rebuilt,) = Builder(fresh, graph, locks, engine=engine, no_cache=True, tag=False,
                             compress=m if isinstance(m, compress.Method) and m.format != "none" else None,
                             progress=lambda r, s, d: progress(r, f"rebuild {s}", d)).build([recipe])
        seconds["build"] = time.monotonic() - t
        result = Reproduced(reference=pinned, recipe=recipe, published_id=manifest["config"]["digest"],
                            rebuilt=rebuilt, manifest="", signature=signature, seconds=seconds)
        t = time.monotonic()
        published_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        mine = list(rebuilt.record.diff_ids)
        made = OciLayout(fresh.oci).read_config(rebuilt.record.config_digest)  # the rebuilt image's config
        for i in range(max(len(published_ids), len(mine))):
            a = published_ids[i] if i < len(published_ids) else "(none)"
            b = mine[i] if i < len(mine) else "(none)"
            if a != b:
                result.layer = (i, _layer_recipe(rebuilt, min(i, len(mine) - 1), made))
                result.diff_ids = (a, b)
                if i < len(published_ids) and i < len(mine) and i < len(manifest["layers"]):
                    progress(recipe, "diff", f"layer {i + 1}: downloading the published one to compare its files")
                    theirs = _published_layer(reg, ref.repository, manifest["layers"][i], Path(tmp) / "published.tar")
                    result.files = diff_layers(theirs, fresh.oci / "blobs" / "sha256" / b.split(":", 1)[1])
                break
        result.config = config_differences(config, made)
        if isinstance(m, str):
            result.manifest = f"not compared: {m}"
        elif result.layer is None:
            shipped = compress.compressed_image(compress.CompressedBlobs(fresh), rebuilt.record.manifest_digest, m)
            result.rebuilt_manifest = shipped.manifest_digest
            result.manifest = "digest" if shipped.manifest_digest == digest else \
                f"differs: published {digest}, rebuilt {shipped.manifest_digest}"
        else:
            result.manifest = "not compared: a layer differs"
        seconds["compare"] = time.monotonic() - t
    return result


def format_result(r: Reproduced, limit: int = 50) -> str:
    if r.equal:
        return (f"{r.reference}: reproduced from {r.recipe}'s locks: image {r.published_id}, manifest digest "
                f"equal ({len(r.rebuilt.record.diff_ids)} layers rebuilt from nothing"
                + (", signature checked" if r.signature else "") + ")")
    lines = [f"{r.reference}: NOT reproduced from {r.recipe}'s locks"]
    if r.layer is not None and r.diff_ids is not None:
        lines.append(f"  first differing layer: {r.layer[0] + 1} (made by '{r.layer[1]}')")
        lines.append(f"  diff_id published {r.diff_ids[0]}\n          rebuilt   {r.diff_ids[1]}")
        for d in r.files[:limit]:
            lines.append(f"  {d.path}: {', '.join(d.what)}")
        if len(r.files) > limit:
            lines.append(f"  ... and {len(r.files) - limit} more files")
    lines += [f"  config {c}" for c in r.config]
    if r.manifest != "digest":
        lines.append(f"  manifest {r.manifest}")
    return "\n".join(lines)
