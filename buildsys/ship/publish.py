"""``publish``: push a canonical image to a registry with its exact bytes.

The layers go up compressed by one pinned method (``buildsys.oci.compress``:
gzip by default, zstd, or none), each compressed once and kept in the store.
The config goes up as built (its diff_ids name the uncompressed layers, so
docker's image ID after a pull is the built one); the manifest is the built
one with the compressed layer descriptors, a function of the built manifest
and the method alone. With ``none`` the layers go up as the store has them and
the manifest is the built one byte for byte. Blobs first, then the manifest by
its digest, then, last, the tag: nothing is tagged before all of it is there.

A publish is refused when a lock of the chain is stale (exit 3, from
``fresh_locks``), when the store has no image of the current locks (exit 1),
or when no ``build --verify`` found the chain reproducible (exit 3; ``force``
skips that check and the CLI says so).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buildsys.build.builder import Builder
from buildsys.build.records import LayerRecord
from buildsys.build.verify import was_verified
from buildsys.core.errors import ImageNotBuilt, NotVerified, UsageError
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store, sha256_file
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.oci.compress import DEFAULT, CompressedBlobs, ShippedImage, compressed_image, method
from buildsys.oci.image import MANIFEST_MEDIA_TYPE, DamagedBlob, ImageError, OciLayout, digest_bytes
from buildsys.oci.registry import (
    BlobProgress,
    Reference,
    Registry,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
)
from buildsys.ship.attest import Attested, attest_records
from buildsys.ship.keys import Signer
from buildsys.ship.mount_sources import mount_sources, record_published
from buildsys.ship.signing import Signed, sign_manifest


@dataclass(frozen=True)
class Published:
    recipe: str
    reference: str  # what a user pins: HOST/REPO@DIGEST
    tag: str | None
    manifest_digest: str  # the pushed manifest's: what the registry serves
    image_id: str
    blobs_sent: int
    blobs_present: int
    bytes_sent: int
    seconds: float
    verified: bool
    built_manifest_digest: str = ""  # the store's (uncompressed) manifest, the one `build` printed
    compression: str = "none"  # the method string (compress.Method.describe)
    layers_compressed: int = 0  # compressed by this publish (0: the store had them all)
    layer_bytes: int = 0  # the layers' uncompressed size
    shipped_layer_bytes: int = 0  # the layers' size as pushed
    signed: Signed | None = None  # --sign: the signature stored
    attested: Attested | None = None  # --attest: the statements attached

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "reference": self.reference, "tag": self.tag,
                "manifest_digest": self.manifest_digest, "image_id": self.image_id, "blobs_sent": self.blobs_sent,
                "blobs_present": self.blobs_present, "bytes_sent": self.bytes_sent,
                "seconds": round(self.seconds, 3), "verified": self.verified,
                "built_manifest_digest": self.built_manifest_digest, "compression": self.compression,
                "layers_compressed": self.layers_compressed, "layer_bytes": self.layer_bytes,
                "shipped_layer_bytes": self.shipped_layer_bytes,
                "signed": self.signed.to_json() if self.signed else None,
                "attested": self.attested.to_json() if self.attested else None}


def stored_image(store: Store, graph: Graph, locks: Mapping[str, Lock], recipe: str) -> LayerRecord:
    """The image of ``recipe``'s current locks in the store; ``ImageNotBuilt`` when there is none."""
    records = Builder(store, graph, locks).stored_chain(recipe)
    if records is None:
        raise ImageNotBuilt(recipe)
    return records[-1]


def publish(store: Store, graph: Graph, locks: Mapping[str, Lock], recipe: str, to: str, *,
            insecure: bool = False, force: bool = False, registry: Registry | None = None,
            compression: str = DEFAULT, signer: Signer | None = None, attest: bool = False,
            progress: Progress = NO_PROGRESS) -> Published:
    """Push ``recipe``'s image: blobs, the manifest by digest, then (with ``signer``) its cosign signature
    and (with ``attest``) its signed provenance and SBOM, and only then the tag: a tag never names an image
    that is incomplete, or unsigned when a signature was asked for."""
    if attest and signer is None:
        raise UsageError("--attest signs its statements: it needs --sign KEY", "add --sign PREFIX.key")
    ref = Reference.parse(to)
    m = method(compression)
    record = stored_image(store, graph, locks, recipe)
    verified = was_verified(store, record.manifest_digest)
    if not verified and not force:
        raise NotVerified(recipe, record.manifest_digest)
    reg = registry or Registry(ref.host, insecure=insecure)
    started = time.monotonic()
    progress(recipe, "connect", f"{reg.base}/v2/")
    reg.ping()
    shipped = compressed_image(CompressedBlobs(store), record.manifest_digest, m,
                               progress=lambda stage, detail: progress(recipe, stage, detail))
    sent, present, nbytes = push_image(reg, ref.repository, OciLayout(store.oci), shipped,
                                       lambda stage, detail: progress(recipe, stage, detail),
                                       mount_from=mount_sources(store, ref.host, ref.repository))
    signed = attested = None
    if signer is not None:
        progress(recipe, "sign", f"{ref.repository}@{shipped.manifest_digest[:19]} with key {signer.identity}")
        signed = sign_manifest(reg, ref.repository, shipped.manifest_digest, signer)
    if attest and signer is not None:
        chain = Builder(store, graph, locks).stored_chain(recipe)
        assert chain is not None  # stored_image found it above
        attested = attest_records(reg, ref.repository, graph, locks, recipe, chain, shipped, signer,
                                  progress=progress)
    if ref.tag:
        progress(recipe, "tag", f"{ref.repository}:{ref.tag} -> {shipped.manifest_digest[:19]}")
        reg.put_manifest(ref.repository, ref.tag, shipped.manifest_bytes, MANIFEST_MEDIA_TYPE)
    record_published(store, ref.host, ref.repository)
    return Published(recipe=recipe, reference=ref.with_digest(shipped.manifest_digest), tag=ref.tag,
                     manifest_digest=shipped.manifest_digest, image_id=record.config_digest, blobs_sent=sent,
                     blobs_present=present, bytes_sent=nbytes, seconds=time.monotonic() - started,
                     verified=verified, signed=signed, attested=attested,
                     built_manifest_digest=record.manifest_digest, compression=shipped.method,
                     layers_compressed=shipped.compressed, layer_bytes=shipped.uncompressed_bytes,
                     shipped_layer_bytes=sum(size for _, size, _ in shipped.blobs[1:]))


