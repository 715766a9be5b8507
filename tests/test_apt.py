"""apt resolution against the real Debian archive (deb.debian.org)."""

from __future__ import annotations

import email.utils
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from debian import deb822

from buildsys.core.errors import LockError
from buildsys.core.store import Store
from buildsys.ecosystems.apt import AptFailed, AptPackage, AptResolver, ReleaseInfo, UnknownPackage, UnknownSuite
from buildsys.fetch.vendor import fetch

MIRROR = "http://deb.debian.org/debian"
ESSENTIALS = {"base-files", "base-passwd", "bash", "coreutils", "dpkg", "libc6", "apt", "tar", "debconf"}


@pytest.fixture(scope="session")
def apt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("apt-cache")


@pytest.fixture(scope="session")
def bookworm(apt_cache: Path) -> tuple[AptResolver, ReleaseInfo]:
    """One `apt-get update` (~9 MB) per test session."""
    resolver = AptResolver(apt_cache, MIRROR, "bookworm", ["main"], "amd64")
    return resolver, resolver.update()


@pytest.fixture(scope="session")
def minbase(bookworm: tuple[AptResolver, ReleaseInfo]) -> list[AptPackage]:
    return bookworm[0].bootstrap_set("minbase")


# -- no network ----------------------------------------------------------------


def test_artifact_points_at_the_mirror() -> None:
    pkg = AptPackage(
        "libc6", "2.36-9+deb12u4", "amd64", "a" * 64, 10, "pool/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb"
    )
    art = pkg.artifact(MIRROR + "/")
    assert art.kind == "deb" and art.filename == "libc6_2.36-9+deb12u4_amd64.deb"
    assert art.urls == (f"{MIRROR}/pool/main/g/glibc/libc6_2.36-9%2Bdeb12u4_amd64.deb",)
    assert (art.name, art.version, art.sha256, art.size) == ("libc6", "2.36-9+deb12u4", "a" * 64, 10)


def test_bad_names_are_refused_before_apt_runs(tmp_path: Path) -> None:
    resolver = AptResolver(tmp_path, MIRROR, "bookworm", ["main"], "amd64")
    with pytest.raises(LockError, match="not a Debian package name"):
        resolver.resolve(["-oDir=/etc"])
    with pytest.raises(LockError, match="invalid Debian suite"):
        AptResolver(tmp_path, MIRROR, "bookworm main", ["main"], "amd64")
    with pytest.raises(LockError, match="unknown Debian variant 'minbse'.*did you mean 'minbase'"):
        resolver.bootstrap_set("minbse")


def test_private_tree_is_keyed_by_source(tmp_path: Path) -> None:
    a = AptResolver(tmp_path, MIRROR, "bookworm", ["main"], "amd64")
    b = AptResolver(tmp_path, MIRROR + "/", "bookworm", ("main",), "amd64")
    c = AptResolver(tmp_path, MIRROR, "trixie", ["main"], "amd64")
    assert a.root == b.root != c.root
    assert a.root.parent == tmp_path and len(a.root.name) == 16


# -- Debian's archive ------------------------------------------------------------


@pytest.mark.network
def test_release_info(bookworm: tuple[AptResolver, ReleaseInfo]) -> None:
    resolver, rel = bookworm
    assert (rel.mirror, rel.suite, rel.codename, rel.architecture, rel.components) == (
        MIRROR,
        "bookworm",
        "bookworm",
        "amd64",
        ("main",),
    )
    assert rel.epoch == int(email.utils.parsedate_to_datetime(rel.date).timestamp())
    assert rel.epoch > 1686355200  # after bookworm's release (2023-06-10)
    assert re.fullmatch(r"[0-9a-f]{64}", rel.inrelease_sha256)
    inrelease = next((resolver.root / "var/lib/apt/lists").glob("*_InRelease"))
    assert hashlib.sha256(inrelease.read_bytes()).hexdigest() == rel.inrelease_sha256
    assert resolver.update(refresh=False) == rel


@pytest.mark.network
def test_minbase_bootstrap_set(minbase: list[AptPackage]) -> None:
    names = [p.name for p in minbase]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert set(names) >= ESSENTIALS
    assert 80 <= len(minbase) <= 120
    for p in minbase:
        assert re.fullmatch(r"[0-9a-f]{64}", p.sha256), p
        assert p.size > 0 and p.filename.startswith("pool/main/") and p.filename.endswith(".deb"), p
        assert p.architecture in ("amd64", "all"), p
    by_name = {p.name: p for p in minbase}
    assert by_name["dpkg"].essential and by_name["dpkg"].priority == "required"
    assert not by_name["apt"].essential  # as in mmdebstrap: apt is in minbase by its priority


