"""run, doctor, up/down/compose and GPU test marking, against the real dockerd.

No GPU here: the GPU path is checked by what reaches the engine (the created
container's HostConfig.DeviceRequests) and by the errors that stop a GPU run
before anything starts. The bundled jupyter image (JupyterLab + TensorBoard)
is built once per session into a store every test here shares (conftest's
``jupyter`` and ``shared_store``).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import bs, http_status, ok

from buildsys.build.records import BuiltImage
from buildsys.core.errors import UsageError
from buildsys.ecosystems.pip import PipSection
from buildsys.engine import ContainerSpec, Engine, EngineError, GpuRequest
from buildsys.lock import fresh_locks
from buildsys.model.graph import build_graph
from buildsys.model.recipe import load_recipes
from buildsys.use.doctor import GpuUnavailable, cuda_verdict, driver_cuda, gpu_support, host_driver, image_cuda
from buildsys.use.mounts import CUDA_CACHE, MountCollision, SystemMount, check_folder, hidden_by, plan_mounts
from buildsys.use.run import (
    FOLDER_LABEL,
    OWNER_LABEL,
    RUN_LABEL,
    UP_LABEL,
    HostUser,
    RunOptions,
    UpOptions,
    check_ports_free,
    down,
    gpu_start_error,
    identity,
    network_name,
    parse_gpus,
    parse_port,
    parse_volume,
    plan_run,
)
from buildsys.use.testing import command_label, package_checks, run_tests

ROOT = Path(__file__).resolve().parents[1]  # the bundled stack: recipes/ and locks/

docker_mark = pytest.mark.docker
slow = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


# -- plain data: no engine -------------------------------------------------------


def test_gpus_syntax() -> None:
    assert parse_gpus("all") == GpuRequest(count=-1)
    assert parse_gpus("2") == GpuRequest(count=2)
    assert parse_gpus("device=0,1") == GpuRequest(count=None, device_ids=("0", "1"))
    assert parse_gpus('"device=GPU-3a1b2c3d-0000-1111-2222-333344445555"').device_ids == (
        "GPU-3a1b2c3d-0000-1111-2222-333344445555",)
    for bad in ("0", "foo", "device=", "device=a b", "-1", "all,1"):
        with pytest.raises(UsageError, match="--gpus"):
            parse_gpus(bad)


def test_port_and_mount_syntax(tmp_path: Path) -> None:
    assert parse_port("8888:80") == ("", 8888, 80)
    assert parse_port("127.0.0.1:8888:80") == ("127.0.0.1", 8888, 80)
    for bad in ("8888", "a:b", "0:80", "70000:80"):
        with pytest.raises(UsageError, match="-p"):
            parse_port(bad)
    (tmp_path / "data").mkdir()
    assert parse_volume("data:/data:ro", tmp_path) == (str(tmp_path / "data"), "/data", True)
    with pytest.raises(UsageError, match="does not exist"):
        parse_volume("nope:/data", tmp_path)
    with pytest.raises(UsageError, match="absolute"):
        parse_volume("data:rel", tmp_path)
    # A host path may hold ':' (the container path is the last part before the mode).
    (tmp_path / "a:b").mkdir()
    assert parse_volume("a:b:/in:ro", tmp_path) == (str(tmp_path / "a:b"), "/in", True)
    assert parse_volume("a:b:/out/", tmp_path) == (str(tmp_path / "a:b"), "/out", False)


# -- mount planning: nothing hidden, nothing dropped ------------------------------


@pytest.mark.parametrize("folder, hidden", [
    ("/", "root filesystem"), ("/var", "/var"), ("/var/lib", "/var tree"), ("/var/lib/docker/x", "/var tree"),
    ("/run", "/run"), ("/run/user/1000", "/run tree"), ("/usr/local", "/usr tree"), ("/etc/x", "/etc tree"),
    ("/home", "/home"), ("/opt", "/opt"), ("/lib32", "/lib32"), ("/proc/1", "/proc tree"),
    ("/var/tmp", None), ("/var/tmp/proj", None), ("/home/alice/proj", None), ("/opt/work", None),
    ("/srv/data", None), ("/tmp/x", None), ("/variable", None), ("/usrdata", None),
])
def test_system_trees_are_refused_consistently(folder: str, hidden: str | None) -> None:
    found = hidden_by(folder)
    assert (found is None) if hidden is None else (found is not None and found.startswith(hidden)), found
    if hidden is None:
        check_folder(Path(folder))
    else:
        with pytest.raises(SystemMount, match="nothing was started") as e:
            check_folder(Path(folder))
        assert e.value.exit_code == 2 and "cd into a project folder" in str(e.value)


def test_a_mount_target_may_be_inside_a_system_tree_but_not_one(tmp_path: Path) -> None:
    assert parse_volume(f"{tmp_path}:/etc/jupyter:ro", tmp_path) == (str(tmp_path), "/etc/jupyter", True)
    for target in ("/usr", "/var/", "/", "/etc"):
        with pytest.raises(SystemMount):
            parse_volume(f"{tmp_path}:{target}", tmp_path)


def test_no_mount_is_silently_dropped(tmp_path: Path) -> None:
    d, e = tmp_path / "d", tmp_path / "e"
    d.mkdir()
    e.mkdir()
    cache = tmp_path / "cuda"
    # One host folder at several paths: each mount is kept (the engine gets a list, not a map by source).
    assert plan_mounts(tmp_path, cache, [(str(tmp_path), "/ro", True)]) == (
        (str(tmp_path), str(tmp_path), False), (str(cache), CUDA_CACHE, False), (str(tmp_path), "/ro", True))
    assert plan_mounts(tmp_path, None, [(str(d), "/in", True), (str(d), "/out", False)])[1:] == (
        (str(d), "/in", True), (str(d), "/out", False))
    # The same mount twice is one.
    assert plan_mounts(tmp_path, None, [(str(d), "/in", True), (str(d), "/in/", True)])[1:] == ((str(d), "/in", True),)
    # Two on one path: an error naming both, before anything runs.
    for volumes in ([(str(d), "/in", True), (str(e), "/in", True)], [(str(d), "/in", True), (str(d), "/in", False)],
                    [(str(d), str(tmp_path), False)], [(str(d), CUDA_CACHE, False)]):
        with pytest.raises(MountCollision, match="two mounts on") as err:
            RunOptions(recipe="r", cwd=tmp_path, volumes=tuple(volumes))
        assert err.value.exit_code == 2 and "nothing was started" in str(err.value)


def test_port_probe_takes_a_port_in_time_wait_and_refuses_a_port_twice() -> None:
    """`up` right after `down`: the port's last connection is in TIME_WAIT, which docker's proxy may bind."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the side that closes first keeps the port in TIME_WAIT
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the probe without SO_REUSEADDR said: "in use"
    check_ports_free([("127.0.0.1", port, 80)], str)
    with pytest.raises(UsageError, match="asked for twice"):
        check_ports_free([("127.0.0.1", port, 80), ("", port, 81)], str)


