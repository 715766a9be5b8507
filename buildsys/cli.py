"""The command line: parse options, call one core function, print.

Errors from the core (``BuildsysError``) are mapped to exit codes here and
only here; tracebacks are shown with ``-v``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from buildsys import __version__
from buildsys.errors import BuildsysError
from buildsys.graph import Graph, build_graph
from buildsys.recipe import load_recipes


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
            verbose = bool(ctx.obj and ctx.obj.verbose) or "-v" in sys.argv or "--verbose" in sys.argv
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


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
        click.echo(render_dot(g, names))
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


def render_dot(g: Graph, names: list[str]) -> str:
    out = ["digraph buildsys {", "  rankdir=BT;", "  node [shape=box];"]
    for n in names:
        shape = ', style="rounded,bold"' if g.recipes[n].is_root else ""
        out.append(f'  "{n}" [label="{n}"{shape}];')
    for p, c in sorted(g.dag.edges):
        if p in names and c in names:
            out.append(f'  "{c}" -> "{p}";')
    out.append("}")
    return "\n".join(out)


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
