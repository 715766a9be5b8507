"""``export`` / ``import``: canonical images on a machine with no network.

The archive is one tar that is three things at once:

- an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``),
  one index entry per image, named for its recipe;
- a ``docker load`` archive (``manifest.json``, one entry per image, tagged
  ``RECIPE:latest``), so ``docker load -i FILE`` works with no buildsys;
- buildsys's own record under ``buildsys/``: ``export.json`` (version 1: each
  image's recipe, chain, manifest and config digests, diff_ids, and the
  sha256 of every other file here), the chain's locks and an SBOM per image.

Layers are compressed as ``publish`` compresses them (gzip by default, one
pinned method, kept in the store; ``--compression none`` writes them as the
store has them): the archive's manifests are the compressed ones, its configs
the built ones, and ``export.json`` names each image's built (uncompressed)
manifest as ``built_manifest_digest`` when it differs.

It is written deterministically (sorted, mtime 0, no owner names) under a
temporary name that names this host and process (``.NAME.partial.HOST-PID.*``,
swept by the next export once that process is gone) and renamed, so the same
images give the same archive bytes. A full output disk is named as such
(:class:`~buildsys.core.archive.OutputFull`), not as the store's.

``import`` trusts nothing in it until it is checked. It first reads the
headers, ``export.json`` and each image's manifest (each capped, see
``buildsys.core.archive``): together they declare every member, its size and
its digest, and any other member, a link, a sparse file or a size other than
the declared one is refused before a byte is written. Then it streams each
blob into the store's scratch folder, hashing it (never more than its declared
size), and only when every blob matches its digest and every config its
layers, and every file ``export.json`` lists matches its sha256, does it move
the blobs into the store and load the images into docker. ``index.json`` and
``manifest.json`` of the archive are not read: what is loaded is rebuilt from
the checked blobs. A compressed layer is decompressed into the scratch folder
(at most 1100 times its size: deflate's ratio is at most 1032:1) and must
hash to its config's diff_id; the store gets the uncompressed layers and the
built manifest, rebuilt from the archive's and checked against
``built_manifest_digest``, as a build would have left them.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from buildsys.build.load import engine_notes
from buildsys.build.records import LayerRecord
from buildsys.core import names
from buildsys.core.archive import (
    JSON_CAP,
    MANIFEST_CAP,
    Refuse,
    copy_member,
    open_archive,
    owned_open,
    read_json_member,
    sweep_partials,
)
from buildsys.core.errors import BuildsysError, FormatVersionError
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store
from buildsys.engine import Engine
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, dumps
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
from buildsys.oci.image import (
    CONTAINERD_NAME_ANNOTATION,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_ANNOTATION,
    OciLayout,
    archive_member,
    canonical_bytes,
    checked_chunks,
    digest_bytes,
    write_docker_archive,
)
from buildsys.oci.layer.normalize import TarWriter
from buildsys.ship.publish import stored_image
from buildsys.ship.sbom import cyclonedx_json

EXPORT_VERSION = 1
META = "buildsys/export.json"
_CHUNK = 1 << 20



class ArchiveError(BuildsysError):
    """An archive to import is truncated, tampered with, incomplete or holds what it does not declare;
    nothing was loaded (exit 1). ``member`` names the member at fault, when one is."""

    def __init__(self, path: Path, problem: str, member: str = "") -> None:
        self.path, self.problem, self.member = path, problem, member
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
    built_manifest_digest: str | None = None  # the store's (uncompressed) manifest, when the archive's differs

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "chain": list(self.chain), "manifest_digest": self.manifest_digest,
                "image_id": self.image_id, "diff_ids": list(self.diff_ids),
                **({"built_manifest_digest": self.built_manifest_digest} if self.built_manifest_digest else {})}

    @property
    def built(self) -> str:
        """The manifest digest a build gives: what the store holds and docker loads."""
        return self.built_manifest_digest or self.manifest_digest


@dataclass(frozen=True)
class ExportResult:
    path: Path
    images: tuple[ExportedImage, ...]
    size: int
    sha256: str
    seconds: float


def export(store: Store, graph: Graph, locks: Mapping[str, Lock], recipes: Sequence[str], out: Path,
           progress: Progress = NO_PROGRESS, compression: str = DEFAULT) -> ExportResult:
    started = time.monotonic()
    m = method(compression)
    layout = OciLayout(store.oci)
    records: dict[str, LayerRecord] = {name: stored_image(store, graph, locks, name) for name in recipes}
    blobs: set[str] = set()
    cblobs = CompressedBlobs(store)
    shipped = {}
    for name, rec in sorted(records.items()):
        layout.read_image(rec.manifest_digest)  # config and manifest present and intact
        shipped[name] = compressed_image(cblobs, rec.manifest_digest, m, progress=_for(progress, name))
        blobs |= {shipped[name].manifest_digest, *(d for d, _, _ in shipped[name].blobs)}
    extra: dict[str, bytes] = {}
    for name in sorted({n for r in recipes for n in graph.chain(r)}):
        extra[f"buildsys/locks/{name}.lock"] = dumps(locks[name])
    for name, rec in sorted(records.items()):
        extra[f"buildsys/sbom/{name}.cdx.json"] = cyclonedx_json(graph, locks, name, rec, store, progress=progress)
    images = tuple(ExportedImage(name, tuple(graph.chain(name)), shipped[name].manifest_digest, rec.config_digest,
                                 rec.diff_ids, None if m.format == "none" else rec.manifest_digest)
                   for name, rec in sorted(records.items()))
    meta = {"version": EXPORT_VERSION, "images": [i.to_json() for i in images],
            "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(extra.items())}}
    docker_manifest = [{"Config": _blob_name(r.config_digest), "RepoTags": [f"{n}:latest"],
                        "Layers": [_blob_name(d) for d, _, _ in shipped[n].blobs[1:]]}
                       for n, r in sorted(records.items())]
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [
        {"mediaType": MANIFEST_MEDIA_TYPE, "digest": shipped[n].manifest_digest,
         "size": len(shipped[n].manifest_bytes),
         "annotations": {REF_ANNOTATION: n, CONTAINERD_NAME_ANNOTATION: f"{n}:latest"}}
        for n, r in sorted(records.items())]}
    small = {**extra, META: canonical_bytes(meta), "index.json": canonical_bytes(index),
             "manifest.json": canonical_bytes(docker_manifest),
             "oci-layout": canonical_bytes({"imageLayoutVersion": "1.0.0"})}
    total = sum(layout.blob_path(d).stat().st_size for d in blobs)
    done = 0
    h = hashlib.sha256()
    # An export killed late leaves its partial archive (hundreds of MB) beside ``out``: remove those of
    # processes that no longer run before writing another.
    for gone in sweep_partials(out.parent):
        progress("export", "cleanup", f"removed {gone.name}, left by an interrupted export")
    with owned_open(out) as f:
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


def _for(progress: Progress, recipe: str) -> Callable[[str, str], None]:
    return lambda stage, detail: progress(recipe, stage, detail)


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
                   progress: Progress = NO_PROGRESS) -> Imported:
    started = time.monotonic()
    layout = OciLayout(store.oci)
    # An import killed (kill -9, a reboot) leaves its scratch folder (hundreds of MB): sweep those
    # of processes that no longer run, as builds do.
    if n := store.sweep_scratch():
        progress("import", "cleanup", f"removed {n} scratch folder(s) left by an interrupted run")
    with store.scratch("import") as tmp:
        images, blobs, nbytes = _read_checked(archive, Path(tmp), progress)
        blobs = _inflate(archive, images, blobs, Path(tmp), progress)
        # Everything is checked: only now does the store (and then docker) see any of it.
        for digest, path in sorted(blobs.items()):
            layout.add_blob_file(path, digest=digest)
    for img in images:
        layout.set_ref(img.recipe, img.built)
    for img in images:
        if engine is None:
            break
        progress(img.recipe, "load", f"docker load {img.image_id[:19]}")
        if not engine.has_image(img.image_id):
            with tempfile.TemporaryFile(dir=store.tmp) as f:
                write_docker_archive(layout, img.built, [], f)
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


# Files export.json lists (locks, SBOMs) are hashed as they are read and never kept; this bounds the read.
FILE_CAP = 64 << 20
# Members that docker load and OCI tools read; import neither reads nor keeps them.
_FOR_OTHER_TOOLS = ("index.json", "manifest.json", "oci-layout")


def _inflate(archive: Path, images: Sequence[ExportedImage], blobs: Mapping[str, Path], tmp: Path,
             progress: Progress) -> dict[str, Path]:
    """The blobs to keep: each compressed layer decompressed (bounded) and checked against its config's
    diff_id, and each image's built manifest, rebuilt and checked against ``built_manifest_digest``;
    the compressed layers themselves are dropped (the store keeps layers uncompressed)."""
    out = dict(blobs)
    compressed: set[str] = set()
    for img in images:
        if img.built_manifest_digest is None:
            continue
        manifest = json.loads(blobs[img.manifest_digest].read_bytes())
        layers = []
        for desc, diff_id in zip(manifest["layers"], img.diff_ids, strict=True):  # lengths: _check_config
            fmt = media_format(str(desc.get("mediaType")))
            if fmt is None:
                raise ArchiveError(archive, f"{img.recipe}: layer {desc['digest']} has the media type "
                                            f"{desc.get('mediaType')!r}, which buildsys cannot read")
            if fmt != "none":
                compressed.add(desc["digest"])
            if diff_id not in out:
                out[diff_id] = _inflate_layer(archive, img, desc, fmt, diff_id, blobs[desc["digest"]], tmp, progress)
            layers.append(built_descriptor(desc, diff_id, out[diff_id].stat().st_size))
        built = canonical_bytes({**manifest, "layers": layers})
        if digest_bytes(built) != img.built_manifest_digest:
            raise ArchiveError(archive, f"{img.recipe}: its manifest with the layers uncompressed is "
                                        f"{digest_bytes(built)}, {META} says {img.built_manifest_digest}")
        path = tmp / (img.built_manifest_digest.split(":", 1)[1] + ".built")
        path.write_bytes(built)
        out[img.built_manifest_digest] = path
    for digest in compressed - {d for img in images for d in img.diff_ids}:
        out.pop(digest, None)
    return out


def _inflate_layer(archive: Path, img: ExportedImage, desc: Mapping[str, Any], fmt: str, diff_id: str, src: Path,
                   tmp: Path, progress: Progress) -> Path:
    path = tmp / (diff_id.split(":", 1)[1] + ".inflated")
    progress("import", "decompress", f"{desc['digest'][:19]} ({int(desc['size']) / 1e6:.1f} MB, {fmt})")
    with open(src, "rb") as f, open(path, "wb") as dst:
        try:
            got, _ = decompress_stream(fmt, f, dst, inflate_limit(int(desc["size"])))
        except CompressionError as e:
            raise ArchiveError(archive, f"{img.recipe}: layer {desc['digest']}: {e.message}",
                               _blob_name(desc["digest"])) from e
    if got != diff_id:
        raise ArchiveError(archive, f"{img.recipe}: layer {desc['digest']} decompresses to {got}, not its "
                                    f"config's diff_id {diff_id}: tampered or damaged", _blob_name(desc["digest"]))
    return path


def _read_checked(archive: Path, tmp: Path, progress: Progress) -> tuple[list[ExportedImage], dict[str, Path], int]:
    """Everything the archive's listing declares, checked; anything else refused before a byte is written.

    export.json declares each image's manifest and the locks and SBOMs (with sha256); each manifest
    (read first, under ``MANIFEST_CAP``, and hashed) declares its config and layers with their sizes.
    A member named by none of them, or of another size than declared, stops the import at its header.
    """
    def fail(member: str, why: str) -> ArchiveError:
        return ArchiveError(archive, f"'{member}': {why}" if member else why, member)

    with open_archive(archive, fail) as (tf, members):
        if META not in members:
            raise ArchiveError(archive, f"{META} is missing: not an archive of `buildsys export`")
        images, listed = _listing(archive, read_json_member(tf, members[META], JSON_CAP, fail))
        declared = _declare(archive, tf, members, images)
        _check_members(members, declared, listed, fail)
        _check_complete(archive, members, declared, listed)
        # Every member is declared, and of its declared size: only now is anything written (to scratch).
        blobs, nbytes = _extract(archive, tf, members, declared, listed, tmp, progress, fail)
    for img in images:
        _check_config(archive, img, declared.manifests[img.manifest_digest], blobs)
    return images, blobs, nbytes


@dataclass
class _Declared:
    """The blobs the manifests declare, as member names of the archive."""

    blobs: dict[str, tuple[str, int]] = field(default_factory=dict)  # member name -> (digest, size)
    wanted_by: dict[str, str] = field(default_factory=dict)  # member name -> the first recipe whose manifest names it
    manifests: dict[str, bytes] = field(default_factory=dict)  # digest -> the manifest, read (and hashed) already

    def add(self, img: ExportedImage, digest: str, size: int) -> None:
        self.blobs[_blob_name(digest)] = (digest, size)
        self.wanted_by.setdefault(_blob_name(digest), img.recipe)


def _declare(archive: Path, tf: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo],
             images: Sequence[ExportedImage]) -> _Declared:
    """Read each image's manifest; collect the blobs they declare, one size for each."""
    declared = _Declared()
    for img in images:
        data = _manifest_bytes(archive, tf, members, img)
        declared.manifests[img.manifest_digest] = data
        declared.add(img, img.manifest_digest, len(data))
        for digest, size in _descriptors(archive, img, data):
            if declared.blobs.get(_blob_name(digest), (digest, size))[1] != size:
                raise ArchiveError(archive, f"{img.recipe}: blob {digest} is declared with two sizes", digest)
            declared.add(img, digest, size)
    return declared


