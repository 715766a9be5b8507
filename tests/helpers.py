"""Helpers shared by the integration tests: run the CLI the way a user does."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner, Result

from buildsys.cli import cli

FIXTURES = Path(__file__).parent / "fixtures"


def bs(project: Path, store: Path, *args: str) -> Result:
    """``buildsys -C PROJECT --store STORE ARGS...`` in-process."""
    return CliRunner().invoke(cli, ["-C", str(project), "--store", str(store), *args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + result.stderr
    return result


def copy_project(src: str | Path, dest: Path) -> Path:
    """A copy of a fixture project (by name) or of another project folder, to change freely."""
    shutil.copytree(FIXTURES / src if isinstance(src, str) else src, dest, dirs_exist_ok=True)
    return dest
