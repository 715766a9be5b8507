"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixture_project() -> Callable[[str], Path]:
    """``fixture_project("valid-stack")`` -> the project folder tests/fixtures/valid-stack."""

    def get(name: str) -> Path:
        path = FIXTURES / name
        assert path.is_dir(), f"no fixture project {path}"
        return path

    return get


# ---- shipping (publish, export/import, cache, sbom): real services, started once per session


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Debian's docker-registry on 127.0.0.1, no auth."""
    from shipenv import docker_registry

    with docker_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """docker-registry with htpasswd (bcrypt) basic auth: user 'builder', password 's3cret'."""
    from shipenv import docker_registry

    with docker_registry(tmp_path_factory.mktemp("auth-registry"), "builder", "s3cret") as reg:
        yield reg


@pytest.fixture(scope="session")
def second_engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
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
