"""``export`` / ``import``: canonical images on a machine with no network.

The archive is one tar that is three things at once:

- an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``),
  one index entry per image, named for its recipe;
- a ``docker load`` archive (``manifest.json``, one entry per image, tagged
  ``RECIPE:latest``), so ``docker load -i FILE`` works with no buildsys;
- buildsys's own record under ``buildsys/``: ``export.json`` (version 1: each
  image's recipe, chain, manifest and config digests, diff_ids, and the
  sha256 of every other file here), the chain's locks and an SBOM per image.

It is written deterministically (sorted, mtime 0, no owner names) under a
temporary name and renamed, so the same images give the same archive bytes.

``import`` trusts nothing in it until it is checked: it reads the archive
once, hashing every blob into the store's scratch folder as it goes, and only
when every blob matches its digest, every image's manifest, config and layers
are there, and every file ``export.json`` lists matches its sha256, does it
move the blobs into the store and load the images into docker. A truncated,
tampered or incomplete archive (or a full disk) stops it before anything is
loaded. ``index.json`` and ``manifest.json`` of the archive are not read:
what is loaded is rebuilt from the checked blobs.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from buildsys.build.load import engine_notes
from buildsys.build.records import LayerRecord
from buildsys.core import names
from buildsys.core.errors import BuildsysError, FormatVersionError
from buildsys.core.progress import Progress
from buildsys.core.store import Store, atomic_open
from buildsys.engine import Engine
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, dumps
from buildsys.oci.image import (
    CONTAINERD_NAME_ANNOTATION,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_ANNOTATION,
    OciLayout,
    archive_member,
    canonical_bytes,
    checked_chunks,
    write_docker_archive,
)
from buildsys.oci.layer.normalize import TarWriter
from buildsys.ship.publish import stored_image
from buildsys.ship.sbom import cyclonedx_json

EXPORT_VERSION = 1
META = "buildsys/export.json"
_CHUNK = 1 << 20
_BLOB_RE = re.compile(rf"blobs/sha256/({names.HEX64.pattern})")


class ArchiveError(BuildsysError):
    """An archive to import is truncated, tampered with or incomplete; nothing was loaded."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}; nothing was imported",
                         "copy the archive again from the machine that exported it (compare its sha256 there "
                         "and here), or export it again")


@dataclass(frozen=True)
class ExportedImage:
    recipe: str
    chain: tuple[str, ...]
    manifest_digest: str
    image_id: str
    diff_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "chain": list(self.chain), "manifest_digest": self.manifest_digest,
                "image_id": self.image_id, "diff_ids": list(self.diff_ids)}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    images: tuple[ExportedImage, ...]
    size: int
    sha256: str
    seconds: float


def export(store: Store, graph: Graph, locks: Mapping[str, Lock], recipes: Sequence[str], out: Path,
           progress: Progress = lambda r, s, d: None) -> ExportResult:
    started = time.monotonic()
    layout = OciLayout(store.oci)
    records: dict[str, LayerRecord] = {name: stored_image(store, graph, locks, name) for name in recipes}
    blobs: set[str] = set()
    for rec in records.values():
        layout.read_image(rec.manifest_digest)  # config and manifest present and intact
        blobs |= {rec.manifest_digest, rec.config_digest, *(d for d, _ in rec.layers)}
    extra: dict[str, bytes] = {}
    for name in sorted({n for r in recipes for n in graph.chain(r)}):
        extra[f"buildsys/locks/{name}.lock"] = dumps(locks[name])
    for name, rec in sorted(records.items()):
        extra[f"buildsys/sbom/{name}.cdx.json"] = cyclonedx_json(graph, locks, name, rec)
    images = tuple(ExportedImage(name, tuple(graph.chain(name)), rec.manifest_digest, rec.config_digest,
                                 rec.diff_ids) for name, rec in sorted(records.items()))
    meta = {"version": EXPORT_VERSION, "images": [i.to_json() for i in images],
            "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(extra.items())}}
    docker_manifest = [{"Config": _blob_name(r.config_digest), "RepoTags": [f"{n}:latest"],
                        "Layers": [_blob_name(d) for d, _ in r.layers]} for n, r in sorted(records.items())]
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [
        {"mediaType": MANIFEST_MEDIA_TYPE, "digest": r.manifest_digest,
         "size": layout.blob_path(r.manifest_digest).stat().st_size,
         "annotations": {REF_ANNOTATION: n, CONTAINERD_NAME_ANNOTATION: f"{n}:latest"}}
        for n, r in sorted(records.items())]}
    small = {**extra, META: canonical_bytes(meta), "index.json": canonical_bytes(index),
             "manifest.json": canonical_bytes(docker_manifest),
             "oci-layout": canonical_bytes({"imageLayoutVersion": "1.0.0"})}
    total = sum(layout.blob_path(d).stat().st_size for d in blobs)
    done = 0
    h = hashlib.sha256()
    with atomic_open(out) as f:
        dst = _Hashing(f, h)
        writer = TarWriter(dst)  # type: ignore[arg-type]
        for d in ("blobs", "blobs/sha256", "buildsys", "buildsys/locks", "buildsys/sbom"):
            writer.add(archive_member(d, directory=True))
        for digest in sorted(blobs):
            path = layout.blob_path(digest)
            size = path.stat().st_size
            progress("export", "blob", f"{digest[:19]} ({size / 1e6:.1f} MB, {done / 1e6:.0f}/{total / 1e6:.0f} MB)")
            writer.add(archive_member(_blob_name(digest), size), checked_chunks(path, digest))
            done += size
        for name, data in sorted(small.items()):
            writer.add(archive_member(name, len(data)), (data,))
        writer.close()
        size = dst.size
    return ExportResult(out, images, size, h.hexdigest(), time.monotonic() - started)


