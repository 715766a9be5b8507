"""The bundled stack as a user gets it: `buildsys test` of the committed jupyter and r-base images.

The images are built from this repository's recipes and locks into the session's
shared store (jupyter is shared with test_run). What the tests check is what the
stack's users care about: every requested Python package imports, R's packages
load, JupyterLab answers with its token and refuses without, the images run as
the non-root user, R's CRAN snapshot is set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import STACK, build_bundled
from helpers import bs, ok

from buildsys.build.records import BuiltImage

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


def _rows(stdout: str) -> dict[str, str]:
    """The test table's rows: command -> result, read from rich's box drawing."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 6 and (cells[4] in ("pass", "FAIL") or cells[4].startswith("skipped")):
            rows[cells[3]] = cells[4]
    return rows


def test_the_bundled_jupyter_and_r_base_pass_what_users_check(jupyter: BuiltImage, shared_store: Path) -> None:
    build_bundled(shared_store, "r-base")
    r = ok(bs(STACK, shared_store, "test", "jupyter", "r-base"))
    rows = _rows(r.stdout)
    assert rows, r.stdout
    assert set(rows.values()) == {"pass"}, r.stdout
    for expected in ("import numpy", "import jupyterlab, ipykernel, jupyter-server-proxy, tensorboard",
                     "# JupyterLab answers with its token and refuses without ...",
                     "test \"$(id -un):$(id -u)\" = user:1000 && test -w \"$HOME\""):
        assert expected in rows, (expected, r.stdout)
    assert "0 failed" in r.stderr


def test_the_bundled_images_run_as_the_non_root_user_by_default(jupyter: BuiltImage, shared_store: Path) -> None:
    images = json.loads(ok(bs(STACK, shared_store, "build", "--json", "jupyter", "r-base")).stdout)
    assert {i["recipe"] for i in images} == {"jupyter", "r-base"}
    from buildsys.engine import Engine

    engine = Engine.connect()
    for image in images:
        config = engine.image_config(image["image_id"])
        assert config.get("User") == "1000:1000" and config.get("WorkingDir") == "/home/user", image["recipe"]
        assert config.get("Entrypoint") == ["/usr/bin/tini", "--"], image["recipe"]