def _check_members(members: Mapping[str, tarfile.TarInfo], declared: _Declared, listed: Mapping[str, str],
                   fail: Refuse) -> None:
    """Every member is declared and of its declared size (a listed file, under ``FILE_CAP``), or refused."""
    for name, member in sorted(members.items()):
        if name in declared.blobs:
            if member.size != declared.blobs[name][1]:
                raise fail(member.name, f"{member.size} bytes, its manifest declares {declared.blobs[name][1]}")
        elif name in listed:
            if member.size > FILE_CAP:
                raise fail(member.name, f"{member.size} bytes, too large for a lock or an SBOM "
                                        f"(cap {FILE_CAP >> 20} MiB)")
        elif name not in (META, *_FOR_OTHER_TOOLS):
            raise fail(member.name, f"not declared by {META} or the manifests it names "
                                    "(an archive of `buildsys export` holds nothing else)")


def _check_complete(archive: Path, members: Mapping[str, tarfile.TarInfo], declared: _Declared,
                    listed: Mapping[str, str]) -> None:
    """Every declared blob and every listed file is in the archive."""
    for name, (digest, _) in sorted(declared.blobs.items()):
        if name not in members:
            raise ArchiveError(archive, f"{declared.wanted_by[name]}: blob {digest} is missing")
    for name in sorted(listed):
        if name not in members:
            raise ArchiveError(archive, f"'{name}' is listed in {META} but missing")


