"""Keys a user holds, and the signers and verifiers made of them (``signing`` and ``attest`` use them).

ECDSA P-256, as cosign makes and reads them: the private key PEM PKCS#8,
encrypted with a passphrase (PBES2: PBKDF2-HMAC-SHA256 with 600,000 rounds,
AES-256-CBC; ``cryptography``'s own PKCS#8 encryption is fixed at OpenSSL's
2,048 rounds, cheap to brute-force), the public key PEM SubjectPublicKeyInfo.
The passphrase comes from ``BUILDSYS_KEY_PASSWORD`` or ``COSIGN_PASSWORD``.

``Signer`` and ``Verifier`` are the door for keyless signing (signing.py's
docstring says what a Fulcio/Rekor pair would return and check).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from buildsys.core.errors import EXIT_USAGE, BuildsysError

PASSPHRASE_VARIABLES = ("BUILDSYS_KEY_PASSWORD", "COSIGN_PASSWORD")


class SigningKeyError(BuildsysError):
    """A key file that cannot be used: missing, not a P-256 key, the wrong passphrase (exit 2)."""

    exit_code = EXIT_USAGE

    def __init__(self, path: Path | str, problem: str, hint: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem}", hint)


class WrongPassphrase(SigningKeyError):
    def __init__(self, path: Path | str) -> None:
        super().__init__(path, "the passphrase does not decrypt this private key",
                         f"give the passphrase it was written with ({' or '.join(PASSPHRASE_VARIABLES)}, or "
                         "at the prompt)")


class KeyExists(SigningKeyError):
    def __init__(self, path: Path) -> None:
        super().__init__(path, "exists already; a key is never overwritten",
                         "choose another --output, or pass --force to replace it (signatures made with the "
                         "old key then verify only with the old public key)")



# ---------------------------------------------------------------- keys


def passphrase_from_env() -> bytes | None:
    """``BUILDSYS_KEY_PASSWORD``, else ``COSIGN_PASSWORD`` (cosign's variable), else None (ask)."""
    for name in PASSPHRASE_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            return value.encode()
    return None


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``sha256:`` and the first 16 hex digits of the SubjectPublicKeyInfo: names a key in messages."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    fingerprint: str
    encrypted: bool


def generate_keypair(prefix: Path, passphrase: bytes, *, force: bool = False) -> KeyPair:
    """``PREFIX.key`` (PKCS#8 PEM, mode 0600, encrypted unless ``passphrase`` is empty) and ``PREFIX.pub``.

    Neither file is written when either exists (unless ``force``); each is
    written under a temporary name and linked into place, so a crash leaves no
    half key and a racing writer cannot be overwritten.
    """
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    if not force:
        for path in (private_path, public_path):
            if path.exists() or path.is_symlink():
                raise KeyExists(path)
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = encrypted_pkcs8(key, passphrase) if passphrase else key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_key(private_path, private_pem, 0o600, force)
    try:
        _write_key(public_path, public_pem, 0o644, force)
    except BaseException:
        private_path.unlink()  # no private key without its public half
        raise
    return KeyPair(private_path, public_path, key_fingerprint(key.public_key()), bool(passphrase))


# PBKDF2-HMAC-SHA256 rounds for an encrypted key: OWASP's 2023 figure. cryptography's own PKCS#8
# encryption (BestAvailableEncryption) uses OpenSSL's default of 2048 rounds and cannot be given more,
# which makes a stolen key file cheap to brute-force; so the PBES2 structure is written here.
PBKDF2_ROUNDS = 600_000
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_HMAC_SHA256 = "1.2.840.113549.2.9"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def encrypted_pkcs8(key: ec.EllipticCurvePrivateKey, passphrase: bytes, rounds: int = PBKDF2_ROUNDS) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` (RFC 5958 EncryptedPrivateKeyInfo): PBES2, PBKDF2-HMAC-SHA256
    with ``rounds``, AES-256-CBC; what OpenSSL, cryptography and Go's pkcs8 readers decrypt."""
    salt, iv = os.urandom(16), os.urandom(16)
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    secret = PBKDF2HMAC(hashes.SHA256(), 32, salt, rounds).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    kdf = _seq(_oid(_OID_PBKDF2), _seq(_der(0x04, salt), _int(rounds), _seq(_oid(_OID_HMAC_SHA256), b"\x05\x00")))
    scheme = _seq(_oid(_OID_AES256_CBC), _der(0x04, iv))
    der = _seq(_seq(_oid(_OID_PBES2), _seq(kdf, scheme)), _der(0x04, sealed))
    text = base64.b64encode(der).decode()
    lines = "".join(text[i:i + 64] + "\n" for i in range(0, len(text), 64))
    return f"-----BEGIN ENCRYPTED PRIVATE KEY-----\n{lines}-----END ENCRYPTED PRIVATE KEY-----\n".encode()


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # one more byte: stays positive


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(x) for x in dotted.split("."))
    body = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _write_key(path: Path, data: bytes, mode: int, force: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600 from the start
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails when the name exists: nothing is overwritten, even in a race
            except FileExistsError as e:
                raise KeyExists(path) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise SigningKeyError(path, f"no such {what} file",
                              "make a key pair with `buildsys keygen --output PREFIX`") from e
    except IsADirectoryError as e:
        raise SigningKeyError(path, f"is a folder, not a {what} file") from e


def key_is_encrypted(path: Path) -> bool:
    """Whether the private key needs a passphrase (so the CLI asks only then)."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in _read_pem(path, "private key")


def load_private_key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    data = _read_pem(path, "private key")
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    if encrypted and not passphrase:
        raise SigningKeyError(path, "is encrypted and no passphrase was given",
                              f"set {PASSPHRASE_VARIABLES[0]} (or {PASSPHRASE_VARIABLES[1]}), or run on a terminal "
                              "to be asked")
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError as e:
        if encrypted and ("password" in str(e).lower() or "decrypt" in str(e).lower()):
            raise WrongPassphrase(path) from e
        raise SigningKeyError(path, f"not a PEM private key ({_first_line(e)})",
                              "give the PREFIX.key that `buildsys keygen` wrote (PKCS#8 PEM)") from e
    except (TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(path, f"cannot be read ({_first_line(e)})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(path, f"is a {_kind(key)} key; signatures here are ECDSA P-256 (as cosign's)",
                              "make one with `buildsys keygen --output PREFIX`")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    data = _read_pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        hint = "give the .pub file, not the private key" if b"PRIVATE KEY" in data else \
            "give the PREFIX.pub that `buildsys keygen` wrote (PEM SubjectPublicKeyInfo)"
        raise SigningKeyError(path, f"not a PEM public key ({_first_line(e)})", hint) from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(path, f"is a {_kind(key)} key; signatures here are ECDSA P-256 (as cosign's)")
    return key


def _kind(key: object) -> str:
    curve = getattr(key, "curve", None)
    return f"{type(key).__name__.lstrip('_')}" + (f" ({curve.name})" if curve is not None else "")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# ---------------------------------------------------------------- signers and verifiers


@dataclass(frozen=True)
class Signature:
    """One signature as stored: base64 of the DER signature, and what else goes on its layer."""

    value: str
    annotations: dict[str, str] = field(default_factory=dict)  # a keyless signer's certificate, chain, bundle


class Signer(Protocol):
    """Signs a payload. ``KeySigner`` holds a private key; a keyless one would ask Fulcio and Rekor."""

    @property
    def identity(self) -> str: ...  # what messages name: a key's fingerprint, a certificate's subject

    def sign(self, payload: bytes) -> Signature: ...


class Verifier(Protocol):
    """Says whether one stored signature of a payload is acceptable (raises ``InvalidSignature`` if not)."""

    @property
    def identity(self) -> str: ...

    def verify(self, payload: bytes, signature: str, annotations: dict[str, str]) -> None: ...


class KeySigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        self.identity = key_fingerprint(key.public_key())

    def sign(self, payload: bytes) -> Signature:
        # RFC 6979: the same key and payload give the same signature, so signing twice adds no layer.
        der = self.key.sign(payload, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        return Signature(base64.b64encode(der).decode())


class KeyVerifier:
    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        self.key = key
        self.identity = key_fingerprint(key)

    def verify(self, payload: bytes, signature: str, annotations: dict[str, str]) -> None:
        try:
            der = base64.b64decode(signature, validate=True)
        except ValueError as e:
            raise InvalidSignature("the signature annotation is not base64") from e
        self.key.verify(der, payload, ec.ECDSA(hashes.SHA256()))
