"""[pip] locking inside the image, and the offline install from vendored wheels.

These talk to the real things: dockerd, PyPI (from the host and from a
container with network "host"), and a Debian root with python3 installed.
The root is ``base:latest`` where this machine has one, else it is built with
buildsys from tests/fixtures/root-bookworm; python3 is added on top with
``docker build``. Images made here are named ``buildsys-test-pip-*`` and
removed at the end of the session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import io
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from buildsys.cli import cli
from buildsys.core import net
from buildsys.core.errors import NotVendored, RecipeError
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts
from buildsys.ecosystems.pip import PipSection, install_script, stage_wheels
from buildsys.ecosystems.pip_errors import ConflictingPins, NoDistribution, NoWheel, PythonMissing
from buildsys.ecosystems.pip_resolve import (
    LockedPip,
    LockedWheelFile,
    PipLock,
    PipRecipe,
    _existing_output,
    _parse_output,
    lock_pip,
)
from buildsys.ecosystems.pip_tools import TOOLS, tools_dir
from buildsys.ecosystems.pypi import index_files, index_files_many
from buildsys.engine import Engine
from buildsys.fetch.vendor import fetch
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe

FIXTURES = Path(__file__).parent / "fixtures"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SESSION = uuid.uuid4().hex[:8]

F = TypeVar("F", bound=Callable[..., object])


def integration(test: F) -> F:
    """A test against the real dockerd and PyPI (slow, but `make test` runs it)."""
    return pytest.mark.docker(pytest.mark.network(pytest.mark.slow(test)))


# --- images and store -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine.connect()


@pytest.fixture(scope="session")
def root_image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bookworm root without python3 (BUILDSYS_TEST_BUILD_ROOT=1 builds one even where base:latest exists)."""
    if engine.has_image("base:latest") and not os.environ.get("BUILDSYS_TEST_BUILD_ROOT"):
        yield "base:latest"
        return
    name = f"buildsys-test-pip-root-{SESSION}"
    proj = tmp_path_factory.mktemp("root-project")
    shutil.copytree(FIXTURES / "root-bookworm", proj, dirs_exist_ok=True)
    (proj / "recipes" / "mini.toml").rename(proj / "recipes" / f"{name}.toml")
    store = tmp_path_factory.mktemp("root-store")
    for command in ("lock", "fetch", "build"):
        result = CliRunner().invoke(cli, ["-C", str(proj), "--store", str(store), command, name])
        assert result.exit_code == 0, f"buildsys {command}: {result.output}"
    try:
        yield f"{name}:latest"
    finally:
        engine.remove_image(f"{name}:latest")


@pytest.fixture(scope="session")
def python_image(engine: Engine, root_image: str) -> Iterator[str]:
    """The root plus Debian's python3 (no pip, no venv): what a [apt] python3 layer gives."""
    tag = f"buildsys-test-pip-python-{SESSION}:latest"
    dockerfile = (f"FROM {root_image}\n"
                  "USER root\n"  # the bundled base runs as its non-root user
                  "RUN apt-get update && apt-get install -y --no-install-recommends python3 "
                  "&& rm -rf /var/lib/apt/lists/*\n")
    engine.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="host", rm=True,
                               forcerm=True, pull=False)
    try:
        yield tag
    finally:
        engine.remove_image(tag)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("pip-store"))


def recipe(*packages: str, index_url: str | None = None) -> Recipe:
    return Recipe(name="py", path=Path("recipes/py.toml"), parents=("python",),
                  sections=(PipRecipe(packages, index_url),))


def lock(engine: Engine, image: str, store: Store, *packages: str, **kw: object) -> PipLock:
    args: dict = {"constraints": {}, "previous": (), "upgrade": False, "upgrade_packages": ()}
    args.update(kw)
    return lock_pip(engine, image, recipe(*packages), store, **args)


@pytest.fixture(scope="session")
def six_markupsafe(engine: Engine, python_image: str, store: Store) -> PipLock:
    # A marker that is false on 3.11 drops its requirement: resolution is for the image's Python.
    return lock(engine, python_image, store, "six", "markupsafe", "tomli; python_version < '3.11'")


