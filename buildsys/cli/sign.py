"""`buildsys keygen`, `sign` and `verify-signature`: cosign-compatible signatures with a key the user holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.core.errors import UsageError

if TYPE_CHECKING:
    from buildsys.ship.keys import KeySigner


def _passphrase(what: str, confirm: bool) -> bytes | None:
    """The passphrase from the environment, else asked on a terminal; None when neither can give one."""
    from buildsys.ship.keys import passphrase_from_env

    given = passphrase_from_env()
    if given is not None or not sys.stdin.isatty():
        return given
    return str(click.prompt(what, hide_input=True, confirmation_prompt=confirm, err=True)).encode()


def load_signer(key: Path) -> KeySigner:
    """The signer of a private key file, its passphrase from the environment or a prompt (only when it is
    encrypted); what `sign` and `publish --sign` share."""
    from buildsys.ship.keys import KeySigner, key_is_encrypted, load_private_key

    passphrase = _passphrase(f"Passphrase for {key}", confirm=False) if key_is_encrypted(key) else None
    return KeySigner(load_private_key(key, passphrase))


@click.command("keygen")
@click.option("-o", "--output", "prefix", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="PREFIX", help="Writes PREFIX.key (private, mode 0600) and PREFIX.pub.")
@click.option("--no-passphrase", is_flag=True, help="Write the private key unencrypted (explicitly).")
@click.option("--force", is_flag=True, help="Replace PREFIX.key and PREFIX.pub when they exist.")
def keygen_cmd(prefix: Path, no_passphrase: bool, force: bool) -> None:
    """An ECDSA P-256 key pair for `sign`: PEM PKCS#8 encrypted with a passphrase, and its PEM public key.

    The passphrase comes from BUILDSYS_KEY_PASSWORD (or COSIGN_PASSWORD), else it is asked.
    """
    from buildsys.ship.keys import PASSPHRASE_VARIABLES, generate_keypair

    if no_passphrase:
        passphrase = b""
    else:
        given = _passphrase("Passphrase for the new private key", confirm=True)
        if given is None:
            raise UsageError(f"no passphrase for the private key: {PASSPHRASE_VARIABLES[0]} is not set and there "
                             "is no terminal to ask on",
                             f"set {PASSPHRASE_VARIABLES[0]}, or pass --no-passphrase for an unencrypted key")
        if not given:
            raise UsageError("the passphrase is empty",
                             "give one, or pass --no-passphrase to write the private key unencrypted")
        passphrase = given
    pair = generate_keypair(prefix, passphrase, force=force)
    state = "encrypted with the passphrase" if pair.encrypted else "NOT encrypted (--no-passphrase)"
    click.echo(f"{pair.private}: private key, {state}; keep it secret")
    click.echo(f"{pair.public}: public key {pair.fingerprint}; give it to whoever verifies")


@click.command("sign")
@click.argument("reference", metavar="HOST[:PORT]/REPO[:TAG|@DIGEST]")
@click.option("--key", "key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The private key (PREFIX.key from `keygen`).")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry that is not on loopback.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sign_cmd(reference: str, key: Path, insecure: bool, as_json: bool) -> None:
    """Sign a pushed image's digest and store the signature beside it, as `cosign sign --key` does."""
    from buildsys.oci.registry import Reference, Registry
    from buildsys.ship.signing import sign_image

    signer = load_signer(key)
    result = sign_image(Registry(Reference.parse(reference).host, insecure=insecure), reference, signer)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    what = "signed" if result.added else "already signed with this key (nothing added)"
    click.echo(f"{result.reference}: {what}, key {result.signer}")
    click.echo(f"  signatures in {result.signature_tag} ({result.signatures}), manifest {result.signature_manifest}")


@click.command("verify-signature")
@click.argument("reference", metavar="HOST[:PORT]/REPO[:TAG|@DIGEST]")
@click.option("--key", "key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The signer's public key (PREFIX.pub, or a cosign.pub).")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry that is not on loopback.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_signature_cmd(reference: str, key: Path, insecure: bool, as_json: bool) -> None:
    """Check that the image carries a signature by KEY for its digest and repository (exit 5 if not)."""
    from buildsys.oci.registry import Reference, Registry
    from buildsys.ship.keys import KeyVerifier, load_public_key
    from buildsys.ship.signing import verify_image

    verifier = KeyVerifier(load_public_key(key))
    result = verify_image(Registry(Reference.parse(reference).host, insecure=insecure), reference, verifier)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"{result.reference}: verified, {result.signatures} of {result.stored} signature(s) by key "
               f"{result.key}")
