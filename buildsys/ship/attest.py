"""Attestations: signed in-toto statements about a pushed image, stored beside it in its registry.

``provenance`` makes the statements (SLSA provenance v1, the CycloneDX SBOM); each is signed into a
DSSE envelope (``dsse``, payloadType ``application/vnd.in-toto+json``) by a ``signing.Signer`` (the
keys of ``sign``); each envelope is stored as an OCI 1.1 referrer of the image (``referrers``): the
one layer (``application/vnd.dsse.envelope.v1+json``) of an artifact manifest whose
``artifactType`` is ``application/vnd.in-toto+json``, whose ``subject`` is the image's manifest and
whose annotation ``in-toto.io/predicate-type`` names the predicate; listed by the registry's
referrers API, or, where it has none (Debian's docker-registry 2.8), in the ``sha256-<hex>`` index.

Reading (``list_attestations``): every in-toto referrer is read and checked: its manifest's subject
and its statement's subject must be this image (an attestation copied from another image is
refused, named), its layer a DSSE envelope of an in-toto statement; with a verifier, at least one
must carry a signature the key accepts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from buildsys.build.builder import Builder
from buildsys.build.records import LayerRecord
from buildsys.core.errors import EXIT_UNTRUSTED, BuildsysError, ImageNotBuilt, UsageError
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.oci import compress
from buildsys.oci.compress import CompressedBlobs, ShippedImage, compressed_image
from buildsys.oci.image import MANIFEST_MEDIA_TYPE, digest_bytes
from buildsys.oci.registry import Reference, Registry, RegistryDataError, parse_descriptor, parse_manifest
from buildsys.ship import dsse, provenance, referrers
from buildsys.ship.dsse import IN_TOTO_PAYLOAD
from buildsys.ship.keys import Signer, Verifier
from buildsys.ship.referrers import push_referrer
from buildsys.ship.signing import docker_reference, resolve

ARTIFACT_TYPE = IN_TOTO_PAYLOAD
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
# The most referrers list_attestations reads (each one manifest and one blob); an index may list thousands.
MAX_REFERRERS = 256


# ---------------------------------------------------------------- errors


class AttestationNotPushed(BuildsysError):
    """``attest`` of an image the registry does not hold: nothing is attested that was not pushed."""

    def __init__(self, reference: str) -> None:
        self.reference = reference
        super().__init__(f"{reference}: not in the registry; no attestation for a digest that was not pushed",
                         "publish it first (`buildsys publish RECIPE --to ...`), then attest to the same "
                         "repository")


class AttestationError(BuildsysError):
    """An attestation that does not prove what it claims about this image (exit 5); names which and why."""

    exit_code = EXIT_UNTRUSTED


class NoAttestations(AttestationError):
    def __init__(self, reference: str) -> None:
        super().__init__(f"{reference}: no attestations (no referrers API answer, no sha256-<hex> index lists any)",
                         "attest it with `buildsys attest RECIPE --to REF --key KEY` (or `publish --attest`), "
                         "or do not trust it")


class AttestationForOtherImage(AttestationError):
    def __init__(self, reference: str, where: str, names: str) -> None:
        self.names = names
        super().__init__(f"{reference}: the attestation {where} is about another image, {names}",
                         "someone copied an attestation onto this image; do not trust it")


class AttestationWrongKey(AttestationError):
    def __init__(self, reference: str, key: str, refused: Sequence[str]) -> None:
        self.refused = list(refused)
        more = "".join(f"\n  - {r}" for r in refused)
        super().__init__(f"{reference}: none of its {len(refused)} attestation(s) is signed by the key {key}{more}",
                         "verify with the public key of whoever attested it; an attestation by someone else "
                         "is not trusted")


class BadEnvelope(AttestationError):
    def __init__(self, reference: str, where: str, problem: str) -> None:
        super().__init__(f"{reference}: the attestation {where}: {problem}",
                         "the registry holds a damaged or foreign attestation; do not trust it")


# ---------------------------------------------------------------- attaching


@dataclass(frozen=True)
class Attached:
    predicate_type: str
    manifest_digest: str  # of the attestation's artifact manifest
    envelope_digest: str
    added: bool  # False: this very attestation was listed already

    def to_json(self) -> dict[str, Any]:
        return {"predicate_type": self.predicate_type, "manifest_digest": self.manifest_digest,
                "envelope_digest": self.envelope_digest, "added": self.added}


@dataclass(frozen=True)
class Attested:
    reference: str  # HOST/REPO@DIGEST of the image
    manifest_digest: str
    signer: str
    storage: str  # "referrers-api" | "fallback-tag"
    index_tag: str | None  # HOST/REPO:sha256-<hex> when the fallback tag holds them
    attestations: tuple[Attached, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "manifest_digest": self.manifest_digest, "signer": self.signer,
                "storage": self.storage, "index_tag": self.index_tag,
                "attestations": [a.to_json() for a in self.attestations], "seconds": round(self.seconds, 3)}


def attach(reg: Registry, repo: str, subject: Mapping[str, Any], body: bytes, predicate_type: str,
           ) -> tuple[Attached, str]:
    """Store one envelope as an in-toto referrer of ``subject`` (a manifest descriptor); (what, storage)."""
    annotations = {PREDICATE_ANNOTATION: predicate_type}
    stored = push_referrer(reg, repo, subject, ARTIFACT_TYPE, body, DSSE_MEDIA_TYPE, annotations)
    return Attached(predicate_type, stored.manifest_digest, digest_bytes(body), stored.added), stored.storage


def attest_records(reg: Registry, repo: str, graph: Graph, locks: Mapping[str, Lock], recipe: str,
                   chain: Sequence[LayerRecord], shipped: ShippedImage, signer: Signer, *,
                   progress: Progress = NO_PROGRESS) -> Attested:
    """Attest the image ``chain[-1]`` as ``shipped`` (its manifest as pushed, layers compressed) in ``repo``:
    provenance and SBOM, signed, attached.

    What ``publish --attest`` calls once the image is up. Refuses a digest the registry does not hold.
    """
    started = time.monotonic()
    digest = shipped.manifest_digest
    reference = f"{reg.host}/{repo}@{digest}"
    if not reg.has_manifest(repo, digest):
        raise AttestationNotPushed(reference)
    name = docker_reference(reg.host, repo)  # as cosign names the image (Docker Hub's library/ expanded)
    subject = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(shipped.manifest_bytes)}
    statements = (
        (provenance.SLSA_PROVENANCE,
         provenance.provenance_statement(name, graph, locks, recipe, chain, compression=shipped.method,
                                         subject_digest=digest)),
        (provenance.CYCLONEDX_BOM, provenance.sbom_statement(name, graph, locks, recipe, chain,
                                                             subject_digest=digest)),
    )
    attached: list[Attached] = []
    storage = "referrers-api"
    for predicate_type, payload in statements:
        progress(recipe, "attest", predicate_type)
        one, where = attach(reg, repo, subject, dsse.envelope(payload, signer), predicate_type)
        attached.append(one)
        storage = where if where == "fallback-tag" else storage
    tag = f"{reg.host}/{repo}:{referrers.referrers_tag(digest)}" if storage == "fallback-tag" else None
    return Attested(reference, digest, signer.identity, storage, tag, tuple(attached), time.monotonic() - started)


def published_form(store: Store, reg: Registry, repo: str, built_digest: str) -> ShippedImage | None:
    """The form in which this store published the image ``built_digest`` to ``repo``: gzip, zstd or as built,
    whichever the registry holds. Only forms whose compressed layers this store kept are tried (``publish``
    keeps them): nothing is compressed here."""
    blobs = CompressedBlobs(store)
    layers = json.loads(blobs.layout.read_blob(built_digest))["layers"]
    for fmt in compress.FORMATS:
        m = compress.method(fmt)
        if fmt != "none" and any(blobs.lookup(m, d["digest"]) is None for d in layers):
            continue
        shipped = compressed_image(blobs, built_digest, m)
        if reg.has_manifest(repo, shipped.manifest_digest):
            return shipped
    return None


def attest(store: Store, graph: Graph, locks: Mapping[str, Lock], recipe: str, to: str, signer: Signer, *,
           insecure: bool = False, registry: Registry | None = None,
           progress: Progress = NO_PROGRESS) -> Attested:
    """``buildsys attest RECIPE --to REF``: the image of RECIPE's current locks as ``publish`` pushed it to REF's
    repository (a tag in ``to`` is ignored; a digest must be the one publish pushed)."""
    ref = Reference.parse(to)
    chain = Builder(store, graph, locks).stored_chain(recipe)
    if chain is None:
        raise ImageNotBuilt(recipe)
    reg = registry or Registry(ref.host, insecure=insecure)
    shipped = published_form(store, reg, ref.repository, chain[-1].manifest_digest)
    if shipped is None:
        raise AttestationNotPushed(f"{ref.host}/{ref.repository}: the image of {recipe}'s current locks "
                                   f"({chain[-1].manifest_digest}, as built or as this store compressed it)")
    if ref.digest and ref.digest != shipped.manifest_digest:
        raise UsageError(f"{to}: names {ref.digest}, but the image of {recipe}'s current locks was published as "
                         f"{shipped.manifest_digest}",
                         f"give the repository alone (--to {ref.host}/{ref.repository}); `buildsys attest` "
                         "attests the image the locks make, as `publish` pushed it")
    return attest_records(reg, ref.repository, graph, locks, recipe, chain, shipped, signer, progress=progress)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Attestation:
    predicate_type: str
    manifest_digest: str
    envelope_digest: str
    signatures: int
    verified: bool  # True only when a verifier was given and accepted one of its signatures
    statement: dict[str, Any] = field(repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"predicate_type": self.predicate_type, "manifest_digest": self.manifest_digest,
                "envelope_digest": self.envelope_digest, "signatures": self.signatures,
                "verified": self.verified}


@dataclass(frozen=True)
class Listing:
    reference: str
    manifest_digest: str
    source: str  # "referrers-api" | "fallback-tag" | "none"
    key: str | None
    attestations: tuple[Attestation, ...]

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "manifest_digest": self.manifest_digest, "source": self.source,
                "key": self.key, "attestations": [a.to_json() for a in self.attestations]}


def list_attestations(reg: Registry, reference: str, verifier: Verifier | None = None) -> Listing:
    """The in-toto attestations of the image ``reference`` names, each checked to be about it.

    With ``verifier``, at least one must carry a signature it accepts, as ``cosign verify-attestation``
    asks (``AttestationWrongKey`` names each refusal; ``NoAttestations`` when there are none); the
    others are listed with ``verified`` False: another party (a scanner) may attest the same image.
    One about another image is refused whatever the key says.
    """
    ref = Reference.parse(reference)
    digest = resolve(reg, ref, signing=False)
    shown = ref.with_digest(digest)
    source, descriptors = referrers.referrers(reg, ref.repository, digest)
    mine = [d for d in descriptors if d.get("artifactType") in (ARTIFACT_TYPE, None)]
    if len(mine) > MAX_REFERRERS:
        raise RegistryDataError(reg.host, f"referrers of {shown}", "manifests",
                                f"{len(mine)} attestations, more than the {MAX_REFERRERS} buildsys reads "
                                "(nothing was trusted)")
    found: list[Attestation] = []
    refused: list[str] = []
    for desc in mine:
        one = _read_one(reg, ref, digest, desc, verifier, refused)
        if one is not None:
            found.append(one)
    if verifier is not None:
        if refused and not any(a.verified for a in found):
            raise AttestationWrongKey(shown, verifier.identity, refused)
        if not found:
            raise NoAttestations(shown)
    return Listing(shown, digest, source, verifier.identity if verifier else None, tuple(found))


def _read_one(reg: Registry, ref: Reference, digest: str, desc: dict[str, Any], verifier: Verifier | None,
              refused: list[str]) -> Attestation | None:
    """One referrer read and checked; None when it is not an in-toto attestation (another artifact)."""
    shown = ref.with_digest(digest)
    repo = ref.repository
    where = str(desc.get("digest"))
    parse_descriptor(reg.host, f"referrers of {shown}", "manifests[]", desc)
    data, _, _ = reg.get_manifest(repo, where)
    manifest = parse_manifest(reg.host, f"attestation manifest {repo}@{where}", data)
    if manifest.get("artifactType") != ARTIFACT_TYPE:
        return None
    subject = manifest.get("subject")
    if not isinstance(subject, dict) or subject.get("digest") != digest:
        names = subject.get("digest") if isinstance(subject, dict) else None
        raise AttestationForOtherImage(shown, where, f"{ref.host}/{repo}@{names}")
    layers = [la for la in manifest["layers"] if la.get("mediaType") == DSSE_MEDIA_TYPE]
    if len(layers) != 1:
        raise BadEnvelope(shown, where, f"{len(layers)} DSSE envelope layers, not one")
    body = reg.get_blob_bytes(repo, layers[0]["digest"], int(layers[0]["size"]))
    try:
        env = dsse.read_envelope(body)
    except ValueError as e:
        raise BadEnvelope(shown, where, f"the envelope is {e}") from e
    if env.payload_type != IN_TOTO_PAYLOAD:
        raise BadEnvelope(shown, where, f"payloadType {env.payload_type!r}, not {IN_TOTO_PAYLOAD}")
    verified = False
    if verifier is not None:
        verified = env.accepted_by(verifier)
        if not verified:
            refused.append(f"{where}: none of its {len(env.signatures)} signature(s) verifies over its payload "
                           "with this key (another signer's, or a payload changed after signing)")
    statement = _statement(shown, where, env.payload)
    _check_subject(shown, where, statement, digest)
    predicate_type = str(statement["predicateType"])
    said = (manifest.get("annotations") or {}).get(PREDICATE_ANNOTATION)
    if said is not None and said != predicate_type:  # what oras and registry UIs show, unsigned
        raise BadEnvelope(shown, where, f"its manifest says {said!r}, its signed statement {predicate_type!r}")
    return Attestation(predicate_type, where, str(layers[0]["digest"]), len(env.signatures), verified, statement)


def _statement(shown: str, where: str, payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise BadEnvelope(shown, where, "its payload is not JSON") from e
    if not isinstance(doc, dict) or doc.get("_type") != provenance.STATEMENT_TYPE \
            or not isinstance(doc.get("predicateType"), str) or not isinstance(doc.get("subject"), list):
        raise BadEnvelope(shown, where, f"its payload is not an in-toto Statement v1 ({provenance.STATEMENT_TYPE})")
    return doc


def _check_subject(shown: str, where: str, statement: dict[str, Any], digest: str) -> None:
    """The statement must name this image's digest among its subjects."""
    algorithm, _, hexdigest = digest.partition(":")
    subjects = [s for s in statement["subject"] if isinstance(s, dict)]
    if any(isinstance(s.get("digest"), dict) and s["digest"].get(algorithm) == hexdigest for s in subjects):
        return
    named = ", ".join(f"{s.get('name')}@{algorithm}:{(s.get('digest') or {}).get(algorithm)}"
                      for s in subjects if isinstance(s.get("digest"), dict)) or "no digest"
    raise AttestationForOtherImage(shown, where, named)
