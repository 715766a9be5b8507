"""Helpers shared by the integration tests: run the CLI the way a user does."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
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


def http_status(url: str) -> int:
    """The HTTP status ``url`` answers with (an error status too); 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0
