"""`buildsys lock`: resolve recipes into locks/*.lock, or check them (`--check`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.cli.app import Context
from buildsys.cli.render import LiveProgress, print_table
from buildsys.core.errors import LocksOutOfDate, UsageError

if TYPE_CHECKING:
    from buildsys.core.progress import Progress
    from buildsys.core.store import Store
    from buildsys.lock.parents import ParentImagesFactory, Vendor
    from buildsys.model.graph import Graph


@click.command("lock")
@click.argument("recipes", nargs=-1)
@click.option("--upgrade", is_flag=True, help="Re-resolve everything against upstream now.")
@click.option("--upgrade-package", "upgrade_packages", multiple=True, metavar="NAME",
              help="Move this package to its newest version, keep every other pin (repeatable).")
@click.option("--check", is_flag=True, help="Write nothing; exit 3 if any lock is missing or stale. With "
              "--upgrade: resolve against upstream and show what a relock would change (exit 3 if anything).")
@click.option("--export", "export", type=click.Choice(["pylock", "requirements"]), default=None,
              help="Write nothing to locks/: write the chain's locked [pip] packages of RECIPE to -o as a PEP 751 "
                   "pylock.toml or a hashed requirements.txt (the lock must be fresh).")
@click.option("-o", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --export: the file to write (atomically).")
@click.pass_obj
def lock_cmd(obj: Context, recipes: tuple[str, ...], upgrade: bool, upgrade_packages: tuple[str, ...],
             check: bool, export: str | None, output: Path | None) -> None:
    """Resolve recipes (and their ancestors) into locks/*.lock."""
    from buildsys.lock import check_locks, lock_recipes

    g = obj.graph()
    if export or output:
        _export(obj, g, recipes, export, output, check or upgrade or bool(upgrade_packages))
        return
    if check and (upgrade or upgrade_packages):
        _upgrade_check(obj, g, recipes, upgrade, upgrade_packages)
        return
    if check:
        outcomes = check_locks(obj.project, g, recipes)
        bad = [o for o in outcomes if o.status != "fresh"]
        for o in outcomes:
            click.echo(f"{o.recipe}: {o.status}" + (f" ({o.detail})" if o.detail else ""))
        if bad:
            raise LocksOutOfDate([o.recipe for o in bad], len(outcomes))
        return
    with LiveProgress() as progress:
        store = obj.open_store()
        lock_recipes(obj.project, store, g, recipes, upgrade=upgrade, upgrade_packages=upgrade_packages,
                     parent_images=_parent_images(store, g, progress), vendor=_vendor(store), progress=progress,
                     report=lambda o: progress(o.recipe, o.status, str(o.path.relative_to(obj.project))))


def _export(obj: Context, g: Graph, recipes: tuple[str, ...], fmt: str | None, output: Path | None,
            other: bool) -> None:
    """``lock --export FORMAT RECIPE -o FILE``: the chain's [pip] pins in another tool's format."""
    from buildsys.core.store import atomic_write
    from buildsys.ecosystems.pip_export import export
    from buildsys.lock.freshness import fresh_locks

    if not fmt or output is None or len(recipes) != 1 or other:
        raise UsageError("--export FORMAT takes one recipe and -o FILE, and no --check or --upgrade",
                         "e.g. `buildsys lock --export pylock jupyter -o pylock.toml`")
    name = recipes[0]
    g.require(name)
    locks = fresh_locks(obj.project, g, [name])
    text = export(fmt, [locks[n] for n in g.chain(name)], name)
    atomic_write(output, text.encode())
    click.echo(f"wrote {output} ({text.count('[[packages]]') if fmt == 'pylock' else text.count('==')} packages)")


def _upgrade_check(obj: Context, g: Graph, recipes: tuple[str, ...], upgrade: bool,
                   upgrade_packages: tuple[str, ...]) -> None:
    """``lock --upgrade --check``: resolve against upstream now, write nothing, show what would move."""
    from buildsys.lock import lock_recipes

    with LiveProgress() as progress:
        store = obj.open_store()
        outcomes = lock_recipes(obj.project, store, g, recipes, upgrade=upgrade, upgrade_packages=upgrade_packages,
                                parent_images=_parent_images(store, g, progress), vendor=_vendor(store),
                                progress=progress,
                                dry_run=True, report=lambda o: progress(o.recipe, o.status, o.detail))
    changes = [c for o in outcomes for c in o.changes]
    if not changes and not any(o.status == "would change" for o in outcomes):
        click.echo("every lock is up to date with upstream; nothing would change")
        return
    print_table("a relock would change", ("recipe", "kind", "package or archive", "locked", "upstream now", "from"),
                ((c.recipe, c.kind, c.name, c.old or "-", c.new or "(removed)", c.source) for c in changes))
    names = sorted({o.recipe for o in outcomes if o.status == "would change"})
    raise LocksOutOfDate(names, len(outcomes), verb="would change",
                         command=f"buildsys lock --upgrade {' '.join(names)}")


def _parent_images(store: Store, g: Graph, progress: Progress) -> ParentImagesFactory:
    """How ``lock`` builds the parent images it resolves in: a Builder over the locks so far (lock/ is below build/)."""
    from buildsys.build.builder import Builder
    from buildsys.engine import Engine

    return lambda locks: Builder(store, g, locks, engine=Engine.connect(), tag=False, progress=progress)


def _vendor(store: Store) -> Vendor:
    """How ``lock`` fetches the parents' locked files before building them (fetch/ is above lock/)."""
    from buildsys.fetch.vendor import fetch

    return lambda artifacts: fetch(store, artifacts, progress=False)
