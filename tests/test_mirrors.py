"""Mirrors (core/mirrors) and snapshots: where a lock's files are read from, never what the lock says.

Real things: deb.debian.org (through a loopback mirror that relays it, as a
company's Artifactory does), apt itself, and loopback servers playing a mirror
that lost a file and snapshot.debian.org (not reachable from these machines).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from helpers import bs, copy_project, ok
from mirrorproxy import proxy

from buildsys.core import mirrors
from buildsys.core.errors import HashMismatch
from buildsys.core.mirrors import Mirror, Mirrors
from buildsys.core.store import Store
from buildsys.ecosystems.apt_layer import APT
from buildsys.ecosystems.apt_sections import (
    AptSection,
    LockedArchive,
    LockedDeb,
    deb_artifacts,
    snapshot_base,
    snapshot_timestamp,
)
from buildsys.ecosystems.debian_root import DebianBaseLock
from buildsys.fetch.vendor import candidates, fetch
from buildsys.model.lockfile import Lock, lock_path, read_lock


def rules(pairs: dict[str, str]) -> Mirrors:
    return Mirrors(Mirror(up, url, "test") for up, url in pairs.items())


# --- the rules ------------------------------------------------------------------------------------------------------


def test_a_mirror_covers_its_prefix_at_path_boundaries_and_maps_back() -> None:
    m = Mirrors([Mirror("http://deb.debian.org/debian", "https://m.example/deb", "t"),
                 Mirror("http://deb.debian.org/debian/pool/main", "https://m2.example/main", "t")])
    assert m.to_mirror("http://deb.debian.org/debian/dists/bookworm/InRelease") == \
        "https://m.example/deb/dists/bookworm/InRelease"
    assert m.to_mirror("HTTP://DEB.debian.org/debian/x") == "https://m.example/deb/x"  # scheme and host: any case
    assert m.to_mirror("http://deb.debian.org/debian-security/x") is None  # not below /debian
    assert m.to_mirror("http://deb.debian.org/debian/pool/main/a.deb") == "https://m2.example/main/a.deb"  # longest
    assert m.to_upstream("https://m.example/deb/pool/contrib/b.deb") == "http://deb.debian.org/debian/pool/contrib/b.deb"
    assert m.to_upstream("https://other.example/x") == "https://other.example/x"
    assert m.candidates("http://deb.debian.org/debian/a") == ["https://m.example/deb/a", "http://deb.debian.org/debian/a"]
    assert m.candidates("https://pypi.org/simple/x/") == ["https://pypi.org/simple/x/"]
    assert m.is_mirror("https://m.example/deb/a") and not m.is_mirror("https://m.example/other")


def test_the_environment_beats_the_project_which_beats_the_user(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    (home / "buildsys").mkdir(parents=True)
    project.mkdir()
    (home / "buildsys" / "mirrors.toml").write_text(
        '[mirrors]\n"https://pypi.org/simple" = "https://user.example/simple"\n'
        '"https://cloud.r-project.org" = "https://user.example/cran"\n')
    (project / "mirrors.toml").write_text('[mirrors]\n"https://pypi.org/simple" = "https://team.example/simple"\n')
    env = {"XDG_CONFIG_HOME": str(home)}
    m = mirrors.load(project, env)
    assert m.to_mirror("https://pypi.org/simple/six/") == "https://team.example/simple/six/"
    assert m.to_mirror("https://cloud.r-project.org/src/contrib/PACKAGES") == "https://user.example/cran/src/contrib/PACKAGES"
    m = mirrors.load(project, {**env, "BUILDSYS_MIRRORS": "https://pypi.org/simple=https://ci.example/simple,"
                                                         " http://deb.debian.org/debian=http://10.0.0.5/debian"})
    assert m.to_mirror("https://pypi.org/simple/six/") == "https://ci.example/simple/six/"
    assert m.to_mirror("http://deb.debian.org/debian/x") == "http://10.0.0.5/debian/x"
    assert not mirrors.load(tmp_path / "none", {"XDG_CONFIG_HOME": str(tmp_path / "nothing")})


@pytest.mark.parametrize(("text", "says"), [
    ('[mirrors]\n"ftp://deb.debian.org/debian" = "http://m/debian"\n', "is not an http(s) URL with a host"),
    ('[mirrors]\n"http://deb.debian.org/debian" = 3\n', "the mirror must be a URL string"),
    ('[mirror]\n"http://deb.debian.org/debian" = "http://m/debian"\n', "unknown key 'mirror'"),
    ('[mirrors\n', "not readable as TOML"),
])
def test_a_bad_mirror_file_stops_every_command_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "mirrors.toml").write_text(text)
    r = bs(tmp_path, tmp_path / "store", "graph")
    assert r.exit_code == 2, r.output
    assert f"{tmp_path / 'mirrors.toml'}" in r.output and says in r.output, r.output


def test_a_bad_environment_setting_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDSYS_MIRRORS", "https://pypi.org/simple")
    r = bs(tmp_path, tmp_path / "store", "graph")
    assert r.exit_code == 2 and "BUILDSYS_MIRRORS: 'https://pypi.org/simple': not UPSTREAM=MIRROR" in r.output


# --- snapshots -------------------------------------------------------------------------------------------------------


def test_the_snapshot_rule() -> None:
    # Sat, 21 Nov 2026 10:16:37 UTC -> six hours later
    assert snapshot_timestamp(1795256197) == "20261121T161637Z"
    assert snapshot_base("http://deb.debian.org/debian", "20261121T161637Z") == \
        "https://snapshot.debian.org/archive/debian/20261121T161637Z"
    assert snapshot_base("http://deb.debian.org/debian-security/", "T") == "https://snapshot.debian.org/archive/debian-security/T"
    assert snapshot_base("http://security.debian.org", "T") == "https://snapshot.debian.org/archive/debian-security/T"
    assert snapshot_base("http://archive.ubuntu.com/ubuntu", "T") == "https://snapshot.ubuntu.com/ubuntu/T"
    assert snapshot_base("http://ports.ubuntu.com/ubuntu-ports", "T") == "https://snapshot.ubuntu.com/ubuntu-ports/T"
    assert snapshot_base("https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64", "T") is None
    assert snapshot_base("https://mirror.example/debian", "T") is None


DEB = LockedDeb(name="buildsys-test", version="1.0", architecture="all", sha256="0" * 64, size=1,
                path="pool/main/b/buildsys-test/buildsys-test_1.0_all.deb", mirror="http://deb.debian.org/debian")


def test_each_deb_is_also_read_from_its_archive_state_s_snapshot() -> None:
    archives = (LockedArchive("http://deb.debian.org/debian", "bookworm", "bookworm", "Sat, 10 Jan 2026 10:00:00 UTC",
                              "1" * 64, snapshot="20260110T160000Z"),
                LockedArchive("http://deb.debian.org/debian", "bookworm-updates", "bookworm-updates",
                              "Sat, 21 Nov 2026 10:16:37 UTC", "2" * 64),  # an older lock: derived from the date
                LockedArchive("http://deb.debian.org/debian-security", "bookworm-security", "bookworm-security",
                              "Mon, 23 Nov 2026 08:00:00 UTC", "3" * 64, snapshot="20261123T140000Z"))
    sec = dataclasses.replace(DEB, mirror="http://deb.debian.org/debian-security")
    other = dataclasses.replace(DEB, mirror="https://repo.example/apt")
    main, security, third = deb_artifacts((DEB, sec, other), archives, 0)
    # the newest state of the deb's own mirror (the -updates Release, every archive being current then)
    assert main.urls == (f"{DEB.mirror}/{DEB.path}",
                         f"https://snapshot.debian.org/archive/debian/20261121T161637Z/{DEB.path}")
    assert security.urls[1] == f"https://snapshot.debian.org/archive/debian-security/20261123T140000Z/{DEB.path}"
    assert third.urls == (f"https://repo.example/apt/{DEB.path}",)
    # a layer on a Debian root has no archives of its own: the lock's epoch (the chain's newest Release)
    (layer,) = deb_artifacts((DEB,), (), 1795256197)
    assert layer.urls[1] == f"https://snapshot.debian.org/archive/debian/20261121T161637Z/{DEB.path}"


def test_fetch_tries_each_url_s_mirror_first() -> None:
    (art,) = deb_artifacts((DEB,), (), 1795256197)
    mirrors.configure(rules({"http://deb.debian.org/debian": "http://m.example/debian"}))
    assert candidates(art) == ["http://m.example/debian/" + DEB.path, f"{DEB.mirror}/{DEB.path}",
                               f"https://snapshot.debian.org/archive/debian/20261121T161637Z/{DEB.path}"]


# --- against deb.debian.org ------------------------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize("served", [b"the file the lock pins\n", b"the file the lock pinz\n"])
def test_a_deb_the_mirror_and_upstream_lost_comes_from_the_snapshot_hash_checked(tmp_path: Path,
                                                                                  served: bytes) -> None:
    pinned = b"the file the lock pins\n"
    deb = dataclasses.replace(DEB, sha256=hashlib.sha256(pinned).hexdigest(), size=len(pinned))
    stamp = snapshot_timestamp(1795256197)
    lock = Lock(recipe="layer", recipe_hash="sha256:" + "0" * 64, source_date_epoch=1795256197).with_sections(
        AptSection((deb,)))
    (art,) = APT.artifacts(lock)
    store = Store(tmp_path / "store")
    with proxy() as mirror, proxy(files={f"/archive/debian/{stamp}/{deb.path}": served}) as snapshot:
        mirrors.configure(rules({"http://deb.debian.org/debian": f"{mirror.url}/debian",
                                 "https://snapshot.debian.org": snapshot.url}))
        if served != pinned:
            with pytest.raises(HashMismatch) as e:
                fetch(store, [art], progress=False, retries=0)
            assert f"{snapshot.url}/archive/debian/{stamp}/{deb.path}" in str(e.value)
            assert "sha256 mismatch" in str(e.value) and deb.sha256 in str(e.value)
            assert not store.has_artifact(art) and not list(store.vendor.iterdir())
            return
        report = fetch(store, [art], progress=False, retries=0)
    assert report.downloaded == 1 and store.has_artifact(art)
    # in order: the company's mirror (which lost it), deb.debian.org (404: superseded), the snapshot
    assert mirror.asked == [f"/debian/{deb.path}"]
    assert snapshot.asked == [f"/archive/debian/{stamp}/{deb.path}"]


@pytest.mark.network
@pytest.mark.slow
def test_a_root_locks_and_fetches_through_a_mirror_the_lock_never_names(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    proj = copy_project("root-bookworm", tmp_path / "p")
    store = tmp_path / "store"
    with proxy({"/debian": "http://deb.debian.org/debian",
                "/debian-security": "http://deb.debian.org/debian-security"}) as relay:
        monkeypatch.setenv("BUILDSYS_MIRRORS", f"http://deb.debian.org/debian={relay.url}/debian "
                                               f"http://deb.debian.org/debian-security={relay.url}/debian-security")
        ok(bs(proj, store, "lock", "mini"))
        assert relay.saw("/debian/dists/bookworm/InRelease") and relay.saw("/debian-security/dists/")
        text = lock_path(proj, "mini").read_text()
        assert "127.0.0.1" not in text and "http://deb.debian.org/debian" in text
        base = read_lock(lock_path(proj, "mini")).get(DebianBaseLock)
        assert base is not None
        for a in base.all_archives:
            assert a.snapshot and a.snapshot == a.snapshot_timestamp()
        before = len(relay.saw("/pool/"))
        ok(bs(proj, store, "fetch", "mini"))
        assert len(relay.saw("/pool/")) - before == len(base.packages) > 50
