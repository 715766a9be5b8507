"""Image config, manifest, OCI image layout and docker-loadable archive.

The config and manifest bytes are the product's identity (the config digest is
docker's image ID after ``docker load``), so they come from one canonical
serialization and from nothing that varies between builds: no clock, no
container id, no hostname (docs/design.md, "Canonical image rules").
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from buildsys.core import names
from buildsys.core.errors import BuildsysError
from buildsys.core.store import atomic_open, atomic_write
from buildsys.model.recipe import OCI_PREFIX, ImageConfig, canonical_json
from buildsys.oci.layer.normalize import TarWriter

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: diff_id == digest
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Keys of the OCI image config kept from a parent; docker adds others
# (container, container_config, docker_version, Hostname, Image...) that name
# the machine or the moment of a build.
_TOP_KEYS = ("created", "author", "architecture", "os", "os.version", "os.features", "variant", "config", "rootfs",
             "history")
_CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels", "StopSignal",
                "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")
_CHUNK = 1 << 20


class ImageError(BuildsysError):
    """The OCI layout is missing a blob, is corrupt, or an image is inconsistent."""


class DamagedBlob(ImageError):
    """A blob's content is not what its digest names. The blob has been removed already."""

    def __init__(self, path: Path, digest: str) -> None:
        self.path, self.digest = path, digest
        super().__init__(f"{path}: the store's blob {digest} was damaged (its content does not match its digest) "
                         "and was removed", "run the build again: it rebuilds the layers that used it")


