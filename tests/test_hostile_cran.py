"""Crafted CRAN-like repositories (issue 25): bounded index reads, a linear parser, paths that stay home.

Each repository is the loopback one of tests/cranrepo.py with one thing made
hostile: a gzip bomb for PACKAGES.gz, a PACKAGES with long continued fields,
a ``Path:`` with a space or one that climbs out of the repository. ``lock``
reads the index before it builds anything, so these need no docker. The
tarball that lies about its own name is built in test_cran.py, beside the
parent image it needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cranrepo import gzip_bomb, long_continuations, serve
from helpers import bs, copy_project

from buildsys.ecosystems import covers
from buildsys.ecosystems.cran import INDEX_CAP, CranIndexError, parse_index, read_index, repo_relative_problem
from buildsys.model.lockfile import read_lock
from buildsys.model.recipe import load_recipes

ROOT = Path(__file__).resolve().parent.parent
STANZA = "Package: hello\nVersion: 1.0\nDepends: R (>= 3.0)\n"


def project(tmp_path: Path, url: str) -> Path:
    proj = copy_project("cran", tmp_path / "p")
    for f in (proj / "recipes").glob("*.toml"):
        f.write_text(f.read_text().replace("@REPO@", url))
    return proj


def repo_with(tmp_path: Path, packages: str | None = None, packages_gz: bytes | None = None) -> Path:
    contrib = tmp_path / "repo" / "src" / "contrib"
    contrib.mkdir(parents=True)
    if packages is not None:
        (contrib / "PACKAGES").write_text(packages)
    if packages_gz is not None:
        (contrib / "PACKAGES.gz").write_bytes(packages_gz)
    return tmp_path / "repo"


def read_index_in_child(proj: Path) -> tuple[str, int]:
    """What ``lock`` does first (read the recipe's index), in a child process: (its error, peak RSS in bytes).

    ``lock`` itself first locks the parents (Debian, a minute here), so the index read is called alone.
    """
    child = textwrap.dedent(f"""
        from pathlib import Path
        from buildsys.core.errors import BuildsysError
        from buildsys.ecosystems.cran import read_index
        from buildsys.model.recipe import load_recipes
        try:
            read_index(load_recipes(Path({str(proj)!r}))["runknown"])
        except BuildsysError as e:
            print("ERROR", e)
        print("MAXRSS", int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))))
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "MAXRSS" in out.stdout, out.stderr
    said, rss = out.stdout.rsplit("MAXRSS", 1)
    return said, int(rss) * 1024


def test_a_gzip_bomb_index_is_refused_at_the_cap_in_bounded_memory(tmp_path: Path) -> None:
    bomb = gzip_bomb(1 << 30)  # about 1 MB that inflates to 1 GiB
    assert len(bomb) < 2 << 20
    with serve(repo_with(tmp_path, packages_gz=bomb)) as url:
        err, rss = read_index_in_child(project(tmp_path, url))
    assert "gzip bomb" in err and "PACKAGES.gz" in err and f"{INDEX_CAP >> 20} MiB" in err
    print(f"gzip bomb ({len(bomb) / 1e6:.1f} MB -> 1 GiB): peak RSS of the index read {rss / 2**20:.0f} MiB")
    assert rss < INDEX_CAP + (150 << 20), f"{rss >> 20} MiB"


def read_index_of(proj: Path) -> None:
    read_index(load_recipes(proj)["runknown"])


