"""`buildsys init --from Dockerfile`: recipes made from a Dockerfile, and what could not be translated."""

from __future__ import annotations

from pathlib import Path

import click

from buildsys.cli.app import Context


@click.command("init")
@click.option("--from", "dockerfile", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The Dockerfile to translate.")
@click.option("-o", "output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project folder to write recipes/ into. Default: the project (-C).")
@click.option("--name", default="app", show_default=True,
              help="Name of the layer recipe; the root is NAME-base.")
@click.pass_obj
def init_cmd(obj: Context, dockerfile: Path, output: Path | None, name: str) -> None:
    """Write recipes (a root and one layer) for a Dockerfile's final stage; never overwrites."""
    import buildsys.ecosystems  # noqa: F401  (the recipe parser checks what it writes)
    from buildsys.onramp.dockerfile import read_dockerfile
    from buildsys.onramp.translate import translate, write_recipes

    project = (output or obj.project).resolve()
    translation = translate(dockerfile, read_dockerfile(dockerfile), project, name)
    for path in write_recipes(project, translation):
        click.echo(f"wrote {path}")
    for note in translation.notes:
        click.echo(f"{dockerfile}:{note}", err=note.kind != "dropped")
    missing = sum(n.kind == "not translated" for n in translation.notes)
    if missing:
        click.echo(f"{missing} line(s) not translated: see above; then `buildsys lock {name}`", err=True)
    else:
        click.echo(f"next: check the run steps above, then `buildsys lock {name}`")
