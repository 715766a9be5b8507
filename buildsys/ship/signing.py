"""Signing published images with a key the user holds, offline, as cosign does.

What goes into the registry is what ``cosign sign --key`` writes, so that
``cosign verify --key``, and skopeo/podman with a ``sigstoreSigned`` policy,
accept it without knowing buildsys:

- the payload is cosign's "simple signing" JSON, the same bytes cosign and
  containers/image write (keys sorted, no spaces, ``"optional":null``)::

    {"critical":{"identity":{"docker-reference":"HOST/REPO"},
     "image":{"docker-manifest-digest":"sha256:..."},
     "type":"cosign container image signature"},"optional":null}

- it is signed with ECDSA P-256 over SHA-256 (an ASN.1 DER signature, in
  base64); the nonce is RFC 6979's, so one key signing one payload always gives
  the same signature, and a second ``sign`` adds nothing;
- it is stored as an OCI image manifest tagged ``sha256-<hex>.sig`` in the
  image's own repository: one layer per signature, of media type
  ``application/vnd.dev.cosign.simplesigning.v1+json``, whose blob is the
  payload and whose annotation ``dev.cosignproject.cosign/signature`` is the
  signature. A new signature is appended to the layers already there.

Keys, signers and verifiers: ``keys.py``.

Keyless signing (a Fulcio certificate for an OIDC identity, the signature
logged in Rekor) needs sigstore's services; it plugs in behind ``Signer`` and
``Verifier``: a keyless signer returns, with the signature, the annotations
``dev.sigstore.cosign/certificate``, ``dev.sigstore.cosign/chain`` and
``dev.sigstore.cosign/bundle``; a keyless verifier checks the certificate
against Fulcio's roots and the bundle against Rekor's key instead of a public
key. Everything else here (payload, storage, the digest and repository checks)
stays as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature

from buildsys.core.errors import EXIT_UNTRUSTED, BuildsysError
from buildsys.oci.image import canonical_bytes, digest_bytes
from buildsys.oci.registry import (
    DOCKER_HUB,
    BlobMismatch,
    BlobSizeMismatch,
    NotInRegistry,
    Reference,
    Registry,
    RegistryDataError,
    parse_manifest,
)
from buildsys.ship.keys import Signer, Verifier

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

# The most signature layers verify reads (each a blob fetch): a .sig manifest may hold ~15,000 in its 4 MiB.
MAX_SIGNATURES = 256


# ---------------------------------------------------------------- errors



class NotPushed(BuildsysError):
    """``sign`` of an image the registry does not hold."""

    def __init__(self, reference: str, signing: bool = True) -> None:
        self.reference = reference
        why = "; no signature for a digest that was not pushed" if signing else "; nothing to verify"
        super().__init__(f"{reference}: not in the registry{why}",
                         "publish the image first (`buildsys publish RECIPE --to ...`), then use the "
                         "HOST/REPO@DIGEST it printed")


class SignatureError(BuildsysError):
    """The image has no signature this key accepts for it (exit 5); names the image and the key."""

    exit_code = EXIT_UNTRUSTED


class NoSignature(SignatureError):
    def __init__(self, reference: str, tag: str) -> None:
        super().__init__(f"{reference}: not signed (the registry has no {tag} for it)",
                         "sign it with `buildsys sign REF --key KEY` (or `publish --sign`), or do not trust it")


class WrongKey(SignatureError):
    def __init__(self, reference: str, key: str, count: int, details: list[str]) -> None:
        more = "".join(f"\n  - {d}" for d in details)
        super().__init__(f"{reference}: none of its {count} signature(s) was made with the key {key}{more}",
                         "verify with the public key of whoever signed it; an image signed by someone else "
                         "is not trusted")


class SignatureForOtherDigest(SignatureError):
    def __init__(self, reference: str, signed: str) -> None:
        self.signed = signed
        super().__init__(f"{reference}: the signature stored for it signs another image, {signed}",
                         "someone copied a signature onto this image; do not trust it")


class SignatureForOtherRepository(SignatureError):
    def __init__(self, reference: str, signed: str, expected: str) -> None:
        self.signed, self.expected = signed, expected
        super().__init__(f"{reference}: signed for the repository {signed}, not {expected}",
                         "the image was copied from where it was signed; verify it there, or sign it here")



# ---------------------------------------------------------------- what is signed, and where it is kept


def docker_reference(host: str, repository: str) -> str:
    """The repository as cosign names it in the payload (Docker Hub: ``index.docker.io/library/NAME``)."""
    if host.lower() in DOCKER_HUB:
        return "index.docker.io/" + (repository if "/" in repository else f"library/{repository}")
    return f"{host}/{repository}"


def payload(host: str, repository: str, manifest_digest: str) -> bytes:
    """cosign's simple-signing payload, byte for byte as cosign writes it (Go's encoding: sorted, compact)."""
    doc = {"critical": {"identity": {"docker-reference": docker_reference(host, repository)},
                        "image": {"docker-manifest-digest": manifest_digest},
                        "type": PAYLOAD_TYPE},
           "optional": None}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def signature_tag(manifest_digest: str) -> str:
    """``sha256-<hex>.sig``: where cosign (and containers/image's sigstore attachments) look."""
    algorithm, _, hexdigest = manifest_digest.partition(":")
    return f"{algorithm}-{hexdigest}.sig"


@dataclass(frozen=True)
class Signed:
    reference: str  # HOST/REPO@DIGEST
    manifest_digest: str
    signature_tag: str  # HOST/REPO:sha256-<hex>.sig
    signature_manifest: str  # its digest
    signer: str
    added: bool  # False: this very signature was there already
    signatures: int  # how many the .sig manifest holds now

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "manifest_digest": self.manifest_digest,
                "signature_tag": self.signature_tag, "signature_manifest": self.signature_manifest,
                "signer": self.signer, "added": self.added, "signatures": self.signatures}


