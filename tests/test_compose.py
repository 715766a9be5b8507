"""`buildsys compose`: a file that the Compose the machine has accepts, checked with that Compose.

Debian 12 has Compose v1 (`docker-compose` 1.29.2, installed by scripts/install-deps.sh) and no
`docker compose` plugin; the file is written in the part of the Compose Specification both read.
The real test starts the pair with it (the bundled jupyter image, conftest's shared build).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import bs, http_status, ok

from buildsys.build.records import BuiltImage
from buildsys.engine import Engine, GpuRequest
from buildsys.use.compose import COMPOSE_LABEL, compose, compose_command, escape, project_name, to_yaml
from buildsys.use.run import UP_LABEL, HostUser, UpOptions

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "sha256:" + "a" * 64

def _have_compose() -> bool:
    if shutil.which("docker-compose"):
        return True
    return bool(shutil.which("docker")) and subprocess.run(["docker", "compose", "version"],
                                                           capture_output=True).returncode == 0


needs_compose = pytest.mark.skipif(not _have_compose(),
                                   reason="no Compose here (scripts/install-deps.sh installs Debian's docker-compose)")


def _compose_argv() -> list[str]:
    return compose_command().split()


def _env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
    return env if token is None else {**env, "JUPYTER_TOKEN": token}


def _text(folder: Path, *, bind: str = "127.0.0.1", gpus: GpuRequest | None = None, init: bool = False) -> str:
    opts = UpOptions(recipe="jupyter", cwd=folder, port=18888, tensorboard_port=16006, bind=bind, gpus=gpus)
    return to_yaml(escape(compose(IMAGE, opts, HostUser(uid=4242, gid=4343, name="alice"), init=init))) + "\n"


def test_every_dollar_from_a_path_is_escaped_and_the_token_is_the_one_reference(tmp_path: Path) -> None:
    folder = tmp_path / "we:ird ${JUPYTER_TOKEN} $HOME"
    text = _text(folder)
    literal = str(folder).replace("$", "$$")
    assert text.count("${JUPYTER_TOKEN:?") == 1 and 'JUPYTER_TOKEN: "${JUPYTER_TOKEN:?' in text
    assert text.count(literal) == 10  # root_dir, logdir, working_dir x2, volume source+target x2, folder label x2
    assert re.sub(r"\$\$|\$\{JUPYTER_TOKEN:\?[^}]*\}", "", text).count("$") == 0, text
    assert "init: false" in text and "init: true" not in text  # the image's entrypoint is tini
    assert "init: true" in _text(folder, init=True)
    assert f'{COMPOSE_LABEL}: "jupyter"' in text and UP_LABEL not in text  # `buildsys down` leaves them be
    assert "\nname:" not in text and "version:" not in text  # Compose v1 refuses a top-level name
    assert '"[::1]:18888:8888"' in _text(folder, bind="::1")
    gpu = _text(folder, gpus=GpuRequest(count=-1))
    assert re.search(r'deploy:\n\s+resources:\n\s+reservations:\n\s+devices:\n\s+- driver: "nvidia"\n'
                     r'\s+capabilities:\n\s+- "gpu"\n\s+count: "all"', gpu), gpu
    assert gpu.count("deploy:") == 1  # the GPU is the notebook's
    for line in text.splitlines():  # nothing but keys and list items
        assert re.match(r"\s*(- |[A-Za-z_.]+:)", line), line
    assert project_name("a.b", folder).startswith("buildsys-a_b-")


@needs_compose
@pytest.mark.parametrize("bind, gpus", [("127.0.0.1", None), ("::1", GpuRequest(count=2)),
                                        ("0.0.0.0", GpuRequest(count=None, device_ids=("0", "GPU-1")))])
def test_the_compose_here_accepts_the_file(tmp_path: Path, bind: str, gpus: GpuRequest | None) -> None:
    """`config` (no engine needed) reads it back: the literal paths survive, the token is interpolated."""
    folder = tmp_path / "we:ird ${JUPYTER_TOKEN}"
    file = tmp_path / "compose.yaml"
    file.write_text(_text(folder, bind=bind, gpus=gpus))
    argv = [*_compose_argv(), "-p", "t", "-f", str(file), "config"]
    refused = subprocess.run(argv, capture_output=True, text=True, env=_env(None))
    assert refused.returncode != 0 and "export JUPYTER_TOKEN first" in refused.stdout + refused.stderr
    out = subprocess.run(argv, capture_output=True, text=True, env=_env("s3cret-token"))
    assert out.returncode == 0, out.stderr
    assert "JUPYTER_TOKEN: s3cret-token" in out.stdout and out.stdout.count("s3cret-token") == 1
    assert out.stdout.count("$${JUPYTER_TOKEN}") == 10  # config prints the literals escaped again



def _wait(url: str, want: int, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while (got := http_status(url)) != want and time.monotonic() < deadline:
        time.sleep(1)
    return got


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _project_containers(engine: Engine, project: str) -> list[str]:
    return sorted(c["Id"] for c in engine.client.api.containers(
        all=True, filters={"label": f"com.docker.compose.project={project}"}))


@needs_compose
@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_compose_starts_the_pair_and_down_removes_exactly_it(jupyter: BuiltImage, shared_store: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "we:ird ${JUPYTER_TOKEN}"
    folder.mkdir()
    monkeypatch.chdir(folder)
    port, tb_port = _free_port(), _free_port()
    text = ok(bs(ROOT, shared_store, "compose", "jupyter", "--port", str(port), "--tensorboard-port",
                 str(tb_port))).stdout
    project = project_name("jupyter", folder)
    assert f"{compose_command()} -p {project} -f FILE up -d" in text  # the Compose this machine has
    file = tmp_path / "compose.yaml"
    file.write_text(text)
    argv = [*_compose_argv(), "-p", project, "-f", str(file)]
    engine = Engine.connect()
    neighbour = engine.client.api.create_container(jupyter.record.config_digest, command=["true"],
                                                   labels={"io.buildsys.role": "jupyter"})["Id"]
    token = "t0k3n" + os.urandom(8).hex()
    try:
        # No token: compose refuses to start anything.
        r = subprocess.run([*argv, "up", "-d"], capture_output=True, text=True, env=_env(None), timeout=300)
        assert r.returncode != 0 and "export JUPYTER_TOKEN first" in r.stdout + r.stderr
        assert _project_containers(engine, project) == []
        r = subprocess.run([*argv, "up", "-d"], capture_output=True, text=True, env=_env(token), timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        started = _project_containers(engine, project)
        assert len(started) == 2
        assert _wait(f"http://127.0.0.1:{port}/api/status?token={token}", 200) == 200
        assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
        assert http_status(f"http://127.0.0.1:{port}/api/status?token=wrong") == 403
        assert _wait(f"http://127.0.0.1:{tb_port}/", 200) == 200
        for cid in started:
            info = engine.inspect(cid)
            assert not info["HostConfig"].get("Init")  # tini is the image's entrypoint already
            assert [(m["Source"], m["Destination"]) for m in info["Mounts"]] == [(str(folder), str(folder))]
            assert token not in " ".join(info["Config"]["Cmd"]) and info["Config"]["WorkingDir"] == str(folder)
            assert info["Config"]["Labels"]["io.buildsys.folder"] == str(folder)
        # `buildsys down` is for what `buildsys up` started: it leaves compose's pair alone.
        assert "nothing of 'jupyter' is up" in ok(bs(ROOT, shared_store, "down", "jupyter")).stdout
        assert _project_containers(engine, project) == started
        r = subprocess.run([*argv, "down"], capture_output=True, text=True, env=_env("any-value"), timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _project_containers(engine, project) == []
        assert engine.inspect(neighbour)["Id"] == neighbour
    finally:
        subprocess.run([*argv, "down"], capture_output=True, env=_env("x"), timeout=300)
        engine.remove(neighbour)
