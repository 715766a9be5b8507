"""One digest whatever the engine stores layers on: overlay2 here, vfs on a second dockerd.

The chain is built once on the main engine (overlay2: buildsys reads the
container's upper dir), then on a second dockerd with ``--storage-driver vfs``
(no upper dir: buildsys reads ``docker export`` and compares it with the parent
chain), from another project path, under another hostname, umask and TZ. The
second engine starts empty: the root comes from the store, the other layers
are built again. Every diff_id, the image ID and the manifest digest must match.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from helpers import bs, copy_project, ok

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def vfs_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second dockerd on vfs, with its own data root, exec root, pid file, socket and bridge.

    Its own bridge, never ``--bridge=none``: that makes dockerd delete the
    first engine's docker0. Stopped, and its bridge and files removed, at the end.
    """
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("ip"):
        pytest.skip("a second dockerd needs root, dockerd and ip")
    base = tmp_path_factory.mktemp("vfs")
    bridge = f"bsvfs{os.getpid() % 100000}"
    _run("ip", "link", "add", bridge, "type", "bridge")
    sock = base / "docker.sock"
    log = open(base / "dockerd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = None
    try:
        _run("ip", "addr", "add", "10.231.0.1/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        proc = subprocess.Popen(
            ["dockerd", "--storage-driver", "vfs", "--data-root", str(base / "data"), "--exec-root",
             str(base / "exec"), "--pidfile", str(base / "docker.pid"), "-H", f"unix://{sock}", "-b", bridge,
             "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        host = f"unix://{sock}"
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=host, timeout=10)
                assert client.info()["Driver"] == "vfs"
                client.close()
                break
            except docker.errors.DockerException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the vfs dockerd did not start: {(base / 'dockerd.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield host
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(base / "data", ignore_errors=True)


def test_overlay_and_vfs_engines_give_the_same_digests(tmp_path: Path, vfs_engine: str) -> None:
    main = docker.from_env()
    if main.info()["Driver"] != "overlay2":
        pytest.skip("the main engine should use overlay2 (the upper-dir path)")
    store = tmp_path / "store"
    proj = copy_project("chain", tmp_path / "project")
    ok(bs(proj, store, "lock", "app"))
    ok(bs(proj, store, "fetch", "app"))
    (first,) = json.loads(ok(bs(proj, store, "build", "--json", "app")).stdout)
    assert first["timings"] is not None and first["timings"]["install"] > 0

    # A second store with the root only (its image is loaded from there) and the same vendor files.
    other = tmp_path / "elsewhere" / "store"
    (other / "cache" / "layers").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(store / "vendor"), str(store / "oci"), str(other)], check=True)
    for entry in (store / "cache" / "layers").glob("*.json"):
        if json.loads(entry.read_text())["recipe"] == "root":
            shutil.copy(entry, other / "cache" / "layers")
    proj2 = copy_project(proj, tmp_path / "elsewhere" / "a" / "different" / "path")
    env = {**os.environ, "DOCKER_HOST": vfs_engine, "TZ": "Pacific/Chatham"}
    script = ("hostname buildsys-vfs-host && umask 077 && exec \"$0\" -m buildsys -C \"$1\" --store \"$2\" "
              "build --json app")
    done = subprocess.run(["unshare", "--uts", "sh", "-c", script, sys.executable, str(proj2), str(other)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    (second,) = json.loads(done.stdout)
    for key in ("diff_ids", "image_id", "manifest_digest"):
        assert second[key] == first[key], (key, done.stderr)
    assert second["timings"] is not None  # its top layer was built there, not taken from a cache
    vfs = docker.DockerClient(base_url=vfs_engine)
    assert vfs.images.get("app:latest").id == first["image_id"]
    vfs.close()

    # A no-op build is answered by the store and the note of what was tagged: with the engine's
    # socket out of the way it still succeeds, so it made no round trip to docker.
    sock = Path(vfs_engine.removeprefix("unix://"))
    sock.rename(sock.with_name("away.sock"))
    try:
        noop = subprocess.run([sys.executable, "-m", "buildsys", "-C", str(proj2), "--store", str(other), "build",
                               "--json", "app"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        sock.with_name("away.sock").rename(sock)
    assert noop.returncode == 0, noop.stderr
    (cached,) = json.loads(noop.stdout)
    assert cached["cached"] and cached["timings"] is None and cached["image_id"] == first["image_id"]
