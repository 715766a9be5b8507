"""`buildsys fetch`: the vendor store, filled from upstream or moved by a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from buildsys.cli.app import Context
from buildsys.cli.render import LiveProgress
from buildsys.core.errors import UsageError


@click.command("fetch")
@click.argument("recipes", nargs=-1)
@click.option("-j", "--jobs", default=8, show_default=True, type=click.IntRange(min=1), help="Parallel downloads.")
@click.option("--bundle", "bundle", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="After fetching, write the locked files of RECIPES into this one file, for an offline machine.")
@click.option("--from-bundle", "from_bundle", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Fill the vendor store from a bundle (each file hash-checked), no network.")
@click.pass_obj
def fetch_cmd(obj: Context, recipes: tuple[str, ...], jobs: int, bundle: Path | None,
              from_bundle: Path | None) -> None:
    """Download every locked artifact into the vendor store, hash-checked."""
    from buildsys.ecosystems import artifacts as locked_artifacts
    from buildsys.fetch.vendor import fetch
    from buildsys.lock import fresh_locks

    if bundle and from_bundle:
        raise UsageError("--bundle and --from-bundle do opposite things", "give one of them")
    if from_bundle:
        from buildsys.fetch.bundle import read_bundle

        with LiveProgress() as progress:
            got = read_bundle(obj.open_store(), from_bundle, progress=progress)
        click.echo(f"{from_bundle}: {got.files} files, {got.added} added to the vendor store "
                   f"({got.bytes / 1e6:.1f} MB), every one hash-checked")
        return
    g = obj.graph()
    locks = fresh_locks(obj.project, g, recipes)
    artifacts = {a.sha256: a for lock in locks.values() for a in locked_artifacts(lock)}
    result = fetch(obj.open_store(), sorted(artifacts.values(), key=lambda a: (a.kind, a.filename)), jobs=jobs)
    for what in result.repaired:
        click.echo(f"warning: {what} was damaged in the vendor store (its content is not what its sha256 names); "
                   "it was removed and fetched again", err=True)
    click.echo(f"fetched {result.downloaded} files ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f}s, "
               f"{result.skipped} already in the store")
    if bundle:
        from buildsys.fetch.bundle import write_bundle

        with LiveProgress() as progress:
            out = write_bundle(obj.open_store(), list(artifacts.values()), bundle.resolve(), progress=progress)
        click.echo(f"{bundle}: {out.files} files ({out.bytes / 1e6:.1f} MB); on the offline machine: "
                   f"`buildsys fetch --from-bundle {bundle.name}`")