def _extract(archive: Path, tf: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], declared: _Declared,
             listed: Mapping[str, str], tmp: Path, progress: Progress, fail: Refuse) -> tuple[dict[str, Path], int]:
    """Write each blob into ``tmp`` and hash each listed file, in archive order; return the blobs (digest ->
    path) and their bytes. Any content other than its digest or sha256 says refuses the archive."""
    blobs: dict[str, Path] = {}
    nbytes = 0
    for name, member in sorted(members.items(), key=lambda kv: kv[1].offset):
        if name in declared.blobs:
            digest, size = declared.blobs[name]
            path = tmp / digest.split(":", 1)[1]
            h = hashlib.sha256()
            if digest in declared.manifests:
                h.update(declared.manifests[digest])
                path.write_bytes(declared.manifests[digest])
            else:
                progress("import", "check", f"{digest[:19]} ({size / 1e6:.1f} MB)")
                with open(path, "wb") as out:
                    copy_member(tf, member, size, out, (h,), fail)
            if "sha256:" + h.hexdigest() != digest:
                raise ArchiveError(archive, f"blob {digest} does not match its digest (its content "
                                            f"hashes to sha256:{h.hexdigest()}): tampered or damaged", name)
            blobs[digest] = path
            nbytes += size
        elif name in listed:
            h = hashlib.sha256()
            copy_member(tf, member, member.size, None, (h,), fail)
            if h.hexdigest() != listed[name]:
                raise ArchiveError(archive, f"'{name}' does not match its sha256 in {META}: tampered or "
                                            "damaged", name)
    return blobs, nbytes


