"""Third-party apt repositories (``[[apt.sources]]``), end to end, against real signed repositories.

tests/aptrepo.py makes two repositories on loopback from real Debian .debs (bookworm-backports
packages, which no bookworm root resolves from), each signed with its own key made here by gpg:
an Ubuntu-like suite (``noble``: main and universe) and a flat repository like NVIDIA's. A chain
on a bookworm minbase root takes jdupes (with its library, from the suite) and hprof-conv (from the
flat repository) in one layer, and radvdump (the suite's universe) in a child that names no source
of its own. Locked, fetched, the server stopped, then built, verified and tested offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aptrepo
import pytest
from helpers import FIXTURES, bs, ok

from buildsys.ecosystems.apt import AptResolver, ThirdPartySource
from buildsys.ecosystems.apt_sections import AptSection
from buildsys.model.lockfile import lock_path, read_lock

SUITE_DEBS = {"main": ("jdupes", "libjodycode3"), "universe": ("radvdump",)}
FLAT_DEBS = ("hprof-conv",)


@dataclass
class Repos:
    www: Path  # served: suite/, flat/, tampered/ (flat with its Packages changed after signing), keys/
    url: str  # a server that stays up for the module
    flat_key: bytes  # the flat repository's key, binary (a .gpg keyring file)


@pytest.fixture(scope="module")
def repos(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repos]:
    debs = aptrepo.debs(Path(request.config.cache.mkdir("aptrepo-debs")),
                        [n for names in SUITE_DEBS.values() for n in names] + list(FLAT_DEBS))
    top = tmp_path_factory.mktemp("aptrepos")
    suite_key = aptrepo.make_key(top / "gnupg-suite", "buildsys test suite")
    flat_key = aptrepo.make_key(top / "gnupg-flat", "buildsys test flat")
    www = top / "www"
    aptrepo.suite_repo(www / "suite", suite_key, {c: [debs[n] for n in names] for c, names in SUITE_DEBS.items()})
    aptrepo.flat_repo(www / "flat", flat_key, [debs[n] for n in FLAT_DEBS])
    shutil.copytree(www / "flat", www / "tampered")
    aptrepo.tamper_packages(www / "tampered")
    # CRAN's layout: "deb URL bookworm-cran40/", its Packages naming files from URL
    aptrepo.flat_repo(www / "cranlike", flat_key, [debs[n] for n in FLAT_DEBS], origin="CRAN",
                      directory="bookworm-cran40/")
    (www / "keys").mkdir()
    suite_key.export(www / "keys" / "suite.asc")
    flat_key.export(www / "keys" / "flat.asc")
    with aptrepo.serve(www) as url:
        yield Repos(www, url, flat_key.export(top / "flat.gpg", armor=False).read_bytes())


def project(dest: Path, repos: Repos, url: str, *, suite_key: str = "suite.asc", flat: str = "flat") -> Path:
    """The apt-sources fixture with the server's URL, a key's sha256 and the flat key file filled in."""
    shutil.copytree(FIXTURES / "apt-sources", dest, dirs_exist_ok=True)
    (dest / "keys").mkdir(exist_ok=True)
    (dest / "keys" / "flat.gpg").write_bytes(repos.flat_key)
    tools = dest / "recipes" / "tools.toml"
    sha = hashlib.sha256((repos.www / "keys" / suite_key).read_bytes()).hexdigest()
    tools.write_text(tools.read_text().replace("@FLAT@", f"{url}/{flat}").replace("@REPO@", url)
                     .replace("@SUITE_KEY_SHA256@", sha).replace("keys/suite.asc", f"keys/{suite_key}"))
    return dest


@pytest.mark.network
@pytest.mark.slow
def test_a_flat_repository_in_a_folder_like_crans(repos: Repos, store: Path) -> None:
    """apt itself, as the resolver runs it: Debian's bookworm and "deb [signed-by=KEY] URL bookworm-cran40/"."""
    keyring = store / "flat.gpg"
    keyring.write_bytes(repos.flat_key)
    source = ThirdPartySource(f"{repos.url}/cranlike", "bookworm-cran40/", (), keyring)
    resolver = AptResolver(store / "cache" / "apt", "http://deb.debian.org/debian", "bookworm", third_party=[source])
    resolver.update()
    (release,) = resolver.source_releases()
    assert release.mirror == f"{repos.url}/cranlike" and release.suite == "bookworm-cran40/"
    assert release.inrelease_sha256 == hashlib.sha256(
        (repos.www / "cranlike" / "bookworm-cran40" / "InRelease").read_bytes()).hexdigest()
    (hprof,) = [p for p in resolver.resolve(["hprof-conv"]) if p.name == "hprof-conv"]
    assert hprof.mirror == f"{repos.url}/cranlike" and hprof.filename.startswith("bookworm-cran40/hprof-conv_")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@dataclass
