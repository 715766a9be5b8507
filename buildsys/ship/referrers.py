"""OCI 1.1 referrers: an artifact stored beside an image in its repository, found from the image's digest.

An artifact is an image manifest with an ``artifactType``, the empty config
(``application/vnd.oci.empty.v1+json``, ``{}``), its blob as the one layer, and ``subject``: the
descriptor of the image it is about. It is pushed by digest. A registry with the referrers API
lists it under ``GET /v2/<repo>/referrers/<digest>`` by itself, and says so with the ``OCI-Subject``
header of the manifest PUT's answer. Where there is no such API (Debian's docker-registry 2.8
answers that URL with a plain-text 404), the distribution spec's referrers tag schema: an OCI index
tagged ``sha256-<hex>`` lists the referrers' descriptors, kept by read, add, write; entries other
tools put there are kept. cosign's signatures use ``sha256-<hex>.sig`` (``signing``): no collision.

The registry client (``oci/registry.py``) has no referrers calls; they are here, over its
``request``, ``push_blob``, ``get_manifest`` and ``put_manifest``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from buildsys.core import net
from buildsys.oci.image import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, canonical_bytes, digest_bytes
from buildsys.oci.registry import NotInRegistry, Registry, RegistryDataError, RegistryError, parse_index

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
_INDEX_RETRIES = 4


@dataclass(frozen=True)
class Stored:
    manifest_digest: str  # the artifact manifest's
    added: bool  # False: it was listed already
    storage: str  # "referrers-api" | "fallback-tag"


def referrers_tag(manifest_digest: str) -> str:
    """``sha256-<hex>``: the distribution spec's referrers tag schema (cosign's signatures add ``.sig``)."""
    algorithm, _, hexdigest = manifest_digest.partition(":")
    return f"{algorithm}-{hexdigest}"


def artifact_manifest(subject: Mapping[str, Any], artifact_type: str, blob: bytes, blob_media_type: str,
                      annotations: Mapping[str, str]) -> bytes:
    """The artifact's manifest, canonical JSON; ``annotations`` go on it and on its layer."""
    return canonical_bytes({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": digest_bytes(EMPTY), "size": len(EMPTY)},
        "layers": [{"mediaType": blob_media_type, "digest": digest_bytes(blob), "size": len(blob),
                    "annotations": dict(annotations)}],
        "subject": dict(subject),
        "annotations": dict(annotations),
    })


def push_referrer(reg: Registry, repo: str, subject: Mapping[str, Any], artifact_type: str, blob: bytes,
                  blob_media_type: str, annotations: Mapping[str, str]) -> Stored:
    """Store ``blob`` as a referrer of ``subject`` (the image's manifest descriptor), findable either way.

    Order as for images: the blobs, the manifest by digest, then (without the API) the index tag.
    """
    reg.push_blob(repo, digest_bytes(EMPTY), len(EMPTY), EMPTY)
    reg.push_blob(repo, digest_bytes(blob), len(blob), blob)
    manifest = artifact_manifest(subject, artifact_type, blob, blob_media_type, annotations)
    digest = digest_bytes(manifest)
    # Not put_manifest: the answer's OCI-Subject header is what says the registry indexes referrers itself.
    with reg.request("PUT", f"/v2/{repo}/manifests/{digest}", body=manifest, ok=(201,),
                     headers={"Content-Type": MANIFEST_MEDIA_TYPE},
                     what=f"putting referrer {digest} in {repo}") as resp:
        named = resp.headers.get("Docker-Content-Digest") or digest
        indexed = resp.headers.get("OCI-Subject") == subject["digest"]
    if named != digest:
        raise RegistryError(reg.host, f"the registry names the referrer's manifest {named}, not {digest}",
                            "it rewrote the manifest; use a registry that stores manifests as sent")
    if indexed:
        return Stored(digest, True, "referrers-api")
    listed = referrers_api(reg, repo, subject["digest"])
    if listed is not None and any(d.get("digest") == digest for d in listed):
        return Stored(digest, True, "referrers-api")
    descriptor = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(manifest),
                  "artifactType": artifact_type, "annotations": dict(annotations)}
    return Stored(digest, _add_to_index(reg, repo, subject["digest"], descriptor), "fallback-tag")


