"""Whose a locked .deb is, as its package URL says to a vulnerability scanner, and what license it declares.

Scanners (grype, trivy) match a ``pkg:deb`` purl against the advisories of the
release its ``distro`` qualifier names: ``pkg:deb/debian/libc6@2.36-9+deb12u13?arch=amd64&distro=debian-12``,
``pkg:deb/ubuntu/libc6@2.35-0ubuntu3.8?arch=amd64&distro=ubuntu-22.04``. The release comes from the
chain's archive state in its locks: a Debian root's ``[[base.archives]]``, or on a registry image the
``[[apt-archives]]`` its apt layers were resolved from (the image's release first). Its codename gives
the version (bookworm -> 12, jammy -> 22.04) from the tables below; a codename they do not know (a
release newer than buildsys, testing) gives no ``distro`` rather than a guess.

A .deb from any other archive (a vendor's ``[[apt-sources]]``, NVIDIA's flat repository an nvidia/cuda
image reads) is not the distribution's, and its advisories are not the distribution's either: its purl
names the repository's host as the namespace and the repository as ``repository_url``, with no
``distro`` (``pkg:deb/developer.download.nvidia.com/cuda-cudart-12-4@12.4.127-1?arch=amd64&repository_url=
developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64``). The host is what the lock records
of a source; its Release's Origin is not recorded, and reading it from apt's list cache would make the SBOM
depend on what that cache holds today.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from packageurl import PackageURL

from buildsys.core import debfile, licenses
from buildsys.ecosystems.apt_sections import AptSection, LockedArchive, LockedDeb
from buildsys.ecosystems.base import Component
from buildsys.model.lockfile import Lock

DEBIAN_RELEASES = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13"}
UBUNTU_RELEASES = {"xenial": "16.04", "bionic": "18.04", "focal": "20.04", "jammy": "22.04", "kinetic": "22.10",
                   "lunar": "23.04", "mantic": "23.10", "noble": "24.04", "oracular": "24.10", "plucky": "25.04",
                   "questing": "25.10"}
# The archives of a release beside the release itself.
POCKETS = ("", "-updates", "-security", "-backports", "-proposed")


@dataclass(frozen=True)
class Distro:
    """The release a chain's distribution archives are: its vendor, codename and version (None if unknown)."""

    vendor: str | None  # debian | ubuntu; None when the codename says neither
    codename: str
    version: str | None

    @property
    def qualifier(self) -> str | None:
        """The purl ``distro`` qualifier (``debian-12``), or None when the release is not known."""
        return f"{self.vendor}-{self.version}" if self.vendor and self.version else None


def distro(archives: Sequence[LockedArchive], debian_root: bool) -> Distro | None:
    """The release of the chain's archive state (its first archive is the release); None without archives."""
    if not archives:
        return None
    codename = archives[0].codename or archives[0].suite
    if codename in DEBIAN_RELEASES:
        return Distro("debian", codename, DEBIAN_RELEASES[codename])
    if codename in UBUNTU_RELEASES:
        return Distro("ubuntu", codename, UBUNTU_RELEASES[codename])
    # A Debian root is bootstrapped from Debian's suite with Debian's keyring: Debian, of a release not listed.
    return Distro("debian" if debian_root else None, codename, None)


def chain_archives(chain: Sequence[Lock]) -> tuple[LockedArchive, ...]:
    """The archive state the chain's apt layers on a registry image were resolved from (one per chain)."""
    return next((lk.section(AptSection).archives for lk in chain if lk.section(AptSection).archives), ())


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "unknown").lower()


def _bare(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}".rstrip("/")


class DebOrigins:
    """Each .deb's purl by the archive it came from (its ``mirror``)."""

    def __init__(self, archives: Sequence[LockedArchive], debian_root: bool) -> None:
        self.distro = distro(archives, debian_root)
        codename = self.distro.codename if self.distro else ""
        # The release's pockets on its mirror, and its -security wherever that is (Debian's and Ubuntu's are on
        # hosts of their own); a vendor's repository that calls its suite "bookworm" too is on neither.
        primary = archives[0].mirror.rstrip("/") if archives else ""
        self._release = {a.mirror.rstrip("/") for a in archives
                         if a.suite == f"{codename}-security"
                         or (a.mirror.rstrip("/") == primary and any(a.suite == f"{codename}{p}" for p in POCKETS))}

    def purl(self, d: LockedDeb) -> str:
        mirror = d.mirror.rstrip("/")
        if mirror in self._release and self.distro and self.distro.vendor:
            qualifiers = {"arch": d.architecture, **({"distro": q} if (q := self.distro.qualifier) else {})}
            return PackageURL("deb", self.distro.vendor, d.name, d.version, qualifiers).to_string()
        # Not the distribution's archive (or one whose vendor is not known): the repository says whose it is.
        return PackageURL("deb", _host(mirror), d.name, d.version,
                          {"arch": d.architecture, "repository_url": _bare(mirror)}).to_string()

    def components(self, debs: Sequence[LockedDeb]) -> list[Component]:
        return [Component("deb", d.name, d.version, self.purl(d), d.sha256, f"{d.mirror}/{d.path}")
                for d in sorted(debs, key=lambda d: (d.name, d.architecture))]



def deb_license(component: Component, path: Path) -> str | None:
    """The license a .deb's machine-readable ``/usr/share/doc/NAME/copyright`` declares for the package
    (``core.licenses.from_debian_copyright``); None without one (a free-form file, a doc folder that is a
    link to another package's, a file that is not a .deb)."""
    if component.kind != "deb":
        return None
    try:
        data = debfile.read_file(path, f"usr/share/doc/{component.name}/copyright")
    except (ValueError, OSError):  # not a .deb this reader understands (NotADeb is a ValueError): none read
        return None
    return licenses.from_debian_copyright(data.decode("utf-8", "replace")) if data else None
