"""The command line: parse options, call one core function, print.

Errors from the core (``BuildsysError``) are mapped to exit codes here and
only here; tracebacks are shown with ``-v``.
"""

from __future__ import annotations

import errno
import json
import textwrap
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from buildsys import __version__
from buildsys.core.errors import (
    EXIT_FAILED,
    BuildsysError,
    ImagesDiffer,
    LocksOutOfDate,
    NotReproducible,
    TestFailed,
    UsageError,
)
from buildsys.core.store import Store
from buildsys.model.graph import Graph, build_graph
from buildsys.model.recipe import load_recipes


@dataclass
class Context:
    project: Path
    store: Path
    verbose: bool

    def graph(self) -> Graph:
        return build_graph(load_recipes(self.project))


class BuildsysGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BuildsysError as e:
            self._fail(ctx, str(e), e.exit_code)
        except OSError as e:  # the machine, not buildsys: a full disk, a permission, a vanished file
            self._fail(ctx, _os_error_message(e, ctx.obj), EXIT_FAILED)
        return None  # pragma: no cover - _fail exits

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        if ctx.obj is not None and ctx.obj.verbose:
            traceback.print_exc()
        click.echo(f"error: {message}", err=True)
        ctx.exit(code)


def _os_error_message(e: OSError, obj: Context | None) -> str:
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        store = f" (the store is {obj.store})" if obj else ""
        return (f"no space left on the device{where}; nothing half-written was kept\n"
                f"  free some space{store} and run the command again; `docker system df` shows docker's share")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        # Say what was refused: a read-only locks/ is not a question of being root.
        what = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return (f"{what}{where}: {e.strerror}\n  make {e.filename or 'it'} writable for this user, or run "
                "buildsys where it may write (builds themselves also need root: mmdebstrap, unshare, docker)")
    return f"{e.strerror or e}{where}\n  run again with -v for the details"


@click.group(cls=BuildsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "project", type=click.Path(file_okay=False, path_type=Path), default=".",
              help="Project folder (holds recipes/ and locks/). Default: the current folder.")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), envvar="BUILDSYS_STORE",
              default=None, help="Store folder (vendor files, OCI images, cache). Default: PROJECT/.buildsys.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and more detail.")
@click.version_option(__version__, prog_name="buildsys")
@click.pass_context
def cli(ctx: click.Context, project: Path, store: Path | None, verbose: bool) -> None:
    """Reproducible, layered container images from locked recipes."""
    project = project.resolve()
    ctx.obj = Context(project=project, store=(store or project / ".buildsys").resolve(), verbose=verbose)


@cli.command("graph")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "dot"]), default="text", show_default=True)
@click.argument("recipe", required=False)
@click.pass_obj
def graph_cmd(obj: Context, fmt: str, recipe: str | None) -> None:
    """Show the recipe DAG, the build order and each chain."""
    g = obj.graph()
    names = g.closure([recipe]) if recipe else g.order
    if fmt == "json":
        click.echo(json.dumps({"order": names, "chains": {n: g.chain(n) for n in names}}, indent=2))
    elif fmt == "dot":
        from buildsys.model.lockfile import lock_path

        click.echo(render_dot(g, names, unlocked={n for n in names if not lock_path(obj.project, n).exists()}))
    else:
        click.echo(render_text(g, names))


def render_text(g: Graph, names: list[str]) -> str:
    lines = ["Build order:"]
    lines += [f"  {i}. {n}" + (f"  ({g.recipes[n].description})" if g.recipes[n].description else "")
              for i, n in enumerate(names, 1)]
    lines.append("")
    lines.append("Tree (a recipe with several parents is shown under each, marked *):")
    shown = set(names)

    def walk(node: str, prefix: str, last: bool, top: bool) -> None:
        multi = len(g.recipes[node].parents) > 1
        label = node + (" *" if multi else "")
        lines.append(("  " if top else prefix + ("└── " if last else "├── ")) + label)
        kids = sorted(k for k in g.dag.successors(node) if k in shown)
        child_prefix = "  " if top else prefix + ("    " if last else "│   ")
        for i, k in enumerate(kids):
            walk(k, child_prefix, i == len(kids) - 1, False)

    for root in (n for n in names if g.recipes[n].is_root):
        walk(root, "", True, True)
    lines.append("")
    lines.append("Chains (the layers of each image, bottom first):")
    width = max(len(n) for n in names)
    lines += [f"  {n:<{width}}  {' -> '.join(g.chain(n))}" for n in names]
    return "\n".join(lines)