@dataclass(frozen=True)
class Verified:
    reference: str
    manifest_digest: str
    key: str
    signatures: int  # how many of the stored signatures this key accepts for this image
    stored: int  # how many there are

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "manifest_digest": self.manifest_digest, "key": self.key,
                "signatures": self.signatures, "stored": self.stored}


def resolve(reg: Registry, ref: Reference, signing: bool = True) -> str:
    """The manifest digest ``ref`` names in the registry; ``NotPushed`` when it is not there."""
    try:
        if ref.digest:
            if not reg.has_manifest(ref.repository, ref.digest):
                raise NotPushed(str(ref), signing)
            return ref.digest
        _, _, digest = reg.get_manifest(ref.repository, ref.tag or "latest")
        return digest
    except NotInRegistry as e:
        raise NotPushed(str(ref) if ref.tag else f"{ref}:latest", signing) from e


def _existing(reg: Registry, repo: str, tag: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(manifest, config) of the signatures stored for a digest, or None."""
    try:
        data, media, _ = reg.get_manifest(repo, tag)
    except NotInRegistry:
        return None
    document = f"signature manifest {repo}:{tag}"
    if media != OCI_MANIFEST:
        raise RegistryDataError(reg.host, document, "mediaType", f"{media!r}, not an OCI image manifest as "
                                "cosign writes (nothing was changed)")
    manifest = parse_manifest(reg.host, document, data)
    config_desc = manifest["config"]
    try:
        config_doc = json.loads(reg.get_blob_bytes(repo, config_desc["digest"], int(config_desc["size"])))
    except (ValueError, RecursionError) as e:
        raise RegistryDataError(reg.host, f"config of {document}", "(the whole document)", "not JSON") from e
    if not isinstance(config_doc, dict):
        raise RegistryDataError(reg.host, f"config of {document}", "(the whole document)", "not a JSON object")
    return manifest, config_doc


def sign_manifest(reg: Registry, repo: str, manifest_digest: str, signer: Signer) -> Signed:
    """Sign the image ``repo@manifest_digest`` the registry holds, and store the signature beside it.

    What ``publish --sign`` calls once the image is up. Order as for images:
    the payload blob, the config blob, then the ``.sig`` manifest under its
    tag; the same signature twice is stored once.
    """
    ref = f"{reg.host}/{repo}@{manifest_digest}"
    if not reg.has_manifest(repo, manifest_digest):
        raise NotPushed(ref)
    body = payload(reg.host, repo, manifest_digest)
    signature = signer.sign(body)
    annotations = {SIGNATURE_ANNOTATION: signature.value, **signature.annotations}
    layer: dict[str, Any] = {"mediaType": SIGNATURE_MEDIA_TYPE, "digest": digest_bytes(body), "size": len(body),
             "annotations": annotations}
    tag = signature_tag(manifest_digest)
    existing = _existing(reg, repo, tag)
    if existing is None:
        manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}
        config: dict[str, Any] = {"architecture": "", "config": {}, "os": "",
                                  "rootfs": {"diff_ids": [], "type": "layers"}}
    else:
        manifest, config = existing
    layers = list(manifest["layers"])
    if any(_same(old, layer) for old in layers):
        _, _, digest = reg.get_manifest(repo, tag)
        return Signed(ref, manifest_digest, f"{reg.host}/{repo}:{tag}", digest, signer.identity, False, len(layers))
    reg.push_blob(repo, layer["digest"], len(body), body)
    layers.append(layer)
    rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else None
    diff_ids = list(rootfs.get("diff_ids") or []) if rootfs else []
    config["rootfs"] = {**(rootfs or {"type": "layers"}), "diff_ids": [*diff_ids, layer["digest"]]}
    config_bytes = canonical_bytes(config)
    config_digest = digest_bytes(config_bytes)
    reg.push_blob(repo, config_digest, len(config_bytes), config_bytes)
    manifest = {**manifest, "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
                "layers": layers}
    digest = reg.put_manifest(repo, tag, canonical_bytes(manifest), OCI_MANIFEST)
    return Signed(ref, manifest_digest, f"{reg.host}/{repo}:{tag}", digest, signer.identity, True, len(layers))


def _same(old: Any, new: dict[str, Any]) -> bool:
    return isinstance(old, dict) and all(old.get(k) == new[k] for k in ("mediaType", "digest", "size",
                                                                        "annotations"))


def sign_image(reg: Registry, reference: str, signer: Signer) -> Signed:
    """``buildsys sign REF``: resolve the tag (or check the digest) in the registry, then ``sign_manifest``."""
    ref = Reference.parse(reference)
    return sign_manifest(reg, ref.repository, resolve(reg, ref), signer)


# ---------------------------------------------------------------- verifying


@dataclass
class _Findings:
    """What the layers of a .sig manifest said, kept to name the most telling refusal."""

    accepted: int = 0
    other_digest: str | None = None
    other_repository: str | None = None
    rejected: list[str] = field(default_factory=list)


def verify_manifest(reg: Registry, repo: str, manifest_digest: str, verifier: Verifier) -> Verified:
    """At least one stored signature of ``repo@manifest_digest`` that ``verifier`` accepts, for this
    digest and this repository; else the ``SignatureError`` that says why not."""
    ref = f"{reg.host}/{repo}@{manifest_digest}"
    tag = signature_tag(manifest_digest)
    try:
        data, media, _ = reg.get_manifest(repo, tag)
    except NotInRegistry as e:
        raise NoSignature(ref, tag) from e
    document = f"signature manifest {repo}:{tag}"
    if media != OCI_MANIFEST:
        raise RegistryDataError(reg.host, document, "mediaType", f"{media!r}, not an OCI image manifest")
    layers = [layer for layer in parse_manifest(reg.host, document, data)["layers"]
              if layer.get("mediaType") == SIGNATURE_MEDIA_TYPE]
    if not layers:
        raise NoSignature(ref, tag)
    if len(layers) > MAX_SIGNATURES:
        raise RegistryDataError(reg.host, document, "layers", f"{len(layers)} signatures, more than the "
                                f"{MAX_SIGNATURES} buildsys reads (nothing was trusted)")
    found = _Findings()
    expected = docker_reference(reg.host, repo)
    for i, layer in enumerate(layers):
        _check_layer(reg, repo, manifest_digest, expected, verifier, layer, f"layers[{i}]", found)
    if found.accepted:
        return Verified(ref, manifest_digest, verifier.identity, found.accepted, len(layers))
    if found.other_digest:
        raise SignatureForOtherDigest(ref, found.other_digest)
    if found.other_repository:
        raise SignatureForOtherRepository(ref, found.other_repository, expected)
    raise WrongKey(ref, verifier.identity, len(layers), found.rejected)


def _check_layer(reg: Registry, repo: str, manifest_digest: str, expected: str, verifier: Verifier,
                 layer: dict[str, Any], where: str, found: _Findings) -> None:
    annotations = layer.get("annotations") or {}
    signature = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(signature, str):
        found.rejected.append(f"{where}: no {SIGNATURE_ANNOTATION} annotation")
        return
    try:
        body = reg.get_blob_bytes(repo, layer["digest"], int(layer["size"]))
    except (BlobMismatch, BlobSizeMismatch) as e:
        found.rejected.append(f"{where}: its payload blob is damaged ({e.problem})")
        return
    try:
        verifier.verify(body, signature, {str(k): str(v) for k, v in annotations.items()})
    except InvalidSignature:
        found.rejected.append(f"{where}: signature does not verify with this key")
        return
    signed_digest, signed_reference = _parse_payload(body)
    if signed_digest is None or signed_reference is None:
        found.rejected.append(f"{where}: signed, but its payload is not cosign's simple signing")
    elif signed_digest != manifest_digest:
        found.other_digest = signed_digest
    elif _repository(signed_reference) != _repository(expected):
        found.other_repository = signed_reference
    else:
        found.accepted += 1


def _parse_payload(body: bytes) -> tuple[str | None, str | None]:
    """(docker-manifest-digest, docker-reference) of a payload of cosign's type, exact fields as
    containers/image requires; (None, None) otherwise."""
    try:
        doc = json.loads(body)
        critical = doc["critical"]
        if set(doc) != {"critical", "optional"} or set(critical) != {"identity", "image", "type"} \
                or critical["type"] != PAYLOAD_TYPE:
            return None, None
        digest, reference = critical["image"]["docker-manifest-digest"], critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError):
        return None, None
    if not isinstance(digest, str) or not isinstance(reference, str):
        return None, None
    return digest, reference


def _repository(reference: str) -> str:
    """The repository of a reference, without tag or digest, Docker Hub's names normalized."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if len(last) == 2 and ":" in last[1]:
        name = last[0] + "/" + last[1].split(":", 1)[0]
    host, _, path = name.partition("/")
    if host.lower() in (*DOCKER_HUB, "index.docker.io"):
        return "docker.io/" + (path if "/" in path else f"library/{path}")
    return f"{host.lower()}/{path}"


def verify_image(reg: Registry, reference: str, verifier: Verifier) -> Verified:
    """``buildsys verify-signature REF``: the digest ``REF`` names in the registry, then ``verify_manifest``."""
    ref = Reference.parse(reference)
    return verify_manifest(reg, ref.repository, resolve(reg, ref, signing=False), verifier)
