"""`buildsys attest` and `attestations`: signed provenance and SBOM statements stored beside a pushed image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.cli.app import Context
from buildsys.cli.render import LiveProgress
from buildsys.cli.sign import load_signer

if TYPE_CHECKING:
    from buildsys.ship.attest import Attested


def print_attested(result: Attested) -> None:
    """What `attest` prints, and `publish --attest` after its own lines."""
    where = result.index_tag or "the registry's referrers API"
    click.echo(f"{result.reference}: attested with key {result.signer}; listed in {where}")
    for a in result.attestations:
        state = "added" if a.added else "already there"
        click.echo(f"  {a.predicate_type}: {a.manifest_digest} ({state})")


@click.command("attest")
@click.argument("recipe")
@click.option("--to", "to", required=True, metavar="HOST[:PORT]/REPO",
              help="The repository the image was published to.")
@click.option("--key", "key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The private key (PREFIX.key from `keygen`).")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry that is not on loopback.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def attest_cmd(obj: Context, recipe: str, to: str, key: Path, insecure: bool, as_json: bool) -> None:
    """Attach signed SLSA provenance and a CycloneDX SBOM to RECIPE's published image (by its digest)."""
    from buildsys.lock import fresh_locks
    from buildsys.ship.attest import attest

    g = obj.graph()
    g.select([recipe])
    locks = fresh_locks(obj.project, g, [recipe])
    signer = load_signer(key)
    with LiveProgress() as progress:
        result = attest(obj.open_store(), g, locks, recipe, to, signer, insecure=insecure, progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    print_attested(result)


@click.command("attestations")
@click.argument("reference", metavar="HOST[:PORT]/REPO[:TAG|@DIGEST]")
@click.option("--key", "key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The attester's public key: at least one attestation must verify with it (exit 5 if not).")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry that is not on loopback.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attestations_cmd(reference: str, key: Path | None, insecure: bool, as_json: bool) -> None:
    """List the image's in-toto attestations, each checked to be about this digest; with --key, which the key signed."""
    from buildsys.oci.registry import Reference, Registry
    from buildsys.ship.attest import list_attestations
    from buildsys.ship.keys import KeyVerifier, load_public_key

    verifier = KeyVerifier(load_public_key(key)) if key else None
    result = list_attestations(Registry(Reference.parse(reference).host, insecure=insecure), reference, verifier)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    if not result.attestations:
        click.echo(f"{result.reference}: no attestations")
        return
    click.echo(f"{result.reference}: {len(result.attestations)} attestation(s), from the {result.source}")
    for a in result.attestations:
        state = "unverified (no --key)" if result.key is None else \
            f"verified (key {result.key})" if a.verified else f"NOT signed by key {result.key}"
        click.echo(f"  {a.predicate_type}  {a.manifest_digest}  {state}")