def _listing(archive: Path, data: bytes) -> tuple[list[ExportedImage], dict[str, str]]:
    """export.json: its images and the files it lists (name -> sha256)."""
    try:
        meta = json.loads(data)
    except ValueError as e:
        raise ArchiveError(archive, f"{META} is not valid JSON ({e})", META) from e
    if not isinstance(meta, dict):
        raise ArchiveError(archive, f"{META} is not an object", META)
    if meta.get("version") != EXPORT_VERSION:
        raise FormatVersionError(f"{archive}:{META}", meta.get("version"), EXPORT_VERSION)
    listed = _listed_files(archive, meta.get("files") or {})
    entries = meta.get("images") or []
    if not isinstance(entries, list):
        raise ArchiveError(archive, f"{META}: 'images' is not a list", META)
    images = [_image_entry(archive, entry) for entry in entries]
    if not images:
        raise ArchiveError(archive, f"{META} lists no image", META)
    return images, listed


def _listed_files(archive: Path, listed: Any) -> dict[str, str]:
    """export.json's 'files': locks and SBOMs only, each with a sha256."""
    if not isinstance(listed, dict) or not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                                               for v in listed.values()):
        raise ArchiveError(archive, f"{META}: 'files' is not a map of names to sha256", META)
    for name in listed:
        if not re.fullmatch(r"buildsys/(locks/[a-z0-9][a-z0-9._-]*\.lock|sbom/[a-z0-9][a-z0-9._-]*\.cdx\.json)",
                            name):
            raise ArchiveError(archive, f"{META}: 'files' names '{name}', which is not a lock or an SBOM", META)
    return listed


