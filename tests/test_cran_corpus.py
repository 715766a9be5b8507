"""A data scientist's CRAN closure, built from source twice and compared.

The packages people really use (the tidyverse core's closure, data.table,
Rcpp, jsonlite, yaml, knitr, ...) come from a CRAN-like repository on loopback
made of real CRAN tarballs (tests/cranrepo.py), trixie's r-cran-* orig
tarballs: deb.debian.org answers 404 for bookworm's rlang, vctrs, pillar and
data.table ones (seen 2026-12-03), and trixie's set was built together against trixie's R, so its
versions fit each other. The parent is trixie's R with the compilers and no R
package beyond the ones r-base-core ships, so every package of the closure is
built from its source in the layer: 29 packages, 18 of them with compiled code
(C, C++ with Rcpp, OpenMP in data.table). ``build --verify`` rebuilds the
chain from nothing and must give the same digests; ``buildsys test`` loads
every package and uses a few. It passes once every build step is PID 1 of
its own PID namespace: cli keeps the installing R's PID in cli/R/cli.rdb
(clienv$pid, cliappenv$pid), and without that the two builds' PIDs differ
(353, 354, 355 seen on one machine).

Timings on a 2-core machine (warm tarball cache, cold store): lock 100-130 s
(it builds the parent), build 190-200 s, verify 290-490 s (root, parent and
the layer again), test 12 s; 11 to 14 minutes in all.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cranrepo import DownloadFailed, build, serve, write_repo
from helpers import bs, copy_project, ok

from buildsys.ecosystems.apt_sections import AptSection
from buildsys.ecosystems.cran import CranSection
from buildsys.model.lockfile import lock_path, read_lock

SUITE = "trixie"
# Debian source packages whose orig tarball is the CRAN tarball (Rcpp's is named rcpp).
SOURCES = ("rcpp", *(f"r-cran-{p}" for p in (
    "backports", "cli", "crayon", "data.table", "digest", "dplyr", "ellipsis", "evaluate", "fansi", "generics",
    "glue", "highr", "jsonlite", "knitr", "lifecycle", "magrittr", "pillar", "pkgconfig", "purrr", "r6", "rlang",
    "tibble", "tidyselect", "utf8", "vctrs", "withr", "xfun", "yaml")))
# What the corpus recipe asks for (tests/fixtures/cran-corpus) resolves to all of these, nothing from the parent.
CLOSURE = ("R6", "Rcpp", "backports", "cli", "crayon", "data.table", "digest", "dplyr", "ellipsis", "evaluate",
           "fansi", "generics", "glue", "highr", "jsonlite", "knitr", "lifecycle", "magrittr", "pillar",
           "pkgconfig", "purrr", "rlang", "tibble", "tidyselect", "utf8", "vctrs", "withr", "xfun", "yaml")
# The ones with a src/ folder: each gets one shared object under libs/. (tidyselect says NeedsCompilation: yes
# in its DESCRIPTION, but has no code to compile.)
COMPILED = ("Rcpp", "backports", "cli", "data.table", "digest", "dplyr", "ellipsis", "fansi", "glue", "jsonlite",
            "magrittr", "purrr", "rlang", "tibble", "utf8", "vctrs", "xfun", "yaml")
TIMES: dict[str, float] = {}

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]


def _r_names(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{n}"' for n in names)


@pytest.fixture(scope="module")
def corpus(request: pytest.FixtureRequest) -> dict:
    """package -> (version, tarball, DESCRIPTION fields); the tarballs are cached beside test_cran's."""
    cache = Path(request.config.cache.mkdir("cran-origs"))
    started = time.monotonic()
    try:
        packages = build(cache, SOURCES, SUITE)
    except DownloadFailed as e:
        pytest.fail(f"building the loopback CRAN repository: {e}")
    TIMES["tarballs (download or cache, repack)"] = time.monotonic() - started
    return packages


@pytest.fixture(scope="module")
def locked(corpus: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """(project, store, repository URL), the corpus locked; the repository is served for the module."""
    root = tmp_path_factory.mktemp("cran-corpus-repo")
    write_repo(root, corpus)
    with serve(root) as url:
        proj = copy_project("cran-corpus", tmp_path_factory.mktemp("cran-corpus"))
        recipe = proj / "recipes" / "corpus.toml"
        recipe.write_text(recipe.read_text().replace("@REPO@", url).replace("@CLOSURE@", _r_names(CLOSURE))
                          .replace("@COMPILED@", _r_names(COMPILED)))
        store = tmp_path_factory.mktemp("cran-corpus-store")
        started = time.monotonic()
        ok(bs(proj, store, "lock", "corpus"))
        TIMES["lock (with the parent's first build)"] = time.monotonic() - started
        yield proj, store, url


def _has_src(tarball: bytes, name: str) -> bool:
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        return any(m.name.startswith(f"{name}/src/") for m in tar.getmembers())


def test_the_tarballs_are_the_corpus(corpus: dict) -> None:
    assert sorted(corpus) == sorted(CLOSURE)
    assert sorted(n for n, (_, data, _) in corpus.items() if _has_src(data, n)) == sorted(COMPILED)


def test_every_package_of_the_closure_is_locked_from_the_loopback_repo(locked: tuple[Path, Path, str]) -> None:
    proj, _, url = locked
    cran = read_lock(lock_path(proj, "corpus")).section(CranSection)
    assert sorted(c.name for c in cran.packages) == sorted(CLOSURE)
    assert all(c.url.startswith(f"{url}/src/contrib/") for c in cran.packages), [c.url for c in cran.packages]
    assert cran.repo == url and cran.r_version and cran.r_version.startswith("4.")
    # The parent brings R and the compilers only: no r-cran-* package from Debian.
    debs = read_lock(lock_path(proj, "r")).section(AptSection).debs
    assert {"r-base-core", "r-base-dev"} <= {d.name for d in debs}
    assert not [d.name for d in debs if d.name.startswith("r-cran-")]


def test_build_verify_and_test(locked: tuple[Path, Path, str]) -> None:
    proj, store, _ = locked
    started = time.monotonic()
    ok(bs(proj, store, "fetch", "corpus"))
    TIMES["fetch"] = time.monotonic() - started
    started = time.monotonic()
    (image,) = json.loads(ok(bs(proj, store, "build", "--json", "corpus")).stdout)
    TIMES["build (parent cached)"] = time.monotonic() - started
    started = time.monotonic()
    r = bs(proj, store, "build", "--verify", "corpus")
    TIMES["verify (whole chain from nothing)"] = time.monotonic() - started
    assert r.exit_code == 0, f"the corpus layer is not reproducible:\n{r.output}{r.stderr}"
    assert f"corpus: reproducible (3 layers, image {image['image_id']}" in r.output
    started = time.monotonic()
    ok(bs(proj, store, "test", "corpus"))
    TIMES["test"] = time.monotonic() - started
    print("cran corpus timings:", json.dumps({k: round(v, 1) for k, v in TIMES.items()}))
