"""The engine adapter against the real dockerd that `make test` / .ci/run start."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from buildsys.cli import cli
from buildsys.core.errors import EXIT_ENGINE, EXIT_FAILED, EngineUnavailable
from buildsys.engine import Engine, EngineError

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


def test_an_archive_docker_refuses_is_not_an_unreachable_engine() -> None:
    """A layer whose bytes are not its diff_id made every build path say "engine unreachable" (exit 4)."""
    import io
    import json
    import tarfile

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("hello")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as t:
        for name, data in (("layer.tar", layer.getvalue()), ("config.json", config),
                           ("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": [],
                                                          "Layers": ["layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with pytest.raises(EngineError) as err:
        Engine.connect().load(archive.getvalue())
    assert err.value.exit_code == EXIT_FAILED
    assert "docker load refused the image" in str(err.value) and "--no-cache" in str(err.value)


def test_the_probe_names_the_tagged_image_or_says_it_cannot(tmp_path, monkeypatch) -> None:
    """engine_probe answers what the SDK answers, "" for an image the engine lacks, None when it cannot ask."""
    from buildsys.engine.probe import tagged_image

    engine = Engine.connect()
    tag = f"buildsys-probe-{tmp_path.name[-12:].lower()}"
    image = engine.client.api.import_image_from_data(b"\0" * 1024)  # an empty tar: a one-layer image
    image_id = engine.client.images.get(json.loads(image.strip().splitlines()[-1])["status"]).id
    try:
        engine.tag(image_id, tag, "latest")
        assert tagged_image(f"{tag}:latest") == image_id == engine.client.images.get(f"{tag}:latest").id
        assert tagged_image(f"{tag}:no-such-tag") == ""
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
        assert tagged_image(f"{tag}:latest") is None
        monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
        assert tagged_image(f"{tag}:latest") is None
    finally:
        engine.client.images.remove(image_id, force=True)
