"""Attestations: signed in-toto statements about a pushed image, stored beside it in its registry.

What is stored (``provenance`` says what the statements hold):

- each statement is wrapped in a DSSE envelope (payloadType ``application/vnd.in-toto+json``), signed
  over DSSE's pre-authentication encoding by a ``signing.Signer`` (ECDSA P-256 with a key the user
  holds, cosign's keys): ``{"payload": b64, "payloadType": ..., "signatures": [{"keyid", "sig"}]}``;
- each envelope is the one layer (``application/vnd.dsse.envelope.v1+json``) of an OCI 1.1 artifact
  manifest: ``artifactType`` ``application/vnd.in-toto+json``, the empty config
  (``application/vnd.oci.empty.v1+json``, ``{}``), ``subject`` = the image's manifest descriptor,
  the predicate type in the annotation ``in-toto.io/predicate-type``; pushed by digest;
- where the registry has no referrers API (Debian's docker-registry 2.8 answers
  ``/v2/<repo>/referrers/<digest>`` with a plain-text 404), the OCI distribution spec's fallback: an
  OCI index tagged ``sha256-<hex>`` lists the referrers' descriptors (read, add, write; each listed
  once). cosign's signatures stay under ``sha256-<hex>.sig`` (``signing``): the tags do not collide.

DSSE's PAE is eight lines (``pae``), written here rather than taken from securesystemslib or
in-toto's library, which are not installed (``securesystemslib.dsse.Envelope`` is the alternative).

Reading (``list_attestations``): the referrers API when the registry answers it with an index, else
the fallback tag. Every listed referrer is read and checked: its manifest's subject and its
statement's subject must be this image (an attestation copied from another image is refused, named),
and with a verifier its envelope must carry a signature the key accepts (else refused, named).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature

from buildsys.build.builder import Builder
from buildsys.build.records import LayerRecord
from buildsys.core import net
from buildsys.core.errors import EXIT_UNTRUSTED, BuildsysError, ImageNotBuilt, UsageError
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.oci.image import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, OciLayout, canonical_bytes, digest_bytes
from buildsys.oci.registry import (
    NotInRegistry,
    Reference,
    Registry,
    RegistryDataError,
    RegistryError,
    parse_descriptor,
    parse_index,
    parse_manifest,
)
from buildsys.ship import provenance
from buildsys.ship.signing import Signer, Verifier, docker_reference, resolve

IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
ARTIFACT_TYPE = IN_TOTO_PAYLOAD
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
# The most referrers list_attestations reads (each one manifest and one blob); an index may list thousands.
MAX_REFERRERS = 256
_INDEX_RETRIES = 4


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


# ---------------------------------------------------------------- DSSE


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed (github.com/secure-systems-lab/dsse, protocol.md).

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, lengths as ASCII decimals of byte counts.
    """
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope(payload: bytes, signer: Signer, payload_type: str = IN_TOTO_PAYLOAD) -> bytes:
    """A DSSE envelope of ``payload`` signed by ``signer`` (keyid: its identity), canonical JSON."""
    signature = signer.sign(pae(payload_type, payload))
    return canonical_bytes({"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
                            "signatures": [{"keyid": signer.identity, "sig": signature.value}]})


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[tuple[str, str], ...]  # (keyid, base64 signature)