@pytest.mark.network
def test_variants_nest(bookworm: tuple[AptResolver, ReleaseInfo], minbase: list[AptPackage]) -> None:
    resolver, _ = bookworm
    essential = {p.name for p in resolver.bootstrap_set("essential")}
    with_apt = {p.name for p in resolver.bootstrap_set("apt")}
    assert "dpkg" in essential and "apt" not in essential
    assert essential < with_apt and "apt" in with_apt
    assert with_apt <= {p.name for p in minbase}


@pytest.mark.network
def test_include_adds_its_closure(bookworm: tuple[AptResolver, ReleaseInfo], minbase: list[AptPackage]) -> None:
    with_jq = bookworm[0].bootstrap_set("minbase", include=["jq"])
    assert {p.name for p in with_jq} - {p.name for p in minbase} == {"jq", "libjq1", "libonig5"}
    assert set(minbase) <= set(with_jq)


@pytest.mark.network
def test_resolve_on_top_of_a_parent(
    bookworm: tuple[AptResolver, ReleaseInfo], minbase: list[AptPackage], tmp_path: Path
) -> None:
    resolver, _ = bookworm
    status = tmp_path / "status"
    resolver.write_status(minbase, status)
    names = {p["Package"] for p in deb822.Deb822.iter_paragraphs(status.open(), use_apt_pkg=False)}
    assert names == {p.name for p in minbase}
    layer = resolver.resolve(["jq"], status=status)
    assert [p.name for p in layer] == ["jq", "libjq1", "libonig5"]
    # From nothing (and not from this host's own dpkg status), the closure includes libc6.
    alone = {p.name for p in resolver.resolve(["jq"])}
    assert {"jq", "libjq1", "libonig5", "libc6"} <= alone
    assert resolver.resolve([], status=status) == []


@pytest.mark.network
def test_resolution_is_deterministic(bookworm: tuple[AptResolver, ReleaseInfo], apt_cache: Path) -> None:
    resolver, _ = bookworm
    first = resolver.resolve(["jq", "curl"])
    again = AptResolver(apt_cache, MIRROR, "bookworm", ["main"], "amd64").resolve(["curl", "jq", "jq"])
    assert first == again
    assert [p.name for p in first] == sorted(p.name for p in first)


@pytest.mark.network
def test_host_apt_sources_do_not_leak(bookworm: tuple[AptResolver, ReleaseInfo]) -> None:
    # Whatever extra repositories this host has (nodesource, google cloud), only Debian's answers.
    nodejs = next(p for p in bookworm[0].resolve(["nodejs"]) if p.name == "nodejs")
    assert nodejs.version.startswith("18.") and "nodesource" not in nodejs.version
    assert nodejs.filename.startswith("pool/main/n/nodejs/")


@pytest.mark.network
def test_unknown_package(bookworm: tuple[AptResolver, ReleaseInfo]) -> None:
    with pytest.raises(UnknownPackage) as exc:
        bookworm[0].resolve(["jq", "no-such-package-xyz"])
    msg = str(exc.value)
    assert "no-such-package-xyz" in msg and MIRROR in msg and "bookworm" in msg
    assert exc.value.package == "no-such-package-xyz"
    with pytest.raises(UnknownPackage, match="jq=0.0-nope"):
        bookworm[0].resolve(["jq=0.0-nope"])


@pytest.mark.network
def test_unknown_suite(apt_cache: Path) -> None:
    with pytest.raises(UnknownSuite) as exc:
        AptResolver(apt_cache, MIRROR, "bookwurm", ["main"], "amd64").update()
    msg = str(exc.value)
    assert "bookwurm" in msg and MIRROR in msg and "did you mean 'bookworm'" in msg
    assert "trixie" in msg  # the hint lists known suites


@pytest.mark.network
def test_unknown_component(apt_cache: Path) -> None:
    with pytest.raises(LockError, match="component 'mian'.*did you mean 'main'"):
        AptResolver(apt_cache, MIRROR, "bookworm", ["mian"], "amd64").update()


@pytest.mark.network
def test_bad_signature_is_an_error(apt_cache: Path) -> None:
    wrong = Path("/usr/share/keyrings/debian-archive-removed-keys.gpg")
    if not wrong.exists():
        pytest.skip("debian-archive-keyring's removed-keys keyring is not installed")
    resolver = AptResolver(apt_cache, MIRROR, "bookworm", ["main"], "amd64", keyring=wrong)
    with pytest.raises(AptFailed, match="signature check"):
        resolver.update()
    assert not list((resolver.root / "var/lib/apt/lists").glob("*_Packages"))


@pytest.mark.network
def test_locked_debs_download_and_verify(minbase: list[AptPackage], tmp_path: Path) -> None:
    small = sorted(minbase, key=lambda p: p.size)[:3]
    store = Store(tmp_path / "store")
    report = fetch(store, [p.artifact(MIRROR) for p in small], progress=False)
    assert report.downloaded == 3 and report.bytes == sum(p.size for p in small)