class Locked:
    project: Path
    url: str
    server: contextlib.ExitStack  # close() stops this project's server


@pytest.fixture(scope="module")
def locked(repos: Repos, store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    """The chain locked and fetched against a server of its own (the offline test stops it)."""
    stack = contextlib.ExitStack()
    url = stack.enter_context(aptrepo.serve(repos.www))
    proj = project(tmp_path_factory.mktemp("proj"), repos, url)
    ok(bs(proj, store, "lock", "app"))
    ok(bs(proj, store, "fetch", "app"))
    yield Locked(proj, url, stack)
    stack.close()


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_third_party_debs_are_locked_with_their_source_as_mirror(locked: Locked) -> None:
    tools, app = (read_lock(lock_path(locked.project, n)) for n in ("tools", "app"))
    debs = {d.name: d for d in tools.section(AptSection).debs}
    assert set(debs) == {"jdupes", "libjodycode3", "hprof-conv"}  # libc6 is the root's
    assert debs["jdupes"].mirror == debs["libjodycode3"].mirror == f"{locked.url}/suite"
    assert debs["jdupes"].path.startswith("pool/main/j/jdupes/jdupes_")
    # a flat repository's Filename is "./hprof-conv_….deb": locked as the file's own path
    assert debs["hprof-conv"].mirror == f"{locked.url}/flat"
    assert debs["hprof-conv"].path.startswith("hprof-conv_") and debs["hprof-conv"].path.endswith(".deb")
    suite, flat = tools.section(AptSection).sources
    assert (suite.url, suite.suite, suite.components) == (f"{locked.url}/suite", "noble", ("main", "universe"))
    assert (flat.url, flat.suite, flat.components, flat.key_path) == (f"{locked.url}/flat", "./", (), "keys/flat.gpg")
    assert suite.key_url == f"{locked.url}/keys/suite.asc" and suite.key_local
    text = lock_path(locked.project, "tools").read_text()
    assert text.count("[[apt-sources]]") == 2 and "inrelease-sha256" in text
    # the child resolves against its parent's sources without naming them
    (radvdump,) = app.section(AptSection).debs
    assert radvdump.name == "radvdump" and radvdump.mirror == f"{locked.url}/suite"
    assert radvdump.path.startswith("pool/universe/") and not app.section(AptSection).sources


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_relock_is_byte_identical_and_fetch_vendors_the_key(locked: Locked, store: Path) -> None:
    before = {n: lock_path(locked.project, n).read_bytes() for n in ("tools", "app")}
    for n in before:
        lock_path(locked.project, n).unlink()
    ok(bs(locked.project, store, "lock", "app"))
    assert {n: lock_path(locked.project, n).read_bytes() for n in before} == before
    suite, _ = read_lock(lock_path(locked.project, "tools")).section(AptSection).sources
    key = store / "vendor" / "sha256" / suite.key_sha256
    key.unlink()
    ok(bs(locked.project, store, "fetch", "app"))
    assert hashlib.sha256(key.read_bytes()).hexdigest() == suite.key_sha256


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_source_on_a_debian_registry_image(locked: Locked, repos: Repos, store: Path, registry,
                                             tmp_path: Path) -> None:
    """The chain's root, published to a loopback registry and taken as [base] image; jdupes from the suite on it."""
    ok(bs(locked.project, store, "build", "root"))
    ref = f"{registry.host}/aptsrc-root:1"
    ok(bs(locked.project, store, "publish", "root", "--to", ref, "--force"))
    sha = hashlib.sha256((repos.www / "keys" / "suite.asc").read_bytes()).hexdigest()
    proj = tmp_path / "reg"
    (proj / "recipes").mkdir(parents=True)
    (proj / "recipes" / "regroot.toml").write_text(f'[base]\nimage = "{ref}"\n')
    (proj / "recipes" / "regtools.toml").write_text(
        'parents = ["regroot"]\n\n[apt]\npackages = ["jdupes"]\n\n[[apt.sources]]\n'
        f'url = "{repos.url}/suite"\nsuite = "noble"\ncomponents = ["main"]\n'
        f'key = {{ url = "{repos.url}/keys/suite.asc", sha256 = "{sha}", local = true }}\n\n'
        '[test]\ncommands = ["jdupes -v | grep -q \'linked to libjodycode\'"]\n')
    ok(bs(proj, store, "lock", "regtools"))
    apt = read_lock(lock_path(proj, "regtools")).section(AptSection)
    suite = f"{repos.url}/suite"
    assert {d.name: d.mirror for d in apt.debs} == {"jdupes": suite, "libjodycode3": suite}
    assert [a.suite for a in apt.archives] == ["bookworm", "bookworm-updates", "bookworm-security"]
    assert [(s.url, s.suite) for s in apt.sources] == [(f"{repos.url}/suite", "noble")]
    ok(bs(proj, store, "fetch", "regtools"))
    ok(bs(proj, store, "build", "regtools"))
    assert "jdupes" in ok(bs(proj, store, "test", "regtools")).stdout


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_hand_edited_lock_that_drops_a_source_is_stale(locked: Locked, tmp_path: Path) -> None:
    proj = shutil.copytree(locked.project, tmp_path / "p")
    tools = lock_path(proj, "tools")
    text = tools.read_text()
    start = text.index("[[apt-sources]]", text.index("[[apt-sources]]") + 1)  # the flat one
    end = text.find("\n[", start + 1)
    tools.write_text(text[:start] + (text[end + 1:] if end != -1 else ""))
    result = bs(proj, tmp_path / "store", "lock", "--check", "tools")
    assert result.exit_code == 3, result.output
    assert f"apt.sources[1] ({locked.url}/flat ./) is not locked" in result.output, result.output


def test_sources_on_a_root_are_refused_before_anything_is_downloaded(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    (tmp_path / "recipes" / "root.toml").write_text(
        '[base]\ndebian = { suite = "bookworm" }\n\n[[apt.sources]]\nurl = "https://example.org/r"\nflat = true\n'
        'key = { path = "keys/k.asc" }\n')
    result = bs(tmp_path, tmp_path / "store", "lock", "root")
    assert result.exit_code == 1, result.output
    assert "root.toml: apt.sources: a root takes no third-party sources" in result.output
    assert not (tmp_path / "locks" / "root.lock").exists()


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_the_chain_builds_verifies_and_tests_with_the_repositories_gone(locked: Locked, store: Path) -> None:
    locked.server.close()  # from here on, nothing of the repositories is reachable
    ok(bs(locked.project, store, "lock", "--check", "app"))
    ok(bs(locked.project, store, "build", "app"))
    result = ok(bs(locked.project, store, "build", "--verify", "app"))
    assert "app: reproducible (3 layers" in result.output
    tested = ok(bs(locked.project, store, "test", "app"))
    assert "radvdump" in tested.stdout and "jdupes" in tested.stdout
    # A repository that vanished: a .deb missing from the store cannot be fetched again, and fetch says where
    # it looked and what to do.
    deb = next(d for d in read_lock(lock_path(locked.project, "tools")).section(AptSection).debs
               if d.name == "hprof-conv")
    (store / "vendor" / "sha256" / deb.sha256).unlink()
    failed = bs(locked.project, store, "fetch", "app")
    assert failed.exit_code == 1, failed.output
    assert f"{locked.url}/flat/{deb.path}" in failed.output
    assert "relock" in failed.output


@pytest.fixture
def faulty(locked: Locked, repos: Repos, store: Path, tmp_path: Path):
    """A copy of the fixture against the module's lasting server, with the root's lock already made."""
    def make(**kw: str) -> Path:
        proj = project(tmp_path / "p", repos, repos.url, **kw)
        (proj / "locks").mkdir()
        shutil.copy(lock_path(locked.project, "root"), lock_path(proj, "root"))
        return proj
    return make


@pytest.mark.network
@pytest.mark.slow
def test_a_key_that_is_not_the_pinned_one_is_refused_before_apt_runs(faulty, repos: Repos, store: Path) -> None:
    proj = faulty()
    tools = proj / "recipes" / "tools.toml"
    tools.write_text(tools.read_text().replace(hashlib.sha256((repos.www / "keys" / "suite.asc").read_bytes())
                                               .hexdigest(), "0" * 64))
    result = bs(proj, store, "lock", "tools")
    assert result.exit_code == 1, result.output
    assert "tools.toml: apt.sources[0].key: the key read from" in result.output
    assert "the recipe pins " + "0" * 64 in result.output
    assert not lock_path(proj, "tools").exists()


@pytest.mark.network
@pytest.mark.slow
def test_a_key_file_that_is_no_key_is_refused_before_apt_runs(faulty, store: Path) -> None:
    proj = faulty()
    (proj / "keys" / "flat.gpg").write_text("<html>the vendor's page about its key</html>\n")
    result = bs(proj, store, "lock", "tools")
    assert result.exit_code == 1, result.output
    assert "tools.toml: apt.sources[1].key: keys/flat.gpg (in the project) is not an OpenPGP public key" \
        in result.output, result.output
    assert not lock_path(proj, "tools").exists()


@pytest.mark.network
@pytest.mark.slow
def test_a_key_that_does_not_sign_the_repository_is_a_named_error(faulty, repos: Repos, store: Path) -> None:
    proj = faulty(suite_key="flat.asc")  # pinned correctly, but it is the flat repository's key
    result = bs(proj, store, "lock", "tools")
    assert result.exit_code == 1, result.output
    out = result.output
    assert f"tools.toml: apt.sources[0] ({repos.url}/suite noble, key apt.sources[0].key ({repos.url}/keys/flat.asc" \
        in out, out
    assert "not signed by the key" in out and "NO_PUBKEY" in out
    assert not lock_path(proj, "tools").exists()


@pytest.mark.network
@pytest.mark.slow
def test_an_index_changed_after_signing_is_a_named_error(faulty, repos: Repos, store: Path) -> None:
    proj = faulty(flat="tampered")
    result = bs(proj, store, "lock", "tools")
    assert result.exit_code == 1, result.output
    out = result.output
    assert f"tools.toml: apt.sources[1] ({repos.url}/tampered ./, key apt.sources[1].key (keys/flat.gpg" in out, out
    assert "does not match the hashes its signed Release lists" in out
    assert not lock_path(proj, "tools").exists()


# ---- the recipe's shape: no network, no docker


@pytest.mark.parametrize(("source", "key", "problem"), [
    ('url = "https://example.org/r"\nflat = true\nkey = { url = "https://example.org/k.asc" }',
     "apt.sources[0].key.sha256", "is required with a key url"),
    ('url = "https://example.org/r"\nflat = true\nkey = { path = "keys/none.asc" }',
     "apt.sources[0].key.path", "no such file"),
    ('url = "https://example.org/r"\nflat = true\nkey = { path = "../outside.asc" }',
     "apt.sources[0].key.path", "is not a path inside the project"),
    ('url = "https://example.org/r"\nsuite = "noble"\nkey = { path = "keys/k.asc" }',
     "apt.sources[0].components", "are required for a suite"),
    ('url = "https://example.org/r"\nflat = true\ncomponents = ["main"]\nkey = { path = "keys/k.asc" }',
     "apt.sources[0].components", "a flat repository has no components"),
    ('url = "https://example.org/r"\nsuite = "bookworm-cran40/"\nkey = { path = "keys/k.asc" }',
     "apt.sources[0].suite", "that is a flat repository's directory"),
    ('url = "http://127.0.0.1:9/r"\nflat = true\nkey = { url = "http://127.0.0.1:9/k.asc", sha256 = "'
     + "a" * 64 + '" }', "apt.sources[0].key.url", "reads from this machine"),
    ('url = "https://example.org/r"\nflat = true', "apt.sources[0].key", "is required"),
    ('url = "https://example.org/r"\nflat = true\nkey = { path = "keys/k.asc", fingerprint = "x" }',
     "apt.sources[0].key.fingerprint", "unknown key"),
])
def test_a_bad_source_names_the_recipe_and_the_key(tmp_path: Path, source: str, key: str, problem: str) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    (tmp_path / "recipes" / "root.toml").write_text('[base]\ndebian = { suite = "bookworm" }\n')
    (tmp_path / "recipes" / "tools.toml").write_text(
        f'parents = ["root"]\n\n[apt]\npackages = ["jq"]\n\n[[apt.sources]]\n{source}\n')
    result = bs(tmp_path, tmp_path / "store", "lock", "--check", "tools")
    assert result.exit_code == 2, result.output
    assert "recipes/tools.toml:" in result.output and f": {key}: " in result.output, result.output
    assert problem in result.output


def test_a_lock_with_a_hostile_source_entry_is_refused(tmp_path: Path) -> None:
    from buildsys.core.errors import LockFileError

    path = tmp_path / "tools.lock"
    entry = ('[[apt-sources]]\nurl = "https://example.org/r"\nsuite = "./"\nkey-sha256 = "../../etc/passwd"\n'
             'key-size = 1\nkey-url = "https://example.org/k"\nrelease-date = "x"\ninrelease-sha256 = "' + "a" * 64
             + '"\n')
    path.write_text('version = 1\nrecipe = "tools"\nrecipe-hash = "sha256:' + "b" * 64 + '"\nsource-date-epoch = 0\n\n'
                    + entry)
    with pytest.raises(LockFileError, match=r"\[\[apt-sources\]\] #1: key-sha256"):
        read_lock(path)
