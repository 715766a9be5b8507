"""`buildsys build` (and `--verify`), `test` and `diff`: images from locks, and what they hold."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.cli.app import Context
from buildsys.cli.render import LiveProgress, print_images, print_table
from buildsys.core.errors import ImagesDiffer, NotReproducible, TestFailed, UsageError

if TYPE_CHECKING:
    from buildsys.build.records import BuiltImage
    from buildsys.engine import Engine


@click.command("build")
@click.argument("recipes", nargs=-1)
@click.option("--verify", is_flag=True, help="Rebuild from nothing and prove the digests are equal.")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object per image).")
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Build independent branches of the DAG in parallel.")
@click.option("--cache-from", "cache_from", metavar="HOST[:PORT]/REPO", default=None,
              help="Take layers another machine built from this registry repository (checked by digest).")
@click.option("--cache-to", "cache_to", metavar="HOST[:PORT]/REPO", default=None,
              help="Push each layer of the chains to this registry repository, keyed by its cache key.")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a cache registry that is not on loopback.")
@click.option("--cache-compression", "cache_compression", type=click.Choice(["gzip", "zstd", "none"]),
              default="gzip", show_default=True,
              help="How --cache-to compresses layers (zstd: docker before 23 cannot pull them; docs/shipping.md).")
@click.option("--no-load", "no_load", is_flag=True,
              help="Keep the named images in the store only: not loaded into docker, nothing tagged "
                   "(publish, export and cache jobs need no docker copy; run and test load on demand).")
@click.option("--compress", "compress", type=click.Choice(["gzip", "zstd", "none"]), default="none",
              show_default=True, envvar="BUILDSYS_COMPRESS", show_envvar=True,
              help="Also compress each layer made while it is written, for images that publish, export or "
                   "--cache-to will ship: they then read no layer again (costs ~2x the write if never shipped; "
                   "docs/shipping.md). --verify and --cache-to do it anyway.")
@click.pass_obj
def build_cmd(obj: Context, recipes: tuple[str, ...], verify: bool, no_cache: bool, as_json: bool,
              jobs: int, cache_from: str | None, cache_to: str | None, insecure: bool,
              cache_compression: str, no_load: bool, compress: str) -> None:
    """Build the chains of RECIPES (default: all) with the network off."""
    from buildsys.build.builder import Builder
    from buildsys.lock import fresh_locks
    from buildsys.oci.compress import method

    g = obj.graph()
    locks = fresh_locks(obj.project, g, recipes)
    progress = LiveProgress()
    store = obj.open_store()
    if verify and no_load:
        raise UsageError("--verify keeps its rebuild out of docker already; it takes no --no-load",
                         "run `buildsys build --verify` alone")
    if verify and (cache_from or cache_to):
        raise UsageError("--verify rebuilds from nothing; it takes no --cache-from/--cache-to",
                         "run `buildsys build --verify` alone")
    if verify:
        from buildsys.build.verify import format_mismatch
        from buildsys.build.verify import verify as run_verify
        from buildsys.engine import Engine
        from buildsys.oci.compress import DEFAULT

        engine = Engine.connect()
        with progress:
            results = run_verify(store, g, locks, recipes, engine, progress, jobs=jobs)
        _print_images([r.first for r in results], as_json)
        for r in results:
            if r.equal:
                click.echo(f"{r.recipe}: reproducible ({len(r.first.chain)} layers, "
                           f"image {r.first.record.config_digest}, manifest {r.first.record.manifest_digest}"
                           + (f", {DEFAULT} manifest {r.compressed[0]}" if r.compressed else "") + ")",
                           err=as_json)
        bad = [r for r in results if not r.equal]
        if bad:
            raise NotReproducible("\n".join(format_mismatch(r) for r in bad if r.mismatch or r.compressed) or
                                  "the rebuilt manifest differs", "fix the step that writes the named files; "
                                  "`buildsys diff` compares two images file by file")
        return
    remote = None
    if cache_from or cache_to:
        from buildsys.ship.remote_cache import RemoteCache

        remote = RemoteCache(cache_from, cache_to, insecure=insecure, progress=progress,
                             compression=cache_compression)
    if compress == "none" and cache_to:
        compress = cache_compression  # what the cache push compresses anyway, done while each layer is written
    with progress:
        # The engine is connected only when the store cannot answer alone (see Builder.connect).
        images = Builder(store, g, locks, connect=_connect, trust_loaded=True, no_cache=no_cache, remote=remote,
                         progress=progress, tag=not no_load, load_leaves=not no_load,
                         compress=method(compress) if compress != "none" else None).build(recipes, jobs=jobs)
    _print_images(images, as_json)


def _connect() -> Engine:
    from buildsys.engine import Engine

    return Engine.connect()


def _print_images(images: Sequence[BuiltImage], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([i.to_json() for i in images], indent=2))
    else:
        print_images(images)


@click.command("test")
@click.argument("recipes", nargs=-1)
@click.option("--gpus", metavar="SPEC", help="Run the [test] gpu commands with this GPU request "
              "(all, N, device=ID[,ID]); without it they are reported skipped.")
@click.pass_obj
def test_cmd(obj: Context, recipes: tuple[str, ...], gpus: str | None) -> None:
    """Run the [test] commands of each recipe and its ancestors inside its image, network off."""
    from buildsys.build.builder import Builder
    from buildsys.engine import Engine
    from buildsys.lock import fresh_locks
    from buildsys.use.doctor import require_gpu
    from buildsys.use.run import parse_gpus
    from buildsys.use.testing import run_tests

    request = parse_gpus(gpus) if gpus else None
    g = obj.graph()
    locks = fresh_locks(obj.project, g, recipes)
    engine = Engine.connect()
    if request:
        require_gpu(engine)  # before anything is built or started
    with LiveProgress() as progress:
        builder = Builder(obj.open_store(), g, locks, engine=engine, progress=progress)
        # An image the store holds (built, or brought by `buildsys import` on an offline machine)
        # is tested as it is; only the others are built.
        found = {n: builder.find(n) for n in (recipes or g.order)}
        missing = [n for n, img in found.items() if img is None]
        built = {i.recipe: i for i in builder.build(missing)} if missing else {}
        images = []
        for name, img in found.items():
            if img is None:
                images.append(built[name])
            else:
                builder.load(img.record)
                images.append(img)
    results = [r for img in images for r in run_tests(engine, g, img, gpus=(request,) if request else ())]
    style = {"pass": "[green]pass[/]", "FAIL": "[red]FAIL[/]", "skipped": "[yellow]skipped (needs a GPU)[/]"}
    print_table("tests", ("image", "from recipe", "command", "result", "seconds"),
                ((r.image, r.recipe, ("(gpu) " if r.gpu else "") + r.command, style[r.status],
                  "-" if r.skipped else f"{r.seconds:.1f}") for r in results))
    failed = [r for r in results if not r.ok]
    skipped = [r for r in results if r.skipped]
    for r in failed:
        click.echo(f"--- {r.image}: {r.command} (exit {r.exit_code}) ---\n{r.output.rstrip()}", err=True)
    passed = len(results) - len(failed) - len(skipped)
    if results:
        click.echo(f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped"
                   + (" (they need a GPU: `buildsys test --gpus all ...` on a machine with one)" if skipped else ""),
                   err=True)
    if failed:
        raise TestFailed(f"{len(failed)} of {len(results)} test commands failed")
    if not results:
        click.echo("no [test] commands in these recipes or their ancestors")


@click.command("diff")
@click.argument("image_a")
@click.argument("image_b")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1),
              help="Show at most this many files.")
@click.pass_obj
def diff_cmd(obj: Context, image_a: str, image_b: str, limit: int) -> None:
    """What differs between two images (recipe names or manifest digests), file by file.

    Exit 0 when they are equal, 1 when they differ.
    """
    from buildsys.build.verify import diff_images, resolve_image
    from buildsys.oci.image import OciLayout

    layout = OciLayout(obj.open_store().oci)
    a, b = resolve_image(layout, image_a), resolve_image(layout, image_b)
    result = diff_images(layout, a, layout, b)
    for d in result.files[:limit]:
        click.echo(f"{d.path}: {', '.join(d.what)}" + (f" (in {d.layer})" if d.layer else ""))
        for line in d.detail.splitlines():
            click.echo(f"    {line}")
    if len(result.files) > limit:
        click.echo(f"... and {len(result.files) - limit} more files (--limit)")
    for c in result.config:
        click.echo(f"config {c}")
    if result.files or result.config:
        raise ImagesDiffer(f"{image_a} and {image_b} differ: {len(result.files)} file(s), "
                           f"{len(result.config)} config key(s)")
    click.echo(f"{image_a} and {image_b} are identical ({a})")


@click.command("reproduce")
@click.argument("reference", metavar="HOST[:PORT]/REPO[:TAG|@DIGEST]")
@click.option("--key", "key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Check the image's cosign signature with this public key first (exit 5 when none matches).")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry that is not on loopback.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def reproduce_cmd(obj: Context, reference: str, key: Path | None, insecure: bool, as_json: bool) -> None:
    """Rebuild a published image from this project's locks, from nothing, and prove its digests.

    Exit 0 when the image ID, every layer and the manifest digest are equal; 3 when not,
    naming the first differing layer and its files.
    """
    from buildsys.engine import Engine
    from buildsys.lock import fresh_locks
    from buildsys.ship.keys import KeyVerifier, load_public_key
    from buildsys.ship.reproduce import format_result, reproduce

    verifier = KeyVerifier(load_public_key(key)) if key else None
    g = obj.graph()
    with LiveProgress() as progress:
        result = reproduce(obj.project, obj.open_store(), g, reference, engine=Engine.connect(), insecure=insecure,
                           verifier=verifier, locks_for=lambda recipe: fresh_locks(obj.project, g, [recipe]),
                           progress=progress)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else format_result(result))
    if not result.equal:
        raise NotReproducible(f"{result.reference} is not what {result.recipe}'s locks build")