def test_up_options_refuse_one_port_twice_and_bracket_ipv6(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="both 7000") as e:
        UpOptions(recipe="jupyter", cwd=tmp_path, port=7000, tensorboard_port=7000)
    assert e.value.exit_code == 2
    with pytest.raises(UsageError, match="not an IP address"):
        UpOptions(recipe="jupyter", cwd=tmp_path, bind="localhost")
    assert UpOptions(recipe="jupyter", cwd=tmp_path, bind="::1").url_host == "[::1]"
    assert UpOptions(recipe="jupyter", cwd=tmp_path, bind="0.0.0.0").url_host == "127.0.0.1"
    assert UpOptions(recipe="jupyter", cwd=tmp_path).url_host == "127.0.0.1"


PASSWD = b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" \
         b"user:x:1000:1000::/home/user:/bin/bash\n"
GROUP = b"root:x:0:\nuser:x:1000:\n"


def test_identity_adds_the_host_user_when_the_image_lacks_it() -> None:
    who = identity(HostUser(uid=4242, gid=4343, name="alice"), PASSWD, GROUP, mount_targets=["/work/proj"])
    assert (who.user, who.name, who.home) == ("4242:4343", "alice", "/home/alice")
    assert who.files is not None
    with tarfile.open(fileobj=__import__("io").BytesIO(who.files)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        passwd = tf.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
        group = tf.extractfile("etc/group").read().decode()  # type: ignore[union-attr]
    assert passwd.startswith(PASSWD.decode())
    assert passwd.endswith("alice:x:4242:4343:buildsys run:/home/alice:/bin/bash\n")
    assert group.endswith("alice:x:4343:\n")
    home = members["home/alice"]
    assert home.isdir() and (home.uid, home.gid, home.mode) == (4242, 4343, 0o755)


def test_identity_keeps_a_known_uid_and_never_writes_into_a_mount() -> None:
    known = identity(HostUser(uid=1000, gid=1000, name="bob"), PASSWD, GROUP)
    assert (known.name, known.home, known.files) == ("user", "/home/user", None)
    # A name taken by another UID, and a HOME that would be the mounted folder itself.
    who = identity(HostUser(uid=4242, gid=1000, name="user"), PASSWD, GROUP, mount_targets=["/home/user4242"])
    assert who.name == "user4242" and who.home == "/var/tmp/buildsys-home-4242"
    root = identity(HostUser(uid=0, gid=0, name="root"), PASSWD, GROUP)
    assert (root.name, root.home, root.files) == ("root", "/root", None)


def test_plan_run_is_the_seed_dockrun_without_root_files(tmp_path: Path) -> None:
    who = identity(HostUser(uid=4242, gid=4343, name="alice"), PASSWD, GROUP)
    opts = RunOptions(recipe="pytorch", cwd=tmp_path, command=("python3", "train.py"), gpus=parse_gpus("all"),
                      ports=(parse_port("6006:6006"),))
    spec = plan_run("sha256:" + "a" * 64, opts, who, tmp_path / "cuda")
    env = dict(spec.env)
    assert spec.image.startswith("sha256:") and spec.user == "4242:4343" and spec.workdir == str(tmp_path)
    assert (str(tmp_path), str(tmp_path), False) in spec.mounts
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/home/alice" and env["USER"] == "alice"
    assert (str(tmp_path / "cuda"), env["CUDA_CACHE_PATH"], False) in spec.mounts
    assert spec.init and spec.gpus == (GpuRequest(count=-1),) and spec.command == ("python3", "train.py")
    assert dict(spec.labels)[RUN_LABEL] == "pytorch"


def test_driver_and_cuda_versions(tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"
                    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    assert host_driver(proc) == "550.54.14"
    assert host_driver(tmp_path / "absent") is None
    # As an H100 host lent to this project wrote it (open kernel module, CUDA 13.0 per nvidia-smi).
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)\n")
    assert host_driver(proc) == "580.159.04" and driver_cuda("580.159.04") == "13.0"
    assert cuda_verdict("13.2", "580.159.04").status == "warn"  # the pytorch image's CUDA on that host
    assert driver_cuda("550.54.14") == "12.4" and driver_cuda("470.82.01") is None
    assert cuda_verdict("12.4", "550.54.14").status == "ok"
    assert cuda_verdict("12.9", "550.54.14").status == "warn"  # minor version compatibility
    bad = cuda_verdict("13.2", "550.54.14")
    assert bad.status == "missing" and "insufficient" in bad.detail and bad.needed == "580.65.06"


def test_bundled_gpu_stack_declares_gpu_tests_and_cuda() -> None:
    graph = build_graph(load_recipes(ROOT))
    locks = fresh_locks(ROOT, graph, ["pytorch", "keras"])  # committed and fresh
    for name, pkg in (("pytorch", "torch"), ("keras", "tensorflow")):
        r = graph.recipes[name]
        assert r.parents == ("python",) and r.gpu_tests and r.tests
        assert dict(r.image.env)["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert "compute" in dict(r.image.env)["NVIDIA_DRIVER_CAPABILITIES"]
        assert pkg in {p.name for p in locks[name].section(PipSection).packages}
        cuda = image_cuda(locks, graph.chain(name))
        assert cuda is not None and re.fullmatch(r"1[23]\.\d+", cuda[0]), cuda
    assert {"torchvision", "transformers"} <= {p.name for p in locks["pytorch"].section(PipSection).packages}
    assert any(p.name.startswith("nvidia-") for p in locks["pytorch"].section(PipSection).packages)


def test_the_cuda_of_nvidia_s_apt_packages_is_read_from_their_names() -> None:
    from buildsys.ecosystems.apt_sections import AptSection, LockedDeb
    from buildsys.model.lockfile import Lock

    deb = LockedDeb(name="cuda-cudart-12-4", version="12.4.127-1", architecture="amd64", sha256="0" * 64, size=1,
                    path="cuda-cudart-12-4_12.4.127-1_amd64.deb",
                    mirror="https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64")
    lock = Lock(recipe="cuda", recipe_hash="sha256:" + "0" * 64, source_date_epoch=0).with_sections(
        AptSection((deb,)))
    assert image_cuda({"cuda": lock}, ["cuda"]) == ("12.4", "cuda-cudart-12-4 12.4.127-1 in locks/cuda.lock")
    blas = dataclasses.replace(deb, name="libcublas-12-4", version="12.4.5.8-1")
    lock = Lock(recipe="cuda-libs", recipe_hash="sha256:" + "0" * 64, source_date_epoch=0).with_sections(
        AptSection((blas,)))
    assert image_cuda({"cuda-libs": lock}, ["cuda", "cuda-libs"])[0] == "12.4"  # type: ignore[index]
    # the bundled CUDA chain (a registry root, not lockable on machines without registry access)
    graph = build_graph(load_recipes(ROOT))
    assert graph.chain("cuda-libs") == ["cuda", "cuda-libs"] and graph.recipes["cuda"].gpu_tests


def test_usage_errors_come_before_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No engine, lock or image is looked at: these are the command line's own mistakes (exit 2)."""
    monkeypatch.chdir(tmp_path)
    r = bs(ROOT, tmp_path / "store", "up", "jupyter", "--port", "7000", "--tensorboard-port", "7000")
    assert r.exit_code == 2 and "--port and --tensorboard-port are both 7000" in r.stderr
    r = bs(ROOT, tmp_path / "store", "compose", "jupyter", "--port", "7000", "--tensorboard-port", "7000")
    assert r.exit_code == 2 and "both 7000" in r.stderr
    (tmp_path / "d").mkdir()
    r = bs(ROOT, tmp_path / "store", "run", "-v", "d:/in", "-v", f"{tmp_path}:/in", "jupyter", "--", "true")
    assert r.exit_code == 2 and "two mounts on /in" in r.stderr
    r = bs(ROOT, tmp_path / "store", "run", "-p", "7001:80", "-p", "7001:81", "jupyter", "--", "true")
    assert r.exit_code == 2 and "asked for twice" in r.stderr
    monkeypatch.chdir("/var/lib")
    for args in (("run", "jupyter", "--", "true"), ("up", "jupyter"), ("compose", "jupyter")):
        r = bs(ROOT, tmp_path / "store", *args)
        assert r.exit_code == 2 and "hide the image's own /var tree" in r.stderr, (args, r.stderr)
    assert not (tmp_path / "store").exists()


# -- against dockerd: no image needed -------------------------------------------


def _tiny_image(labels: dict[str, str]) -> str:
    """An image of one empty file, made here (`docker import`: no registry), carrying ``labels``."""
    buf = __import__("io").BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("nothing"))
    changes = [arg for k, v in labels.items() for arg in ("--change", f"LABEL {k}={v}")]
    out = subprocess.run(["docker", "import", *changes, "-"], input=buf.getvalue(), capture_output=True, check=True)
    return out.stdout.decode().strip()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@docker_mark
def test_cleanup_removes_only_what_buildsys_created(tmp_path: Path) -> None:
    """A container inherits its image's labels: one whose owner/up labels came from its image is nobody's
    stale buildsys container, and `down` and the sweep leave it alone."""
    engine = Engine.connect()
    host = socket.gethostname()
    forged = {OWNER_LABEL: f"{host}:{_dead_pid()}", UP_LABEL: "jupyter", FOLDER_LABEL: str(tmp_path)}
    image = _tiny_image(forged)
    made: list[str] = []
    try:
        # Someone's own container of that image, made with plain docker: it carries every forged label.
        theirs = subprocess.run(["docker", "create", image, "/nothing"], capture_output=True, text=True,
                                check=True).stdout.strip()
        made.append(theirs)
        assert engine.inspect(theirs)["Config"]["Labels"][OWNER_LABEL] == forged[OWNER_LABEL]
        # One buildsys made, of the same image, for a process that is gone.
        ours = engine.create(ContainerSpec(image=image, command=("/nothing",),
                                           labels=((OWNER_LABEL, f"{host}:{_dead_pid()}"),)))
        made.append(ours)
        assert theirs not in [c for c, _, _ in engine.labelled(OWNER_LABEL)]
        assert theirs not in [c for c, _, _ in engine.labelled(UP_LABEL, "jupyter")]
        assert engine.created_labels(ours) == {OWNER_LABEL: dict(engine.inspect(ours)["Config"]["Labels"])[
            OWNER_LABEL]}
        assert engine.remove_stale_containers(OWNER_LABEL) >= 1
        assert down(engine, "jupyter", tmp_path) == []
        assert engine.is_running(theirs) is False and engine.inspect(theirs)["Id"] == theirs  # still there
        with pytest.raises(EngineError, match="no container"):
            engine.inspect(ours)
    finally:
        for cid in made:
            engine.remove(cid)
        engine.remove_image(image)


@docker_mark
def test_two_sweeps_at_once_both_succeed() -> None:
    """Two `buildsys run` on a host with stale containers sweep at once: neither fails on the other's removal."""
    import threading

    engine = Engine.connect()
    image = _tiny_image({})
    stale = [engine.create(ContainerSpec(image=image, command=("/nothing",),
                                         labels=((OWNER_LABEL, f"{socket.gethostname()}:{_dead_pid()}"),)))
             for _ in range(12)]
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            Engine.connect().remove_stale_containers(OWNER_LABEL)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=sweep) for _ in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert not set(stale) & {c for c, _, _ in engine.labelled(OWNER_LABEL)}
    finally:
        for cid in stale:
            engine.remove(cid)
        engine.remove_image(image)