@pytest.mark.network
@pytest.mark.slow
def test_minbase_matches_what_mmdebstrap_installs(
    bookworm: tuple[AptResolver, ReleaseInfo], minbase: list[AptPackage], tmp_path: Path
) -> None:
    """The proof: mmdebstrap's own dpkg status lists exactly the resolved set (~30 s)."""
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        pytest.skip("needs mmdebstrap and root")
    resolver, _ = bookworm
    out = tmp_path / "minbase.tar"
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", "--include=jq", "bookworm", str(out),
         f"deb {MIRROR} bookworm main"],
        check=True, capture_output=True,
    )  # fmt: skip
    with tarfile.open(out) as tar:
        member = tar.extractfile("./var/lib/dpkg/status")
        assert member is not None
        status_bytes = member.read()
    installed = {
        (p["Package"], p["Version"], p["Architecture"])
        for p in deb822.Deb822.iter_paragraphs(io.StringIO(status_bytes.decode()), use_apt_pkg=False)
        if p.get("Status", "").endswith(" installed")
    }
    ours = {(p.name, p.version, p.architecture) for p in resolver.bootstrap_set("minbase", include=["jq"])}
    assert installed == ours
    # And a layer resolved against that real image's status adds nothing it already has.
    status = tmp_path / "status"
    status.write_bytes(status_bytes)
    assert resolver.resolve(["jq"], status=status) == []
    curl = {p.name for p in resolver.resolve(["curl"], status=status)}
    assert {"curl", "libcurl4"} <= curl and "libc6" not in curl


# -- a release with its updates and security archives ------------------------------------------------------

SECURITY = "http://deb.debian.org/debian-security"
ARCHIVES = [(MIRROR, "bookworm-updates"), (SECURITY, "bookworm-security")]


@pytest.fixture(scope="session")
def bookworm_all(apt_cache: Path) -> AptResolver:
    resolver = AptResolver(apt_cache, MIRROR, "bookworm", ["main"], "amd64", extra=ARCHIVES)
    resolver.update()
    return resolver


@pytest.mark.network
def test_every_archive_is_signature_checked_and_recorded(bookworm_all: AptResolver) -> None:
    releases = bookworm_all.releases()
    assert [(r.mirror, r.suite) for r in releases] == [(MIRROR, "bookworm"), *ARCHIVES]
    assert [r.codename for r in releases] == ["bookworm", "bookworm-updates", "bookworm-security"]
    assert len({r.inrelease_sha256 for r in releases}) == 3 and all(r.epoch > 0 for r in releases)


@pytest.mark.network
def test_every_package_is_at_the_candidate_apt_would_choose(bookworm_all: AptResolver, minbase: list[AptPackage],
                                                             tmp_path: Path) -> None:
    """What `apt-cache policy` says on a bookworm machine with the three standard sources."""
    ours = bookworm_all.bootstrap_set("minbase", include=["ca-certificates"])
    env = {**os.environ, "APT_CONFIG": str(bookworm_all.apt_config), "LC_ALL": "C"}
    names = [p.name for p in ours]
    policy = subprocess.run(["apt-cache", "policy", *names], env=env, capture_output=True, text=True, check=True)
    candidates = dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", policy.stdout, re.M))
    assert candidates == {p.name: p.version for p in ours}
    # Security fixes are really there (the plain suite's set has older versions), from the security mirror,
    # and the same names as mmdebstrap would pick from the suite alone.
    newer = {p.name for p in ours} & {p.name for p in minbase}
    moved = [p for p in ours if p.name in newer and p.version != next(m.version for m in minbase if m.name == p.name)]
    assert moved and any(p.mirror == SECURITY and p.filename.startswith("pool/updates/") for p in moved)
    assert {p.name for p in minbase} <= {p.name for p in ours}
    for p in ours:  # the mirror and the path always belong together
        assert p.mirror in (MIRROR, SECURITY) and p.filename.startswith("pool/updates/") == (p.mirror == SECURITY)


@pytest.mark.network
def test_a_security_archive_not_signed_by_the_keyring_is_an_error(apt_cache: Path) -> None:
    wrong = Path("/usr/share/keyrings/debian-archive-removed-keys.gpg")
    if not wrong.exists():
        pytest.skip("debian-archive-keyring's removed-keys keyring is not installed")
    resolver = AptResolver(apt_cache, MIRROR, "bookworm", ["main"], "amd64", keyring=wrong, extra=ARCHIVES)
    with pytest.raises(AptFailed, match="signature check of .*debian-security bookworm-security"):
        resolver.update()


@pytest.mark.network
def test_an_archive_the_release_does_not_have_says_how_to_opt_out(apt_cache: Path) -> None:
    resolver = AptResolver(apt_cache, MIRROR, "bookworm", ["main"], "amd64",
                           extra=[(MIRROR, "bookworm-security")])  # on the wrong mirror
    with pytest.raises(LockError) as info:
        resolver.update()
    assert "has no archive 'bookworm-security'" in str(info.value) and "security = false" in str(info.value)