def _image_entry(archive: Path, entry: Any) -> ExportedImage:
    """One of export.json's 'images', with a recipe name and a manifest digest of the right shape."""
    try:
        built = entry.get("built_manifest_digest")
        img = ExportedImage(str(entry["recipe"]), tuple(entry["chain"]), str(entry["manifest_digest"]),
                            str(entry["image_id"]), tuple(str(d) for d in entry["diff_ids"]),
                            None if built is None else str(built))
    except (KeyError, TypeError, AttributeError) as e:
        raise ArchiveError(archive, f"{META}: an image entry lacks {e}", META) from e
    if not all(names.DIGEST.fullmatch(d) for d in (*img.diff_ids, *filter(None, [img.built_manifest_digest]))):
        raise ArchiveError(archive, f"{img.recipe}: a diff_id or the built manifest digest is not "
                                    "sha256:<64 hex>", META)
    if not names.RECIPE_NAME.fullmatch(img.recipe):
        raise ArchiveError(archive, f"{META}: '{img.recipe}' is not a recipe name", META)
    if not names.DIGEST.fullmatch(img.manifest_digest):
        raise ArchiveError(archive, f"{img.recipe}: its manifest digest {img.manifest_digest!r} is not "
                                    "sha256:<64 hex>", META)
    return img


def _not_oci(archive: Path, img: ExportedImage, why: str) -> ArchiveError:
    return ArchiveError(archive, f"{img.recipe}: its manifest or config is not an OCI one ({why})")


def _manifest_bytes(archive: Path, tf: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo],
                    img: ExportedImage) -> bytes:
    """An image's manifest, read before anything else is written: it declares the image's other blobs."""
    member = members.get(_blob_name(img.manifest_digest))
    if member is None:
        raise ArchiveError(archive, f"{img.recipe}: its manifest {img.manifest_digest} is missing")
    if member.size > MANIFEST_CAP:
        raise _not_oci(archive, img, f"{member.size} bytes, over the {MANIFEST_CAP >> 20} MiB cap for a manifest")
    data = read_json_member(tf, member, MANIFEST_CAP,
                            lambda m, why: ArchiveError(archive, f"'{m}': {why}", m))
    if "sha256:" + hashlib.sha256(data).hexdigest() != img.manifest_digest:
        raise ArchiveError(archive, f"blob {img.manifest_digest} does not match its digest: tampered or damaged",
                           member.name)
    return data


def _descriptors(archive: Path, img: ExportedImage, data: bytes) -> list[tuple[str, int]]:
    """(digest, size) of the config and every layer a manifest names, checked for shape."""
    try:
        manifest = json.loads(data)
        descs = [manifest["config"], *manifest["layers"]]
        out = [(d["digest"], d["size"]) for d in descs]
    except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise _not_oci(archive, img, f"{type(e).__name__}: {e}") from e
    for digest, size in out:
        if not isinstance(digest, str) or not names.DIGEST.fullmatch(digest) or type(size) is not int or size < 0:
            raise _not_oci(archive, img, f"a descriptor {digest!r} of size {size!r}")
    if out[0][0] != img.image_id:
        raise ArchiveError(archive, f"{img.recipe}: the manifest's config is {out[0][0]}, {META} says {img.image_id}")
    return out


def _check_config(archive: Path, img: ExportedImage, manifest: bytes, blobs: Mapping[str, Path]) -> None:
    """The image's config names exactly its manifest's layers as diff_ids, as export.json says."""
    descs = _descriptors(archive, img, manifest)
    path = blobs[img.image_id]
    if path.stat().st_size > MANIFEST_CAP:
        raise _not_oci(archive, img, f"a config over the {MANIFEST_CAP >> 20} MiB cap")
    try:
        config = json.loads(path.read_bytes())
        diff_ids = tuple(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError) as e:
        raise _not_oci(archive, img, f"{type(e).__name__}: {e}") from e
    # Compressed layers are checked against the diff_ids when they are decompressed (``_inflate``).
    layers = tuple(d for d, _ in descs[1:])
    if diff_ids != img.diff_ids or len(layers) != len(diff_ids) or \
            (img.built_manifest_digest is None and diff_ids != layers):
        raise ArchiveError(archive, f"{img.recipe}: its config's diff_ids do not match its layers")