def push_image(reg: Registry, repo: str, layout: OciLayout, shipped: ShippedImage | str,
               progress: Callable[[str, str], None] = lambda stage, detail: None,
               mount_from: Sequence[str] = ()) -> tuple[int, int, int]:
    """Blobs (config, then layers bottom first), then the manifest by digest; no tag.

    A blob the registry lacks is first asked of each ``mount_from`` repository of
    the same registry (mounted, not sent: counted as there), then uploaded, with
    the bytes the registry holds reported as they land.

    ``shipped`` is the image as it leaves (``compress.compressed_image``), or the
    digest of a manifest of ``layout`` to push as it is stored (uncompressed).

    Returns (blobs sent, blobs the registry had, bytes sent). A blob the store
    has damaged is caught by the registry (it checks the digest) and named here.
    """
    if isinstance(shipped, str):
        shipped = stored_as_is(layout, shipped)
    manifest_bytes, manifest_digest = shipped.manifest_bytes, shipped.manifest_digest
    sent = present = nbytes = 0
    for i, (digest, size, path) in enumerate(shipped.blobs):
        what = "config" if i == 0 else f"layer {i}/{len(shipped.blobs) - 1}"
        progress("upload", f"{what} {digest[:19]} ({size / 1e6:.1f} MB)")
        try:
            if reg.push_blob(repo, digest, size, path, mount_from=mount_from, progress=_bytes(progress, what)):
                sent, nbytes = sent + 1, nbytes + size
            else:
                present += 1
        except (RegistryError, FileNotFoundError):
            _check_local(layout, digest)  # the store's fault rather than the registry's? say so
            raise
    try:
        got = reg.put_manifest(repo, manifest_digest, manifest_bytes, MANIFEST_MEDIA_TYPE)
    except (RegistryUnavailable, RegistryAuthError):
        raise
    except RegistryError as e:  # a 4xx on the manifest: it refuses what the manifest says, most likely its types
        kinds = sorted({str(d["mediaType"]) for d in json.loads(manifest_bytes)["layers"]})
        raise RegistryError(reg.host, f"refused the manifest {repo}@{manifest_digest} (layers of type "
                                      f"{', '.join(kinds)}): {e.message}",
                            "this registry may not take these layer types: publish with --compression gzip "
                            "(what every registry takes) or none. Nothing was tagged; the blobs sent stay "
                            "unreferenced until the registry's garbage collection") from e
    if got != manifest_digest or digest_bytes(manifest_bytes) != manifest_digest:
        raise RegistryError(reg.host, f"the registry names the manifest {got}, not {manifest_digest}",
                            "it rewrote the manifest; publish to a registry that stores manifests as sent")
    progress("manifest", f"{repo}@{manifest_digest}")
    return sent, present, nbytes


def _bytes(progress: Callable[[str, str], None], what: str) -> BlobProgress:
    """A blob's bytes as they land, as an ``upload`` event of the blob (a live row on a terminal); its start
    is the event ``push_image`` sent already."""
    def report(digest: str, sent: int, size: int) -> None:
        if sent:
            progress("upload", f"{what} {digest[:19]}: {sent / 1e6:.1f} of {size / 1e6:.1f} MB")
    return report


def stored_as_is(layout: OciLayout, manifest_digest: str) -> ShippedImage:
    """A manifest of ``layout`` and its blobs as they are stored: no compression."""
    data = layout.read_blob(manifest_digest)
    manifest = json.loads(data)
    descs = [manifest["config"], *manifest["layers"]]
    return ShippedImage(manifest_bytes=data, manifest_digest=manifest_digest, built_manifest_digest=manifest_digest,
                        blobs=tuple((d["digest"], int(d["size"]), layout.blob_path(d["digest"])) for d in descs),
                        method=method("none").describe(), compressed=0,
                        uncompressed_bytes=sum(int(d["size"]) for d in manifest["layers"]))


def _check_local(layout: OciLayout, digest: str) -> None:
    """Raise the store's own error when its blob is missing or damaged (a damaged one is removed)."""
    path = layout.blob_path(digest)
    if not path.is_file():
        raise ImageError(f"{layout.root}: blob {digest} is missing",
                         "rebuild the image (`buildsys build RECIPE`), then publish again")
    if "sha256:" + sha256_file(path) != digest:
        path.unlink(missing_ok=True)
        raise DamagedBlob(path, digest)
