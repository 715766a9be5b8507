"""`buildsys graph` through the CLI: its three formats, and what a user sees when recipes are wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from buildsys.cli import cli

STACK_ORDER = ["base", "python", "jupyter", "r-base", "rstudio", "user"]


@pytest.fixture
def buildsys(monkeypatch):
    """Run ``buildsys ARGS...`` in-process; stdout and stderr come back apart."""
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg,unused-ignore]  # click < 8.2 mixes them unless told not to
    except TypeError:
        runner = CliRunner()  # click >= 8.2 always keeps result.stderr apart

    def run(*args: str) -> Result:
        # As a real process would see it (the CLI looks at sys.argv for -v), not pytest's own argv.
        monkeypatch.setattr(sys, "argv", ["buildsys", *args])
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return run


@pytest.fixture
def stack(fixture_project) -> Path:
    return fixture_project("valid-stack")


def test_text_shows_build_order_tree_and_chains(buildsys, stack):
    result = buildsys("-C", str(stack), "graph")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    order = [line.split(". ", 1)[1].split("  (")[0] for line in out.splitlines() if line[:4].strip().endswith(".")]
    assert order == STACK_ORDER
    assert "  1. base  (Debian bookworm, bootstrapped from pinned .debs)" in out
    assert "user *" in out  # several parents: shown under each
    assert out.count("user *") == 2
    chains = out.split("Chains (the layers of each image, bottom first):\n", 1)[1].splitlines()
    assert chains == [
        "  base     base",
        "  python   base -> python",
        "  jupyter  base -> python -> jupyter",
        "  r-base   base -> r-base",
        "  rstudio  base -> r-base -> rstudio",
        "  user     base -> python -> jupyter -> r-base -> rstudio -> user",
    ]


def test_text_is_the_same_every_run(buildsys, stack):
    assert buildsys("-C", str(stack), "graph").stdout == buildsys("-C", str(stack), "graph").stdout


def test_json(buildsys, stack):
    result = buildsys("-C", str(stack), "graph", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == {
        "order": STACK_ORDER,
        "chains": {
            "base": ["base"],
            "python": ["base", "python"],
            "jupyter": ["base", "python", "jupyter"],
            "r-base": ["base", "r-base"],
            "rstudio": ["base", "r-base", "rstudio"],
            "user": STACK_ORDER,
        },
    }


def test_dot_is_a_digraph_of_every_parent_link(buildsys, stack):
    result = buildsys("-C", str(stack), "graph", "--format", "dot")
    assert result.exit_code == 0, result.stderr
    lines = [line.strip() for line in result.stdout.strip().splitlines()]
    assert lines[0] == "digraph buildsys {" and lines[-1] == "}"
    edges = {line for line in lines if "->" in line}
    assert edges == {
        '"python" -> "base";',
        '"r-base" -> "base";',
        '"jupyter" -> "python";',
        '"rstudio" -> "r-base";',
        '"user" -> "jupyter";',
        '"user" -> "rstudio";',
    }
    assert all(f'"{n}" [label="{n}' in result.stdout for n in STACK_ORDER)


@pytest.mark.parametrize("fmt", ["text", "json", "dot"])
def test_one_recipe_limits_the_graph_to_its_closure(buildsys, stack, fmt):
    result = buildsys("-C", str(stack), "graph", "--format", fmt, "jupyter")
    assert result.exit_code == 0, result.stderr
    for name in ("base", "python", "jupyter"):
        assert name in result.stdout
    for name in ("r-base", "rstudio", "user"):
        assert name not in result.stdout
    if fmt == "json":
        assert json.loads(result.stdout) == {
            "order": ["base", "python", "jupyter"],
            "chains": {"base": ["base"], "python": ["base", "python"], "jupyter": ["base", "python", "jupyter"]},
        }


def test_diamond_chain(buildsys, fixture_project):
    result = buildsys("-C", str(fixture_project("diamond")), "graph", "--format", "json", "top")
    assert json.loads(result.stdout)["chains"]["top"] == ["base", "left", "right", "top"]


def test_unknown_recipe_is_a_usage_error_with_a_suggestion(buildsys, stack):
    result = buildsys("-C", str(stack), "graph", "jupytr")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: no recipe named 'jupytr' (did you mean 'jupyter'?)\n"
        "  recipes here: base, jupyter, python, r-base, rstudio, user\n"
    )


# (fixture, file in its recipes/ or None, what stderr must say after the location)
MALFORMED = [
    ("typo-key", "base.toml:2", "parent: unknown key (did you mean 'parents'?)"),
    ("typo-nested-key", "base.toml:6", "image.enviroment: unknown key (did you mean 'env'?)"),
    ("misplaced-key", "base.toml:7", "apt.run: unknown key (did you mean the top-level 'run'?"),
    ("bad-types", "base.toml:2", "parents: must be an array of strings, not a string"),
    ("bad-expose", "base.toml:5", "image.expose[0]: must be an integer, not a string"),
    ("bad-toml", "base.toml:3", "invalid TOML: unexpected end of line (column 6)"),
    ("bad-toml-duplicate", "base.toml:6", 'invalid TOML: Key "packages" already exists'),
    ("bad-toml-eof", "base.toml:5", "invalid TOML: the file ends inside a value"),
    ("bad-file", "base.toml:10", "files[1].sha256: must be 64 lowercase hex digits"),
    ("bad-apt-name", "base.toml:8", "apt.packages[2]: 'python3=3.11.2-1' is not a Debian package name"),
    ("bad-name", "Base.toml", "recipe name 'Base' must match"),
    ("two-bases", "base.toml:3", "base: must hold exactly one of 'debian' or 'image'"),
    ("unknown-variant", "base.toml:2", "base.debian.variant: unknown variant 'minbse' (did you mean 'minbase'?)"),
    ("missing-parent", "lab.toml:3", "parents[0]: no recipe named 'jupytr' (did you mean 'jupyter'?)"),
    ("self-parent", "python.toml:1", "parents[1]: recipe 'python' names itself as a parent"),
    ("root-without-base", "base.toml", "a root recipe (no parents) needs a [base]"),
    ("non-root-with-base", "python.toml:6", "base: only a root recipe may have a [base]"),
    ("two-roots", "mixed.toml:2", "parents: the parents ['debian', 'ubuntu'] start from different bases"),
    ("cycle", None, "the recipes' parents form a cycle: a -> b -> c -> a"),
    ("no-recipes", None, "recipes: no recipes folder here"),
    ("empty-recipes", None, "recipes: holds no *.toml recipes"),
]


@pytest.mark.parametrize(("case", "where", "says"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_project_is_exit_2_with_its_message_and_no_traceback(buildsys, fixture_project, case, where, says):
    project = fixture_project(case)
    result = buildsys("-C", str(project), "graph")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    prefix = f"error: {project}/recipes/{where}: " if where else "error: "
    assert first.startswith(prefix), first
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_traceback(buildsys, fixture_project):
    result = buildsys("-C", str(fixture_project("bad-toml")), "-v", "graph")
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "tomlkit" in result.stderr  # the chained cause: raise ... from e
    assert result.stderr.rstrip().splitlines()[-2].startswith("error: ")


def test_missing_project_folder(buildsys, tmp_path):
    result = buildsys("-C", str(tmp_path / "nowhere"), "graph")
    assert result.exit_code == 2
    assert "no recipes folder here" in result.stderr
    assert "pass -C PROJECT" in result.stderr


def test_dot_dashes_the_recipes_with_no_lock(buildsys, stack, tmp_path):
    import shutil

    proj = tmp_path / "stack"
    shutil.copytree(stack, proj)
    (proj / "locks").mkdir(exist_ok=True)
    (proj / "locks" / "base.lock").write_text("version = 1\n")  # only whether a lock is there counts
    out = buildsys("-C", str(proj), "graph", "--format", "dot").stdout
    assert '"base" [label="base' in out and 'style="rounded,bold"];' in out
    assert 'style="dashed"' in out and "dashed: no lock in locks/" in out
    base_line = next(line for line in out.splitlines() if line.strip().startswith('"base" [label='))
    assert "dashed" not in base_line
