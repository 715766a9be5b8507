"""``publish``: push a canonical image to a registry with its exact bytes.

The layers go up as the store has them: uncompressed OCI layer tars
(``application/vnd.oci.image.layer.v1.tar``), so the blob digest is the
diff_id and no compressor stands between what was verified and what was
published. The manifest goes up byte for byte, by its digest, so the digest
the registry serves is the one ``build`` printed; then, last, the tag.

A publish is refused when a lock of the chain is stale (exit 3, from
``fresh_locks``), when the store has no image of the current locks (exit 1),
or when no ``build --verify`` found the chain reproducible (exit 3; ``force``
skips that check and the CLI says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buildsys.build.builder import Builder
from buildsys.build.records import LayerRecord
from buildsys.build.verify import was_verified
from buildsys.core.errors import ImageNotBuilt, NotVerified
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store, sha256_file
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.oci.image import MANIFEST_MEDIA_TYPE, DamagedBlob, ImageError, OciLayout, digest_bytes
from buildsys.oci.registry import BlobProgress, Reference, Registry, RegistryError
from buildsys.ship.mount_sources import mount_sources, record_published


@dataclass(frozen=True)
class Published:
    recipe: str
    reference: str  # what a user pins: HOST/REPO@DIGEST
    tag: str | None
    manifest_digest: str
    image_id: str
    blobs_sent: int
    blobs_present: int
    bytes_sent: int
    seconds: float
    verified: bool

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "reference": self.reference, "tag": self.tag,
                "manifest_digest": self.manifest_digest, "image_id": self.image_id, "blobs_sent": self.blobs_sent,
                "blobs_present": self.blobs_present, "bytes_sent": self.bytes_sent,
                "seconds": round(self.seconds, 3), "verified": self.verified}


def stored_image(store: Store, graph: Graph, locks: Mapping[str, Lock], recipe: str) -> LayerRecord:
    """The image of ``recipe``'s current locks in the store; ``ImageNotBuilt`` when there is none."""
    records = Builder(store, graph, locks).stored_chain(recipe)
    if records is None:
        raise ImageNotBuilt(recipe)
    return records[-1]


def publish(store: Store, graph: Graph, locks: Mapping[str, Lock], recipe: str, to: str, *,
            insecure: bool = False, force: bool = False, registry: Registry | None = None,
            progress: Progress = NO_PROGRESS) -> Published:
    ref = Reference.parse(to)
    record = stored_image(store, graph, locks, recipe)
    verified = was_verified(store, record.manifest_digest)
    if not verified and not force:
        raise NotVerified(recipe, record.manifest_digest)
    reg = registry or Registry(ref.host, insecure=insecure)
    started = time.monotonic()
    progress(recipe, "connect", f"{reg.base}/v2/")
    reg.ping()
    sent, present, nbytes = push_image(reg, ref.repository, OciLayout(store.oci), record.manifest_digest,
                                       lambda stage, detail: progress(recipe, stage, detail),
                                       mount_from=mount_sources(store, ref.host, ref.repository))
    if ref.tag:
        progress(recipe, "tag", f"{ref.repository}:{ref.tag} -> {record.manifest_digest[:19]}")
        manifest = OciLayout(store.oci).read_blob(record.manifest_digest)
        reg.put_manifest(ref.repository, ref.tag, manifest, MANIFEST_MEDIA_TYPE)
    record_published(store, ref.host, ref.repository)
    return Published(recipe=recipe, reference=ref.with_digest(record.manifest_digest), tag=ref.tag,
                     manifest_digest=record.manifest_digest, image_id=record.config_digest, blobs_sent=sent,
                     blobs_present=present, bytes_sent=nbytes, seconds=time.monotonic() - started,
                     verified=verified)


def push_image(reg: Registry, repo: str, layout: OciLayout, manifest_digest: str,
               progress: Callable[[str, str], None] = lambda stage, detail: None,
               mount_from: Sequence[str] = ()) -> tuple[int, int, int]:
    """Blobs (config, then layers bottom first), then the manifest by digest; no tag.

    A blob the registry lacks is first asked of each ``mount_from`` repository of
    the same registry (mounted, not sent: counted as there), then uploaded, with
    the bytes the registry holds reported as they land.

    Returns (blobs sent, blobs the registry had, bytes sent). A blob the store
    has damaged is caught by the registry (it checks the digest) and named here.
    """
    manifest_bytes = layout.read_blob(manifest_digest)
    manifest, _ = layout.read_image(manifest_digest)
    descs = [manifest["config"], *manifest["layers"]]
    sent = present = nbytes = 0
    for i, desc in enumerate(descs):
        digest, size = desc["digest"], int(desc["size"])
        path = layout.blob_path(digest)
        what = "config" if i == 0 else f"layer {i}/{len(descs) - 1}"
        progress("upload", f"{what} {digest[:19]} ({size / 1e6:.1f} MB)")
        try:
            if reg.push_blob(repo, digest, size, path, mount_from=mount_from, progress=_bytes(progress, what)):
                sent, nbytes = sent + 1, nbytes + size
            else:
                present += 1
        except (RegistryError, FileNotFoundError):
            _check_local(layout, digest)  # the store's fault rather than the registry's? say so
            raise
    got = reg.put_manifest(repo, manifest_digest, manifest_bytes, MANIFEST_MEDIA_TYPE)
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


def _check_local(layout: OciLayout, digest: str) -> None:
    """Raise the store's own error when its blob is missing or damaged (a damaged one is removed)."""
    path = layout.blob_path(digest)
    if not path.is_file():
        raise ImageError(f"{layout.root}: blob {digest} is missing",
                         "rebuild the image (`buildsys build RECIPE`), then publish again")
    if "sha256:" + sha256_file(path) != digest:
        path.unlink(missing_ok=True)
        raise DamagedBlob(path, digest)