def archive_member(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    """A member header of the archives buildsys writes (docker load, export, bundle): fixed owner, mode, time."""
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    ti.size, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0, 0, "", ""
    return ti


def _damaged(path: Path, digest: str) -> DamagedBlob:
    path.unlink(missing_ok=True)  # never trusted again, never served to docker or a registry
    return DamagedBlob(path, digest)


def checked_chunks(path: Path, digest: str) -> Iterator[bytes]:
    """A store blob's bytes, hashed as they are sent (to docker load, an archive): a damaged blob is
    named and removed here (DamagedBlob), not reported by docker as an "invalid diffID" that says
    nothing of where it came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            yield chunk
    if "sha256:" + h.hexdigest() != digest:
        raise _damaged(path, digest)


class DescriptorLike(Protocol):
    @property
    def digest(self) -> str: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int
    media_type: str = LAYER_MEDIA_TYPE

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class ImageRecord:
    config_digest: str  # docker's image ID after `docker load`
    manifest_digest: str
    diff_ids: tuple[str, ...]
    layers: tuple[Descriptor, ...]


def canonical_bytes(obj: Any) -> bytes:
    """The one serialization of configs and manifests (the same as recipe hashes use)."""
    return canonical_json(obj)


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class ImageMeta:
    """What an image's labels say beyond its recipe and lock (docs/shipping.md, "Labels and annotations")."""

    revision: str | None = None  # the commit that last changed the chain's recipes and locks (core/vcs.py)
    source: str | None = None  # the repository's URL
    base_name: str | None = None  # the registry image the chain starts from, as locked (no digest)
    base_digest: str | None = None  # its manifest digest


NO_META = ImageMeta()


def oci_labels(recipe_name: str, recipe_hash: str, lock_hash: str, description: str, *, epoch: int,
               meta: ImageMeta = NO_META) -> tuple[dict[str, str], dict[str, str]]:
    """The labels buildsys sets: (defaults a recipe's ``[image] labels`` may override, fixed ones).

    From the recipe, the lock and ``meta`` only: never the clock. ``created`` is the
    lock's source-date-epoch, so it stays the same in every rebuild.
    """
    defaults = {OCI_PREFIX + "title": recipe_name,
                **({OCI_PREFIX + "description": description} if description else {}),
                **({OCI_PREFIX + "source": meta.source} if meta.source else {})}
    fixed = {OCI_PREFIX + "created": rfc3339(epoch),
             **({OCI_PREFIX + "revision": meta.revision} if meta.revision else {}),
             **({OCI_PREFIX + "base.name": meta.base_name} if meta.base_name else {}),
             **({OCI_PREFIX + "base.digest": meta.base_digest} if meta.base_digest else {}),
             "io.buildsys.recipe-hash": recipe_hash,
             "io.buildsys.lock-hash": lock_hash}
    return defaults, fixed


def manifest_annotations(config: dict[str, Any]) -> dict[str, str]:
    """The manifest's annotations: the config's ``org.opencontainers.image.*`` labels, for registries that
    read only the manifest."""
    labels = (config.get("config") or {}).get("Labels") or {}
    return {k: v for k, v in sorted(labels.items()) if k.startswith(OCI_PREFIX)}


def make_config(
    *,
    parent: dict[str, Any] | None,
    diff_id: str | None,
    epoch: int,
    image: ImageConfig,
    labels: tuple[dict[str, str], dict[str, str]],
    created_by: str,
    architecture: str = "amd64",
    os: str = "linux",
    below: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The config of an image made of ``parent`` plus one layer (none: ``diff_id`` None), Dockerfile-like.

    ``below``: the (diff_id, created_by) of layers of the same step under that one (a split layer's groups,
    ``build/sublayers``), each with its own history entry.

    Labels are applied as inherited < buildsys's defaults < recipe ``[image] labels``
    < buildsys's fixed ones (``oci_labels``), so that the derived labels (hashes, created,
    revision, base) cannot be overridden. The parent's ``org.opencontainers.image.*``
    labels are not inherited: they describe the parent (a base image's version or
    vendor is not its child's).
    """
    when = rfc3339(epoch)
    if parent is None:
        cfg: dict[str, Any] = {
            "config": {"Env": [f"PATH={DEFAULT_PATH}"]},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        }
    else:
        cfg = {k: copy.deepcopy(v) for k, v in parent.items() if k in _TOP_KEYS}
    cfg["architecture"], cfg["os"], cfg["created"] = architecture, os, when
    inner = {k: v for k, v in (cfg.get("config") or {}).items() if k in _CONFIG_KEYS and v is not None}

    if image.env:
        env = list(inner.get("Env") or [])
        index = {e.split("=", 1)[0]: i for i, e in enumerate(env)}
        for key, value in image.env:  # replace in place, append new keys in sorted order
            if key in index:
                env[index[key]] = f"{key}={value}"
            else:
                index[key] = len(env)
                env.append(f"{key}={value}")
        inner["Env"] = env
    if image.user is not None:
        inner["User"] = image.user
    if image.workdir is not None:
        inner["WorkingDir"] = image.workdir
    if image.expose:
        ports = dict(inner.get("ExposedPorts") or {})
        ports.update({f"{p}/tcp": {} for p in image.expose})
        inner["ExposedPorts"] = ports
    if image.entrypoint is not None:
        inner["Entrypoint"] = list(image.entrypoint)
        if image.cmd is None:
            inner.pop("Cmd", None)  # as in a Dockerfile: a new ENTRYPOINT resets the inherited CMD
    if image.cmd is not None:
        inner["Cmd"] = list(image.cmd)
    inherited = {k: v for k, v in (inner.get("Labels") or {}).items() if not k.startswith(OCI_PREFIX)}
    defaults, fixed = labels
    merged = {**inherited, **defaults, **dict(image.labels), **fixed}
    inner.pop("Labels", None)
    if merged:
        inner["Labels"] = dict(sorted(merged.items()))
    cfg["config"] = inner

    rootfs = cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["type"] = "layers"
    # No diff_id: a config-only step (a registry root's [image] on the image as it is), an empty layer.
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), *(d for d, _ in below), *([diff_id] if diff_id else [])]
    step = {"created": when, "created_by": created_by, **({} if diff_id else {"empty_layer": True})}
    cfg["history"] = [*cfg.get("history", []), *({"created": when, "created_by": by} for _, by in below), step]
    return cfg


def _check_digest(digest: str) -> str:
    if not names.DIGEST.fullmatch(digest):
        raise ImageError(f"'{digest}' is not a sha256 digest (sha256:<64 hex digits>)")
    return digest


class OciLayout:
    """An OCI image layout folder: ``oci-layout``, ``index.json``, ``blobs/sha256/``.

    Blobs are written under a temporary name and renamed, and index.json is
    rewritten whole under a lock, so parallel builds and interrupted runs never
    leave a half blob or a lost ref.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    def _ensure(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        if not (self.root / "oci-layout").exists():
            atomic_write(self.root / "oci-layout", canonical_bytes({"imageLayoutVersion": "1.0.0"}))
        if not (self.root / "index.json").exists():
            with self._index_lock():
                if not (self.root / "index.json").exists():
                    self._write_index([])

    def blob_path(self, digest: str) -> Path:
        return self.blobs / _check_digest(digest).split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def add_blob_bytes(self, data: bytes) -> str:
        digest = digest_bytes(data)
        path = self.blob_path(digest)
        if not path.is_file() or path.read_bytes() != data:
            self._ensure()
            atomic_write(self.blob_path(digest), data)
        return digest

    def add_blob_file(self, path: Path, digest: str | None = None) -> str:
        """Move a finished file in as a blob; the file is consumed.

        ``digest`` may be given when the writer hashed the file as it wrote it
        (``normalize_tar`` does), which saves reading a large layer again.
        """
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            digest = "sha256:" + h.hexdigest()
        final = self.blob_path(digest)
        # A blob already there is replaced, not trusted: the new file was hashed as it was
        # written, the old one may have been damaged since (a rename costs nothing).
        self._ensure()
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.replace(path, final)  # atomic on one file system
        except OSError:  # another file system: copy under a temporary name, then rename
            with atomic_open(final) as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
            path.unlink()
        return digest

    def read_blob(self, digest: str) -> bytes:
        """A small blob (config, manifest), checked against its digest."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError as e:
            raise ImageError(f"{self.root}: blob {digest} is missing",
                             "the image store is incomplete; rebuild with `buildsys build --no-cache`") from e
        if digest_bytes(data) != digest:
            raise _damaged(self.blob_path(digest), digest)
        return data

    def write_image(
        self, config: dict[str, Any], layers: Sequence[DescriptorLike | tuple[str, int]], ref: str | None = None
    ) -> ImageRecord:
        """Store config and manifest; with ``ref``, point index.json's entry of that name at it.

        ``layers`` are descriptors (``LayerInfo``, ``Descriptor``) or ``(digest, size)`` pairs.
        """
        diff_ids = tuple(config.get("rootfs", {}).get("diff_ids", []))
        pairs = [layer if isinstance(layer, tuple) else (layer.digest, layer.size) for layer in layers]
        descs = tuple(Descriptor(_check_digest(digest), size) for digest, size in pairs)
        if diff_ids != tuple(d.digest for d in descs):
            raise ImageError(
                "the config's rootfs.diff_ids do not match the layers given",
                f"diff_ids {list(diff_ids)}, layers {[d.digest for d in descs]}",
            )
        missing = [d.digest for d in descs if not self.has_blob(d.digest)]
        if missing:
            raise ImageError(f"{self.root}: layer blob {missing[0]} is missing", "add the layer before the image")
        config_bytes = canonical_bytes(config)
        config_digest = self.add_blob_bytes(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config_bytes)},
            "layers": [d.to_json() for d in descs],
            **({"annotations": notes} if (notes := manifest_annotations(config)) else {}),
        }
        manifest_bytes = canonical_bytes(manifest)
        manifest_digest = self.add_blob_bytes(manifest_bytes)
        if ref is not None:
            self.set_ref(ref, manifest_digest)
        return ImageRecord(config_digest, manifest_digest, diff_ids, descs)

    def read_image(self, manifest_digest: str) -> tuple[dict[str, Any], dict[str, Any]]:
        manifest = json.loads(self.read_blob(manifest_digest))
        return manifest, self.read_config(manifest["config"]["digest"])

    def read_config(self, config_digest: str) -> dict[str, Any]:
        return dict(json.loads(self.read_blob(config_digest)))

    # ------------------------------------------------------------ index.json

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".index.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _read_index(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.root / "index.json").read_bytes()).get("manifests", []))
        except FileNotFoundError:
            return []
        except json.JSONDecodeError as e:
            raise ImageError(f"{self.root / 'index.json'}: not valid JSON ({e})", "delete it and rebuild") from e

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        def key(m: dict[str, Any]) -> tuple[str, str]:
            return (m.get("annotations", {}).get(REF_ANNOTATION, ""), m["digest"])

        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": sorted(manifests, key=key)}
        atomic_write(self.root / "index.json", canonical_bytes(index))

    def set_ref(self, ref: str, manifest_digest: str) -> None:
        """Point ``ref`` at a stored manifest, replacing what it named before."""
        manifest = Descriptor(manifest_digest, len(self.read_blob(manifest_digest)), MANIFEST_MEDIA_TYPE)
        self._ensure()
        with self._index_lock():
            entries = [m for m in self._read_index() if m.get("annotations", {}).get(REF_ANNOTATION) != ref]
            entries.append({**manifest.to_json(), "annotations": {REF_ANNOTATION: ref}})
            self._write_index(entries)

    def refs(self) -> dict[str, str]:
        """ref name -> manifest digest, as index.json has them."""
        out = {}
        for m in self._read_index():
            name = m.get("annotations", {}).get(REF_ANNOTATION)
            if name is not None:
                out[name] = m["digest"]
        return out

    def resolve(self, ref: str) -> str | None:
        return self.refs().get(ref)


# ---------------------------------------------------------------- docker archive


def _tag_of(repo_tag: str) -> str:
    name = repo_tag.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[1] if ":" in name else "latest"


def write_docker_archive(layout: OciLayout, manifest_digest: str, repo_tags: list[str], dst: IO[bytes],
                         omit_layers: int = 0) -> None:
    """A tar that docker 20.10's ``docker load`` accepts (``manifest.json``) and that is also an OCI layout.

    Layers are streamed from the layout; ``dst`` needs only ``write`` (a pipe will do).
    Docker stores the config bytes as they are, so its image ID is our config digest.

    ``omit_layers`` leaves out the blobs of that many bottom layers: docker's loader
    skips a layer it already has (by chain ID) without opening its file, so when the
    engine holds the parent image the archive needs only the new layer. Such an
    archive is not a complete OCI layout; use it only for that load.
    """
    manifest_bytes = layout.read_blob(manifest_digest)
    manifest = json.loads(manifest_bytes)
    config_digest = manifest["config"]["digest"]
    layout.read_blob(config_digest)  # present and intact
    layer_digests = [layer["digest"] for layer in manifest["layers"]]

    def blob_name(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":", 1)[1]

    docker_manifest = [{
        "Config": blob_name(config_digest),
        "RepoTags": list(repo_tags),
        "Layers": [blob_name(d) for d in layer_digests],
    }]
    desc = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest, "size": len(manifest_bytes)}
    entries = [
        {**desc, "annotations": {CONTAINERD_NAME_ANNOTATION: t, REF_ANNOTATION: _tag_of(t)}} for t in repo_tags
    ] or [desc]
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries}

    writer = TarWriter(dst)
    writer.add(archive_member("blobs", directory=True))
    writer.add(archive_member("blobs/sha256", directory=True))
    for digest in sorted({manifest_digest, config_digest, *layer_digests[omit_layers:]}):
        path = layout.blob_path(digest)
        if not path.is_file():
            raise ImageError(f"{layout.root}: blob {digest} is missing", "rebuild the image")
        writer.add(archive_member(blob_name(digest), path.stat().st_size), checked_chunks(path, digest))
    small = {
        "index.json": canonical_bytes(index),
        "manifest.json": canonical_bytes(docker_manifest),
        "oci-layout": canonical_bytes({"imageLayoutVersion": "1.0.0"}),
    }
    for name, data in small.items():
        writer.add(archive_member(name, len(data)), (data,))
    writer.close()


def write_streamed_archive(dst: IO[bytes], lower_diff_ids: Sequence[str], layer_sizes: Sequence[int],
                           write_layer: Callable[[int, IO[bytes]], bytes | None]) -> None:
    """A ``docker load`` archive whose new layers are written into it while they are made.

    ``write_layer(i, sink)`` writes exactly ``layer_sizes[i]`` bytes (the i-th
    new layer, bottom first); the last call returns the image's config, which
    can only be made once every layer's digest is known: docker reads
    ``manifest.json`` after the whole archive, so the config and manifest may
    come last. The lower layers are named but not sent: docker must have them
    (it ran the build on the parent image), and its loader skips a layer it has
    without opening its file (see ``write_docker_archive``).
    """
    writer = TarWriter(dst, hashed=False)
    config: bytes | None = None
    names = [f"layer{i}.tar" if len(layer_sizes) > 1 else "layer.tar" for i in range(len(layer_sizes))]
    for i, (name, size) in enumerate(zip(names, layer_sizes, strict=True)):
        config = writer.add_stream(name, size, functools.partial(write_layer, i))
    assert isinstance(config, bytes)
    docker_manifest = [{
        "Config": "config.json",
        "RepoTags": [],
        "Layers": [f"lower/{d.split(':', 1)[1]}.tar" for d in lower_diff_ids] + names,
    }]

    for name, data in (("config.json", config), ("manifest.json", canonical_bytes(docker_manifest))):
        writer.add(archive_member(name, len(data)), (data,))
    writer.close()