class _Hashing:
    def __init__(self, f: IO[bytes], h: Any) -> None:
        self.f, self.h, self.size = f, h, 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]



# ---------------------------------------------------------------- import


@dataclass(frozen=True)
class Imported:
    images: tuple[ExportedImage, ...]
    blobs: int
    bytes: int
    seconds: float


def import_archive(store: Store, archive: Path, engine: Engine | None,
                   progress: Progress = lambda r, s, d: None) -> Imported:
    started = time.monotonic()
    layout = OciLayout(store.oci)
    with store.scratch("import") as tmp:
        blobs, files, nbytes = _read_checked(archive, Path(tmp), progress)
        images = _check_complete(archive, blobs, files)
        # Everything is checked: only now does the store (and then docker) see any of it.
        for digest, path in sorted(blobs.items()):
            layout.add_blob_file(path, digest=digest)
    for img in images:
        layout.set_ref(img.recipe, img.manifest_digest)
    for img in images:
        if engine is None:
            break
        progress(img.recipe, "load", f"docker load {img.image_id[:19]}")
        if not engine.has_image(img.image_id):
            with tempfile.TemporaryFile(dir=store.tmp) as f:
                write_docker_archive(layout, img.manifest_digest, [], f)
                f.seek(0)
                engine.load(f)
        previous = engine.tag(img.image_id, img.recipe, "latest")
        if previous and previous != img.image_id:
            progress(img.recipe, "warning", f"{img.recipe}:latest pointed at {previous[:19]}; it now points at the "
                                            f"imported {img.image_id[:19]}")
        # What a no-op build noted of this tag is no longer so: forget it (the next build asks docker).
        (engine_notes() / f"{img.recipe}.tag").unlink(missing_ok=True)
        progress(img.recipe, "imported", img.image_id[:19])
    return Imported(tuple(images), len(blobs), nbytes, time.monotonic() - started)


def _read_checked(archive: Path, tmp: Path, progress: Progress) -> tuple[dict[str, Path], dict[str, bytes], int]:
    """One pass over the archive: blobs hashed into ``tmp``, buildsys/ files kept; anything off is refused."""
    blobs: dict[str, Path] = {}
    files: dict[str, bytes] = {}
    nbytes = 0
    try:
        with tarfile.open(archive, "r|") as tf:
            for member in tf:
                name = member.name.removeprefix("./").rstrip("/")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ArchiveError(archive, f"'{member.name}' is not a regular file (links are refused)")
                src = tf.extractfile(member)
                assert src is not None
                m = _BLOB_RE.fullmatch(name)
                if m:
                    digest = "sha256:" + m.group(1)
                    progress("import", "check", f"{digest[:19]} ({member.size / 1e6:.1f} MB)")
                    path = tmp / m.group(1)
                    h = hashlib.sha256()
                    with open(path, "wb") as out:
                        while chunk := src.read(_CHUNK):
                            h.update(chunk)
                            out.write(chunk)
                    if "sha256:" + h.hexdigest() != digest:
                        raise ArchiveError(archive, f"blob {digest} does not match its digest (its content "
                                                    f"hashes to sha256:{h.hexdigest()}): tampered or damaged")
                    blobs[digest] = path
                    nbytes += member.size
                elif name.startswith("buildsys/"):
                    if member.size > 64 << 20:
                        raise ArchiveError(archive, f"'{name}' is too large for a lock or an SBOM")
                    files[name] = src.read()
                # index.json, manifest.json, oci-layout: for docker load and OCI tools, not read here
    except (tarfile.TarError, EOFError) as e:
        raise ArchiveError(archive, f"not a complete archive ({e}): truncated or damaged") from e
    return blobs, files, nbytes