def read_envelope(data: bytes) -> Envelope:
    """The envelope's fields, checked for shape; ``ValueError`` saying what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError("not JSON") from e
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    payload, kind, sigs = doc.get("payload"), doc.get("payloadType"), doc.get("signatures")
    if not isinstance(payload, str) or not isinstance(kind, str) or not isinstance(sigs, list):
        raise ValueError("payload, payloadType or signatures missing or of the wrong type")
    try:
        body = base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error) as e:
        raise ValueError("payload is not base64") from e
    pairs = tuple((str(s.get("keyid") or ""), s["sig"]) for s in sigs if isinstance(s, dict)
                  and isinstance(s.get("sig"), str))
    return Envelope(body, kind, pairs)


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


def referrers_tag(manifest_digest: str) -> str:
    """``sha256-<hex>``: the distribution spec's referrers tag schema (cosign's signatures add ``.sig``)."""
    algorithm, _, hexdigest = manifest_digest.partition(":")
    return f"{algorithm}-{hexdigest}"


def _push_artifact(reg: Registry, repo: str, subject: Mapping[str, Any], body: bytes, predicate_type: str,
                   ) -> tuple[str, bytes, bool]:
    """Push the envelope and its artifact manifest by digest: (digest, manifest bytes, whether the
    registry said, with ``OCI-Subject``, that its referrers API lists it)."""
    reg.push_blob(repo, digest_bytes(EMPTY), len(EMPTY), EMPTY)
    reg.push_blob(repo, digest_bytes(body), len(body), body)
    manifest = canonical_bytes({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": digest_bytes(EMPTY), "size": len(EMPTY)},
        "layers": [{"mediaType": DSSE_MEDIA_TYPE, "digest": digest_bytes(body), "size": len(body),
                    "annotations": {PREDICATE_ANNOTATION: predicate_type}}],
        "subject": dict(subject),
        "annotations": {PREDICATE_ANNOTATION: predicate_type},
    })
    digest = digest_bytes(manifest)
    # Not put_manifest: the answer's OCI-Subject header is what says the registry indexes referrers itself.
    with reg.request("PUT", f"/v2/{repo}/manifests/{digest}", body=manifest, ok=(201,),
                     headers={"Content-Type": MANIFEST_MEDIA_TYPE},
                     what=f"putting attestation {digest} in {repo}") as resp:
        named = resp.headers.get("Docker-Content-Digest") or digest
        indexed = resp.headers.get("OCI-Subject") == subject["digest"]
    if named != digest:
        raise RegistryError(reg.host, f"the registry names the attestation manifest {named}, not {digest}",
                            "it rewrote the manifest; use a registry that stores manifests as sent")
    return digest, manifest, indexed


def _descriptor(digest: str, manifest: bytes, predicate_type: str) -> dict[str, Any]:
    return {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(manifest),
            "artifactType": ARTIFACT_TYPE, "annotations": {PREDICATE_ANNOTATION: predicate_type}}


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


def _fallback_index(reg: Registry, repo: str, tag: str) -> dict[str, Any] | None:
    try:
        data, media, _ = reg.get_manifest(repo, tag)
    except NotInRegistry:
        return None
    document = f"referrers index {repo}:{tag}"
    if media != INDEX_MEDIA_TYPE:
        raise RegistryDataError(reg.host, document, "mediaType", f"{media!r}, not an OCI index (nothing was changed)")
    return parse_index(reg.host, document, data)


def _add_to_index(reg: Registry, repo: str, tag: str, descriptor: dict[str, Any]) -> bool:
    """Read, add, write the fallback index; whether it was added (False: it was listed). Written again
    when a concurrent writer's index lost it."""
    added = False
    for _ in range(_INDEX_RETRIES):
        index = _fallback_index(reg, repo, tag) or {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                                                    "manifests": []}
        entries = list(index["manifests"])
        if any(e.get("digest") == descriptor["digest"] for e in entries):
            return added
        index = {**index, "manifests": [*entries, descriptor]}
        reg.put_manifest(repo, tag, canonical_bytes(index), INDEX_MEDIA_TYPE)
        added = True
    raise RegistryError(reg.host, f"the referrers index {repo}:{tag} lost the attestation "
                        f"{descriptor['digest']} {_INDEX_RETRIES} times (other writers at the same time)",
                        "attest again: what is pushed is not pushed twice")


def attach(reg: Registry, repo: str, subject: Mapping[str, Any], body: bytes, predicate_type: str,
           ) -> tuple[Attached, str]:
    """Store one envelope as a referrer of ``subject`` (a manifest descriptor); (what, storage)."""
    digest, manifest, indexed = _push_artifact(reg, repo, subject, body, predicate_type)
    if indexed:
        return Attached(predicate_type, digest, digest_bytes(body), True), "referrers-api"
    listed = referrers_api(reg, repo, subject["digest"])
    if listed is not None and any(d.get("digest") == digest for d in listed):
        return Attached(predicate_type, digest, digest_bytes(body), True), "referrers-api"
    added = _add_to_index(reg, repo, referrers_tag(subject["digest"]),
                          _descriptor(digest, manifest, predicate_type))
    return Attached(predicate_type, digest, digest_bytes(body), added), "fallback-tag"


