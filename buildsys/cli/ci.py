"""`buildsys ci github|gitlab`: a CI pipeline in which each recipe is a job that needs its parents' jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from buildsys.cli.app import Context

_OPTIONS: list[Callable[[Callable[..., None]], Callable[..., None]]] = [
    click.argument("recipes", nargs=-1),
    click.option("--cache", "cache", required=True, metavar="HOST[:PORT]/REPO",
                 help="The registry repository every job takes layers from and pushes them to."),
    click.option("--publish-to", "publish_to", metavar="HOST[:PORT]/PREFIX", default=None,
                 help="Publish each target to PREFIX/RECIPE by digest, on release refs (no publish job without it)."),
    click.option("--release-branch", default="main", show_default=True, help="The branch whose pushes publish."),
    click.option("--release-tags", "release_tags", metavar="PREFIX", default=None,
                 help="Tags starting with PREFIX publish too (e.g. v)."),
    click.option("--runner", "runners", multiple=True, metavar="LABEL",
                 help="Runner label (GitHub runs-on) or runner tag (GitLab); repeatable."),
    click.option("--image", default=None, help="The container image the jobs run in."),
    click.option("--setup", "setup", multiple=True, metavar="SHELL",
                 help="A shell line run before buildsys in every job; repeatable [default: python3 -m pip install .]."),
    click.option("--project-dir", default=".", show_default=True, metavar="DIR",
                 help="The buildsys project's folder, relative to the repository's root (the jobs' -C)."),
    click.option("--insecure", is_flag=True, help="Plain HTTP to registries that are not on loopback."),
    click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Where to write it [default: under the project folder, see the command's help]."),
    click.option("--force", is_flag=True, help="Replace the file when it exists and differs."),
    click.pass_obj,
]


def _with_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


@click.group("ci")
def ci_cmd() -> None:
    """Write a CI pipeline that follows the recipe DAG (docs/ci.md)."""


@ci_cmd.command("github")
@_with_options
def github_cmd(obj: Context, **kw: Any) -> None:
    """A GitHub Actions workflow (default: PROJECT/.github/workflows/buildsys.yml) for RECIPES (default: the
    recipes no recipe builds on) and their chains."""
    from buildsys.ci import github

    _write(obj, "github", github.workflow, github.DEFAULT_PATH, **kw)


@ci_cmd.command("gitlab")
@_with_options
def gitlab_cmd(obj: Context, **kw: Any) -> None:
    """A GitLab pipeline (default: PROJECT/.gitlab-ci.yml) for RECIPES (default: the recipes no recipe builds
    on) and their chains."""
    from buildsys.ci import gitlab

    _write(obj, "gitlab", gitlab.pipeline, gitlab.DEFAULT_PATH, **kw)


def _write(obj: Context, target: str, render: Callable[..., str], default_path: str, *, recipes: tuple[str, ...],
           cache: str, publish_to: str | None, release_branch: str, release_tags: str | None,
           runners: tuple[str, ...], image: str | None, setup: tuple[str, ...], project_dir: str, insecure: bool,
           output: Path | None, force: bool) -> None:
    from buildsys.ci.plan import CiOptions, make_plan, write_pipeline

    options = CiOptions(cache=cache, publish_to=publish_to, release_branch=release_branch,
                        release_tag_prefix=release_tags, runners=runners, image=image,
                        setup=setup or CiOptions.setup, project_dir=project_dir, insecure=insecure)
    argv = ["buildsys", "ci", target, "--cache", cache]
    argv += ["--publish-to", publish_to] if publish_to else []
    argv += ["--release-branch", release_branch] if release_branch != "main" else []
    argv += ["--release-tags", release_tags] if release_tags else []
    argv += [a for r in runners for a in ("--runner", r)]
    argv += ["--image", image] if image else []
    argv += [a for s in setup for a in ("--setup", s)]
    argv += ["--project-dir", project_dir] if project_dir != "." else []
    argv += ["--insecure"] if insecure else []
    plan = make_plan(obj.graph(), recipes, options, (*argv, *recipes))
    path = output if output is not None else obj.project / default_path
    changed = write_pipeline(path, render(plan), force=force)
    checks = sum(1 for j in plan.jobs if j.kind != "build")
    click.echo(f"{path}: {'written' if changed else 'unchanged (already this pipeline)'}: {len(plan.jobs)} jobs, "
               f"{len(plan.jobs) - checks} builds and {checks} test/verify/publish for {', '.join(plan.targets)}")
