"""A root from a registry image: its vendored layers, unpacked, become the bottom of the chain.

The counterpart of ``bootstrap`` for ``[base] image``. Why the image's own
layers and not one squashed canonical layer: their diff_ids are pinned by the
image's config (whose digest the lock holds), so they are already an exact,
checkable identity; keeping them keeps the base's layers shared with every
other image on the same base (docker stores them once, a registry serves them
once), and it needs no merge of whiteouts across layers. Each layer is
decompressed from the vendor store into the OCI layout (uncompressed, as all
of the store's layers are) and its sha256 must be the config's
``rootfs.diff_ids`` entry: anything else is a named error, never an image.

The root's config is the image's, made canonical: only the OCI keys
(``image._TOP_KEYS``/``_CONFIG_KEYS``; docker's ``container_config``,
hostname and builder version go), every history time set to the lock's epoch
(the image's own ``created``), and the recipe's ``[image]`` and buildsys
labels applied on top by ``image.make_config`` as a config-only step.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from buildsys.core.errors import BuildsysError, NotVendored
from buildsys.core.store import Store
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.lockschema import LAYER_MEDIA_TYPES
from buildsys.oci.compress import CompressingSink
from buildsys.oci.image import _TOP_KEYS, OciLayout, rfc3339

_CHUNK = 1 << 20


class BaseImageError(BuildsysError):
    """A registry base's vendored blobs do not make the image its lock pins (exit 1)."""

    def __init__(self, recipe: str, problem: str, hint: str | None = None) -> None:
        self.recipe, self.problem = recipe, problem
        super().__init__(f"{recipe}: base image: {problem}", hint)


def read_config(store: Store, recipe: str, base: ImageBaseLock) -> dict[str, Any]:
    """The image's config from the vendor store, checked against the locked digest."""
    path = store.vendor_path(base.config_digest.split(":", 1)[1])
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise NotVendored(recipe, f"the config of {base.reference}") from e
    if "sha256:" + hashlib.sha256(data).hexdigest() != base.config_digest:
        raise NotVendored(recipe, f"the config of {base.reference}",
                          f"damaged in the vendor store (its sha256 is not the locked {base.config_digest})")
    return dict(json.loads(data))


def unpack_layers(store: Store, layout: OciLayout, recipe: str, base: ImageBaseLock, config: dict[str, Any],
                  compress: Callable[[], CompressingSink | None] = lambda: None) -> list[tuple[str, int]]:
    """Decompress every locked layer into ``layout``; return (diff_id, size) per layer, bottom first.

    ``compress`` gives a sink per layer (``LayerMaker.compressing``): fed the same bytes as they are
    unpacked, it keeps the layer compressed by the store's own method, so a publish does not read it again.
    """
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(base.layers):
        raise BaseImageError(recipe, f"the config of {base.reference} lists {len(diff_ids)} diff_ids "
                                               f"for {len(base.layers)} locked layers",
                         hint=f"relock: `buildsys lock --upgrade {recipe}`")
    out = []
    for i, (layer, expected) in enumerate(zip(base.layers, diff_ids, strict=True)):
        src = store.vendor_path(layer.digest.split(":", 1)[1])
        if not src.is_file():
            raise NotVendored(recipe, f"layer {i + 1} of {base.reference} ({layer.digest})")
        tmp = store.tmp / f"unpack-{layer.digest.split(':', 1)[1]}.tar"
        sink = compress()
        try:
            with open(tmp, "wb") as dst:
                digest, size = _decompress(src, LAYER_MEDIA_TYPES[layer.media_type], dst, recipe, i + 1, sink)
            if digest != expected:
                raise BaseImageError(recipe, f"layer {i + 1} of {base.reference} ({layer.digest}) unpacks to "
                                             f"{digest}, but the image's config says its diff_id is {expected}",
                                     hint="the image is inconsistent (or the vendored blob was replaced); relock "
                                          f"from a good image: `buildsys lock --upgrade {recipe}`")
            layout.add_blob_file(tmp, digest=digest)
            if sink is not None:
                sink.keep(digest)
        finally:
            tmp.unlink(missing_ok=True)
            if sink is not None:
                sink.discard()
        out.append((digest, size))
    return out


def _decompress(src: Path, compression: str, dst: IO[bytes], recipe: str, n: int,
                sink: CompressingSink | None = None) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0

    def put(chunk: bytes) -> None:
        nonlocal size
        h.update(chunk)
        size += len(chunk)
        dst.write(chunk)
        if sink is not None:
            sink.write(chunk)

    if compression == "zstd":
        if shutil.which("zstd") is None:
            raise BaseImageError(recipe, f"layer {n} is zstd-compressed and the zstd program is missing",
                             hint="install it (apt-get install zstd)")
        with subprocess.Popen(["zstd", "-dc", "--", str(src)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(_CHUNK):
                put(chunk)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise BaseImageError(recipe, f"layer {n}: zstd failed: {err.strip()[-300:]}")
        return "sha256:" + h.hexdigest(), size
    try:
        with gzip.open(src, "rb") if compression == "gzip" else open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                put(chunk)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise BaseImageError(recipe, f"layer {n} does not decompress ({e})",
                         hint="remove it from the vendor store and fetch again") from e
    return "sha256:" + h.hexdigest(), size


def canonical_base_config(config: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The image's config with what names a moment or a machine removed (the parent of ``make_config``)."""
    cfg = {k: v for k, v in config.items() if k in _TOP_KEYS}
    when = rfc3339(epoch)
    history = []
    for h in cfg.get("history") or []:
        entry = {k: v for k, v in h.items() if k in ("created_by", "comment", "empty_layer", "author")}
        history.append({**entry, "created": when})
    cfg["history"] = history
    cfg["created"] = when
    return cfg
