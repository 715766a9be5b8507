"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import buildsys.ecosystems  # noqa: F401  (each ecosystem registers its part of a lock and of a recipe)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def no_mirrors_after() -> Iterator[None]:
    """Mirrors are process-wide (the CLI sets them per command from the environment and files): a test
    that configures some, directly or through a CLI run, leaves none behind."""
    yield
    from buildsys.core import mirrors

    mirrors.configure(mirrors.Mirrors())


@pytest.fixture
def fixture_project() -> Callable[[str], Path]:
    """``fixture_project("valid-stack")`` -> the project folder tests/fixtures/valid-stack."""

    def get(name: str) -> Path:
        path = FIXTURES / name
        assert path.is_dir(), f"no fixture project {path}"
        return path

    return get


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 100 MB file system (tmpfs) for a store that cannot hold what is asked of it; needs root,
    as buildsys builds do (skipped where it cannot be mounted)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- shipping (publish, export/import, cache, sbom): real services, started once per session


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """Debian's docker-registry on 127.0.0.1, no auth."""
    from shipenv import docker_registry

    with docker_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory):
    """docker-registry with htpasswd (bcrypt) basic auth: user 'builder', password 's3cret'."""
    from shipenv import docker_registry

    with docker_registry(tmp_path_factory.mktemp("auth-registry"), "builder", "s3cret") as reg:
        yield reg


@pytest.fixture(scope="session")
def second_engine(tmp_path_factory: pytest.TempPathFactory):
    """A second dockerd (own data root, socket, bridge) that never saw our images."""
    from shipenv import second_dockerd

    with second_dockerd(tmp_path_factory.mktemp("engine2")) as engine:
        yield engine


@pytest.fixture(scope="session")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project, store): the chain fixture locked, fetched, built and verified once for the session.

    ``BUILDSYS_TEST_SHIPPED=PROJECT:STORE`` reuses such a pair (made the same way) while
    working on these tests; the session still checks that it builds and verifies.
    """
    import os

    from helpers import bs, copy_project, ok

    if os.environ.get("BUILDSYS_TEST_SHIPPED"):
        proj_s, store_s = os.environ["BUILDSYS_TEST_SHIPPED"].split(":")
        proj, store = Path(proj_s), Path(store_s)
        ok(bs(proj, store, "build", "app"))
        return proj, store

    proj = copy_project("chain", tmp_path_factory.mktemp("shipped"))
    store = tmp_path_factory.mktemp("shipped-store")
    ok(bs(proj, store, "lock", "app"))
    ok(bs(proj, store, "fetch", "app"))
    ok(bs(proj, store, "build", "--verify", "app"))
    return proj, store


# ---- the bundled stack (recipes/ and locks/ of this repository), built once per session

STACK = FIXTURES.parents[1]  # the repository root: recipes/ and locks/
# (recipe, image id, manifest digest) of each bundled image built in this session, printed at the
# end: the digests of two machines' runs can then be compared (they must be equal).
STACK_DIGESTS: dict[str, tuple[str, str]] = {}


@pytest.fixture(scope="session")
def shared_store() -> Iterator[Path]:
    """A store readable by other users (the non-root run test runs the CLI as one).

    BUILDSYS_TEST_RUN_STORE names one to keep between sessions (while working on these tests).
    """
    import os
    import shutil
    import tempfile

    if kept := os.environ.get("BUILDSYS_TEST_RUN_STORE"):
        yield Path(kept)
        return
    path = Path(tempfile.mkdtemp(prefix="buildsys-run-store-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def build_bundled(store: Path, recipe: str):
    """Fetch and build a bundled recipe into ``store``; its BuiltImage, its digests noted for the summary."""
    from helpers import bs, ok

    from buildsys.build.builder import Builder
    from buildsys.core.store import Store
    from buildsys.lock import fresh_locks
    from buildsys.model.graph import build_graph
    from buildsys.model.recipe import load_recipes

    ok(bs(STACK, store, "fetch", recipe))
    ok(bs(STACK, store, "build", recipe))
    graph = build_graph(load_recipes(STACK))
    image = Builder(Store(store), graph, fresh_locks(STACK, graph, [recipe]), tag=False).find(recipe)
    assert image is not None
    STACK_DIGESTS[recipe] = (image.record.config_digest, image.record.manifest_digest)
    return image


@pytest.fixture(scope="session")
def jupyter(shared_store: Path):
    """The bundled jupyter image, fetched and built once for every test that needs it."""
    return build_bundled(shared_store, "jupyter")


def pytest_terminal_summary(terminalreporter) -> None:
    if STACK_DIGESTS:
        terminalreporter.section("bundled images built in this run (compare across machines)")
        for recipe, (image_id, manifest) in sorted(STACK_DIGESTS.items()):
            terminalreporter.write_line(f"{recipe:8} image {image_id}  manifest {manifest}")
