"""``build --verify`` and ``diff``: prove two builds equal, or say what differs.

Verify builds the chain once as usual (the cache may answer), then again from
nothing into a throw-away store that shares only the vendored inputs, with no
cache and fresh containers, and compares every layer's diff_id, the config
digest and the manifest digest. On a mismatch the first differing layer is
diffed file by file. When they are equal, both images are compressed with the
default method (``buildsys.oci.compress``) and the manifest digests a publish
would push are compared too; the first store keeps its compressed layers, so
the next ``publish`` does not compress them again.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.build.builder import Builder
from buildsys.build.records import BuiltImage
from buildsys.core import names
from buildsys.core.errors import UsageError, did_you_mean
from buildsys.core.progress import Progress
from buildsys.core.store import Store, atomic_write
from buildsys.engine import Engine
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import canonical_json
from buildsys.oci.compress import DEFAULT, CompressedBlobs, compressed_image, method
from buildsys.oci.image import OciLayout
from buildsys.oci.layer.diff import FileDifference, LayerEntry, diff_entries, diff_layers, read_entries


@dataclass
class LayerMismatch:
    recipe: str  # the recipe whose layer differs first
    index: int  # its position in the chain
    diff_id: tuple[str, str]
    files: list[FileDifference]
    config: list[str]  # config keys that differ
    part: str = ""  # the OCI layer of a split recipe layer that differs first: "pytorch/cuda" ("": not split)


@dataclass
class VerifyResult:
    recipe: str
    first: BuiltImage
    second: BuiltImage
    mismatch: LayerMismatch | None = None
    config_only: list[str] = field(default_factory=list)
    # The manifest digests the default compression gives each build's image (what publish pushes).
    compressed: tuple[str, str] | None = None

    @property
    def equal(self) -> bool:
        return self.mismatch is None and self.first.record == self.second.record and \
            (self.compressed is None or self.compressed[0] == self.compressed[1])


def verify(store: Store, graph: Graph, locks: Mapping[str, Lock], names: Sequence[str],
           engine: Engine | None, progress: Progress, jobs: int = 1) -> list[VerifyResult]:
    # Both builds' images are compressed below: each layer made is compressed while it is written, so
    # the comparison reads no layer again (a layer the cache answered is compressed there, once per store).
    m = method(DEFAULT)
    first = Builder(store, graph, locks, engine=engine, progress=progress, compress=m).build(names, jobs=jobs)
    results: list[VerifyResult] = []
    with store.scratch("verify") as tmp:
        fresh = Store(Path(tmp), vendor_root=store.vendor_root)
        progress("*", "verify", "rebuilding from nothing (no cache, fresh store)")
        # Its images nobody runs (the named ones: same IDs as the first build's when reproducible) stay in
        # the store: for pytorch that is a minute of docker load saved.
        second = Builder(fresh, graph, locks, engine=engine, no_cache=True, tag=False, load_leaves=False, compress=m,
                         progress=lambda r, s, d: progress(r, f"verify {s}", d)).build(names, jobs=jobs)
        for a, b in zip(first, second, strict=True):
            results.append(compare(a, b, OciLayout(store.oci), OciLayout(fresh.oci)))
        kept, scratch = CompressedBlobs(store), CompressedBlobs(fresh)  # per store: a shared layer once
        for r in results:
            if r.equal:
                progress(r.recipe, "verify", f"compressing both images ({DEFAULT}) to compare what publish pushes")
                r.compressed = (compressed_image(kept, r.first.record.manifest_digest, m).manifest_digest,
                                compressed_image(scratch, r.second.record.manifest_digest, m).manifest_digest)
    for r in results:
        if r.equal:
            mark_verified(store, r.first)
    return results


def _verified_path(store: Store, manifest_digest: str) -> Path:
    return store.root / "verified" / (manifest_digest.split(":", 1)[1] + ".json")


def mark_verified(store: Store, image: BuiltImage) -> None:
    """Remember that the chain of ``image`` was rebuilt from nothing to the same digests (``publish`` asks)."""
    record = {"version": 1, "recipe": image.recipe, "chain": image.chain,
              "manifest_digest": image.record.manifest_digest, "image_id": image.record.config_digest}
    atomic_write(_verified_path(store, image.record.manifest_digest), canonical_json(record))


def was_verified(store: Store, manifest_digest: str) -> bool:
    """Did a ``build --verify`` with this store find this image's chain reproducible?"""
    try:
        record = json.loads(_verified_path(store, manifest_digest).read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(record, dict) and record.get("manifest_digest") == manifest_digest


def compare(a: BuiltImage, b: BuiltImage, layout_a: OciLayout, layout_b: OciLayout) -> VerifyResult:
    result = VerifyResult(recipe=a.recipe, first=a, second=b)
    below = 0  # layers of the chain under this recipe's
    for i, (la, lb) in enumerate(zip(a.layers, b.layers, strict=True)):
        own_a, own_b = la.diff_ids[below:], lb.diff_ids[below:]
        if own_a != own_b or la.config_digest != lb.config_digest:
            cfg_a, cfg_b = layout_a.read_config(la.config_digest), layout_b.read_config(lb.config_digest)
            # The first of the recipe's layers that differs (a split layer has several), else its top one.
            k = next((k for k, (x, y) in enumerate(zip(own_a, own_b, strict=False)) if x != y),
                     min(len(own_a), len(own_b)) - 1)
            da, db = own_a[k], own_b[k]
            files = diff_layers(layout_a.blob_path(la.layers[below + k][0]),
                                layout_b.blob_path(lb.layers[below + k][0])) if da != db else []
            part = layer_name(cfg_a, below + k) if len(own_a) > 1 else ""
            result.mismatch = LayerMismatch(recipe=a.chain[i], index=i, diff_id=(da, db), files=files,
                                            config=config_differences(cfg_a, cfg_b), part=part)
            break
        below = len(la.diff_ids)
    return result


def layer_name(config: Mapping[str, Any], index: int) -> str:
    """What the history of layer ``index`` (of the image's diff_ids) says it is: ``pytorch/cuda`` of
    ``buildsys: pytorch/cuda (pip 19: ...; lock ...)``; "" for a layer buildsys did not write."""
    made = [h for h in config.get("history") or [] if not h.get("empty_layer")]
    if index >= len(made):
        return ""
    by = str(made[index].get("created_by", ""))
    return by.removeprefix("buildsys: ").partition(" (")[0] if by.startswith("buildsys: ") else ""


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The key paths whose values differ between two JSON objects."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, path + ".")
        elif va != vb:
            out.append(f"{path}: {json.dumps(va)[:80]} != {json.dumps(vb)[:80]}")
    return out


def format_mismatch(result: VerifyResult, limit: int = 50) -> str:
    m = result.mismatch
    if m is None and result.compressed is not None:
        return (f"{result.recipe}: the layers are equal but their {DEFAULT} compression is not: manifest "
                f"{result.compressed[0]}\n       vs {result.compressed[1]} (the compressor is not deterministic "
                "here: report it, and publish with --compression none meanwhile)")
    assert m is not None
    lines = [f"{result.recipe}: NOT reproducible; first differing layer: '{m.recipe}' (layer {m.index + 1} of "
             f"{len(result.first.chain)})" + (f", its OCI layer '{m.part}'" if m.part else "")]
    if m.diff_id[0] != m.diff_id[1]:
        lines.append(f"  diff_id {m.diff_id[0]}\n       vs {m.diff_id[1]}")
    for d in m.files[:limit]:
        lines.append(f"  {d.path}: {', '.join(d.what)}")
        if d.detail:
            lines += [f"      {ln}" for ln in d.detail.splitlines()]
    if len(m.files) > limit:
        lines.append(f"  ... and {len(m.files) - limit} more files")
    lines += [f"  config {c}" for c in m.config]
    return "\n".join(lines)


# -- diff of two whole images ---------------------------------------------------------


@dataclass
class ImageDiff:
    files: list[FileDifference]
    config: list[str]


def flatten(layout: OciLayout, manifest_digest: str) -> dict[str, tuple[LayerEntry, Path]]:
    """The merged file view of an image: each path's entry and the layer tar that holds it.

    Whiteouts apply as docker applies them: ``.wh.NAME`` deletes NAME and what is
    under it in lower layers; ``.wh..wh..opq`` empties its directory below.
    """
    manifest, _ = layout.read_image(manifest_digest)
    merged: dict[str, tuple[LayerEntry, Path]] = {}
    for desc in manifest["layers"]:
        blob = layout.blob_path(desc["digest"])
        entries = read_entries(blob)
        for path in entries:
            parent, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                prefix = parent + "/"
                for p in [p for p in merged if p.startswith(prefix)]:
                    del merged[p]
            elif base.startswith(".wh."):
                gone = f"{parent}/{base[4:]}" if parent else base[4:]
                for p in [p for p in merged if p == gone or p.startswith(gone + "/")]:
                    del merged[p]
        for path, entry in entries.items():
            if not path.rpartition("/")[2].startswith(".wh."):
                merged[path] = (entry, blob)
    return merged


def _reader(view: Mapping[str, tuple[LayerEntry, Path]], stack: contextlib.ExitStack) -> Callable[[str], bytes]:
    """Read a file's content from the layer that holds it; each layer tar is opened (and indexed) once."""
    opened: dict[Path, tarfile.TarFile] = {}

    def read(path: str) -> bytes:
        _, blob = view[path]
        if blob not in opened:
            opened[blob] = stack.enter_context(tarfile.open(blob, "r:"))  # noqa: SIM115 (closed by the stack)
        tf = opened[blob]
        try:
            member = tf.getmember(path)
        except KeyError:
            member = tf.getmember(path + "/")
        f = tf.extractfile(member)
        return f.read() if f else b""

    return read


def diff_images(layout_a: OciLayout, manifest_a: str, layout_b: OciLayout, manifest_b: str) -> ImageDiff:
    """What differs between two images, file by file, plus their configs."""
    a, b = flatten(layout_a, manifest_a), flatten(layout_b, manifest_b)
    with contextlib.ExitStack() as stack:
        files = diff_entries({p: e for p, (e, _) in a.items()}, {p: e for p, (e, _) in b.items()},
                             _reader(a, stack), _reader(b, stack))
    man_a, cfg_a = layout_a.read_image(manifest_a)
    man_b, cfg_b = layout_b.read_image(manifest_b)
    # Which layer holds each differing path, by its history name ("pytorch/cuda"): a split recipe has several.
    where_a = _layer_names(layout_a, man_a, cfg_a)
    where_b = _layer_names(layout_b, man_b, cfg_b)
    for d in files:
        held = [w[v[1]] for w, v in ((where_a, a.get(d.path)), (where_b, b.get(d.path))) if v is not None]
        d.layer = " / ".join(dict.fromkeys(held))
    # rootfs.diff_ids and history differ whenever any file does; they add nothing.
    skip = ("rootfs", "history")
    config = config_differences({k: v for k, v in cfg_a.items() if k not in skip},
                                {k: v for k, v in cfg_b.items() if k not in skip})
    return ImageDiff(files=files, config=config)


def _layer_names(layout: OciLayout, manifest: Mapping[str, Any], config: Mapping[str, Any]) -> dict[Path, str]:
    """Each layer tar of an image -> its name: the recipe (and group) its history gives, else "layer N"."""
    return {layout.blob_path(desc["digest"]): layer_name(config, i) or f"layer {i + 1}"
            for i, desc in enumerate(manifest["layers"])}


def resolve_image(layout: OciLayout, ref: str) -> str:
    """A recipe name (the ref its last build left in the store) or a manifest digest."""
    if ref.startswith("sha256:"):
        if not names.DIGEST.fullmatch(ref):
            raise UsageError(f"'{ref}' is not a manifest digest (sha256: and 64 lowercase hex digits)",
                             "give a recipe name or a digest as `buildsys build --json` prints it")
        if layout.has_blob(ref):
            return ref
    digest = layout.resolve(ref)
    if digest is None:
        known = sorted(layout.refs())
        raise UsageError(f"no image '{ref}' in the store{did_you_mean(ref, known)}",
                         f"build it first (`buildsys build {ref}`); images here: {', '.join(known) or '(none)'}")
    return digest
