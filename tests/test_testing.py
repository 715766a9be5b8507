"""The checks `buildsys test` derives from a recipe's package lists, run by a real interpreter."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from buildsys.ecosystems.cran import CranRecipe
from buildsys.ecosystems.pip_resolve import PipRecipe
from buildsys.model.recipe import Recipe
from buildsys.use.testing import command_label, package_checks


def _recipe(pip: tuple[str, ...] = (), cran: tuple[str, ...] = ()) -> Recipe:
    return Recipe(name="r", path=Path("recipes/r.toml"), parents=("base",),
                  sections=(PipRecipe(packages=pip), CranRecipe(packages=cran)))


def _site(tmp_path: Path) -> Path:
    """A site folder with a distribution whose module fails to import, and one that imports."""
    site = tmp_path / "site"
    for dist, module, body in (("Broken-Pkg", "brokenmod", "raise RuntimeError('half-installed')\n"),
                               ("Fine.Pkg", "finemod", "VALUE = 1\n")):
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "top_level.txt").write_text(f"{module}\n")
        (site / f"{module}.py").write_text(body)
    return site


def _run(command: str, site: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    assert argv[0] == "python3"
    return subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=False)


def test_labels_name_the_requested_packages_without_specifiers() -> None:
    checks = package_checks(_recipe(pip=("tensorflow[and-cuda]>=2.16,<3", "PyYAML"), cran=("data.table",)))
    assert [label for label, _ in checks] == ["import tensorflow, PyYAML", "library(data.table)"]
    assert shlex.split(checks[1][1])[:2] == ["Rscript", "-e"]
    assert package_checks(_recipe()) == []


def test_the_module_is_the_distributions_own_and_a_failed_import_fails(tmp_path: Path) -> None:
    site = _site(tmp_path)
    # Another distribution name than module name (as scikit-learn -> sklearn), found in the metadata.
    ((_, good),) = package_checks(_recipe(pip=("fine-pkg",)))
    r = _run(good, site)
    assert r.returncode == 0 and "fine-pkg: import finemod ok" in r.stdout
    ((_, bad),) = package_checks(_recipe(pip=("fine_pkg", "broken-pkg", "not-there")))
    r = _run(bad, site)
    assert r.returncode == 1
    assert "broken-pkg: import brokenmod failed: RuntimeError: half-installed" in r.stderr
    assert "not-there: not installed" in r.stderr


def test_a_script_is_shown_by_its_first_line() -> None:
    assert command_label("true") == "true"
    assert command_label("# JupyterLab answers with its token\npython3 - <<'EOF'\nEOF") == (
        "# JupyterLab answers with its token ...")