def by_name(pl: PipLock) -> dict[str, LockedPip]:
    return {p.name: p for p in pl.packages}


def selected(p: LockedPip) -> LockedWheelFile:
    (f,) = [f for f in p.files if f.name == p.selected]
    return f


# --- the tools ------------------------------------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.slow
def test_tools_dir_is_installed_once_and_reused(store: Store) -> None:
    started = time.monotonic()
    path = tools_dir(store)
    assert (path / "piptools" / "__main__.py").is_file()
    installed = {p.name.split("-")[0].lower().replace("_", "-") for p in path.glob("*.dist-info")}
    assert installed == {name for name, _, _ in TOOLS}
    print(f"tools_dir: {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    assert tools_dir(store) == path
    assert time.monotonic() - started < 0.1  # reused, not reinstalled
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary folder left


# --- locking --------------------------------------------------------------------------------------------------------


@integration
def test_lock_resolves_for_the_python_of_the_image(six_markupsafe: PipLock) -> None:
    pl = six_markupsafe
    assert re.fullmatch(r"3\.11\.\d+", pl.python)
    pins = by_name(pl)
    assert set(pins) == {"six", "markupsafe"}
    assert re.fullmatch(r"markupsafe-[\d.]+-cp311-cp311-.*manylinux.*_x86_64.*\.whl", pins["markupsafe"].selected or "")
    assert re.fullmatch(r"six-[\d.]+-py2\.py3-none-any\.whl", pins["six"].selected or "")
    # every acceptable file, as pip-compile --generate-hashes lists them: wheels for other Pythons and the sdist
    names = {f.name for f in pins["markupsafe"].files}
    assert any("cp313" in n for n in names) and any(n.endswith(".tar.gz") for n in names)
    for p in (*pl.packages, pl.installer):
        assert p.files and p.selected in {f.name for f in p.files}
        for f in p.files:
            assert HEX64.match(f.sha256), f
            assert f.url.startswith("https://") and f.url.endswith(f.name)
            assert f.size and f.size > 0
    assert pl.installer.name == "pip" and re.fullmatch(r"pip-[\d.]+-py3-none-any\.whl", pl.installer.selected or "")
    assert len(pl.installer.files) == 1
    # The epoch is an upload time on the index, not the wall clock.
    assert 1_600_000_000 < pl.epoch < time.time() - 60


@integration
def test_relock_with_nothing_new_gives_identical_data(engine: Engine, python_image: str, store: Store,
                                                      six_markupsafe: PipLock) -> None:
    again = lock(engine, python_image, store, "six", "markupsafe", "tomli; python_version < '3.11'",
                 previous=six_markupsafe.packages, previous_installer=six_markupsafe.installer)
    assert again == six_markupsafe
    # A kept pin keeps the files its lock had (pip-compile's --reuse-hashes): a wheel uploaded later for the
    # same release does not change the lock. Simulated by a previous lock that knew only the selected wheel.
    old = by_name(six_markupsafe)["markupsafe"]
    known = dataclasses.replace(old, files=(selected(old),))
    again = lock(engine, python_image, store, "six", "markupsafe", previous=[known])
    assert by_name(again)["markupsafe"] == known
    assert by_name(again)["six"] == by_name(six_markupsafe)["six"]  # not in previous: every file of the release


@integration
def test_ancestor_pins_bound_the_resolution_and_are_left_out(engine: Engine, python_image: str,
                                                             store: Store) -> None:
    # Without the constraint pip-compile would pick the newest six, and lock_pip would refuse the mismatch.
    pl = lock(engine, python_image, store, "six", "markupsafe", constraints={"six": "1.16.0"})
    assert set(by_name(pl)) == {"markupsafe"}


@integration
def test_a_requirement_against_an_ancestor_pin_is_a_conflict(engine: Engine, python_image: str,
                                                            store: Store) -> None:
    with pytest.raises(ConflictingPins) as e:
        lock(engine, python_image, store, "six>=1.17", constraints={"Six": "1.16.0"})
    assert e.value.ancestors == {"six": "1.16.0"}
    assert "six>=1.17 (asked by the recipe)" in str(e.value)
    assert "six==1.16.0 (pinned by an ancestor layer)" in str(e.value)


@integration
def test_previous_pins_are_kept_and_upgrade_package_moves_only_those(engine: Engine, python_image: str,
                                                                     store: Store) -> None:
    old = lock(engine, python_image, store, "six==1.16.0", "markupsafe==2.1.5")
    kept = lock(engine, python_image, store, "six", "markupsafe", previous=old.packages)
    assert {n: p.version for n, p in by_name(kept).items()} == {"six": "1.16.0", "markupsafe": "2.1.5"}
    moved = lock(engine, python_image, store, "six", "markupsafe", previous=old.packages, upgrade_packages=["SIX"])
    versions = {n: p.version for n, p in by_name(moved).items()}
    assert versions["markupsafe"] == "2.1.5"
    assert tuple(map(int, versions["six"].split("."))) > (1, 16, 0)


@integration
def test_an_unknown_package_is_named(engine: Engine, python_image: str, store: Store) -> None:
    with pytest.raises(NoDistribution) as e:
        lock(engine, python_image, store, "six", "no-such-package-buildsys-test")
    msg = str(e.value)
    assert "no distribution named 'no-such-package-buildsys-test' on https://pypi.org/simple" in msg
    assert "ERROR: Could not find a version" in msg  # pip's own words
    assert "Traceback" not in msg and 'File "' not in msg


@integration
def test_conflicting_pins_show_both_sides(engine: Engine, python_image: str, store: Store) -> None:
    with pytest.raises(ConflictingPins) as e:
        lock(engine, python_image, store, "jinja2==3.1.4", "markupsafe<2")
    msg = str(e.value)
    assert "markupsafe<2 (asked by the recipe)" in msg
    assert "MarkupSafe>=2.0 (asked by jinja2 3.1.4)" in msg


@integration
def test_a_package_without_a_wheel_is_refused_with_the_python_and_tags(engine: Engine, python_image: str,
                                                                      store: Store) -> None:
    # docopt 0.6.2 is published as an sdist only.
    with pytest.raises(NoWheel) as e:
        lock(engine, python_image, store, "docopt==0.6.2", "six")
    msg = str(e.value)
    assert "docopt==0.6.2: published files: docopt-0.6.2.tar.gz" in msg
    assert "Python 3.11." in msg and "cp311-cp311-" in msg
    assert "pin a version that publishes a wheel" in msg
    assert '[pip] from-source = ["docopt"]' in msg
    assert [m[0] for m in e.value.missing] == ["docopt"]


@integration
def test_an_image_without_python_says_to_add_it(engine: Engine, root_image: str, store: Store) -> None:
    with pytest.raises(PythonMissing) as e:
        lock(engine, root_image, store, "six")
    assert "has no python3" in str(e.value)
    assert "add python3 to [apt] packages" in str(e.value)


# --- build time -----------------------------------------------------------------------------------------------------


def as_lock(pl: PipLock) -> Lock:
    return Lock(recipe="py", recipe_hash="sha256:" + "0" * 64, source_date_epoch=pl.epoch).with_sections(
        PipSection(pl.packages, pl.python, pl.installer))


@integration
def test_staged_wheels_install_offline_into_the_image(engine: Engine, python_image: str, store: Store,
                                                      six_markupsafe: PipLock, tmp_path: Path) -> None:
    lk = as_lock(six_markupsafe)
    fetch(store, artifacts(lk), progress=False)
    staged = tmp_path / "wheels"
    stage_wheels(store, lk, staged)
    pins = by_name(six_markupsafe)
    assert sorted(p.name for p in staged.iterdir()) == sorted(
        [selected(pins["markupsafe"]).name, selected(pins["six"]).name, str(six_markupsafe.installer.selected),
         "requirements.txt"])
    script = install_script(lk)
    check = "python3 -c 'import markupsafe, six; print(markupsafe.__file__); print(six.__file__)'"
    result = engine.run(python_image, ["-c", f"{script} && {check}"], entrypoint=["/bin/sh"], network="none",
                        user="0:0", mounts=[(str(staged), "/buildsys/wheels", True)])
    assert result.exit_code == 0, result.output
    # Beside dpkg's files, never over them (Debian's pip scheme for /usr/local).
    assert re.search(r"^/usr/local/lib/python3\.11/dist-packages/markupsafe/__init__\.py$", result.output, re.M)
    assert re.search(r"^/usr/local/lib/python3\.11/dist-packages/six\.py$", result.output, re.M)

    # The evidence for --break-system-packages: Debian marks its python EXTERNALLY-MANAGED.
    plain = script.replace(" --break-system-packages", "")
    result = engine.run(python_image, ["-c", plain], entrypoint=["/bin/sh"], network="none", user="0:0",
                        mounts=[(str(staged), "/buildsys/wheels", True)])
    assert result.exit_code != 0 and "externally-managed-environment" in result.output


def fake_pin(name: str, data: bytes) -> tuple[LockedPip, bytes]:
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    fname = f"{name}-1.0-py3-none-any.whl"
    return LockedPip(name=name, version="1.0", selected=fname,
                     files=(LockedWheelFile(name=fname, sha256=sha, url=f"https://example.org/{fname}",
                                            size=len(data)),)), data


def test_stage_wheels_links_the_vendored_files_and_pins_their_hashes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    a, a_data = fake_pin("alpha", b"alpha wheel")
    pip, pip_data = fake_pin("pip", b"pip wheel")
    for p, data in ((a, a_data), (pip, pip_data)):
        store.vendor.mkdir(parents=True, exist_ok=True)
        store.vendor_path(p.files[0].sha256).write_bytes(data)
    lk = Lock(recipe="py", recipe_hash="x", source_date_epoch=0).with_sections(PipSection((a,), installer=pip))
    dest = tmp_path / "wheels"
    stage_wheels(store, lk, dest)
    assert (dest / "alpha-1.0-py3-none-any.whl").read_bytes() == a_data
    assert (dest / "alpha-1.0-py3-none-any.whl").stat().st_ino == store.vendor_path(a.files[0].sha256).stat().st_ino
    assert (dest / "requirements.txt").read_text() == f"alpha==1.0 --hash=sha256:{a.files[0].sha256}\n"
    script = install_script(lk, "/w")
    assert script.startswith("PIP_CONFIG_FILE=/dev/null python3 /w/pip-1.0-py3-none-any.whl/pip install ")
    for flag in ("--no-index", "--find-links /w", "--require-hashes", "--no-deps", "--break-system-packages",
                 "-r /w/requirements.txt"):
        assert flag in script
    assert install_script(lk.with_sections(PipSection(installer=pip))) == ""


def test_stage_wheels_names_a_missing_wheel_and_says_fetch(tmp_path: Path) -> None:
    a, _ = fake_pin("alpha", b"alpha wheel")
    pip, _ = fake_pin("pip", b"pip wheel")
    lk = Lock(recipe="py", recipe_hash="x", source_date_epoch=0).with_sections(PipSection((a,), installer=pip))
    with pytest.raises(NotVendored) as e:
        stage_wheels(Store(tmp_path / "store"), lk, tmp_path / "wheels")
    assert "alpha-1.0-py3-none-any.whl" in str(e.value) and "buildsys fetch py" in str(e.value)


@pytest.mark.parametrize("bad", ["--index-url=https://example.org/simple", "six @ https://example.org/six.whl",
                                 "six\n-e ."])
def test_requirements_that_are_not_plain_are_refused_before_locking(bad: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as e:
        lock_pip(None, "unused", recipe("markupsafe", bad), Store(tmp_path), constraints={},  # type: ignore[arg-type]
                 previous=(), upgrade=False, upgrade_packages=())
    assert e.value.key == "pip.packages[1]" and e.value.exit_code == 2
    assert not (tmp_path / "cache").exists()  # refused before anything was installed or run


def test_previous_pins_round_trip_through_pip_compile_output() -> None:
    a, _ = fake_pin("Alpha_Beta", b"a")
    text = _existing_output([a])
    assert [(p.name, p.version) for p in _parse_output(text)] == [("alpha-beta", "1.0")]
    # markers and extras as pip-compile may write them
    pins = _parse_output('six==1.17.0 ; python_version >= "3.8" \\\n    --hash=sha256:' + "a" * 64 + "\n"
                         "--index-url https://x\n# comment\nfoo[bar]==2.0\n")
    assert [(p.name, p.version) for p in pins] == [("foo", "2.0"), ("six", "1.17.0")]


@pytest.mark.network
def test_an_index_without_the_json_api_is_read_from_its_html(tmp_path: Path) -> None:
    """A PEP 503 index (HTML only), served on loopback: files come from the anchors' #sha256= fragments."""
    page = tmp_path / "six" / "index.html"
    page.parent.mkdir()
    page.write_text('<html><body><a href="https://files.example.org/six-1.0-py3-none-any.whl#sha256=' + "b" * 64
                    + '">six-1.0-py3-none-any.whl</a><a href="../six-0.9.tar.gz#sha256=' + "c" * 64
                    + '">six-0.9.tar.gz</a></body></html>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            files = index_files(f"http://127.0.0.1:{server.server_port}", "Six")
        finally:
            server.shutdown()
    assert files["b" * 64].url == "https://files.example.org/six-1.0-py3-none-any.whl"
    assert files["c" * 64].name == "six-0.9.tar.gz"
    assert files["c" * 64].url == f"http://127.0.0.1:{server.server_port}/six-0.9.tar.gz"


def test_many_index_pages_are_read_over_a_few_kept_connections(tmp_path: Path) -> None:
    """``index_files_many`` reads on one client: 24 pages over at most 8 connections, one per worker (a new
    client per page opened 24, each looked up twice in DNS: 12 s of a pytorch lock went to lookups)."""
    names = [f"proj{i}" for i in range(24)]
    for i, name in enumerate(names):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f'<a href="../{name}-1.0.tar.gz#sha256={i:064x}">x</a>')
    connections: list[int] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as PyPI

        def setup(self) -> None:
            connections.append(1)
            super().setup()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path))) \
            as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            files = index_files_many(f"http://127.0.0.1:{server.server_port}", names)
        finally:
            server.shutdown()
    assert [next(iter(files[n])) for n in names] == [f"{i:064x}" for i in range(24)]
    assert 1 <= len(connections) <= 8


