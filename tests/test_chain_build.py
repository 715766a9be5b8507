"""Layers on a root, end to end: a three-level chain and a diamond.

Real things only: Debian's archive, PyPI (pip-compile runs inside the parent
image), mmdebstrap, dockerd. One store per module; the first fixture pays for
the bootstrap, the rest mostly hit the cache.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from helpers import bs, copy_project, ok

from buildsys.build.builder import Builder
from buildsys.core.store import Store
from buildsys.ecosystems.apt_sections import AptSection
from buildsys.ecosystems.debian_root import DebianBaseLock
from buildsys.ecosystems.files import FilesSection
from buildsys.ecosystems.pip import PipSection
from buildsys.engine import Engine
from buildsys.lock import fresh_locks
from buildsys.model.graph import build_graph
from buildsys.model.lockfile import lock_path, read_lock
from buildsys.model.recipe import load_recipes
from buildsys.oci.image import OciLayout, rfc3339
from buildsys.oci.layer.diff import read_entries

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Path:
    proj = copy_project("chain", tmp_path_factory.mktemp("chain"))
    ok(bs(proj, store, "lock", "app"))
    ok(bs(proj, store, "fetch", "app"))
    # A git checkout, as projects are: the images' labels name the commit of their inputs (core/vcs.py).
    # Copies of it (copy_project) keep .git, so their unchanged recipes stay cache hits.
    git(proj, "init", "-q", "-b", "main")
    git(proj, "remote", "add", "origin", "https://ci:token@git.example.com/team/chain.git")
    git(proj, "add", "-A")
    git(proj, "commit", "-qm", "the chain, locked")
    return proj


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture(scope="module")
def built(chain: Path, store: Path) -> dict:
    (image,) = json.loads(ok(bs(chain, store, "build", "--json", "app")).stdout)
    return image


def builder(project: Path, store: Path, events: list[tuple[str, str, str]]) -> Builder:
    graph = build_graph(load_recipes(project))
    return Builder(Store(store), graph, fresh_locks(project, graph, []), engine=Engine.connect(),
                   progress=lambda *e: events.append(e))


def test_layer_locks_pin_apt_and_pip_for_the_image_python(chain: Path) -> None:
    root, tools, app = (read_lock(lock_path(chain, n)) for n in ("root", "tools", "app"))
    apt = {d.name for d in tools.section(AptSection).debs}
    assert {"jq", "libjq1", "python3", "python3.11"} <= apt
    root_base = root.get(DebianBaseLock)
    assert root_base is not None
    assert not apt & {d.name for d in root_base.packages}  # the parent's packages are not repeated
    pip = tools.section(PipSection)
    assert pip.python and pip.python.startswith("3.11.")  # bookworm's, whatever the host runs
    pins = {p.name: p for p in pip.packages}
    assert set(pins) == {"six", "markupsafe"}
    selected = pins["markupsafe"].selected or ""
    assert "cp311" in selected and "manylinux" in selected
    for p in pip.packages:
        assert p.selected in {f.name for f in p.files}
        assert all(len(f.sha256) == 64 for f in p.files)
    assert pip.installer is not None and pip.installer.name == "pip"
    assert tools.parents == {"root": root.lock_hash}
    assert app.parents == {"tools": tools.lock_hash} and not app.get(AptSection) and not app.get(PipSection)
    assert app.source_date_epoch >= tools.source_date_epoch >= root.source_date_epoch


def test_chain_image_runs_with_its_config(built: dict, store: Path) -> None:
    assert len(built["diff_ids"]) == 3 and built["chain"] == ["root", "tools", "app"]
    client = docker.from_env()
    img = client.images.get("app:latest")
    assert img.id == built["image_id"]
    cfg = img.attrs["Config"]
    assert cfg["User"] == "1000:1000" and cfg["WorkingDir"] == "/home/app"
    assert "APP_MODE=test" in cfg["Env"] and "8080/tcp" in cfg["ExposedPorts"]
    out = client.containers.run("app:latest", ["sh", "-c", "echo '[1,2]' | jq -c length; id -u; "
                                               "python3 -c 'import six, markupsafe; print(markupsafe.__version__)'"],
                                remove=True, network_mode="none").decode().split()
    assert out[0] == "2" and out[1] == "1000" and out[2][0].isdigit()
    # every layer's parent images are tagged as their own recipes
    assert client.images.get("tools:latest").id != img.id


def test_vendored_inputs_never_end_up_in_a_layer(built: dict, store: Path) -> None:
    layout = OciLayout(store / "oci")
    manifest, _ = layout.read_image(built["manifest_digest"])
    for desc in manifest["layers"][1:]:
        paths = read_entries(layout.blob_path(desc["digest"]))
        assert not [p for p in paths if p == "buildsys" or p.startswith("buildsys/")]
        # (the opaque marker stands for whiteouts of lock and partial: the steps empty the folder)
        assert not [p for p in paths if p.startswith("var/lib/apt/lists/")
                    and not p.endswith(("partial", "lock", ".wh..wh..opq"))]
        assert not [p for p in paths if p.endswith(".deb") or p.endswith(".whl")]


def test_buildsys_test_runs_every_inherited_test(chain: Path, store: Path, built: dict) -> None:
    result = ok(bs(chain, store, "test", "app"))
    # root 1 + tools 3 (its [pip] packages imported, then its 2 commands) + app 2
    assert result.stdout.count("pass") == 6
    assert "import six, markupsafe" in result.stdout


def test_verify_rebuilds_the_whole_chain_and_finds_it_equal(chain: Path, store: Path, built: dict) -> None:
    result = ok(bs(chain, store, "build", "--verify", "app"))
    assert f"app: reproducible (3 layers, image {built['image_id']}" in result.output


def test_images_say_what_they_are_in_labels_annotations_and_history(chain: Path, store: Path, built: dict) -> None:
    """What registries, scanners and bots read (docs/shipping.md), the same in every rebuild (the verify test
    compares the image IDs, which cover the config and so the labels)."""
    manifest, config = OciLayout(store / "oci").read_image(built["manifest_digest"])
    labels = config["config"]["Labels"]
    app, root = read_lock(lock_path(chain, "app")), read_lock(lock_path(chain, "root"))
    oci = {k.removeprefix("org.opencontainers.image."): v for k, v in labels.items()
           if k.startswith("org.opencontainers.image.")}
    assert oci == {"title": "app", "description": read_recipe_description(chain, "app"),
                   "created": rfc3339(app.source_date_epoch), "revision": git(chain, "rev-parse", "HEAD"),
                   "source": "https://git.example.com/team/chain.git"}  # the token stays out; no base: from nothing
    assert labels["io.buildsys.lock-hash"] == app.lock_hash
    assert manifest["annotations"] == {f"org.opencontainers.image.{k}": v for k, v in oci.items()}
    assert docker.from_env().images.get(built["image_id"]).labels == labels  # by ID: other runs tag app:latest too
    history = [h["created_by"] for h in config["history"]]
    base = root.get(DebianBaseLock)
    assert base is not None
    assert history[0] == (f"buildsys: root (mmdebstrap {base.suite}/{base.variant}, {len(base.packages)} packages; "
                          f"lock {root.lock_hash.removeprefix('sha256:')[:12]})")
    assert history[-1].startswith("buildsys: app (") and history[-1].endswith(
        f"; lock {app.lock_hash.removeprefix('sha256:')[:12]})")


def test_a_new_revision_relabels_the_image_without_building_it(chain: Path, store: Path, built: dict,
                                                                tmp_path: Path) -> None:
    """A comment in a recipe leaves its hash, and so its layer, as they were; the labels follow the checkout
    (modified: no revision; committed: the new commit), and the image gets a new config, not a new build."""
    proj = copy_project(chain, tmp_path / "p")
    recipe = proj / "recipes" / "app.toml"
    recipe.write_text(recipe.read_text() + "\n# reviewed\n")
    seen = {}
    for state in ("modified", "committed"):
        if state == "committed":
            git(proj, "commit", "-qam", "a comment")
        events: list[tuple[str, str, str]] = []
        (image,) = builder(proj, store, events).build(["app"])
        assert image.record.diff_ids == tuple(built["diff_ids"])
        assert {(r, kind) for r, kind, _ in events if kind in ("built", "relabeled")} == {("app", "relabeled")}
        labels = OciLayout(store / "oci").read_config(image.record.config_digest)["config"]["Labels"]
        seen[state] = (image.record.config_digest, labels.get("org.opencontainers.image.revision"))
    assert seen["modified"][1] is None and seen["committed"][1] == git(proj, "rev-parse", "HEAD")
    assert len({built["image_id"], seen["modified"][0], seen["committed"][0]}) == 3


def read_recipe_description(project: Path, name: str) -> str:
    return load_recipes(project)[name].description


def test_noop_rebuild_is_all_cache_hits(chain: Path, store: Path, built: dict) -> None:
    events: list[tuple[str, str, str]] = []
    b = builder(chain, store, events)
    started = time.monotonic()
    (image,) = b.build(["app"])
    elapsed = time.monotonic() - started
    assert image.cached and image.record.config_digest == built["image_id"]
    # (a tag that another project's "root" moved in this engine meanwhile is said, and is no rebuild)
    moved = [e for e in events if e[1] == "warning" and "which this store did not build" in e[2]]
    assert [e[:2] for e in events if e not in moved] == [("root", "cached"), ("tools", "cached"), ("app", "cached")]
    assert elapsed < 5  # the figure is in bench/bench_chain.py; this only catches a rebuild


def test_changing_the_leaf_rebuilds_only_the_leaf(chain: Path, store: Path, built: dict, tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    recipe = proj / "recipes" / "app.toml"
    nonce = uuid.uuid4().hex  # a change docker has never seen, so the new image must be loaded
    recipe.write_text(recipe.read_text().replace('"echo built > /home/app/built.txt"',
                                                 f'"echo built > /home/app/built.txt", "echo v2 {nonce} > /v2.txt"'))
    assert bs(proj, store, "build", "app").exit_code == 3  # its lock is stale now
    ok(bs(proj, store, "lock", "app"))
    assert read_lock(lock_path(proj, "tools")) == read_lock(lock_path(chain, "tools"))  # ancestors untouched
    events: list[tuple[str, str, str]] = []
    (image,) = builder(proj, store, events).build(["app"])
    stages = {(r, s) for r, s, _ in events}
    assert ("root", "cached") in stages and ("tools", "cached") in stages
    assert ("app", "built") in stages
    assert image.layers[1].diff_ids == tuple(built["diff_ids"][:2])
    assert image.record.diff_ids[2] != built["diff_ids"][2]
    # Loaded with only its new layer (docker had the parent), and whole: it runs on all three.
    assert ("app", "load") in stages
    load_detail = next(d for r, s, d in events if (r, s) == ("app", "load"))
    assert "(1 new layer)" in load_detail, load_detail
    out = docker.from_env().containers.run(image.record.config_digest, ["sh", "-c", "cat /v2.txt; jq --version"],
                                           remove=True, network_mode="none").decode()
    assert out.startswith("v2") and "jq-" in out


def test_a_relocked_parent_makes_the_child_lock_stale(chain: Path, store: Path, tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    recipe = proj / "recipes" / "tools.toml"
    text = recipe.read_text().replace('packages = ["jq", "python3"]', 'packages = ["jq", "python3", "tini"]')
    recipe.write_text(text)
    ok(bs(proj, store, "lock", "tools"))
    result = bs(proj, store, "build", "app")
    assert result.exit_code == 3
    assert "parent 'tools' was relocked since" in result.stderr and "buildsys lock app" in result.stderr


def test_a_failing_run_step_names_the_step_and_shows_its_output(chain: Path, store: Path, tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    (proj / "recipes" / "broken.toml").write_text(
        'parents = ["tools"]\nrun = ["echo preparing", "echo boom >&2; exit 7"]\n')
    ok(bs(proj, store, "lock", "broken"))
    result = bs(proj, store, "build", "broken")
    assert result.exit_code == 1
    assert "build step failed: run[1]: echo boom >&2; exit 7 (exit 7)" in result.stderr
    assert "| boom" in result.stderr
    mine = f"io.buildsys.build={socket.gethostname()}:{os.getpid()}"  # other runs may share the engine
    assert not docker.from_env().containers.list(all=True, filters={"label": mine})


def test_a_step_that_tries_the_network_fails_and_says_why(chain: Path, store: Path, tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    (proj / "recipes" / "online.toml").write_text(
        'parents = ["tools"]\nrun = ["python3 -c \\"import urllib.request; urllib.request.urlopen(\'https://pypi.org\')\\""]\n')
    ok(bs(proj, store, "lock", "online"))
    result = bs(proj, store, "build", "online")
    assert result.exit_code == 1
    assert "no network by design" in result.stderr


def test_diamond_builds_branches_in_parallel_and_verifies(tmp_path: Path, store: Path) -> None:
    proj = copy_project("diamond-build", tmp_path / "d")
    ok(bs(proj, store, "lock"))
    ok(bs(proj, store, "fetch"))
    images = json.loads(ok(bs(proj, store, "build", "--jobs", "2", "--json")).stdout)
    by_name = {i["recipe"]: i for i in images}
    assert by_name["top"]["chain"] == ["root", "left", "right", "top"]
    assert len(by_name["top"]["diff_ids"]) == 4
    # left's layer in top's image is left's own layer: same diff_id
    assert by_name["top"]["diff_ids"][:2] == by_name["left"]["diff_ids"]
    result = ok(bs(proj, store, "build", "--verify", "top"))
    assert "top: reproducible (4 layers" in result.output
    assert ok(bs(proj, store, "test", "top")).stdout.count("pass") == 6


def test_trixie_root_with_pip_locks_from_this_host_and_imports(tmp_path: Path, store: Path) -> None:
    proj = copy_project("trixie-pip", tmp_path / "t")
    ok(bs(proj, store, "lock", "tpy"))
    lock = read_lock(lock_path(proj, "tpy"))
    pip = lock.section(PipSection)
    assert pip.python and pip.python.startswith("3.13.")
    (markupsafe,) = pip.packages
    assert markupsafe.selected and "cp313" in markupsafe.selected
    ok(bs(proj, store, "fetch", "tpy"))
    ok(bs(proj, store, "build", "tpy"))
    result = ok(bs(proj, store, "test", "tpy"))
    assert "pass" in result.stdout


@pytest.fixture()
def http_files(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server over a folder with one file."""
    root = tmp_path / "srv"
    root.mkdir()
    (root / "hello.txt").write_text("hello from a pinned file\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_pinned_files_are_locked_vendored_and_seen_by_run_steps(chain: Path, store: Path, tmp_path: Path,
                                                                 http_files: str) -> None:
    proj = copy_project(chain, tmp_path / "p")
    # The server is on loopback, so the recipe must say that it reads from this machine.
    (proj / "recipes" / "withfile.toml").write_text(
        'parents = ["root"]\nrun = ["cp /buildsys/files/hello.txt /hello.txt"]\n\n'
        f'[[files]]\nurl = "{http_files}/hello.txt"\nlocal = true\n\n'
        '[test]\ncommands = ["grep -q pinned /hello.txt"]\n')
    ok(bs(proj, store, "lock", "withfile"))
    (locked,) = read_lock(lock_path(proj, "withfile")).section(FilesSection).files
    expected = hashlib.sha256(b"hello from a pinned file\n").hexdigest()
    assert (locked.name, locked.sha256, locked.size, locked.local) == ("hello.txt", expected, 25, True)
    ok(bs(proj, store, "fetch", "withfile"))
    ok(bs(proj, store, "build", "withfile"))
    assert "pass" in ok(bs(proj, store, "test", "withfile")).stdout
    # A sha256 given in the recipe is checked at lock time.
    (proj / "recipes" / "badfile.toml").write_text(
        f'parents = ["root"]\n\n[[files]]\nurl = "{http_files}/hello.txt"\nsha256 = "{"0" * 64}"\nlocal = true\n')
    result = bs(proj, store, "lock", "badfile")
    assert result.exit_code == 1
    assert "sha256 mismatch" in result.stderr and expected in result.stderr
    assert not lock_path(proj, "badfile").exists()