def referrers_api(reg: Registry, repo: str, manifest_digest: str) -> list[dict[str, Any]] | None:
    """The referrers the registry's API lists, or None where it has no such API.

    None: a 404 (the spec's "not supported"; docker-registry 2.8's plain-text one), a 400 or 405, or
    an answer that is not JSON (an HTML page from a proxy or a UI): that is the fallback's signal, not
    an error. An answer that is JSON but not an index of descriptors is ``RegistryDataError``.
    """
    with reg.request("GET", f"/v2/{repo}/referrers/{manifest_digest}", ok=(200, 400, 404, 405),
                     headers={"Accept": INDEX_MEDIA_TYPE}, what=f"referrers of {manifest_digest}") as resp:
        if resp.status_code != 200:
            return None
        try:
            data = resp.read(net.MAX_DOCUMENT, f"referrers of {manifest_digest} in {repo}")
        except net.NetError as e:
            raise RegistryError(reg.host, e.message, e.hint) from e
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if "html" in content_type or "json" not in content_type and not data.lstrip().startswith(b"{"):
        return None
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        if "json" in content_type:
            raise RegistryDataError(reg.host, f"referrers of {repo}@{manifest_digest}", "(the whole document)",
                                    "says it is JSON and is not") from None
        return None
    doc = parse_index(reg.host, f"referrers of {repo}@{manifest_digest}", data)
    return [dict(d) for d in doc["manifests"]]


def fallback_index(reg: Registry, repo: str, manifest_digest: str) -> dict[str, Any] | None:
    """The ``sha256-<hex>`` index of ``manifest_digest``'s referrers, or None; one that is not an OCI
    index is ``RegistryDataError`` (and is never overwritten)."""
    tag = referrers_tag(manifest_digest)
    try:
        data, media, _ = reg.get_manifest(repo, tag)
    except NotInRegistry:
        return None
    document = f"referrers index {repo}:{tag}"
    if media != INDEX_MEDIA_TYPE:
        raise RegistryDataError(reg.host, document, "mediaType", f"{media!r}, not an OCI index (nothing was changed)")
    return parse_index(reg.host, document, data)


def _add_to_index(reg: Registry, repo: str, subject: str, descriptor: dict[str, Any]) -> bool:
    """Read, add, write the fallback index of ``subject``; whether it was added (False: it was listed).
    Written again when a concurrent writer's index lost it."""
    tag = referrers_tag(subject)
    added = False
    for _ in range(_INDEX_RETRIES):
        index = fallback_index(reg, repo, subject) or {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                                                       "manifests": []}
        entries = list(index["manifests"])
        if any(e.get("digest") == descriptor["digest"] for e in entries):
            return added
        index = {**index, "manifests": [*entries, descriptor]}
        reg.put_manifest(repo, tag, canonical_bytes(index), INDEX_MEDIA_TYPE)
        added = True
    raise RegistryError(reg.host, f"the referrers index {repo}:{tag} lost {descriptor['digest']} "
                        f"{_INDEX_RETRIES} times (other writers at the same time)",
                        "run the command again: what is pushed is not pushed twice")


def referrers(reg: Registry, repo: str, manifest_digest: str) -> tuple[str, list[dict[str, Any]]]:
    """(source, descriptors) of the image's referrers: the API's, else the fallback tag's, else ("none", [])."""
    listed = referrers_api(reg, repo, manifest_digest)
    if listed is not None:
        return "referrers-api", listed
    index = fallback_index(reg, repo, manifest_digest)
    if index is None:
        return "none", []
    return "fallback-tag", [dict(d) for d in index["manifests"]]
