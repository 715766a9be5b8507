"""The Ecosystem interface: a sixth ecosystem put into ECOSYSTEMS is picked up everywhere, by name nowhere.

The fake is at our own protocol (``ecosystems.base.Ecosystem``); everything
around it is real: the bundled recipes and their committed locks, the real
staging folder, the real SBOM, the real freshness check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from buildsys import ecosystems
from buildsys.build.steps import STEP_MARKER, stage_layer
from buildsys.core.errors import LockError, StaleLock
from buildsys.core.store import Artifact, Store
from buildsys.ecosystems.base import Component, Ecosystem, LockContext, Pin
from buildsys.lock import diff_locks, resolve
from buildsys.lock.freshness import check_locks, fresh_locks
from buildsys.lock.parents import check_parents_agree
from buildsys.model.graph import build_graph
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe, load_recipes
from buildsys.ship.sbom import items
from buildsys.use.testing import package_checks

REPO = Path(__file__).resolve().parents[1]
DIAMOND = Path(__file__).parent / "fixtures" / "diamond"


class Conda(Ecosystem):
    """A made-up sixth ecosystem: pins ``numpy`` for the recipes it is told of, at a version per recipe."""

    name = "conda"
    agree_as = "conda"

    def __init__(self, versions: dict[str, str], problem: str = "", unmet: Sequence[str] = ()) -> None:
        self.versions = versions  # recipe -> the numpy version it "locked"
        self.problem = problem
        self.unmet = list(unmet)  # what its vendored files "need" that the chain does not pin
        self.calls: list[str] = []

    def prepare(self, ctx: LockContext) -> None:
        self.calls.append(f"prepare {ctx.recipe.name}")

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        self.calls.append(f"lock {ctx.recipe.name}")
        return dataclasses.replace(lock, source_date_epoch=max(lock.source_date_epoch, 1234))

    def artifacts(self, lock: Lock) -> list[Artifact]:
        if lock.recipe not in self.versions:
            return []
        return [Artifact(kind="conda", name="numpy", version=self.versions[lock.recipe], filename="numpy.conda",
                         sha256="c" * 64, size=1, urls=("https://conda.example/numpy.conda",))]

    def stage(self, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        if lock.recipe not in self.versions:
            return []
        (folder / "conda").mkdir()
        (folder / "conda" / "environment.txt").write_text(f"numpy=={self.versions[lock.recipe]}\n")
        return [f"echo '{STEP_MARKER}conda: install 1 package'\nconda install --offline numpy\n"]

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        return [self.problem] if self.problem and lock.recipe in self.versions else []

    def components(self, lock: Lock) -> list[Component]:
        if lock.recipe not in self.versions:
            return []
        v = self.versions[lock.recipe]
        return [Component("conda", "numpy", v, f"pkg:conda/numpy@{v}", "c" * 64, "https://conda.example/numpy.conda")]

    def pins(self, lock: Lock) -> list[Pin]:
        return [Pin("conda", "numpy", self.versions[lock.recipe], "")] if lock.recipe in self.versions else []

    def checks(self, recipe: Recipe) -> list[tuple[str, str]]:
        return [("conda list numpy", "conda list numpy")] if recipe.name in self.versions else []

    def closure_problems(self, store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
        return self.unmet


@pytest.fixture
def stack() -> tuple[object, dict[str, Lock]]:
    graph = build_graph(load_recipes(REPO))
    return graph, fresh_locks(REPO, graph, ["python"])


def with_conda(monkeypatch: pytest.MonkeyPatch, conda: Conda) -> None:
    monkeypatch.setattr(ecosystems, "ECOSYSTEMS", (*ecosystems.ECOSYSTEMS, conda))


def test_staging_runs_the_new_ecosystem_after_the_others_and_before_run(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = Recipe(name="app", path=Path("recipes/app.toml"), parents=("base",), run=("echo hi",))
    lock = Lock(recipe="app", recipe_hash="sha256:a", source_date_epoch=1)
    with_conda(monkeypatch, Conda({"app": "2.0.1"}))
    staged = stage_layer(Store(tmp_path / "store"), recipe, lock, tmp_path / "stage")
    steps = sorted((staged.folder / "steps").iterdir(), key=lambda f: int(f.stem))
    assert [f.read_text().splitlines()[-1] for f in steps] == ["conda install --offline numpy", "echo hi"]
    assert "run[0]: echo hi" in (staged.folder / "build.sh").read_text()
    assert (staged.folder / "conda" / "environment.txt").read_text() == "numpy==2.0.1\n"


def test_freshness_asks_the_new_ecosystem(stack: tuple[object, dict[str, Lock]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    graph, _ = stack
    with_conda(monkeypatch, Conda({"python": "2.0.1"}, problem="conda package 'numpy' is not locked"))
    with pytest.raises(StaleLock, match="conda package 'numpy' is not locked"):
        fresh_locks(REPO, graph, ["python"])  # type: ignore[arg-type]
    outcome = {o.recipe: o.status for o in check_locks(REPO, graph, ["python"])}  # type: ignore[arg-type]
    assert outcome == {"base": "fresh", "python": "stale"}


def test_sbom_test_checks_artifacts_and_upgrade_report_list_it(stack: tuple[object, dict[str, Lock]],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    graph, locks = stack
    before = list(items(graph, locks, "python"))  # type: ignore[arg-type]
    with_conda(monkeypatch, Conda({"python": "2.0.1"}))
    after = list(items(graph, locks, "python"))  # type: ignore[arg-type]
    assert after[:len(before)] == before  # the others' items, in their order, untouched
    assert [(i.layer, i.kind, i.purl) for i in after[len(before):]] == [("python", "conda", "pkg:conda/numpy@2.0.1")]
    assert package_checks(graph.recipes["python"])[-1] == ("conda list numpy", "conda list numpy")  # type: ignore[attr-defined]
    assert ecosystems.artifacts(locks["python"])[-1].kind == "conda"
    old = dataclasses.replace(locks["python"], recipe="old")
    (change,) = [c for c in diff_locks(old, locks["python"]) if c.kind == "conda"]
    assert (change.name, change.old, change.new) == ("numpy", "", "2.0.1")


def test_parents_must_agree_on_the_new_ecosystem_too(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = build_graph(load_recipes(DIAMOND))
    locks = {n: Lock(recipe=n, recipe_hash="sha256:x", source_date_epoch=1) for n in ("base", "left", "right")}
    with_conda(monkeypatch, Conda({"left": "1.26.4", "right": "2.0.1"}))
    with pytest.raises(LockError, match="parents disagree on conda package 'numpy'") as e:
        check_parents_agree(graph.recipes["top"], graph, locks)
    assert "1.26.4" in e.value.message and "2.0.1" in e.value.message


def test_resolve_is_each_ecosystem_in_turn_prepared_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = build_graph(load_recipes(DIAMOND))
    conda = Conda({})
    monkeypatch.setattr(ecosystems, "ECOSYSTEMS", (conda, conda))  # only the fake: no network, no docker
    lock = resolve(graph.recipes["base"], Store(tmp_path / "store"), graph, {})
    assert conda.calls == ["prepare base", "prepare base", "lock base", "lock base"]
    assert (lock.recipe, lock.source_date_epoch, lock.parents) == ("base", 1234, {})


def test_a_package_set_that_is_not_closed_names_its_ecosystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.build.checks import check_vendored

    graph = build_graph(load_recipes(DIAMOND))
    locks = {n: Lock(recipe=n, recipe_hash="sha256:x", source_date_epoch=1) for n in ("base", "left")}
    store = Store(tmp_path / "store")
    conda = Conda({}, unmet=["numpy 2.0.1 needs 'blas'"])
    monkeypatch.setattr(ecosystems, "ECOSYSTEMS", (conda,))
    with pytest.raises(StaleLock, match="left.lock: lock is stale: its conda package set is not closed: "
                                        "numpy 2.0.1 needs 'blas'\n"):
        check_vendored(store, locks, graph.recipes["left"], ["base", "left"])
    mamba = Conda({}, unmet=["scipy 1.0 needs 'numpy'", "scipy 1.0 needs 'blas'", "pandas 2.0 needs 'numpy'"])
    mamba.agree_as = "mamba"
    monkeypatch.setattr(ecosystems, "ECOSYSTEMS", (conda, mamba))
    with pytest.raises(StaleLock, match="its conda and mamba package sets are not closed: numpy 2.0.1 needs 'blas'; "
                                        r"scipy 1.0 needs 'numpy'; scipy 1.0 needs 'blas' \(and 1 more\)\n"):
        check_vendored(store, locks, graph.recipes["left"], ["base", "left"])


def test_a_relock_says_which_signed_archive_states_moved() -> None:
    """``lock --upgrade --check`` names an archive or third-party source whose Release moved, even when no
    package version did (a new InRelease with the same packages is still a new state)."""
    from buildsys.ecosystems.apt_sections import AptSection, LockedArchive, LockedSource
    from buildsys.model.lockfile import Lock

    def lock(date: str) -> Lock:
        archive = LockedArchive("http://archive.ubuntu.com/ubuntu", "jammy-security", "jammy", date, "1" * 64)
        source = LockedSource(url="https://repo.example/apt", suite="./", components=(), key_sha256="2" * 64,
                              key_size=1, key_url="https://repo.example/key.asc", key_path=None,
                              release_date=date, inrelease_sha256="3" * 64)
        return Lock(recipe="tools", recipe_hash="sha256:" + "0" * 64, source_date_epoch=0).with_sections(
            AptSection(archives=(archive,), sources=(source,)))

    old, new = lock("Mon, 01 Jun 2026 00:00:00 UTC"), lock("Tue, 02 Jun 2026 00:00:00 UTC")
    assert {(c.kind, c.name, c.old, c.new) for c in diff_locks(old, new)} == {
        ("apt-archive", "http://archive.ubuntu.com/ubuntu jammy-security", "Mon, 01 Jun 2026 00:00:00 UTC",
         "Tue, 02 Jun 2026 00:00:00 UTC"),
        ("apt-source", "https://repo.example/apt ./", "Mon, 01 Jun 2026 00:00:00 UTC",
         "Tue, 02 Jun 2026 00:00:00 UTC")}
    assert diff_locks(old, old) == []