@pytest.mark.network
def test_a_policy_resolves_a_host_once_for_many_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's "does it lead to this machine?" lookup is made once a minute per host, not per page."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def counted(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted)
    policy = net.Policy()
    for name in ("six", "toolz", "idna"):
        policy.check(f"https://pypi.org/simple/{name}/")
    assert lookups == ["pypi.org"]
    net.Policy().check("https://pypi.org/simple/six/")  # remembered by that policy (its client) only
    assert lookups == ["pypi.org", "pypi.org"]
    shared = net.Policy()  # 8 threads of one client asking at once: still one lookup
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: shared.check(f"https://pypi.org/simple/p{i}/"), range(8)))
    assert lookups == ["pypi.org"] * 3


@pytest.mark.network
def test_pypi_simple_json_gives_sizes_and_upload_times() -> None:
    files = index_files("https://pypi.org/simple", "six")
    f = files["4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"]  # six 1.17.0's wheel
    assert f.name == "six-1.17.0-py2.py3-none-any.whl"
    assert f.size == 11050
    assert f.uploaded == 1733333726  # 2024-12-04T17:35:26Z


# --- from-source: what needs no container (tests/test_pip_source.py builds it) -------------------------------------


def test_from_source_must_name_distributions(tmp_path: Path) -> None:
    from buildsys.model.recipe import load_recipes

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "root.toml").write_text('[base]\ndebian = { suite = "bookworm" }\n')
    (tmp_path / "recipes" / "py.toml").write_text(
        'parents = ["root"]\n[pip]\npackages = ["docopt"]\nfrom-source = ["docopt", "docopt==0.6.2"]\n')
    with pytest.raises(RecipeError) as e:
        load_recipes(tmp_path)
    msg = str(e.value)
    assert "py.toml" in msg and "pip.from-source[1]" in msg and "'docopt==0.6.2' is not a Python distribution name" \
        in msg


