"""DSSE envelopes (github.com/secure-systems-lab/dsse, v1): a payload, its type, and signatures over both.

What is signed is the pre-authentication encoding (``pae``), never the JSON of the envelope, so
the signature binds the payload type too. Written here (a dozen lines) rather than taken from
securesystemslib (``securesystemslib.dsse.Envelope``) or in-toto's library, which are not installed;
the signatures are ``signing``'s (ECDSA P-256 / SHA-256, RFC 6979 nonces: the same key and payload
give the same envelope).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from buildsys.oci.image import canonical_bytes
from buildsys.ship.keys import Signer, Verifier

IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, lengths as ASCII decimals of byte counts."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope(payload: bytes, signer: Signer, payload_type: str = IN_TOTO_PAYLOAD) -> bytes:
    """An envelope of ``payload`` signed by ``signer`` (keyid: its identity), canonical JSON."""
    signature = signer.sign(pae(payload_type, payload))
    return canonical_bytes({"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
                            "signatures": [{"keyid": signer.identity, "sig": signature.value}]})


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[tuple[str, str], ...]  # (keyid, base64 signature)

    def accepted_by(self, verifier: Verifier) -> bool:
        """Whether one of its signatures verifies over its PAE with ``verifier``."""
        signed = pae(self.payload_type, self.payload)
        for _, sig in self.signatures:
            try:
                verifier.verify(signed, sig, {})
            except InvalidSignature:
                continue
            return True
        return False


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
    pairs = tuple((str(s.get("keyid") or ""), s["sig"]) for s in sigs
                  if isinstance(s, dict) and isinstance(s.get("sig"), str))
    return Envelope(body, kind, pairs)
