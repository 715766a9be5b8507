"""CRAN packages end to end, against a CRAN-like repository on loopback.

The repository is built by the suite (tests/cranrepo.py) from real CRAN
tarballs that Debian keeps as its r-cran-* orig tarballs. The set: processx
(C) needs ps (C) and R6; mime (C); digest (C), moved under Archive/ after the
lock; jsonlite and R6 come with the parent from Debian's r-cran-*; xml2 (C)
needs libxml2's headers, which the parent lacks.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cranrepo import DownloadFailed, build, serve, write_repo
from helpers import bs, copy_project, ok

from buildsys.core import mirrors
from buildsys.core.errors import BuildsysError
from buildsys.core.store import Store
from buildsys.ecosystems.cran import CranSection, compare_versions, install_order, parse_index, tarball_artifact
from buildsys.fetch.vendor import fetch
from buildsys.model.lockfile import lock_path, read_lock

SOURCES = ("r-cran-processx", "r-cran-ps", "r-cran-mime", "r-cran-digest", "r-cran-jsonlite", "r-cran-r6",
           "r-cran-xml2")
TIMES: dict[str, float] = {}


@pytest.fixture(scope="session")
def cran_packages(request: pytest.FixtureRequest) -> dict:
    cache = Path(request.config.cache.mkdir("cran-origs"))
    try:
        return build(cache, SOURCES)
    except DownloadFailed as e:
        pytest.fail(f"building the loopback CRAN repository: {e}")


@pytest.fixture(scope="module")
def repo(cran_packages: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("cran-repo")
    write_repo(root, cran_packages)
    with serve(root) as url:
        yield url, root


def _project(src: str, dest: Path, url: str) -> Path:
    proj = copy_project(src, dest)
    for f in (proj / "recipes").glob("*.toml"):
        f.write_text(f.read_text().replace("@REPO@", url))
    return proj


pytestmark = [pytest.mark.network]


def test_index_from_real_tarballs(cran_packages: dict, tmp_path: Path) -> None:
    write_repo(tmp_path, cran_packages)
    index = parse_index((tmp_path / "src/contrib/PACKAGES").read_text(), "PACKAGES")
    assert {"processx", "ps", "mime", "digest", "jsonlite", "R6", "xml2"} <= set(index)
    processx = index["processx"]
    assert {d.name for d in processx.depends} >= {"ps", "R6"}
    assert any(d.name == "ps" and d.op == ">=" for d in processx.depends)
    order = [e.name for e in install_order([index[n] for n in ("processx", "ps", "R6", "mime")])]
    assert order.index("ps") < order.index("processx") and order.index("R6") < order.index("processx")
    assert compare_versions("1.10.0", "1.9") > 0 and compare_versions("0.1-3", "0.1.3") == 0


def _resolve_with(cran_packages: dict, tmp_path: Path, r_version: str, installed: dict[str, tuple[str, str]]) -> list:
    """Resolve rpkgs against the real index, for an R that has ``installed`` (the image-reading side is tested
    end to end below; this is the resolver's logic alone)."""
    from buildsys.ecosystems.cran import InstalledR, resolve_closure
    from buildsys.model.recipe import load_recipes

    write_repo(tmp_path / "repo", cran_packages)
    index = parse_index((tmp_path / "repo/src/contrib/PACKAGES").read_text(), "PACKAGES")
    proj = _project("cran", tmp_path / "p", "http://127.0.0.1:9")
    recipe = load_recipes(proj)["rpkgs"]
    return [e.name for e in resolve_closure(recipe, index, InstalledR(r_version, installed))]


def test_closure_leaves_out_what_the_image_has(cran_packages: dict, tmp_path: Path) -> None:
    have = {"utils": ("4.2.2", "base"), "tools": ("4.2.2", "base"), "methods": ("4.2.2", "base"),
            "jsonlite": ("1.8.4", ""), "R6": ("2.5.1", "")}
    assert _resolve_with(cran_packages, tmp_path, "4.2.2", have) == ["digest", "mime", "ps", "processx"]


def test_constraint_the_parent_does_not_meet(cran_packages: dict, tmp_path: Path) -> None:
    from buildsys.ecosystems.cran import CranConstraintUnmet

    have = {"utils": ("4.2.2", "base"), "tools": ("4.2.2", "base"), "methods": ("4.2.2", "base"),
            "jsonlite": ("1.8.4", ""), "R6": ("2.5.1", ""), "ps": ("1.1.0", "")}
    with pytest.raises(CranConstraintUnmet, match=r"processx needs 'ps \(>= 1.2.0\)', but ps 1.1.0 is in the parent"):
        _resolve_with(cran_packages, tmp_path, "4.2.2", have)


def test_r_version_not_met(cran_packages: dict, tmp_path: Path) -> None:
    from buildsys.ecosystems.cran import CranConstraintUnmet

    have = {"utils": ("3.2.0", "base"), "tools": ("3.2.0", "base"), "methods": ("3.2.0", "base"),
            "jsonlite": ("1.8.4", ""), "R6": ("2.5.1", "")}
    with pytest.raises(CranConstraintUnmet, match=r"needs 'R \(>= 3.\d.\d\)', the image has R 3.2.0"):
        _resolve_with(cran_packages, tmp_path, "3.2.0", have)


def test_unparseable_index_is_named(tmp_path: Path) -> None:
    from buildsys.ecosystems.cran import CranIndexError

    with pytest.raises(CranIndexError, match="does not parse"):
        parse_index("Package: a\nVersion 1.0\n", "http://127.0.0.1/src/contrib/PACKAGES")


def test_unreachable_repo_says_so(tmp_path: Path) -> None:
    """A recipe with a real dated snapshot keeps its URL; lock says the repo cannot be read, before any build."""
    proj = _project("cran", tmp_path / "p", "http://127.0.0.1:9")
    r = bs(proj, tmp_path / "store", "lock", "rposit")
    assert r.exit_code == 1, r.output
    assert "cannot read the CRAN repository https://packagemanager.posit.co/cran/2025-06-02" in r.stderr
    assert "mirror" in r.stderr


def test_cran_in_a_root_recipe_is_refused_before_anything_is_resolved(tmp_path: Path) -> None:
    """Before, the root ignored [cran] and wrote a lock that covers() then called stale, forever."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "rroot.toml").write_text(
        '[base]\ndebian = { suite = "bookworm" }\n\n[cran]\npackages = ["R6"]\n'
        'repo = "https://packagemanager.posit.co/cran/2025-06-02"\n')
    r = bs(tmp_path, tmp_path / "store", "lock", "rroot")
    assert r.exit_code == 1, r.output + r.stderr
    assert "rroot.toml: [cran] in a root recipe is not supported" in r.stderr and "r-base-core" in r.stderr
    assert not (tmp_path / "locks" / "rroot.lock").exists()


def test_damaged_index(repo: tuple[str, Path], tmp_path: Path) -> None:
    url, root = repo
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    (bad / "src/contrib/PACKAGES.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    with serve(bad) as bad_url:
        proj = _project("cran", tmp_path / "p", bad_url)
        r = bs(proj, tmp_path / "store", "lock", "runknown")
    assert r.exit_code == 1
    assert "does not parse" in r.stderr and "PACKAGES.gz" in r.stderr


# ---- with docker: one store and one built parent for the rest of the module ----

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def locked(repo: tuple[str, Path], store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    url, _ = repo
    proj = _project("cran", tmp_path_factory.mktemp("cran"), url)
    started = time.monotonic()
    ok(bs(proj, store, "lock", "rpkgs"))
    TIMES["lock (with the parent's first build)"] = time.monotonic() - started
    return proj


@pytest.mark.docker
@pytest.mark.slow
def test_lock_closure(locked: Path, repo: tuple[str, Path]) -> None:
    lock = read_lock(lock_path(locked, "rpkgs"))
    cran = lock.section(CranSection)
    pins = {c.name: c for c in cran.packages}
    # jsonlite and R6 come from Debian in the parent; base packages (utils, tools) ship with R.
    assert sorted(pins) == ["digest", "mime", "processx", "ps"]
    assert pins["processx"].depends == ("R6", "ps", "utils") or "ps" in pins["processx"].depends
    assert cran.repo == repo[0] and cran.index_sha256 and cran.r_version and cran.r_version.startswith("4.")
    text = lock_path(locked, "rpkgs").read_text()
    assert "[cran-repo]" in text and "[[cran]]" in text
    # A relock with nothing new is byte-identical.
    ok(bs(locked, locked.parent / "unused-store", "lock", "--check", "rpkgs"))


@pytest.mark.docker
@pytest.mark.slow
def test_archived_version_is_fetched(locked: Path, repo: tuple[str, Path], cran_packages: dict,
                                     tmp_path: Path) -> None:
    """The repo moves on (digest leaves the top level for Archive/): fetch still finds the pinned file."""
    _, root = repo
    write_repo(root, cran_packages, archived=("digest",))
    try:
        lock = read_lock(lock_path(locked, "rpkgs"))
        fresh = Store(tmp_path / "fresh")
        packages = lock.section(CranSection).packages
        fetch(fresh, [tarball_artifact(c) for c in packages], progress=False)
        digest = next(c for c in packages if c.name == "digest")
        assert fresh.vendor_path(digest.sha256).is_file()
        assert not (root / f"src/contrib/digest_{digest.version}.tar.gz").exists()
    finally:
        write_repo(root, cran_packages)  # back to the state the lock was made from


@pytest.mark.docker
@pytest.mark.slow
def test_a_repository_read_through_its_mirror_is_locked_as_upstream(locked: Path, store: Path,
                                                                     repo: tuple[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """cran.example.com does not exist: the index and the tarballs come from its mirror (the loopback
    repository, by configuration), and the lock names only cran.example.com."""
    url, _ = repo
    upstream = "https://cran.example.com"
    proj = copy_project(locked, tmp_path / "p")
    recipe = proj / "recipes" / "rpkgs.toml"
    recipe.write_text(recipe.read_text().replace(url, upstream))
    monkeypatch.setenv("BUILDSYS_MIRRORS", f"{upstream}={url}")
    ok(bs(proj, store, "lock", "rpkgs"))
    text = lock_path(proj, "rpkgs").read_text()
    assert "127.0.0.1" not in text
    cran = read_lock(lock_path(proj, "rpkgs")).section(CranSection)
    assert cran.repo == upstream and all(c.url.startswith(f"{upstream}/src/contrib/") for c in cran.packages)
    fresh = Store(tmp_path / "fresh")
    mirrors.configure(mirrors.load(None))  # the lock's CLI run set them from BUILDSYS_MIRRORS; here again
    fetch(fresh, [tarball_artifact(c) for c in cran.packages], progress=False)
    assert all(fresh.vendor_path(c.sha256).is_file() for c in cran.packages)


@pytest.mark.docker
@pytest.mark.slow
def test_tampered_tarball(locked: Path, repo: tuple[str, Path], tmp_path: Path) -> None:
    _, root = repo
    lock = read_lock(lock_path(locked, "rpkgs"))
    mime = next(c for c in lock.section(CranSection).packages if c.name == "mime")
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    f = bad / f"src/contrib/mime_{mime.version}.tar.gz"
    f.write_bytes(f.read_bytes()[:-10] + b"tampered!!")
    with serve(bad) as bad_url:
        art = tarball_artifact(mime)
        art = type(art)(**{**art.__dict__, "urls": tuple(u.replace(repo[0], bad_url) for u in art.urls)})
        with pytest.raises(BuildsysError) as e:
            fetch(Store(tmp_path / "fresh"), [art], progress=False)
    assert "mime" in str(e.value) and mime.sha256 in str(e.value)


@pytest.fixture(scope="module")
def built(locked: Path, store: Path) -> dict:
    ok(bs(locked, store, "fetch", "rpkgs"))
    started = time.monotonic()
    (image,) = json.loads(ok(bs(locked, store, "build", "--json", "rpkgs")).stdout)
    TIMES["build (parent cached)"] = time.monotonic() - started
    return image


@pytest.mark.docker
@pytest.mark.slow
def test_build_verify_and_test(locked: Path, store: Path, built: dict) -> None:
    started = time.monotonic()
    r = ok(bs(locked, store, "build", "--verify", "rpkgs"))
    TIMES["verify (whole chain from nothing)"] = time.monotonic() - started
    assert "differ" not in r.output.lower() or "0 differ" in r.output.lower()
    ok(bs(locked, store, "test", "rpkgs"))
    # A relock against the same repository state is byte-identical; the parent is cached by now.
    before = lock_path(locked, "rpkgs").read_bytes()
    started = time.monotonic()
    r = ok(bs(locked, store, "lock", "--upgrade", "rpkgs"))
    TIMES["relock (parent cached)"] = time.monotonic() - started
    assert "rpkgs unchanged" in r.stdout + r.stderr and lock_path(locked, "rpkgs").read_bytes() == before
    print("cran timings:", json.dumps({k: round(v, 1) for k, v in TIMES.items()}))


@pytest.mark.docker
@pytest.mark.slow
def test_unknown_package(locked: Path, store: Path) -> None:
    r = bs(locked, store, "lock", "runknown")
    assert r.exit_code == 1, r.output
    assert "R package 'nosuchpkg'" in r.stderr and "is not in http://127.0.0.1" in r.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_compile_failure_names_package_and_header(locked: Path, store: Path) -> None:
    ok(bs(locked, store, "lock", "rfail"))
    ok(bs(locked, store, "fetch", "rfail"))
    r = bs(locked, store, "build", "rfail")
    assert r.exit_code == 1, r.output
    assert "cran: install xml2" in r.stderr
    assert "R package xml2" in r.stderr and "Debian's libxml2-dev provides" in r.stderr
    assert "--- last lines of its output ---" in r.stderr


@pytest.mark.parametrize(("entry", "words"), [
    ('name = "../x"\nversion = "1.0"\nsha256 = "' + "a" * 64 + '"\nsize = 1\nurl = "http://h/src/contrib/x_1.0.tar.gz"',
     "not an R package name"),
    ('name = "xy"\nversion = "1.0"\nsha256 = "' + "a" * 64 + '"\nsize = 1\nurl = "http://h/src/contrib/y_2.0.tar.gz"',
     "is not xy_1.0.tar.gz"),
    ('name = "xy"\nversion = "1.0; rm -rf /"\nsha256 = "' + "a" * 64 + '"\nsize = 1\nurl = "http://h/xy_1.0.tar.gz"',
     "not an R package version"),
])
def test_hostile_cran_entry_is_refused(tmp_path: Path, entry: str, words: str) -> None:
    """[[cran]] values become file names and shell words in the build script: their shape is checked on read."""
    from buildsys.core.errors import LockFileError

    lock = tmp_path / "x.lock"
    lock.write_text(f'version = 1\nrecipe = "x"\nrecipe-hash = "sha256:{"b" * 64}"\nsource-date-epoch = 1\n\n'
                    f"[[cran]]\n{entry}\n")
    with pytest.raises(LockFileError, match="cran"):
        read_lock(lock)
    with pytest.raises(LockFileError, match=words.replace("(", r"\(")):
        read_lock(lock)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc on this machine")
def test_missing_header_hint_from_real_gcc_output(tmp_path: Path) -> None:
    """gcc's own message for a missing header, after the step marker the build script prints."""
    import subprocess

    from buildsys.ecosystems.base import STEP_MARKER
    from buildsys.ecosystems.cran import failure_hint

    src = tmp_path / "init.c"
    src.write_text("#include <sodium.h>\n")
    gcc = subprocess.run(["gcc", "-c", str(src), "-o", str(tmp_path / "init.o")], capture_output=True, text=True,
                         env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert gcc.returncode != 0
    output = f"{STEP_MARKER}cran: install sodium 1.2.1\n* installing *source* package 'sodium' ...\n{gcc.stderr}"
    hint = failure_hint(output)
    assert hint is not None and "R package sodium" in hint and "sodium.h" in hint and "libsodium-dev" in hint
    # Another step's failure gets no R hint.
    assert failure_hint(f"{STEP_MARKER}apt: install 3 packages\n{gcc.stderr}") is None


@pytest.mark.docker
@pytest.mark.slow
def test_a_tarball_whose_description_is_another_package_fails_the_build(locked: Path, store: Path, built: dict,
                                                                         cran_packages: dict, tmp_path: Path) -> None:
    """Issue 25: mime's tarball says 'evilpkg 9.9' inside; the sha256 pins its bytes, not its claim. The lock
    takes it (the index says mime), the build refuses it before R installs it, naming the package."""
    from cranrepo import relabel

    version, tarball, fields = cran_packages["mime"]
    evil = tmp_path / "evil"
    write_repo(evil, {"mime": (version, relabel(tarball, "evilpkg", "9.9"), fields)})
    proj = copy_project(locked, tmp_path / "p")
    with serve(evil) as url:
        (proj / "recipes" / "rmime.toml").write_text(f'parents = ["r"]\n\n[cran]\npackages = ["mime"]\n'
                                                     f'repo = "{url}"\n')
        ok(bs(proj, store, "lock", "rmime"))
        ok(bs(proj, store, "fetch", "rmime"))
    r = bs(proj, store, "build", "rmime")
    assert r.exit_code == 1, r.output + r.stderr
    said = " ".join(r.stderr.split())
    assert f"R package mime {version}: its tarball is evilpkg 9.9, not what the lock pins" in said, r.stderr
    assert "another package or version than its index said" in said and "Traceback" not in said


@pytest.mark.docker
@pytest.mark.slow
def test_a_hand_deleted_cran_entry_is_refused_before_any_container_starts(locked: Path, store: Path, built: dict,
                                                                          tmp_path: Path) -> None:
    """Issue 18: the closure is re-read from the vendored tarballs' DESCRIPTION, not from the lock's words."""
    proj = copy_project(locked, tmp_path / "p")
    path = lock_path(proj, "rpkgs")
    head, *entries = path.read_text().split("\n[[cran]]\n")
    kept = [e for e in entries if '\nname = "ps"\n' not in f"\n{e}"]
    assert len(kept) == len(entries) - 1
    path.write_text("\n[[cran]]\n".join([head, *kept]))
    r = bs(proj, store, "build", "rpkgs")
    assert r.exit_code == 3, r.output + r.stderr
    said = " ".join(r.stderr.split())
    assert "rpkgs.lock" in said and "its CRAN package set is not closed" in said
    unmet = r"R package processx \S+ needs 'ps( \(>= [0-9.]+\))?', which no lock of the chain pins"
    assert re.search(unmet, said), said
    assert "container on" not in r.stderr  # refused before the build container was made
