"""[pip] from-source: an sdist-only package and a C extension built from source in a layer, twice, equal.

tests/fixtures/pip-source: a bookworm root, a layer with python3 and a C
compiler (no pip), and a layer whose [pip] installs docopt 0.6.2 (published
as an sdist only; setup.py without pyproject.toml, so setuptools' legacy
backend) and markupsafe 3.0.2 from its sdist with its C extension. The lock
pins each sdist and its build requirements (setuptools, as a [[pip-build]]
wheel); the build, with no network, builds each in a fresh venv at a fixed
path from the vendored build requirements only; ``build --verify`` rebuilds
the chain from nothing and must give the same digests; the recipe's [test]
loads the compiled extension and finds no build path and no direct_url.json.

Timings on a 2-core machine (cold store): lock 80 s (it builds root and cc),
build 8 s, verify 35 s, test 3 s.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tomlkit
from helpers import bs, copy_project, ok

from buildsys.ecosystems.pip import PipSection
from buildsys.model.lockfile import lock_path, read_lock

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    proj = copy_project("pip-source", tmp_path_factory.mktemp("pip-source"))
    store = tmp_path_factory.mktemp("pip-source-store")
    started = time.monotonic()
    ok(bs(proj, store, "lock", "src"))
    TIMES["lock (with the parents' first build)"] = time.monotonic() - started
    return proj, store


def test_the_sdists_and_their_build_requirements_are_locked(locked: tuple[Path, Path]) -> None:
    proj, _ = locked
    pip = read_lock(lock_path(proj, "src")).section(PipSection)
    by_name = {p.name: p for p in pip.packages}
    assert sorted(by_name) == ["docopt", "markupsafe", "six"]
    assert by_name["docopt"].selected == "docopt-0.6.2.tar.gz"
    assert by_name["markupsafe"].selected == "markupsafe-3.0.2.tar.gz"
    six = by_name["six"]
    assert six.selected and six.selected.endswith(".whl") and six.build_requires is None
    # Each sdist names its build requirements, each a [[pip-build]] wheel (setuptools at least).
    for name in ("docopt", "markupsafe"):
        needs = by_name[name].build_requires
        assert needs and any(n.startswith("setuptools==") for n in needs), needs
        for req in needs:
            assert str(pip.build_pin(req).selected).endswith(".whl")
    # Build requirements are not installed into the image: no [[pip]] entry for them.
    assert not {b.name for b in pip.build} & set(by_name)


def test_built_from_source_twice_from_nothing_equal_and_tested(locked: tuple[Path, Path]) -> None:
    proj, store = locked
    started = time.monotonic()
    ok(bs(proj, store, "fetch", "src"))
    TIMES["fetch"] = time.monotonic() - started
    started = time.monotonic()
    build = ok(bs(proj, store, "build", "--json", "src"))
    TIMES["build (parents cached)"] = time.monotonic() - started
    (image,) = json.loads(build.stdout)
    started = time.monotonic()
    r = bs(proj, store, "build", "--verify", "src")
    TIMES["verify (whole chain from nothing)"] = time.monotonic() - started
    assert r.exit_code == 0, f"the from-source layer is not reproducible:\n{r.output}{r.stderr}"
    assert f"src: reproducible (3 layers, image {image['image_id']}" in r.output
    started = time.monotonic()
    result = ok(bs(proj, store, "test", "src"))
    TIMES["test"] = time.monotonic() - started
    assert "6 passed, 0 failed" in result.output + result.stderr
    print("pip from-source timings:", json.dumps({k: round(v, 1) for k, v in TIMES.items()}))


def _drop_build_requires(doc: tomlkit.TOMLDocument) -> None:
    next(p for p in doc["pip"] if p["name"] == "markupsafe").pop("build-requires")


def _drop_pip_build(doc: tomlkit.TOMLDocument) -> None:
    doc.pop("pip-build")


def _build_requires_on_a_wheel(doc: tomlkit.TOMLDocument) -> None:
    next(p for p in doc["pip"] if p["name"] == "six")["build-requires"] = ["setuptools==1.0"]


@pytest.mark.parametrize(("edit", "says"), [
    (_drop_build_requires, "markupsafe-3.0.2.tar.gz is a source distribution: its build requirements must be locked"),
    (_drop_pip_build, "is no [[pip-build]] entry of this lock"),
    (_build_requires_on_a_wheel, "only a source distribution is built"),
])
def test_a_hand_edited_lock_is_refused_before_any_container(locked: tuple[Path, Path], tmp_path: Path,
                                                            edit: Callable[[tomlkit.TOMLDocument], None],
                                                            says: str) -> None:
    src, store = locked
    proj = tmp_path / "p"
    shutil.copytree(src, proj)
    path = lock_path(proj, "src")
    doc = tomlkit.parse(path.read_text())
    edit(doc)
    path.write_text(tomlkit.dumps(doc))
    r = bs(proj, store, "build", "src")
    assert r.exit_code == 2, r.output
    assert "src.lock" in r.output and says in r.output, r.output


def test_from_source_naming_what_the_layer_does_not_install_is_refused(locked: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    src, store = locked
    proj = tmp_path / "p"
    shutil.copytree(src, proj)
    recipe = proj / "recipes" / "src.toml"
    recipe.write_text(recipe.read_text().replace('from-source = ["docopt", "MarkupSafe"]',
                                                 'from-source = ["docopt", "jinja2"]'))
    r = bs(proj, store, "lock", "src")
    assert r.exit_code == 2, r.output
    assert "src.toml" in r.output and "pip.from-source[1]" in r.output, r.output
    assert "from-source names 'jinja2', which this layer does not install" in r.output
