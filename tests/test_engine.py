"""The engine adapter against the real dockerd that `make test` / .ci/run start."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from buildsys.cli import cli
from buildsys.engine import Engine
from buildsys.errors import EXIT_ENGINE, EngineUnavailable

pytestmark = pytest.mark.docker


def test_engine_answers_and_reports_its_version() -> None:
    info = Engine.connect().info()
    assert info.version[0].isdigit()
    assert info.api_version.startswith("1.")
    assert info.os == "linux"
    assert info.storage_driver  # overlay2 here; anything but empty


def test_cli_engine_command_prints_the_daemon_version(fixture_project) -> None:
    result = CliRunner().invoke(cli, ["-C", str(fixture_project("valid-stack")), "engine"])
    assert result.exit_code == 0, result.output
    assert "docker engine" in result.output
    assert Engine.connect().info().version in result.output


def test_unreachable_engine_is_exit_4_with_a_way_out(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(EngineUnavailable):
        Engine.connect()
    result = CliRunner().invoke(cli, ["engine"])
    assert result.exit_code == EXIT_ENGINE
    assert "unreachable" in result.stderr
    assert "dockerd" in result.stderr  # says how to start one
    assert "Traceback" not in result.stderr