# -- against dockerd: no image needed -------------------------------------------


def _no_gpu_runtime() -> bool:
    return not gpu_support(Engine.connect().info()).ok


needs_no_gpu = pytest.mark.skipif("not _no_gpu_runtime()", reason="this engine can serve GPUs")


def _labelled(label: str) -> list[str]:
    return [c[0] for c in Engine.connect().labelled(label)]


@docker_mark
def test_unknown_recipe_and_image_not_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = bs(ROOT, tmp_path / "empty-store", "run", "pytroch", "--", "true")
    assert r.exit_code == 2 and "did you mean 'pytorch'" in r.stderr
    r = bs(ROOT, tmp_path / "empty-store", "run", "python", "--", "true")
    assert r.exit_code == 1 and "not built" in r.stderr and "buildsys build python" in r.stderr


@docker_mark
def test_doctor_reports_this_engine(tmp_path: Path) -> None:
    r = ok(bs(ROOT, tmp_path / "store", "doctor"))
    info = Engine.connect().info()
    assert info.version in r.stdout and "storage driver" in r.stdout and "runtimes" in r.stdout
    assert "CDI" in r.stdout and "GPUs" in r.stdout


@docker_mark
def test_doctor_of_a_recipe_without_a_lock_still_checks_the_engine(tmp_path: Path) -> None:
    """`user` cannot be locked here (CRAN): the engine rows are there, and a row says what to do."""
    r = bs(ROOT, tmp_path / "store", "doctor", "user")
    assert r.exit_code == 1, r.output + r.stderr
    info = Engine.connect().info()
    assert info.version in r.stdout and "lock of user" in r.stdout and "buildsys lock user" in r.stdout
    assert "lock of user" in r.stderr  # the summary line names it too