def test_an_index_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    with serve(repo_with(tmp_path, packages=STANZA + "Description: x\n" + " y\n" * (INDEX_CAP // 3 + 10))) as url, \
            pytest.raises(CranIndexError, match=f"larger than {INDEX_CAP >> 20} MiB"):
        read_index_of(project(tmp_path, url))


def test_long_continuation_lines_parse_in_linear_time() -> None:
    text = long_continuations(4 << 20)
    assert len(text) > 4_000_000
    started = time.process_time()
    index = parse_index(text, "PACKAGES")
    took = time.process_time() - started
    print(f"4 MB PACKAGES of long continued fields: parsed in {took:.3f}s of CPU")
    assert set(index) == {"pkga", "pkgb", "pkgc", "pkgd"}
    assert took < 1.0
    # and twice the text takes about twice the time, not four times (CPU time: the machine is shared)
    started = time.process_time()
    parse_index(long_continuations(8 << 20), "PACKAGES")
    assert time.process_time() - started < 4 * took + 0.5


def test_continuation_lines_are_joined_as_before() -> None:
    index = parse_index("Package: aa\nVersion: 1.0\nImports: b,\n c (>= 2.0),\n\td\n", "PACKAGES")
    assert [str(d) for d in index["aa"].depends] == ["b", "c (>= 2.0)", "d"]


@pytest.mark.parametrize(("path", "words"), [
    ("my dir", "not plain folder names"),
    ("../../elsewhere", "leaves the repository"),
    ("Archive/../..", "leaves the repository"),
    ("%2e%2e", "not plain folder names"),
])
def test_a_path_field_that_leaves_the_repository_or_has_a_space_is_refused(tmp_path: Path, path: str,
                                                                           words: str) -> None:
    with pytest.raises(CranIndexError, match="hello 1.0: Path") as e:
        parse_index(f"{STANZA}Path: {path}\n", "http://127.0.0.1/src/contrib/PACKAGES")
    assert words in str(e.value)
    # as lock reads it from the repository
    with serve(repo_with(tmp_path, packages=f"{STANZA}Path: {path}\n")) as url, \
            pytest.raises(CranIndexError, match=words):
        read_index_of(project(tmp_path, url))


@pytest.mark.network
@pytest.mark.slow
def test_lock_names_a_path_with_a_space_without_a_traceback(tmp_path: Path) -> None:
    """Through the CLI (lock locks the Debian parents first: about a minute here)."""
    with serve(repo_with(tmp_path, packages=f"{STANZA}Path: my dir\n")) as url:
        r = bs(project(tmp_path, url), tmp_path / "store", "lock", "runknown")
    assert r.exit_code == 1 and "not plain folder names" in r.stderr, r.output + r.stderr
    assert "Traceback" not in r.output + r.stderr


def test_a_path_inside_the_repository_is_kept() -> None:
    index = parse_index(f"{STANZA}Path: 4.4.0/Recommended\n", "PACKAGES")
    assert index["hello"].path == "4.4.0/Recommended"


def test_a_locked_url_that_leaves_the_repository_is_stale(tmp_path: Path) -> None:
    """What an older buildsys pinned for ``Path: ../../elsewhere``: ``lock --check`` must not call it fresh."""
    repo = "http://127.0.0.1:9/cran"
    assert repo_relative_problem(f"{repo}/src/contrib/hello_1.0.tar.gz", repo) == ""
    assert repo_relative_problem(f"{repo}/src/contrib/Archive/hello/hello_1.0.tar.gz", repo) == ""
    for bad in (f"{repo}/src/contrib/../../elsewhere/hello_1.0.tar.gz", f"{repo}/src/contrib/a b/hello_1.0.tar.gz",
                f"{repo}/src/contrib/%2e%2e/hello_1.0.tar.gz", "http://evil.example/src/contrib/hello_1.0.tar.gz"):
        assert repo_relative_problem(bad, repo), bad
    proj = project(tmp_path, repo)
    recipes = load_recipes(proj)
    lock = tmp_path / "runknown.lock"
    lock.write_text(
        f'version = 1\nrecipe = "runknown"\nrecipe-hash = "sha256:{"b" * 64}"\nsource-date-epoch = 1\n\n'
        f'[cran-repo]\nurl = "{repo}"\nindex-sha256 = "{"c" * 64}"\n\n'
        f'[[cran]]\nname = "nosuchpkg"\nversion = "1.0"\nsha256 = "{"a" * 64}"\nsize = 1\n'
        f'url = "{repo}/src/contrib/../../elsewhere/nosuchpkg_1.0.tar.gz"\n')
    problems = covers(recipes["runknown"], read_lock(lock), [])
    assert any("nosuchpkg" in p and "leaves the repository" in p for p in problems), problems