@pytest.mark.parametrize(("output", "says"), [
    ("::buildsys-step::pip: build foo 1.0 from source\nsrc/foo.c:1:10: fatal error: zlib.h: No such file or "
     "directory\nerror: command '/usr/bin/x86_64-linux-gnu-gcc' failed with exit code 1\n",
     "pip package foo 1.0 needs the header zlib.h"),
    ("::buildsys-step::pip: build foo 1.0 from source\nerror: command 'x86_64-linux-gnu-gcc' failed: No such file "
     "or directory\n", "pip package foo 1.0 needs a compiler to build from source"),
    ("::buildsys-step::pip: build foo 1.0 from source\nTraceback ...\n",
     "pip package foo 1.0 failed to build from its source distribution"),
])
def test_a_failed_source_build_gets_a_hint(output: str, says: str) -> None:
    from buildsys.ecosystems.pip import PIP

    assert says in (PIP.failure_hint(output) or "")


def test_no_hint_for_a_step_that_is_not_a_source_build() -> None:
    from buildsys.ecosystems.pip import PIP

    assert PIP.failure_hint("::buildsys-step::pip: install 3 packages\nerror\n") is None



@contextlib.contextmanager
def relayed_pypi(rewrite: dict[str, str] | None = None) -> Iterator[Any]:
    """PyPI and its file host through a loopback relay (``mirrorproxy``) configured as their mirrors; ``rewrite``
    edits what the index answers."""
    from mirrorproxy import proxy

    from buildsys.core import mirrors
    from buildsys.core.mirrors import Mirror, Mirrors

    with proxy({"/simple": "https://pypi.org/simple", "/files": "https://files.pythonhosted.org"},
               rewrite={"https://files.pythonhosted.org": "@SELF@/files", **(rewrite or {})}) as relay:
        mirrors.configure(Mirrors([Mirror("https://pypi.org/simple", f"{relay.url}/simple", "test"),
                                   Mirror("https://files.pythonhosted.org", f"{relay.url}/files", "test")]))
        try:
            yield relay
        finally:
            mirrors.configure(Mirrors())