def test_an_unknown_apt_package_names_itself_the_archive_and_the_recipe(chain: Path, store: Path,
                                                                         tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    (proj / "recipes" / "typo.toml").write_text('parents = ["root"]\n\n[apt]\npackages = ["jqq"]\n')
    result = bs(proj, store, "lock", "typo")
    assert result.exit_code == 1
    assert "typo.toml: apt.packages" in result.stderr and "'jqq'" in result.stderr
    assert "deb.debian.org/debian bookworm" in result.stderr
    assert not lock_path(proj, "typo").exists()


def test_a_killed_layer_build_leaves_a_container_the_next_run_removes(chain: Path, store: Path,
                                                                     tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    (proj / "recipes" / "slow.toml").write_text('parents = ["root"]\nrun = ["sleep 120"]\n')
    ok(bs(proj, store, "lock", "slow"))
    cmd = [sys.executable, "-m", "buildsys", "-C", str(proj), "--store", str(store), "build", "slow"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = docker.from_env()
    owner = f"io.buildsys.build={socket.gethostname()}:{proc.pid}"
    deadline = time.monotonic() + 120
    while not client.containers.list(filters={"label": owner}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.containers.list(filters={"label": owner}), "the build container never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert client.containers.list(all=True, filters={"label": owner})  # orphaned, still there
    assert [p for p in (store / "tmp").iterdir() if f"-{proc.pid}-" in p.name]  # with its scratch folder
    # A build that the cache answers alone (issue 25: it connected to nothing, removed the scratch folder
    # under the running container and left the container) removes the container, then the folder.
    result = ok(bs(proj, store, "build", "--json", "root"))
    (image,) = json.loads(result.stdout)
    assert image["cached"]
    assert "removed 1 build container(s)" in result.stderr
    assert not client.containers.list(all=True, filters={"label": owner})
    assert not [p for p in (store / "tmp").iterdir() if f"-{proc.pid}-" in p.name]


def test_a_failing_test_command_is_exit_1_with_its_output(chain: Path, store: Path, built: dict,
                                                         tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    (proj / "recipes" / "checked.toml").write_text(
        'parents = ["app"]\n\n[test]\ncommands = ["echo checking; test -f /no/such/file"]\n')
    ok(bs(proj, store, "lock", "checked"))
    result = bs(proj, store, "test", "checked")
    assert result.exit_code == 1
    # the inherited ones still pass: root 1, tools 3 (its [pip] imports and 2 commands), app 2
    assert "FAIL" in result.stdout and result.stdout.count("pass") == 6
    assert "checking" in result.stderr and "1 of 7 test commands failed" in result.stderr


def test_a_damaged_layer_blob_is_named_removed_and_rebuilt(chain: Path, store: Path, built: dict) -> None:
    """Once the store's copy of a layer is damaged (same size, other bytes), a build that needs it must not
    trust it: before, cached builds used it and, once docker lacked the image, every build said "the docker
    engine is unreachable: invalid diffID" (exit 4), and `--no-cache` rebuilt the digest but kept the bad blob."""
    layout = OciLayout(store / "oci")
    manifest, _ = layout.read_image(built["manifest_digest"])
    top = manifest["layers"][-1]["digest"]
    blob = layout.blob_path(top)
    good = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    client = docker.from_env()
    client.images.remove(built["image_id"], force=True)  # docker must load it from the store again
    result = ok(bs(chain, store, "build", "--json", "app"))
    said = " ".join(result.stderr.split())
    assert f"the store's blob {top} was damaged" in said and "rebuilding" in said
    (image,) = json.loads(result.stdout)
    assert image["image_id"] == built["image_id"] and image["cached"] is False
    assert blob.read_bytes() == good
    assert client.images.get(built["image_id"]).id == built["image_id"]


def test_moving_a_tag_away_from_another_projects_image_is_said(chain: Path, store: Path, built: dict) -> None:
    """Two projects with a recipe of the same name re-pointed each other's NAME:latest silently."""
    import io
    import tarfile

    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as t:
        info = tarfile.TarInfo("other-project.txt")
        info.size = 6
        t.addfile(info, io.BytesIO(b"other\n"))
    client = docker.from_env()
    answer = client.api.import_image_from_data(payload.getvalue())
    other = client.images.get(json.loads(answer.strip().splitlines()[-1])["status"])
    try:
        other.tag("app", "latest")  # as another project's build of its own `app` would
        result = ok(bs(chain, store, "build", "app"))
        said = " ".join(result.stderr.split())
        assert f"app:latest pointed at {other.id[:19]}, which this store did not build" in said
        assert client.images.get("app:latest").id == built["image_id"]
        again = ok(bs(chain, store, "build", "app"))  # our own earlier image: nothing to say
        assert "did not build" not in " ".join(again.stderr.split())
    finally:
        client.images.remove(other.id, force=True)


def test_every_step_is_the_first_process_of_its_own_pid_namespace(chain: Path, store: Path, tmp_path: Path) -> None:
    """The PIDs a step sees are the same on every build (R's cli records one); it has no CAP_SYS_ADMIN."""
    proj = copy_project(chain, tmp_path / "p")
    (proj / "recipes" / "pids.toml").write_text(
        'parents = ["tools"]\nrun = [\n'
        '  "echo $$ > /pid-step; sh -c \'echo $$\' > /pid-child; ls /proc | grep -c \'^[0-9]\' > /proc-seen",\n'
        '  "python3 -c \'import os; print(os.getpid())\' > /pid-python; grep CapBnd /proc/self/status > /caps",\n'
        '  "sleep 600 &",\n'
        ']\n\n[test]\ncommands = ["sleep 600 & echo left running"]\n')
    ok(bs(proj, store, "lock", "pids"))
    started = time.monotonic()
    (built,) = json.loads(ok(bs(proj, store, "build", "--json", "pids")).stdout)
    assert time.monotonic() - started < 300  # the background sleep died with its step's namespace
    assert "pids: reproducible" in ok(bs(proj, store, "build", "--verify", "pids")).output
    image = built["image_id"]
    started = time.monotonic()
    ok(bs(proj, store, "test", "pids"))  # what a test command leaves running ends with its container
    assert time.monotonic() - started < 120
    out = docker.from_env().containers.run(image, ["sh", "-c", "cat /pid-step /pid-child /proc-seen /pid-python /caps"],
                                           remove=True, network_mode="none").decode().split()
    # the step's shell is PID 1; `sh -c` is 2; `ls` and `grep` are 3 and 4 and saw only 1-4 (plus /proc/self's own)
    assert out[:2] == ["1", "2"]
    assert int(out[2]) <= 4
    assert out[3] == "2"  # the second step starts again at 1: its shell, then python
    cap_bnd = int(out[5], 16)
    assert not cap_bnd & (1 << 21), "a build step holds CAP_SYS_ADMIN"


def test_an_image_without_setpriv_builds_without_namespaces_and_says_so(chain: Path, store: Path,
                                                                        tmp_path: Path) -> None:
    proj = copy_project(chain, tmp_path / "p")
    (proj / "recipes" / "nosetpriv.toml").write_text('parents = ["tools"]\nrun = ["rm /usr/bin/setpriv"]\n')
    (proj / "recipes" / "plain.toml").write_text('parents = ["nosetpriv"]\nrun = ["echo $$ > /pid-step"]\n')
    ok(bs(proj, store, "lock", "plain"))
    result = ok(bs(proj, store, "build", "plain"))
    assert "warning: the image has no setpriv (util-linux)" in result.stderr
    assert docker.from_env().containers.run("plain:latest", ["cat", "/pid-step"], remove=True,
                                            network_mode="none").decode().strip() != ""
