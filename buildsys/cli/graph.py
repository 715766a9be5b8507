"""`buildsys graph`: the DAG, the build order and each chain."""

from __future__ import annotations

import json

import click

from buildsys.cli.app import Context
from buildsys.cli.render import graph_dot, graph_text


@click.command("graph")
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

        click.echo(graph_dot(g, names, unlocked={n for n in names if not lock_path(obj.project, n).exists()}))
    else:
        click.echo(graph_text(g, names))