def _check_complete(archive: Path, blobs: Mapping[str, Path], files: Mapping[str, bytes]) -> list[ExportedImage]:
    if META not in files:
        raise ArchiveError(archive, f"{META} is missing: not an archive of `buildsys export`")
    try:
        meta = json.loads(files[META])
    except ValueError as e:
        raise ArchiveError(archive, f"{META} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ArchiveError(archive, f"{META} is not an object")
    if meta.get("version") != EXPORT_VERSION:
        raise FormatVersionError(f"{archive}:{META}", meta.get("version"), EXPORT_VERSION)
    listed = meta.get("files") or {}
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise ArchiveError(archive, f"{META}: 'files' is not a map of names to sha256")
    for name, sha in sorted(listed.items()):
        data = files.get(name)
        if data is None:
            raise ArchiveError(archive, f"'{name}' is listed in {META} but missing")
        if hashlib.sha256(data).hexdigest() != sha:
            raise ArchiveError(archive, f"'{name}' does not match its sha256 in {META}: tampered or damaged")
    images: list[ExportedImage] = []
    for entry in meta.get("images") or []:
        try:
            img = ExportedImage(str(entry["recipe"]), tuple(entry["chain"]), str(entry["manifest_digest"]),
                                str(entry["image_id"]), tuple(entry["diff_ids"]))
        except (KeyError, TypeError) as e:
            raise ArchiveError(archive, f"{META}: an image entry lacks {e}") from e
        if not names.RECIPE_NAME.fullmatch(img.recipe):
            raise ArchiveError(archive, f"{META}: '{img.recipe}' is not a recipe name")
        try:
            _check_image(archive, img, blobs)
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # UnicodeDecodeError is a ValueError
            raise ArchiveError(archive, f"{img.recipe}: its manifest or config is not an OCI one "
                                        f"({type(e).__name__}: {e})") from e
        images.append(img)
    if not images:
        raise ArchiveError(archive, f"{META} lists no image")
    return images


def _check_image(archive: Path, img: ExportedImage, blobs: Mapping[str, Path]) -> None:
    """The image's manifest, config and layers are all there, with the sizes and diff_ids they claim."""
    manifest_path = blobs.get(img.manifest_digest)
    if manifest_path is None:
        raise ArchiveError(archive, f"{img.recipe}: its manifest {img.manifest_digest} is missing")
    manifest = json.loads(manifest_path.read_bytes())
    config_digest = manifest.get("config", {}).get("digest")
    if config_digest != img.image_id:
        raise ArchiveError(archive, f"{img.recipe}: the manifest's config is {config_digest}, "
                                    f"{META} says {img.image_id}")
    for desc in [manifest["config"], *manifest.get("layers", [])]:
        path = blobs.get(desc["digest"])
        if path is None:
            raise ArchiveError(archive, f"{img.recipe}: blob {desc['digest']} is missing")
        if path.stat().st_size != desc["size"]:
            raise ArchiveError(archive, f"{img.recipe}: blob {desc['digest']} has {path.stat().st_size} "
                                        f"bytes, its manifest says {desc['size']}")
    config = json.loads(blobs[config_digest].read_bytes())
    diff_ids = tuple(config.get("rootfs", {}).get("diff_ids", []))
    if diff_ids != tuple(d["digest"] for d in manifest["layers"]) or diff_ids != img.diff_ids:
        raise ArchiveError(archive, f"{img.recipe}: its config's diff_ids do not match its layers")
