"""What an attestation says: in-toto Statements about a pushed image, from its recipe and locks alone.

Two statements per image, each about one subject, the image as pushed (``HOST/REPO`` and the sha256
of its manifest):

- SLSA provenance v1 (``https://slsa.dev/provenance/v1``): how the image was made. The build's
  external parameters are the recipe, its hash and the lock hash (sha256 of the lock file's bytes)
  of every recipe of the chain, bottom first; the internal ones are the normalizer's and the
  builder's versions (the rest of the layer cache key) and the compression method, when one was
  used. The resolved dependencies are the images below it in the chain (each by its manifest
  digest), a registry root's locked image (reference and digest), and every locked artifact (the
  .debs, wheels, CRAN tarballs and files, by purl and sha256) as the SBOM lists them.
- the CycloneDX SBOM (``https://cyclonedx.org/bom``), ``ship.sbom``'s document as the predicate.

Deterministic, as every file buildsys writes: no wall clock (SLSA's times are optional and are left
out: the lock's source-date-epoch is when the inputs were published, not when the build ran), no
random ids, canonical JSON (sorted keys, compact). The same locks and image give the same bytes,
and, signed with RFC 6979's deterministic ECDSA, the same envelope.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from buildsys import __version__, ecosystems
from buildsys.build.cache import BUILDER_VERSION
from buildsys.build.records import LayerRecord
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.oci.image import canonical_bytes
from buildsys.oci.layer.normalize import NORMALIZER_VERSION
from buildsys.ship.sbom import cyclonedx_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
CYCLONEDX_BOM = "https://cyclonedx.org/bom"
# URIs that name buildsys's own terms; .invalid (RFC 2606) as the SBOM's namespace: nothing to resolve.
BUILD_TYPE = "https://buildsys.invalid/build-type/chain/v1"
BUILDER_ID = f"https://buildsys.invalid/builder/buildsys@{__version__}"


def subject(name: str, manifest_digest: str) -> dict[str, Any]:
    """An in-toto ResourceDescriptor of the image: its name and the sha256 of its manifest."""
    algorithm, _, hexdigest = manifest_digest.partition(":")
    return {"name": name, "digest": {algorithm: hexdigest}}


def statement(name: str, manifest_digest: str, predicate_type: str, predicate: Mapping[str, Any]) -> bytes:
    """An in-toto Statement v1 about the image, as canonical JSON (the DSSE payload)."""
    return canonical_bytes({"_type": STATEMENT_TYPE, "subject": [subject(name, manifest_digest)],
                            "predicateType": predicate_type, "predicate": dict(predicate)})


def _digest(prefixed: str) -> dict[str, str]:
    algorithm, _, hexdigest = prefixed.partition(":")
    return {algorithm: hexdigest}


def provenance(graph: Graph, locks: Mapping[str, Lock], recipe: str, chain: Sequence[LayerRecord], *,
               compression: str | None = None) -> dict[str, Any]:
    """The SLSA provenance v1 predicate of ``recipe``'s image, whose chain's records are ``chain``."""
    names = graph.chain(recipe)
    external: dict[str, Any] = {
        "recipe": recipe,
        "recipeHash": graph.recipes[recipe].recipe_hash,
        "lockHash": locks[recipe].lock_hash,
        # Every lock of the chain, bottom first: the lock hash is the sha256 of the file's bytes.
        "chain": [{"recipe": n, "recipeHash": graph.recipes[n].recipe_hash, "lockHash": locks[n].lock_hash}
                  for n in names],
    }
    internal: dict[str, Any] = {"normalizerVersion": NORMALIZER_VERSION, "builderVersion": BUILDER_VERSION,
                                "sourceDateEpoch": locks[recipe].source_date_epoch}
    if compression:
        internal["compression"] = compression
    return {
        "buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                            "internalParameters": internal,
                            "resolvedDependencies": resolved_dependencies(graph, locks, recipe, chain)},
        "runDetails": {"builder": {"id": BUILDER_ID, "version": {"buildsys": __version__}},
                       "metadata": {"invocationId": f"buildsys:{recipe}:{locks[recipe].lock_hash}"}},
    }


def resolved_dependencies(graph: Graph, locks: Mapping[str, Lock], recipe: str, chain: Sequence[LayerRecord],
                          ) -> list[dict[str, Any]]:
    """The parent images (by manifest digest, bottom first), a registry root's image, every locked artifact."""
    names = graph.chain(recipe)
    deps: list[dict[str, Any]] = []
    for record in chain[:-1]:  # the image itself is the subject
        deps.append({"name": f"buildsys:image:{record.recipe}", "digest": _digest(record.manifest_digest),
                     "mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "annotations": {"kind": "parent-image", "imageId": record.config_digest}})
    base = locks[names[0]].get(ImageBaseLock)
    if base is not None:
        deps.append({"name": base.reference, "uri": f"oci://{base.reference.partition('@')[0]}",
                     "digest": _digest(base.manifest_digest), "mediaType": base.manifest_media_type,
                     "annotations": {"kind": "base-image", "platform": base.platform}})
    for layer in names:
        for c in ecosystems.components(locks[layer]):
            if c.kind == "image":
                continue  # the registry root, above, with its reference
            dep: dict[str, Any] = {"name": c.name, "uri": c.purl, "digest": {"sha256": c.sha256},
                                   "annotations": {"kind": c.kind, "layer": layer}}
            if c.url:
                dep["downloadLocation"] = c.url
            deps.append(dep)
    return deps


def provenance_statement(name: str, graph: Graph, locks: Mapping[str, Lock], recipe: str,
                         chain: Sequence[LayerRecord], *, compression: str | None = None,
                         subject_digest: str | None = None) -> bytes:
    """About ``subject_digest``: the manifest as published (its layers compressed); the built one by default."""
    return statement(name, subject_digest or chain[-1].manifest_digest, SLSA_PROVENANCE,
                     provenance(graph, locks, recipe, chain, compression=compression))


def sbom_statement(name: str, graph: Graph, locks: Mapping[str, Lock], recipe: str,
                   chain: Sequence[LayerRecord], *, subject_digest: str | None = None) -> bytes:
    """The CycloneDX document of ``ship.sbom`` as the predicate (its own schema check runs there)."""
    bom = json.loads(cyclonedx_json(graph, locks, recipe, chain[-1]))
    return statement(name, subject_digest or chain[-1].manifest_digest, CYCLONEDX_BOM, bom)