@integration
def test_a_lock_made_through_a_mirror_names_only_pypi(engine: Engine, python_image: str, store: Store) -> None:
    """pip-compile in the container and the index reads on the host go to the mirror (core/mirrors); the
    file links it answers with are its own, and the lock gets PyPI's back."""
    with relayed_pypi() as relay:
        pl = lock(engine, python_image, store, "six==1.17.0")
    assert relay.saw("/simple/six/") and relay.saw("/simple/pip/") and relay.saw("/files/packages/")
    urls = [f.url for p in (*pl.packages, pl.installer) for f in p.files]
    assert urls and all(u.startswith("https://files.pythonhosted.org/packages/") for u in urls), urls


@integration
def test_a_lock_reads_the_metadata_of_wheels_not_the_wheels(engine: Engine, python_image: str, store: Store) -> None:
    """An index that does not serve a wheel's METADATA alone (no PEP 658 core-metadata, as this workplace's
    PyPI): pip reads it with range requests (fast-deps), so a lock takes a fraction of the wheel's bytes,
    where it took the whole wheel twice (pip-compile, then the dry run)."""
    no_pep658 = {'"core-metadata"': '"x-core-metadata"', '"data-dist-info-metadata"': '"x-dist-info-metadata"',
                 "data-core-metadata=": "data-x-core-metadata=", "data-dist-info-metadata=": "data-x-dist-info="}
    with relayed_pypi(no_pep658) as relay:
        pl = lock(engine, python_image, store, "numpy==2.2.6")
    wheel = selected(by_name(pl)["numpy"])
    assert wheel.size and wheel.size > 10_000_000, wheel  # a wheel worth not downloading
    read = sum(n for path, n in relay.sent.items() if path.endswith("/" + wheel.name))
    assert read and not relay.saw(".metadata"), relay.asked  # pip read the wheel itself, not a PEP 658 file
    assert read < wheel.size / 10, f"{read} bytes of {wheel.name} ({wheel.size} bytes) were downloaded"
