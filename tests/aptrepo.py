"""Third-party apt repositories on loopback, made of real Debian .debs and signed with a test key.

Two layouts, as vendors publish them:

- a suite-style archive (``dists/SUITE/InRelease``, ``dists/SUITE/COMPONENT/binary-ARCH/Packages``,
  the .debs under ``pool/COMPONENT/``), made to look like Ubuntu's (``Origin: Ubuntu``,
  components ``main`` and ``universe``) so that it can stand in for an Ubuntu archive too;
- a flat repository like NVIDIA's CUDA repository (``./InRelease``, ``./Packages`` and
  the .debs beside them; ``deb URL ./`` in a sources.list).

The .debs are real ones: read from Debian's bookworm-backports index (their sha256
checked against it) and downloaded from deb.debian.org once, then kept in the
pytest cache. Backports are in no archive a bookworm root resolves from, so a
package taken from these repositories cannot also come from Debian's. Indexes are
written by ``apt-ftparchive`` (apt-utils) and signed with ``gpg`` under a
throw-away ``GNUPGHOME``: the same tools a vendor's own pipeline uses. Nothing
here is written to look like an archive by hand.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cranrepo import serve as serve  # the same loopback HTTP server, for the tests

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm-backports"
ARCH = "amd64"

# Small real packages, none of them in bookworm (only in its backports): jdupes needs
# libjodycode3 (a dependency inside the repository), hprof-conv and radvdump only libc6.
SUITE_PACKAGES = {"main": ("jdupes", "libjodycode3"), "universe": ("radvdump",)}
FLAT_PACKAGES = ("hprof-conv",)


class DownloadFailed(RuntimeError):
    pass


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            return bytes(resp.read())
    except (urllib.error.URLError, OSError) as e:
        raise DownloadFailed(f"cannot download {url}: {getattr(e, 'reason', e)}") from e


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    filename: str  # pool path in Debian's archive
    sha256: str
    path: Path  # the downloaded file

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]


def _index(cache: Path, refresh: bool = False) -> dict[str, dict[str, str]]:
    index = cache / f"Packages-{SUITE}-{ARCH}.xz"
    if refresh or not index.is_file():
        index.write_bytes(_get(f"{MIRROR}/dists/{SUITE}/main/binary-{ARCH}/Packages.xz"))
    out: dict[str, dict[str, str]] = {}
    for stanza in lzma.decompress(index.read_bytes()).decode().split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln and not ln.startswith(" "))
        if "Package" in fields:
            out[fields["Package"]] = fields
    return out


def debs(cache: Path, packages: Iterable[str]) -> dict[str, Deb]:
    """name -> the real .deb of bookworm-backports, downloaded into ``cache`` once and checked."""
    cache.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(packages))
    out: dict[str, Deb] = {}
    for attempt in (0, 1):  # a cached index may name files the pool dropped since: read it again once
        index = _index(cache, refresh=attempt == 1)
        try:
            for name in wanted:
                if name not in index:
                    raise DownloadFailed(f"{SUITE} has no package {name}: pick another one in tests/aptrepo.py")
                f = index[name]
                local = cache / f["Filename"].rsplit("/", 1)[-1]
                if not local.is_file() or hashlib.sha256(local.read_bytes()).hexdigest() != f["SHA256"]:
                    data = _get(f"{MIRROR}/{f['Filename']}")
                    if hashlib.sha256(data).hexdigest() != f["SHA256"]:
                        raise DownloadFailed(f"{f['Filename']}: sha256 is not the index's")
                    local.write_bytes(data)
                out[name] = Deb(name, f["Version"], f["Filename"], f["SHA256"], local)
            return out
        except DownloadFailed:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


# ---- the signing key


@dataclass(frozen=True)
class Key:
    """A throw-away OpenPGP signing key (no passphrase) in its own GNUPGHOME."""

    home: Path
    fingerprint: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}

    def export(self, dest: Path, *, armor: bool = True) -> Path:
        """The public key, ASCII-armored (a vendor's ``.asc``/``.pub``) or binary (a ``.gpg`` keyring)."""
        out = subprocess.run(["gpg", "--batch", "--export", *(["--armor"] if armor else []), self.fingerprint],
                             env=self.env(), capture_output=True, check=True).stdout
        assert out, f"gpg exported nothing for {self.fingerprint}"
        dest.write_bytes(out)
        return dest

    def sign(self, release: Path) -> None:
        """``InRelease`` (clearsigned) and ``Release.gpg`` (detached) beside ``release``."""
        folder = release.parent
        for args, name in ((["--clearsign"], "InRelease"), (["--detach-sign", "--armor"], "Release.gpg")):
            (folder / name).unlink(missing_ok=True)
            subprocess.run(["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
                            "--local-user", self.fingerprint, "--digest-algo", "SHA256", *args,
                            "--output", str(folder / name), str(release)],
                           env=self.env(), capture_output=True, check=True)


def make_key(home: Path, name: str = "buildsys test repository") -> Key:
    """A new ed25519 signing key under ``home`` (a fresh GNUPGHOME, mode 0700)."""
    if shutil.which("gpg") is None:
        raise RuntimeError("gpg is not installed (apt-get install gnupg)")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    # gpg starts an agent per home that outlives the test (a CI run left dozens): stopped when pytest exits.
    atexit.register(subprocess.run, ["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False)
    subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                    f"{name} <repo@buildsys.invalid>", "ed25519", "sign", "never"],
                   env=env, capture_output=True, check=True)
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env,
                             capture_output=True, text=True, check=True).stdout
    fprs = [ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:")]
    return Key(home, fprs[0])


# ---- the repositories


def _ftparchive(args: list[str], cwd: Path) -> bytes:
    if shutil.which("apt-ftparchive") is None:
        raise RuntimeError("apt-ftparchive is not installed (apt-get install apt-utils)")
    return subprocess.run(["apt-ftparchive", *args], cwd=cwd, capture_output=True, check=True).stdout


def _packages(index: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Packages").write_bytes(index)
    (folder / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))


def _release(folder: Path, fields: Mapping[str, str]) -> Path:
    opts = [a for k, v in fields.items() for a in ("-o", f"APT::FTPArchive::Release::{k}={v}")]
    release = folder / "Release"
    release.write_bytes(_ftparchive([*opts, "release", "."], folder))
    return release


def suite_repo(root: Path, key: Key, packages: Mapping[str, Iterable[Deb]], suite: str = "noble",
               origin: str = "Ubuntu") -> Path:
    """An Ubuntu-like archive under ``root``: ``dists/SUITE/{InRelease,Release,Release.gpg}``,
    ``dists/SUITE/COMPONENT/binary-amd64/Packages(.gz)`` and ``pool/COMPONENT/…``, signed by ``key``.
    ``packages`` maps each component to its .debs (a component may be empty). Returns ``root``."""
    dists = root / "dists" / suite
    for component, component_debs in packages.items():
        pool = root / "pool" / component
        pool.mkdir(parents=True, exist_ok=True)
        for deb in component_debs:
            dest = pool / deb.name[0] / deb.name / deb.basename
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(deb.path, dest)
        # Paths in Packages are relative to the archive root, as in Debian's and Ubuntu's.
        _packages(_ftparchive(["packages", f"pool/{component}"], root), dists / component / f"binary-{ARCH}")
    release = _release(dists, {"Origin": origin, "Label": origin, "Suite": suite, "Codename": suite,
                               "Architectures": ARCH, "Components": " ".join(packages),
                               "Description": f"{origin} {suite} (buildsys test archive)"})
    key.sign(release)
    return root


def flat_repo(root: Path, key: Key, packages: Iterable[Deb], origin: str = "NVIDIA", directory: str = "./") -> Path:
    """A flat repository (``deb URL DIRECTORY``) under ``root``: ``DIRECTORY/InRelease``, ``DIRECTORY/Packages``
    and the .debs beside them, signed by ``key``. ``./`` is NVIDIA's layout; CRAN's is ``bookworm-cran40/``,
    whose Packages name each file from ``root`` (``Filename: bookworm-cran40/r-base-core_….deb``)."""
    folder = root / directory
    folder.mkdir(parents=True, exist_ok=True)
    for deb in packages:
        shutil.copyfile(deb.path, folder / deb.basename)
    _packages(_ftparchive(["packages", directory.rstrip("/") or "."], root), folder)
    release = _release(folder, {"Origin": origin, "Label": origin, "Architectures": ARCH})
    key.sign(release)
    return root


def tamper_packages(folder: Path) -> None:
    """Change ``folder``'s Packages (and .gz) after signing, as a broken mirror or an attacker would:
    the Release still names the old hashes."""
    text = (folder / "Packages").read_bytes().replace(b"\nDescription:", b"\nX-Tampered: yes\nDescription:", 1)
    _packages(text, folder)