def attest_records(reg: Registry, repo: str, graph: Graph, locks: Mapping[str, Lock], recipe: str,
                   chain: Sequence[LayerRecord], manifest_size: int, signer: Signer, *,
                   compression: str | None = None, progress: Progress = NO_PROGRESS) -> Attested:
    """Attest the image ``chain[-1]`` already in ``repo``: provenance and SBOM, signed, attached.

    What ``publish --attest`` calls once the image is up (with the publish's registry and the size of
    the manifest it pushed). Refuses a digest the registry does not hold.
    """
    started = time.monotonic()
    digest = chain[-1].manifest_digest
    reference = f"{reg.host}/{repo}@{digest}"
    if not reg.has_manifest(repo, digest):
        raise AttestationNotPushed(reference)
    name = docker_reference(reg.host, repo)  # as cosign names the image (Docker Hub's library/ expanded)
    subject = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": manifest_size}
    statements = (
        (provenance.SLSA_PROVENANCE,
         provenance.provenance_statement(name, graph, locks, recipe, chain, compression=compression)),
        (provenance.CYCLONEDX_BOM, provenance.sbom_statement(name, graph, locks, recipe, chain)),
    )
    attached: list[Attached] = []
    storage = "referrers-api"
    for predicate_type, payload in statements:
        progress(recipe, "attest", predicate_type)
        one, where = attach(reg, repo, subject, envelope(payload, signer), predicate_type)
        attached.append(one)
        storage = where if where == "fallback-tag" else storage
    tag = f"{reg.host}/{repo}:{referrers_tag(digest)}" if storage == "fallback-tag" else None
    return Attested(reference, digest, signer.identity, storage, tag, tuple(attached), time.monotonic() - started)


def attest(store: Store, graph: Graph, locks: Mapping[str, Lock], recipe: str, to: str, signer: Signer, *,
           insecure: bool = False, registry: Registry | None = None, compression: str | None = None,
           progress: Progress = NO_PROGRESS) -> Attested:
    """``buildsys attest RECIPE --to REF``: the image of RECIPE's current locks, which must be in REF's
    repository (a tag in ``to`` is ignored: the digest is the store's; a digest must be that one)."""
    ref = Reference.parse(to)
    chain = Builder(store, graph, locks).stored_chain(recipe)
    if chain is None:
        raise ImageNotBuilt(recipe)
    if ref.digest and ref.digest != chain[-1].manifest_digest:
        raise UsageError(f"{to}: names {ref.digest}, but the image of {recipe}'s current locks is "
                         f"{chain[-1].manifest_digest}",
                         f"give the repository alone (--to {ref.host}/{ref.repository}); `buildsys attest` "
                         "attests the image the locks make, and `publish` pushed it by that digest")
    reg = registry or Registry(ref.host, insecure=insecure)
    size = len(OciLayout(store.oci).read_blob(chain[-1].manifest_digest))
    return attest_records(reg, ref.repository, graph, locks, recipe, chain, size, signer,
                          compression=compression, progress=progress)


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


def referrers(reg: Registry, repo: str, manifest_digest: str) -> tuple[str, list[dict[str, Any]]]:
    """(source, descriptors) of the image's referrers: the API's, else the fallback tag's."""
    listed = referrers_api(reg, repo, manifest_digest)
    if listed is not None:
        return "referrers-api", listed
    index = _fallback_index(reg, repo, referrers_tag(manifest_digest))
    if index is None:
        return "none", []
    return "fallback-tag", [dict(d) for d in index["manifests"]]


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
    source, descriptors = referrers(reg, ref.repository, digest)
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
        env = read_envelope(body)
    except ValueError as e:
        raise BadEnvelope(shown, where, f"the envelope is {e}") from e
    if env.payload_type != IN_TOTO_PAYLOAD:
        raise BadEnvelope(shown, where, f"payloadType {env.payload_type!r}, not {IN_TOTO_PAYLOAD}")
    verified = False
    if verifier is not None:
        verified = _accepted(verifier, env)
        if not verified:
            refused.append(f"{where}: none of its {len(env.signatures)} signature(s) verifies over its payload "
                           "with this key (another signer's, or a payload changed after signing)")
    statement = _statement(shown, where, env.payload)
    _check_subject(shown, where, statement, digest)
    predicate_type = str(statement["predicateType"])
    return Attestation(predicate_type, where, str(layers[0]["digest"]), len(env.signatures), verified, statement)


def _accepted(verifier: Verifier, env: Envelope) -> bool:
    signed = pae(env.payload_type, env.payload)
    for _, sig in env.signatures:
        try:
            verifier.verify(signed, sig, {})
        except InvalidSignature:
            continue
        return True
    return False


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