@docker_mark
@needs_no_gpu
def test_doctor_says_what_a_gpu_needs(tmp_path: Path) -> None:
    r = bs(ROOT, tmp_path / "store", "doctor", "--gpus")
    assert r.exit_code == 1 and "nvidia-ctk" in r.stdout and "runtimes" in r.stderr
    # A recipe carrying CUDA asks for a GPU by itself, and names the CUDA it carries (before any run).
    r = bs(ROOT, tmp_path / "store", "doctor", "pytorch")
    assert r.exit_code == 1
    assert re.search(r"CUDA 1[23]\.\d+ \(nvidia-cuda-runtime", r.stdout) and "not built" in r.stdout


@docker_mark
def test_doctor_engine_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    r = bs(ROOT, tmp_path / "store", "doctor")
    assert r.exit_code == 4 and "unreachable" in r.stderr


@docker_mark
@needs_no_gpu
def test_gpu_request_without_runtime_fails_before_anything_starts(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = _labelled(RUN_LABEL)
    for args in (("run", "--gpus", "all", "python", "--", "true"), ("test", "--gpus", "device=0", "python")):
        r = bs(ROOT, tmp_path / "store", *args)
        assert r.exit_code == 1, r.output
        assert "cannot run with a GPU" in r.stderr and "nvidia-container-toolkit" in r.stderr
        assert "nothing was started" in r.stderr and "nvidia-ctk" in r.stderr
    assert not (tmp_path / "store" / "oci").exists()  # nothing was even built
    assert _labelled(RUN_LABEL) == before
    r = bs(ROOT, tmp_path / "store", "run", "--gpus", "two", "python")
    assert r.exit_code == 2 and "not a GPU request" in r.stderr


# -- against dockerd, with the jupyter image ----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("spec, expected", [
    ("all", {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}),
    ("2", {"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}),
    ("device=0,1", {"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"], "Capabilities": [["gpu"]], "Options": {}}),
])
@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_device_requests_reach_the_engine(jupyter: BuiltImage, tmp_path: Path, spec: str, expected: dict) -> None:
    """What `--gpus` sends: the created (never started) container's HostConfig.DeviceRequests."""
    engine = Engine.connect()
    who = identity(HostUser.current(), None, None)
    plan = plan_run(jupyter.record.config_digest, RunOptions(recipe="jupyter", cwd=tmp_path, gpus=parse_gpus(spec)),
                    who, tmp_path)
    cid = engine.create(plan)
    try:
        host = engine.inspect(cid)["HostConfig"]
        assert host["DeviceRequests"] == [expected]
        assert host["Init"] is True and host["AutoRemove"] is False
        if _no_gpu_runtime():  # starting it is where the engine finds it cannot serve it
            with pytest.raises(EngineError) as e:
                engine.start(cid)
            assert isinstance(gpu_start_error(e.value, plan), GpuUnavailable)
    finally:
        engine.remove(cid)


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_gpu_tests_are_skipped_without_a_gpu(jupyter: BuiltImage) -> None:
    recipes = dict(load_recipes(ROOT))
    r = recipes["jupyter"]
    recipes["jupyter"] = dataclasses.replace(r, gpu_tests=("nvidia-smi",))
    graph = build_graph(recipes)
    results = [t for t in run_tests(Engine.connect(), graph, jupyter) if t.recipe == "jupyter"]
    implied = [(label, "pass") for label, _ in package_checks(r)]  # its [pip] packages import
    assert implied and [(t.command, t.status) for t in results] == [
        *implied, *[(command_label(c), "pass") for c in r.tests], ("nvidia-smi", "skipped")]
    assert all(t.ok for t in results)


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_cli_reports_gpu_tests_skipped(jupyter: BuiltImage, shared_store: Path, tmp_path: Path) -> None:
    """`buildsys test` on a recipe whose only test needs a GPU: skipped, exit 0; with --gpus and no runtime: exit 1."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "recipes", proj / "recipes")
    shutil.copytree(ROOT / "locks", proj / "locks")
    (proj / "recipes" / "gpucheck.toml").write_text(
        'description = "GPU checks only"\nparents = ["jupyter"]\n\n[test]\ngpu = ["nvidia-smi -L"]\n')
    ok(bs(proj, shared_store, "lock", "gpucheck"))
    r = ok(bs(proj, shared_store, "test", "gpucheck"))
    assert "(gpu) nvidia-smi -L" in r.stdout and "skipped (needs a GPU)" in r.stdout
    assert "0 failed, 1 skipped" in r.stderr and "--gpus all" in r.stderr
    if _no_gpu_runtime():
        r = bs(proj, shared_store, "test", "--gpus", "all", "gpucheck")
        assert r.exit_code == 1 and "cannot run with a GPU" in r.stderr


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_run_passes_the_exit_code_and_leaves_nothing(jupyter: BuiltImage, shared_store: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = _labelled(RUN_LABEL)
    r = bs(ROOT, shared_store, "run", "jupyter", "--", "sh", "-c",
           'echo out; echo err >&2; pwd; echo "$PYTHONUNBUFFERED $CUDA_CACHE_PATH"; exit 7')
    assert r.exit_code == 7, r.output
    assert r.stdout.splitlines() == ["out", str(tmp_path), "1 /var/cache/buildsys/cuda"]
    assert "err" in r.stderr
    assert _labelled(RUN_LABEL) == before


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_run_faults_start_nothing(jupyter: BuiltImage, shared_store: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = _labelled(RUN_LABEL)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = bs(ROOT, shared_store, "run", "-p", f"{port}:8888", "jupyter", "--", "true")
        assert r.exit_code == 1 and f"port {port} is already in use" in r.stderr
    r = bs(ROOT, shared_store, "run", "-v", f"{tmp_path}/missing:/data", "jupyter", "--", "true")
    assert r.exit_code == 2 and "does not exist" in r.stderr and not (tmp_path / "missing").exists()
    r = bs(ROOT, shared_store, "run", "jupyter", "--", "no-such-command")
    assert r.exit_code == 127, r.output  # the container's own code: command not found
    r = bs(ROOT, shared_store, "run", "--network", f"no-such-net-{uuid.uuid4().hex[:6]}", "jupyter", "--", "true")
    assert r.exit_code == 1 and "network" in r.stderr and "not found" in r.stderr, r.output
    r = bs(ROOT, shared_store, "run", "--network", "none", "jupyter", "--", "sh", "-c", "ls /sys/class/net")
    assert r.exit_code == 0 and r.stdout.split() == ["lo"]
    assert _labelled(RUN_LABEL) == before


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_doctor_on_a_built_cpu_image(jupyter: BuiltImage, shared_store: Path) -> None:
    r = ok(bs(ROOT, shared_store, "doctor", "jupyter"))
    assert jupyter.record.config_digest in r.stdout and "carries no CUDA runtime" in r.stdout


@pytest.fixture
def docker_user() -> Iterator[pwd.struct_passwd]:
    """A throw-away non-root user in the docker group."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv"):
        pytest.skip("needs root, useradd and setpriv to make a user")
    name = f"bsrun{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--groups", "docker", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def _python_for_others() -> tuple[str, dict[str, str]]:
    """An interpreter another user may execute, with this venv's packages (a pyenv under /root is not one)."""
    real = Path(os.path.realpath(sys.executable))
    if all(os.stat(p).st_mode & 0o001 for p in [real, *real.parents]):
        return sys.executable, {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{real} is not executable by other users and there is no {system}")
    import site

    return str(system), {"PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()])}


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_run_as_a_user_writes_files_they_own(jupyter: BuiltImage, shared_store: Path,
                                             docker_user: pwd.struct_passwd) -> None:
    work = Path(docker_user.pw_dir) / "project"
    work.mkdir()
    os.chown(work, docker_user.pw_uid, docker_user.pw_gid)
    script = ('touch written; mkdir -p sub && echo x > sub/file; whoami; echo "$HOME"; '
              'touch "$HOME/home-is-writable" && echo home-ok; id -u; id -g')
    python, extra = _python_for_others()
    out = subprocess.run(
        ["setpriv", f"--reuid={docker_user.pw_uid}", f"--regid={docker_user.pw_gid}", "--init-groups",
         "env", "-i", f"HOME={docker_user.pw_dir}", "PATH=/usr/bin:/bin", f"USER={docker_user.pw_name}",
         *(f"{k}={v}" for k, v in extra.items()), python, "-m", "buildsys", "-C", str(ROOT),
         "--store", str(shared_store), "run", "jupyter", "--", "sh", "-c", script],
        cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    name, home, home_ok, uid, gid = out.stdout.split()
    # UID 1000 is the jupyter image's own `user`, whose entry and HOME are kept; any other is added.
    expected = "user" if docker_user.pw_uid == 1000 else docker_user.pw_name
    assert (name, home, home_ok) == (expected, f"/home/{expected}", "home-ok")
    assert (int(uid), int(gid)) == (docker_user.pw_uid, docker_user.pw_gid)
    for path in (work / "written", work / "sub", work / "sub" / "file"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (docker_user.pw_uid, docker_user.pw_gid), path
    # The CUDA kernel cache is the user's own, under their cache folder.
    cache = Path(docker_user.pw_dir) / ".cache" / "buildsys" / "cuda"
    assert cache.is_dir() and cache.stat().st_uid == docker_user.pw_uid



@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_up_serves_jupyter_with_a_token_and_tensorboard_then_down(
        jupyter: BuiltImage, shared_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port, tb_port = _free_port(), _free_port()
    try:
        r = ok(bs(ROOT, shared_store, "up", "jupyter", "--port", str(port), "--tensorboard-port", str(tb_port)))
        m = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)", r.stdout)
        assert m and len(m.group(1)) == 48, r.stdout
        token = m.group(1)
        assert r.stdout.count(token) == 1  # printed once
        assert http_status(f"http://127.0.0.1:{port}/api/status?token={token}") == 200
        assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
        assert http_status(f"http://127.0.0.1:{port}/api/status?token=wrong") == 403
        assert http_status(f"http://127.0.0.1:{tb_port}/") == 200
        assert (tmp_path / "runs").is_dir()
        engine = Engine.connect()
        mine = [engine.inspect(c) for c, _, _ in engine.labelled(UP_LABEL, "jupyter")
                if engine.inspect(c)["Config"]["Labels"]["io.buildsys.folder"] == str(tmp_path)]
        assert sorted(c["Config"]["Labels"]["io.buildsys.role"] for c in mine) == ["jupyter", "tensorboard"]
        # The pair's own network: TensorBoard (no authentication) is not on docker's default bridge.
        assert [list(c["NetworkSettings"]["Networks"]) for c in mine] == [[network_name("jupyter", tmp_path)]] * 2
        again = bs(ROOT, shared_store, "up", "jupyter", "--port", str(_free_port()),
                   "--tensorboard-port", str(_free_port()))
        assert again.exit_code == 1 and "already up" in again.stderr
    finally:
        down = ok(bs(ROOT, shared_store, "down", "jupyter"))
    assert "jupyter" in down.stdout and "tensorboard" in down.stdout
    left = [c for c, _, _ in Engine.connect().labelled(UP_LABEL, "jupyter")
            if Engine.connect().inspect(c)["Config"]["Labels"]["io.buildsys.folder"] == str(tmp_path)]
    assert left == []
    assert not Engine.connect().client.networks.list(names=[network_name("jupyter", tmp_path)])
    assert "nothing of 'jupyter' is up" in ok(bs(ROOT, shared_store, "down", "jupyter")).stdout
    # Up again at once on the same ports: the connections just closed are in TIME_WAIT, which is no obstacle.
    try:
        ok(bs(ROOT, shared_store, "up", "jupyter", "--port", str(port), "--tensorboard-port", str(tb_port)))
    finally:
        ok(bs(ROOT, shared_store, "down", "jupyter"))


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_up_with_a_port_taken_starts_nothing(jupyter: BuiltImage, shared_store: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = bs(ROOT, shared_store, "up", "jupyter", "--port", str(_free_port()), "--tensorboard-port", str(port))
    assert r.exit_code == 1 and f"port {port} is already in use" in r.stderr and "--tensorboard-port" in r.stderr
    assert not [c for c, _, _ in Engine.connect().labelled(UP_LABEL, "jupyter")
                if Engine.connect().inspect(c)["Config"]["Labels"]["io.buildsys.folder"] == str(tmp_path)]


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_run_keeps_every_mount_and_takes_any_folder_name(jupyter: BuiltImage, shared_store: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`-v .:/ro:ro` used to drop the working folder's own mount, `-v D:/in:ro -v D:/out` the first; a folder
    name with ':' got docker's "invalid volume specification"."""
    work = tmp_path / "we:ird $name"
    (work / "d").mkdir(parents=True)
    monkeypatch.chdir(work)
    r = bs(ROOT, shared_store, "run", "-v", ".:/ro:ro", "-v", "d:/in:ro", "-v", "d:/out", "jupyter", "--", "sh", "-c",
           'echo kept > written; touch /ro/x 2>/dev/null || echo ro-refused; echo o > /out/f; cat /in/f; pwd; '
           'touch /in/y 2>/dev/null || echo in-refused')
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout.split("\n")[:4] == ["ro-refused", "o", str(work), "in-refused"]
    assert (work / "written").read_text() == "kept\n" and (work / "d" / "f").read_text() == "o\n"


def test_docker_module_stays_in_engine() -> None:
    for path in (ROOT / "buildsys").glob("*.py"):
        if path.name != "engine.py":
            assert not re.search(r"^\s*(import|from) docker\b", path.read_text(), re.M), path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "buildsys", "-C", str(ROOT), *args]


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_run_on_a_terminal_and_after_a_killed_run(jupyter: BuiltImage, shared_store: Path, tmp_path: Path) -> None:
    # A TTY (script(1) gives one): the command sees a terminal; the exit code still passes through.
    out = subprocess.run(["script", "-qec", " ".join(_cli("--store", str(shared_store), "run", "jupyter", "--",
                                                           "sh", "-c", "'test -t 0 && test -t 1 && echo tty; exit 5'")),
                          "/dev/null"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 5 and "tty" in out.stdout, out
    # A run killed with SIGKILL cannot remove its container; the next run does.
    proc = subprocess.Popen(_cli("--store", str(shared_store), "run", "jupyter", "--", "sleep", "300"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = Engine.connect()
    try:
        for _ in range(600):
            mine = [c for c, _, state in engine.labelled("io.buildsys.owner", f"{socket.gethostname()}:{proc.pid}")
                    if state == "running" and dict(engine.inspect(c)["Config"]["Labels"]).get(RUN_LABEL)]
            if mine:
                break
            __import__("time").sleep(0.2)
        assert mine, "the run's container never started"
    finally:
        proc.kill()
        proc.wait()
    assert engine.is_running(mine[0])
    ok(bs(ROOT, shared_store, "run", "jupyter", "--", "true"))
    assert not engine.labelled("io.buildsys.owner", f"{socket.gethostname()}:{proc.pid}")