def render_dot(g: Graph, names: list[str], unlocked: Collection[str] = ()) -> str:
    """The DAG for graphviz: roots bold, recipes with no lock in locks/ dashed (and a legend saying so)."""
    out = ["digraph buildsys {", "  rankdir=BT;", '  node [shape=box, fontname="sans-serif"];']
    if unlocked:
        out.append('  label="dashed: no lock in locks/ (buildsys lock says why)"; fontname="sans-serif";')
    for n in names:
        styles = (["rounded", "bold"] if g.recipes[n].is_root else []) + (["dashed"] if n in unlocked else [])
        shape = f', style="{",".join(styles)}"' if styles else ""
        # The description under the name, wrapped, so the picture says what each layer holds.
        words = textwrap.wrap(g.recipes[n].description, 34)
        text = "\\n".join([n, *words]).replace('"', '\\"')
        out.append(f'  "{n}" [label="{text}"{shape}];')
    for p, c in sorted(g.dag.edges):
        if p in names and c in names:
            out.append(f'  "{c}" -> "{p}";')
    out.append("}")
    return "\n".join(out)


class Reporter:
    """Progress of long work on stderr.

    On a terminal: a live table, one row per recipe, with its current stage,
    what it is doing and for how long. Elsewhere (CI logs, pipes): one line
    per event, with the elapsed time.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.started = time.monotonic()
        self.rows: dict[str, tuple[str, str, float]] = {}
        self.live: Any = None

    def __enter__(self) -> Reporter:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(None, None, None)
            self.live = None

    def __call__(self, recipe: str, stage: str, detail: str) -> None:
        now = time.monotonic()
        if self.live is None:
            self.console.print(f"[dim]{now - self.started:6.1f}s[/] [bold]{recipe}[/] {stage}: {detail}")
            return
        self.rows[recipe] = (stage, detail, now)
        self.live.update(self._table())

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=True, header_style="dim")
        for col in ("recipe", "stage", "", "since"):
            table.add_column(col)
        now = time.monotonic()
        for recipe, (stage, detail, at) in self.rows.items():
            style = "green" if stage in ("built", "cached", "written", "fresh", "unchanged") else "yellow"
            table.add_row(recipe, f"[{style}]{stage}[/]", detail[:90], f"{now - at:5.1f}s")
        return table


@cli.command("lock")
@click.argument("recipes", nargs=-1)
@click.option("--upgrade", is_flag=True, help="Re-resolve everything against upstream now.")
@click.option("--upgrade-package", "upgrade_packages", multiple=True, metavar="NAME",
              help="Move this package to its newest version, keep every other pin (repeatable).")
@click.option("--check", is_flag=True, help="Write nothing; exit 3 if any lock is missing or stale. With "
              "--upgrade: resolve against upstream and show what a relock would change (exit 3 if anything).")
@click.pass_obj
def lock_cmd(obj: Context, recipes: tuple[str, ...], upgrade: bool, upgrade_packages: tuple[str, ...],
             check: bool) -> None:
    """Resolve recipes (and their ancestors) into locks/*.lock."""
    from buildsys.lock import check_locks, lock_recipes

    g = obj.graph()
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
    from buildsys.engine import Engine

    with Reporter() as report:
        lock_recipes(obj.project, Store(obj.store), g, recipes, upgrade=upgrade, upgrade_packages=upgrade_packages,
                     engine=Engine.connect, progress=report,
                     report=lambda o: report(o.recipe, o.status, str(o.path.relative_to(obj.project))))


def _upgrade_check(obj: Context, g: Graph, recipes: tuple[str, ...], upgrade: bool,
                   upgrade_packages: tuple[str, ...]) -> None:
    """``lock --upgrade --check``: resolve against upstream now, write nothing, show what would move."""
    from rich.console import Console
    from rich.table import Table

    from buildsys.engine import Engine
    from buildsys.lock import lock_recipes

    with Reporter() as report:
        outcomes = lock_recipes(obj.project, Store(obj.store), g, recipes, upgrade=upgrade,
                                upgrade_packages=upgrade_packages, engine=Engine.connect, progress=report,
                                dry_run=True, report=lambda o: report(o.recipe, o.status, o.detail))
    changes = [c for o in outcomes for c in o.changes]
    if not changes and not any(o.status == "would change" for o in outcomes):
        click.echo("every lock is up to date with upstream; nothing would change")
        return
    table = Table(title="a relock would change", title_justify="left")
    for col in ("recipe", "kind", "package", "locked", "upstream now", "from"):
        table.add_column(col)
    for c in changes:
        table.add_row(c.recipe, c.kind, c.name, c.old or "-", c.new or "(removed)", c.source)
    Console(width=200).print(table)
    names = sorted({o.recipe for o in outcomes if o.status == "would change"})
    raise LocksOutOfDate(names, len(outcomes), verb="would change",
                         command=f"buildsys lock --upgrade {' '.join(names)}")


@cli.command("fetch")
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
    from buildsys.fetch.vendor import fetch
    from buildsys.lock import fresh_locks

    if bundle and from_bundle:
        raise UsageError("--bundle and --from-bundle do opposite things", "give one of them")
    if from_bundle:
        from buildsys.fetch.bundle import read_bundle

        with Reporter() as report:
            got = read_bundle(Store(obj.store), from_bundle, progress=report)
        click.echo(f"{from_bundle}: {got.files} files, {got.added} added to the vendor store "
                   f"({got.bytes / 1e6:.1f} MB), every one hash-checked")
        return
    g = obj.graph()
    locks = fresh_locks(obj.project, g, recipes)
    artifacts = {a.sha256: a for lock in locks.values() for a in lock.artifacts()}
    result = fetch(Store(obj.store), sorted(artifacts.values(), key=lambda a: (a.kind, a.filename)), jobs=jobs)
    for what in result.repaired:
        click.echo(f"warning: {what} was damaged in the vendor store (its content is not what its sha256 names); "
                   "it was removed and fetched again", err=True)
    click.echo(f"fetched {result.downloaded} files ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f}s, "
               f"{result.skipped} already in the store")
    if bundle:
        from buildsys.fetch.bundle import write_bundle

        with Reporter() as report:
            out = write_bundle(Store(obj.store), list(artifacts.values()), bundle.resolve(), progress=report)
        click.echo(f"{bundle}: {out.files} files ({out.bytes / 1e6:.1f} MB); on the offline machine: "
                   f"`buildsys fetch --from-bundle {bundle.name}`")


@cli.command("build")
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
@click.pass_obj
def build_cmd(obj: Context, recipes: tuple[str, ...], verify: bool, no_cache: bool, as_json: bool,
              jobs: int, cache_from: str | None, cache_to: str | None, insecure: bool) -> None:
    """Build the chains of RECIPES (default: all) with the network off."""
    from buildsys.build.builder import Builder
    from buildsys.lock import fresh_locks

    g = obj.graph()
    locks = fresh_locks(obj.project, g, recipes)
    report = Reporter()
    store = Store(obj.store)
    if verify and (cache_from or cache_to):
        raise UsageError("--verify rebuilds from nothing; it takes no --cache-from/--cache-to",
                         "run `buildsys build --verify` alone")
    if verify:
        from buildsys.engine import Engine

        engine = Engine.connect()
        from buildsys.build.verify import format_mismatch
        from buildsys.build.verify import verify as run_verify

        with report:
            results = run_verify(store, g, locks, recipes, engine, report, jobs=jobs)
        images = [r.first for r in results]
        _print_images(images, as_json)
        bad = [r for r in results if not r.equal]
        for r in results:
            if r.equal:
                click.echo(f"{r.recipe}: reproducible ({len(r.first.chain)} layers, "
                           f"image {r.first.record.config_digest}, manifest {r.first.record.manifest_digest})",
                           err=as_json)
        if bad:
            raise NotReproducible("\n".join(format_mismatch(r) for r in bad if r.mismatch) or
                                  "the rebuilt manifest differs", "fix the step that writes the named files; "
                                  "`buildsys diff` compares two images file by file")
        return
    remote = None
    if cache_from or cache_to:
        from buildsys.ship.remote_cache import RemoteCache

        remote = RemoteCache(cache_from, cache_to, insecure=insecure, report=report)
    with report:
        # The engine is connected only when the store cannot answer alone (see Builder.connect).
        images = Builder(store, g, locks, connect=_connect, trust_loaded=True, no_cache=no_cache, remote=remote,
                         report=report).build(recipes, jobs=jobs)
    _print_images(images, as_json)


def _connect() -> Any:
    from buildsys.engine import Engine

    return Engine.connect()


def _print_images(images: list, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([i.to_json() for i in images], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="images", title_justify="left")
    for col in ("recipe", "image id", "manifest digest", "layers", "cached", "seconds"):
        table.add_column(col)
    for i in images:
        table.add_row(i.recipe, i.record.config_digest, i.record.manifest_digest, str(len(i.chain)),
                      "yes" if i.cached else "no", f"{i.seconds:.2f}")
    Console(width=200).print(table)


@cli.command("test")
@click.argument("recipes", nargs=-1)
@click.option("--gpus", metavar="SPEC", help="Run the [test] gpu commands with this GPU request "
              "(all, N, device=ID[,ID]); without it they are reported skipped.")
@click.pass_obj
def test_cmd(obj: Context, recipes: tuple[str, ...], gpus: str | None) -> None:
    """Run the [test] commands of each recipe and its ancestors inside its image, network off."""
    from rich.console import Console
    from rich.table import Table

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
    with Reporter() as report:
        builder = Builder(Store(obj.store), g, locks, engine=engine, report=report)
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
    table = Table(title="tests", title_justify="left")
    for col in ("image", "from recipe", "command", "result", "seconds"):
        table.add_column(col)
    style = {"pass": "[green]pass[/]", "FAIL": "[red]FAIL[/]", "skipped": "[yellow]skipped (needs a GPU)[/]"}
    for r in results:
        table.add_row(r.image, r.recipe, ("(gpu) " if r.gpu else "") + r.command, style[r.status],
                      "-" if r.skipped else f"{r.seconds:.1f}")
    Console(width=200).print(table)
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


@cli.command("diff")
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

    layout = OciLayout(Store(obj.store).oci)
    a, b = resolve_image(layout, image_a), resolve_image(layout, image_b)
    result = diff_images(layout, a, layout, b)
    for d in result.files[:limit]:
        click.echo(f"{d.path}: {', '.join(d.what)}")
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


@cli.command("publish")
@click.argument("recipe")
@click.option("--to", "to", required=True, metavar="HOST[:PORT]/REPO[:TAG]",
              help="Where to push. The tag is optional: the digest printed is what to pin.")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry that is not on loopback.")
@click.option("--force", is_flag=True, help="Publish an image whose chain no `build --verify` has proven.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def publish_cmd(obj: Context, recipe: str, to: str, insecure: bool, force: bool, as_json: bool) -> None:
    """Push RECIPE's canonical image by digest; the registry's digest is the one printed."""
    from buildsys.lock import fresh_locks
    from buildsys.ship.publish import publish

    g = obj.graph()
    locks = fresh_locks(obj.project, g, [recipe])
    with Reporter() as report:
        result = publish(Store(obj.store), g, locks, recipe, to, insecure=insecure, force=force, progress=report)
    if not result.verified:
        click.echo(f"warning: {recipe}: published with --force; its chain was never verified "
                   f"(`buildsys build --verify {recipe}` proves it)", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"{recipe}: published {result.reference}" + (f" (tag {result.tag})" if result.tag else ""))
    click.echo(f"  image id {result.image_id}; {result.blobs_sent} blob(s) sent ({result.bytes_sent / 1e6:.1f} MB), "
               f"{result.blobs_present} already there, {result.seconds:.1f}s")
    click.echo(result.manifest_digest)


@cli.command("export")
@click.argument("recipes", nargs=-1, required=True)
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The archive to write (an OCI layout that `docker load` also reads).")
@click.pass_obj
def export_cmd(obj: Context, recipes: tuple[str, ...], output: Path) -> None:
    """One archive of RECIPES' images, their locks, digests and SBOMs, for an air-gapped machine."""
    from buildsys.lock import fresh_locks
    from buildsys.ship.export import export

    g = obj.graph()
    g.select(recipes)
    locks = fresh_locks(obj.project, g, recipes)
    with Reporter() as report:
        result = export(Store(obj.store), g, locks, list(dict.fromkeys(recipes)), output.resolve(), progress=report)
    for img in result.images:
        click.echo(f"{img.recipe}: image {img.image_id}, manifest {img.manifest_digest}")
    click.echo(f"{output}: {result.size / 1e6:.1f} MB, sha256 {result.sha256}, {result.seconds:.1f}s; "
               f"on the other machine: `buildsys import {output.name}` (or `docker load -i {output.name}`)")


@cli.command("import")
@click.argument("archive", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_obj
def import_cmd(obj: Context, archive: Path) -> None:
    """Check every blob of an export archive, then load and tag its images."""
    from buildsys.engine import Engine
    from buildsys.ship.export import import_archive

    engine = Engine.connect()
    with Reporter() as report:
        result = import_archive(Store(obj.store), archive.resolve(), engine, progress=report)
    for img in result.images:
        click.echo(f"{img.recipe}: imported as {img.recipe}:latest, image {img.image_id}, "
                   f"manifest {img.manifest_digest}")
    click.echo(f"{result.blobs} blobs checked ({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f}s")


@cli.command("sbom")
@click.argument("recipe")
@click.option("--format", "fmt", type=click.Choice(["cyclonedx", "spdx"]), default="cyclonedx", show_default=True)
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (atomically) instead of stdout.")
@click.pass_obj
def sbom_cmd(obj: Context, recipe: str, fmt: str, output: Path | None) -> None:
    """The chain's locked components (debs, wheels, files) with purls and SHA-256, schema-checked."""
    from buildsys.build.builder import Builder
    from buildsys.core.store import atomic_write
    from buildsys.lock import fresh_locks
    from buildsys.ship.sbom import sbom

    g = obj.graph()
    g.select([recipe])
    locks = fresh_locks(obj.project, g, [recipe])
    chain = Builder(Store(obj.store), g, locks).stored_chain(recipe)
    data = sbom(g, locks, recipe, fmt, chain[-1] if chain else None)
    if output:
        atomic_write(output, data)
        click.echo(f"{output}: {fmt} SBOM of {recipe}", err=True)
    else:
        click.echo(data.decode(), nl=False)


def _locked_image(obj: Context, recipe: str, gpus: Any) -> tuple[Any, Any, Any]:
    """(locks, engine, built image) of RECIPE: fresh locks, GPU support when asked, the image loaded in docker."""
    from buildsys.core.errors import UnknownRecipe
    from buildsys.engine import Engine
    from buildsys.lock import fresh_locks
    from buildsys.use.doctor import check_cuda, host_driver, require_gpu
    from buildsys.use.run import find_image

    g = obj.graph()
    if recipe not in g.recipes:
        raise UnknownRecipe(recipe, g.recipes)
    locks = fresh_locks(obj.project, g, [recipe])
    engine = Engine.connect()
    support = require_gpu(engine) if gpus else None  # before anything is loaded or started
    image = find_image(Store(obj.store), g, locks, recipe, engine)
    if support:
        check_cuda(recipe, locks, image.chain, host_driver() if support.local else None)
    return locks, engine, image


@cli.command("run")
@click.argument("recipe")
@click.option("--gpus", metavar="SPEC", help="GPUs for the container: all, N, or device=ID[,ID].")
@click.option("-p", "--publish", "ports", multiple=True, metavar="[IP:]HOST:CONTAINER", help="Publish a port.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CONTAINER[:ro]",
              help="Mount another host folder (it must exist).")
@click.option("--network", metavar="NAME", help="A docker network (default: docker's bridge).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run_cmd(obj: Context, recipe: str, gpus: str | None, ports: tuple[str, ...], volumes: tuple[str, ...],
            network: str | None, command: tuple[str, ...]) -> None:
    """Run RECIPE's image by its digest, the current folder mounted as working folder, as you.

    Files written to the folder belong to you (your UID/GID inside, with a
    name and a writable HOME). Everything after `--` is the command (default:
    the image's). The container's exit code is buildsys's.
    """
    import signal
    import sys

    from buildsys.use.run import (
        HostUser,
        RunOptions,
        check_folder,
        cuda_cache_dir,
        execute,
        has_own_init,
        identity,
        mount_targets,
        parse_gpus,
        parse_port,
        parse_volume,
        plan_run,
        read_identity_files,
    )

    cwd = Path.cwd().resolve()
    check_folder(cwd)
    opts = RunOptions(recipe=recipe, cwd=cwd, command=command, gpus=parse_gpus(gpus) if gpus else None,
                      ports=tuple(parse_port(p) for p in ports), volumes=tuple(parse_volume(v, cwd) for v in volumes),
                      network=network, tty=sys.stdin.isatty() and sys.stdout.isatty())
    _ports_free(opts.ports)
    locks, engine, image = _locked_image(obj, recipe, opts.gpus)
    who = identity(HostUser.current(), *read_identity_files(engine, image.record.config_digest),
                   mount_targets=mount_targets(opts))
    own_init = has_own_init(engine.image_config(image.record.config_digest).get("Entrypoint"))
    spec = plan_run(image.record.config_digest, opts, who, cuda_cache_dir(), init=not own_init)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        code = execute(engine, spec, who, _sink(sys.stdout.buffer),
                       _sink(sys.stderr.buffer))
    except KeyboardInterrupt:
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.stdout.flush()
    click.get_current_context().exit(code)


def _sink(stream: Any) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()
    return write


def _ports_free(ports: tuple[tuple[str, int, int], ...]) -> None:
    from buildsys.use.run import check_ports_free

    check_ports_free(ports, lambda port: f"-p OTHER:{next(c for _, h, c in ports if h == port)}")


@cli.command("doctor")
@click.argument("recipe", required=False)
@click.option("--gpus", "want_gpu", is_flag=True, help="GPU support is required (as for run --gpus).")
@click.pass_obj
def doctor_cmd(obj: Context, recipe: str | None, want_gpu: bool) -> None:
    """Engine, storage driver, runtimes, CDI, GPUs and driver; for RECIPE, the CUDA its image needs.

    Exit 0 when everything asked for works, 1 when something is missing, 4 when
    the engine is unreachable. A recipe whose image carries CUDA asks for GPU support.
    """
    from rich.console import Console
    from rich.table import Table

    from buildsys.build.builder import Builder
    from buildsys.core.errors import BuildsysError, MissingLock, StaleLock, UnknownRecipe
    from buildsys.engine import Engine
    from buildsys.lock import fresh_locks
    from buildsys.use.doctor import diagnose, gpu_probe

    chain: list[str] = []
    locks: dict = {}
    find = None
    lock_problem: BuildsysError | None = None
    if recipe:
        g = obj.graph()
        if recipe not in g.recipes:
            raise UnknownRecipe(recipe, g.recipes)
        chain = g.chain(recipe)
        try:
            locks = fresh_locks(obj.project, g, [recipe])
        except (MissingLock, StaleLock) as e:  # the engine and GPU checks need no lock: still run them
            lock_problem = e

        def find(engine: Engine) -> str | None:
            if lock_problem is not None:
                return None
            try:
                image = Builder(Store(obj.store), g, locks, engine=engine, tag=False).find(recipe)
            except BuildsysError:
                return None
            return image.record.config_digest if image else None

    report = diagnose(Engine.connect, recipe, chain, locks, find, want_gpu=want_gpu, gpu_probe=gpu_probe)
    if lock_problem is not None:
        report.add(f"lock of {recipe}", "missing", lock_problem.message,
                   lock_problem.hint or f"`buildsys lock {recipe}`")
    table = Table(title="buildsys doctor", title_justify="left")
    for col in ("check", "status", "detail", "next step"):
        table.add_column(col)
    colour = {"ok": "green", "missing": "red", "warn": "yellow", "info": "dim"}
    for c in report.checks:
        table.add_row(c.what, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.hint)
    Console(width=200).print(table)
    if report.unreachable:
        raise report.unreachable
    if report.missing:
        raise DoctorFound(", ".join(c.what for c in report.missing))
    click.echo("everything asked for is here")


class DoctorFound(BuildsysError):
    def __init__(self, what: str) -> None:
        super().__init__(f"missing: {what}", "see the table's next steps")


def _up_options(recipe: str, port: int, tensorboard_port: int, gpus: str | None, bind: str) -> Any:
    from buildsys.use.run import UpOptions, parse_gpus

    return UpOptions(recipe=recipe, cwd=Path.cwd().resolve(), port=port, tensorboard_port=tensorboard_port,
                     gpus=parse_gpus(gpus) if gpus else None, bind=bind)


_UP_OPTIONS = [
    click.option("--port", default=8888, show_default=True, type=click.IntRange(1, 65535),
                 help="Host port of JupyterLab."),
    click.option("--tensorboard-port", default=6006, show_default=True, type=click.IntRange(1, 65535),
                 help="Host port of TensorBoard."),
    click.option("--gpus", metavar="SPEC", help="GPUs for the notebook: all, N, or device=ID[,ID]."),
    click.option("--bind", default="127.0.0.1", show_default=True, help="Host address to publish on."),
]


def _with_up_options(f: Any) -> Any:
    for option in reversed(_UP_OPTIONS):
        f = option(f)
    return f


@cli.command("up")
@click.argument("recipe")
@_with_up_options
@click.pass_obj
def up_cmd(obj: Context, recipe: str, port: int, tensorboard_port: int, gpus: str | None, bind: str) -> None:
    """JupyterLab and TensorBoard on the current folder (TensorBoard reads runs/), with a new token."""
    from buildsys.use.run import (
        HostUser,
        cuda_cache_dir,
        has_own_init,
        identity,
        new_token,
        plan_up,
        read_identity_files,
        start_up,
    )

    opts = _up_options(recipe, port, tensorboard_port, gpus, bind)
    from buildsys.use.run import check_folder

    check_folder(opts.cwd)
    locks, engine, image = _locked_image(obj, recipe, opts.gpus)
    who = identity(HostUser.current(), *read_identity_files(engine, image.record.config_digest),
                   mount_targets=[str(opts.cwd)])
    token = new_token()
    own_init = has_own_init(engine.image_config(image.record.config_digest).get("Entrypoint"))
    specs = plan_up(image.record.config_digest, opts, who, token, cuda_cache_dir(), init=not own_init)
    result = start_up(engine, specs, who, opts, token)
    click.echo(f"JupyterLab:  {result.jupyter_url}")
    click.echo(f"TensorBoard: {result.tensorboard_url}  (logs in {opts.cwd / 'runs'})")
    click.echo(f"image {image.record.config_digest}; stop both with `buildsys down {recipe}` in {opts.cwd}")


@cli.command("down")
@click.argument("recipe")
@click.pass_obj
def down_cmd(obj: Context, recipe: str) -> None:
    """Stop and remove the containers that `buildsys up RECIPE` started in the current folder."""
    from buildsys.engine import Engine
    from buildsys.use.run import down

    removed = down(Engine.connect(), recipe, Path.cwd().resolve())
    click.echo(f"removed {', '.join(removed)}" if removed else f"nothing of '{recipe}' is up in {Path.cwd()}")


@cli.command("compose")
@click.argument("recipe")
@_with_up_options
@click.pass_obj
def compose_cmd(obj: Context, recipe: str, port: int, tensorboard_port: int, gpus: str | None, bind: str) -> None:
    """Print what `up` starts as a Compose file for Compose v1 and v2 (the token from $JUPYTER_TOKEN)."""
    from buildsys.core.errors import UnknownRecipe
    from buildsys.lock import fresh_locks
    from buildsys.use.compose import compose_file
    from buildsys.use.run import HostUser

    opts = _up_options(recipe, port, tensorboard_port, gpus, bind)
    g = obj.graph()
    if recipe not in g.recipes:
        raise UnknownRecipe(recipe, g.recipes)
    click.echo(compose_file(Store(obj.store), g, fresh_locks(obj.project, g, [recipe]), opts, HostUser.current()),
               nl=False)


@cli.command("engine")
@click.pass_obj
def engine_cmd(obj: Context) -> None:
    """Check that the docker engine answers and show what it is."""
    from buildsys.engine import Engine

    info = Engine.connect().info()
    click.echo(f"docker engine {info.version} (API {info.api_version}, {info.os}/{info.arch}, "
               f"storage {info.storage_driver}, root {info.root_dir})")


def main() -> None:
    cli(prog_name="buildsys", auto_envvar_prefix=None)


if __name__ == "__main__":  # pragma: no cover
    main()
