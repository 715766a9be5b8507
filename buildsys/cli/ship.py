"""`buildsys publish`, `export`, `import` and `sbom`: images leaving this machine, and arriving."""

from __future__ import annotations

import json
from pathlib import Path

import click

from buildsys.cli.app import Context
from buildsys.cli.render import LiveProgress


@click.command("publish")
@click.argument("recipe")
@click.option("--to", "to", required=True, metavar="HOST[:PORT]/REPO[:TAG]",
              help="Where to push. The tag is optional: the digest printed is what to pin.")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry that is not on loopback.")
@click.option("--force", is_flag=True, help="Publish an image whose chain no `build --verify` has proven.")
@click.option("--compression", type=click.Choice(["gzip", "zstd", "none"]), default="gzip", show_default=True,
              help="Layer compression, one pinned method each (the digest depends on the layers alone). "
                   "zstd: smaller and faster, but docker before 23.0 cannot pull it. none: the built manifest "
                   "byte for byte.")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="PREFIX.key", help="Sign the pushed image with this key (cosign-compatible), before any tag.")
@click.option("--attest", is_flag=True, help="Attach its signed SLSA provenance and CycloneDX SBOM (needs --sign).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def publish_cmd(obj: Context, recipe: str, to: str, insecure: bool, force: bool, compression: str,
                sign_key: Path | None, attest: bool, as_json: bool) -> None:
    """Push RECIPE's canonical image by digest; the registry's digest is the one printed.

    With compression the pushed manifest differs from the built one (its layers are the compressed
    blobs) but the config, and so docker's image ID after a pull, is the built one.
    """
    from buildsys.cli.sign import load_signer
    from buildsys.core.errors import UsageError
    from buildsys.lock import fresh_locks
    from buildsys.ship.publish import publish

    if attest and sign_key is None:
        raise UsageError("--attest signs its statements: it needs --sign KEY", "add --sign PREFIX.key")
    signer = load_signer(sign_key) if sign_key else None  # the passphrase is asked before anything is pushed
    g = obj.graph()
    locks = fresh_locks(obj.project, g, [recipe])
    with LiveProgress() as progress:
        result = publish(obj.open_store(), g, locks, recipe, to, insecure=insecure, force=force,
                         compression=compression, signer=signer, attest=attest, progress=progress)
    if not result.verified:
        click.echo(f"warning: {recipe}: published with --force; its chain was never verified "
                   f"(`buildsys build --verify {recipe}` proves it)", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"{recipe}: published {result.reference}" + (f" (tag {result.tag})" if result.tag else ""))
    click.echo(f"  image id {result.image_id}; {result.blobs_sent} blob(s) sent ({result.bytes_sent / 1e6:.1f} MB), "
               f"{result.blobs_present} already there, {result.seconds:.1f}s")
    click.echo(f"  layers {result.layer_bytes / 1e6:.1f} MB -> {result.shipped_layer_bytes / 1e6:.1f} MB "
               f"({result.compression}; {result.layers_compressed} compressed now)")
    if result.signed:
        click.echo(f"  signed with key {result.signed.signer} ({result.signed.signatures} signature(s) stored)")
    if result.attested:
        from buildsys.cli.attest import print_attested

        print_attested(result.attested)
    click.echo(result.manifest_digest)


@click.command("export")
@click.argument("recipes", nargs=-1, required=True)
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The archive to write (an OCI layout that `docker load` also reads).")
@click.option("--compression", type=click.Choice(["gzip", "zstd", "none"]), default="gzip", show_default=True,
              help="Layer compression, as publish's. zstd: docker before 23.0 cannot load it.")
@click.pass_obj
def export_cmd(obj: Context, recipes: tuple[str, ...], output: Path, compression: str) -> None:
    """One archive of RECIPES' images, their locks, digests and SBOMs, for an air-gapped machine."""
    from buildsys.lock import fresh_locks
    from buildsys.ship.export import export

    g = obj.graph()
    g.select(recipes)
    locks = fresh_locks(obj.project, g, recipes)
    with LiveProgress() as progress:
        result = export(obj.open_store(), g, locks, list(dict.fromkeys(recipes)), output.resolve(),
                        progress=progress, compression=compression)
    for img in result.images:
        click.echo(f"{img.recipe}: image {img.image_id}, manifest {img.manifest_digest}"
                   + (f" (built {img.built_manifest_digest})" if img.built_manifest_digest else ""))
    click.echo(f"{output}: {result.size / 1e6:.1f} MB, sha256 {result.sha256}, {result.seconds:.1f}s; "
               f"on the other machine: `buildsys import {output.name}` (or `docker load -i {output.name}`)")


@click.command("import")
@click.argument("archive", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_obj
def import_cmd(obj: Context, archive: Path) -> None:
    """Check every blob of an export archive, then load and tag its images."""
    from buildsys.engine import Engine
    from buildsys.ship.export import import_archive

    engine = Engine.connect()
    with LiveProgress() as progress:
        result = import_archive(obj.open_store(), archive.resolve(), engine, progress=progress)
    for img in result.images:
        click.echo(f"{img.recipe}: imported as {img.recipe}:latest, image {img.image_id}, "
                   f"manifest {img.built}")
    click.echo(f"{result.blobs} blobs checked ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f}s")


@click.command("sbom")
@click.argument("recipe")
@click.option("--format", "fmt", type=click.Choice(["cyclonedx", "spdx"]), default="cyclonedx", show_default=True)
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (atomically) instead of stdout.")
@click.option("--repository", metavar="HOST[:PORT]/REPO", default=None,
              help="Where the image is published: the image's purl then has it as repository_url.")
@click.pass_obj
def sbom_cmd(obj: Context, recipe: str, fmt: str, output: Path | None, repository: str | None) -> None:
    """The chain's locked components (debs, wheels, files) with purls, SHA-256 and declared licenses, schema-checked."""
    from buildsys.build.builder import Builder
    from buildsys.core.store import atomic_write
    from buildsys.lock import fresh_locks
    from buildsys.ship.sbom import sbom

    g = obj.graph()
    g.select([recipe])
    locks = fresh_locks(obj.project, g, [recipe])
    store = obj.open_store()
    chain = Builder(store, g, locks).stored_chain(recipe)
    with LiveProgress() as progress:
        data = sbom(g, locks, recipe, fmt, chain[-1] if chain else None, store, repository, progress)
    if output:
        atomic_write(output, data)
        click.echo(f"{output}: {fmt} SBOM of {recipe}", err=True)
    else:
        click.echo(data.decode(), nl=False)
