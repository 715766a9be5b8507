"""The apt family's parts of a recipe and of a lock: ``[apt]``, locked .debs and the archive states they came from.

``AptRecipe`` is a recipe's ``[apt]`` (a Debian root's bootstrap ``include``,
or a layer's packages). A Debian root's ``[base]`` (``debian_root``) and a
layer's ``[[apt]]`` (``apt_layer``, ``registry_apt``) are made of the same lock
entries: ``LockedDeb`` and ``LockedArchive``, each with its TOML out and in and
its shape on read. ``AptSection`` is a layer's part of a lock: ``[[apt]]``,
and on a registry image ``[[apt-archives]]`` and ``apt-in-image``.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from packageurl import PackageURL

from buildsys.core import names
from buildsys.core.store import Artifact
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems.base import Component, Pin
from buildsys.model.lockfile import LockSection
from buildsys.model.lockschema import (
    SHA256,
    Check,
    LockValidator,
    Schema,
    boolean,
    label,
    matching,
    str_list,
    url_check,
    whole_number,
)
from buildsys.model.recipe import KeyPath, RecipeSection, RecipeValidator

SNAPSHOT_STAMP_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
# An archive path (pool/main/a/apt/apt_2.6.1_amd64.deb): relative, no "..", no odd characters.
ARCHIVE_PATH = re.compile(r"[A-Za-z0-9+._~-]+(/[A-Za-z0-9+._~%-]+)*")
_ARCHIVE_PATH = matching(ARCHIVE_PATH, "a relative archive path")


def _archive_path(v: Any) -> str | None:
    err = _ARCHIVE_PATH(v)
    if err is None and ".." in v.split("/"):
        return f"{v!r} climbs out of the archive ('..')"
    return err


def release_date(v: Any) -> str | None:
    return None if isinstance(v, str) and v.isprintable() and len(v) < 64 else f"{v!r} is not a Release date"


DEB_NAMES = str_list(matching(names.DEB_NAME, "a Debian package name"))
DEB: Schema = {
    "name": (matching(names.DEB_NAME, "a Debian package name"), True),
    "version": (matching(names.DEB_VERSION, "a Debian version"), True),
    "architecture": (matching(names.DEB_ARCH, "a Debian architecture"), True),
    "sha256": (SHA256, True),
    "size": (whole_number, True),
    "path": (_archive_path, True),
    "mirror": (url_check, True),
}
# A suite of a dists/ archive ("bookworm-cran40", "noble"); a flat repository's directory ends in "/" ("./").
SOURCE_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*")
FLAT_DIR = re.compile(r"\./|[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*/")
COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
def _suite_or_flat(v: Any) -> str | None:
    if isinstance(v, str) and (SOURCE_SUITE.fullmatch(v) or FLAT_DIR.fullmatch(v)):
        return None
    return f"{v!r} is not a suite or a flat repository's directory"


ARCHIVE: Schema = {
    "mirror": (url_check, True),
    # Debian's ("bookworm-updates"); an image's own sources add Ubuntu's, vendors' ("noble", "bookworm-cran40/")
    # and flat repositories' directories ("./").
    "suite": (_suite_or_flat, True),
    "codename": (matching(SOURCE_SUITE, "a codename"), False),
    "release-date": (release_date, True),
    "inrelease-sha256": (SHA256, True),
    "snapshot": (matching(SNAPSHOT_STAMP_RE, "a snapshot timestamp (YYYYMMDDTHHMMSSZ)"), False),
}


@dataclass(frozen=True)
class AptRecipe(RecipeSection):
    """``[apt]``: Debian package names, each with an optional ``:arch``; the lock pins their versions."""

    packages: tuple[str, ...] = ()
    sources: tuple[AptSourceSpec, ...] = ()  # [[apt.sources]]: third-party repositories beside Debian's

    KEY = "apt"
    SCHEMA = {"packages": "str-list", "sources": ("tables", {
        "url": "str", "suite": "str", "components": "str-list", "flat": "bool",
        "key": {"url": "str", "path": "str", "sha256": "str", "local": "bool"},
    })}

    @classmethod
    def parse(cls, v: RecipeValidator, value: Any, key: KeyPath) -> Self:
        packages = value.get("packages", [])
        for i, pkg in enumerate(packages):
            if not names.DEB_NAME_ARCH.fullmatch(pkg):
                raise v.fail((*key, "packages", i), f"'{pkg}' is not a Debian package name",
                             hint="versions are pinned by the lock, not in the recipe")
        return cls(tuple(packages), parse_sources(v, value.get("sources", [])))

    def count(self) -> int:
        return len(self.packages)


_KEY_HINT = ('key = { url = "https://…/vendor.pub", sha256 = "…" } (sha256sum of the key file), '
             'or key = { path = "keys/vendor.asc" }')


@dataclass(frozen=True)
class KeySpec:
    """The OpenPGP key a source is signed with: a download pinned by sha256, or a file of the project."""

    url: str | None = None
    path: str | None = None  # relative to the project folder
    sha256: str | None = None  # required with url
    local: bool = False  # the url may be on this machine (as [[files]]' local)

    def describe(self) -> str:
        return self.url or f"{self.path} (in the project)"


@dataclass(frozen=True)
class AptSourceSpec:
    """``[[apt.sources]]``: a third-party apt repository and the key its InRelease must be signed with."""

    url: str
    suite: str  # "./" (or another directory ending in "/") for a flat repository
    components: tuple[str, ...]
    key: KeySpec

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")


def _parse_key(v: RecipeValidator, at: tuple[str | int, ...], k: Mapping[str, Any]) -> KeySpec:
    if ("url" in k) == ("path" in k):
        raise v.fail(at, "needs exactly one of url or path", hint=_KEY_HINT)
    sha = k.get("sha256")
    if sha is not None and not names.HEX64.fullmatch(sha):
        raise v.fail((*at, "sha256"), "must be 64 lowercase hex digits (sha256sum of the key file)")
    if "url" in k:
        v.url((*at, "url"), k["url"])
        if sha is None:
            raise v.fail((*at, "sha256"), "is required with a key url: the key is what every package of the "
                         "source is trusted by, so it is pinned in the recipe", hint=_KEY_HINT)
        if not k.get("local", False) and (why := local_reason(k["url"])):
            raise v.fail((*at, "url"), f"'{k['url']}' reads from this machine: {why}",
                         hint="a recipe may do that only on purpose: add local = true to this key")
        return KeySpec(url=k["url"], sha256=sha, local=k.get("local", False))
    path = PurePosixPath(k["path"])
    if not k["path"] or path.is_absolute() or ".." in path.parts:
        raise v.fail((*at, "path"), f"'{k['path']}' is not a path inside the project",
                     hint='a path relative to the project folder, e.g. "keys/vendor.asc"')
    if "local" in k:
        raise v.fail((*at, "local"), "goes with a key url only (a path is always read from this machine)")
    if not (v.path.parent.parent / path).is_file():
        raise v.fail((*at, "path"), f"no such file: {v.path.parent.parent / path}",
                     hint="commit the vendor's key to the project, or name its url and sha256")
    return KeySpec(path=str(path), sha256=sha)


def _suite(v: RecipeValidator, at: tuple[str | int, ...], src: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A flat repository's directory and no components, or a suite and its components."""
    components = tuple(src.get("components", []))
    if src.get("flat", False):
        suite = src.get("suite", "./")
        if components:
            raise v.fail((*at, "components"), "a flat repository has no components",
                         hint="drop components, or drop flat = true and name the suite")
        if not FLAT_DIR.fullmatch(suite):
            raise v.fail((*at, "suite"), f"'{suite}' is not a flat repository's directory",
                         hint='a flat repository is "./" (the default) or a folder ending in "/"')
        return suite, components
    if "suite" not in src:
        raise v.fail((*at, "suite"), "is required (or flat = true for a flat repository such as NVIDIA's)",
                     hint='e.g. suite = "noble", components = ["main"]')
    suite = src["suite"]
    if suite.endswith("/"):
        raise v.fail((*at, "suite"), f"'{suite}' ends in '/': that is a flat repository's directory",
                     hint="add flat = true (a flat repository has no components)")
    if not SOURCE_SUITE.fullmatch(suite):
        raise v.fail((*at, "suite"), f"'{suite}' is not a suite name")
    if not components:
        raise v.fail((*at, "components"), "are required for a suite", hint='e.g. components = ["main"]')
    return suite, components


def parse_sources(v: RecipeValidator, sources: list[Mapping[str, Any]]) -> tuple[AptSourceSpec, ...]:
    """``[[apt.sources]]``: each a URL, a suite and components or ``flat = true``, and a pinned key."""
    out: list[AptSourceSpec] = []
    for i, src in enumerate(sources):
        at: tuple[str | int, ...] = ("apt", "sources", i)
        if "url" not in src:
            raise v.fail((*at, "url"), "is required")
        v.url((*at, "url"), src["url"])
        suite, components = _suite(v, at, src)
        for j, comp in enumerate(components):
            if not COMPONENT.fullmatch(comp):
                raise v.fail((*at, "components", j), f"'{comp}' is not a component name")
        if "key" not in src:
            raise v.fail((*at, "key"), "is required: apt checks the source's InRelease against it", hint=_KEY_HINT)
        spec = AptSourceSpec(url=src["url"].rstrip("/"), suite=suite, components=components,
                             key=_parse_key(v, (*at, "key"), src["key"]))
        if any((o.url, o.suite) == (spec.url, spec.suite) for o in out):
            raise v.fail((*at, "url"), f"{spec.url} {spec.suite} is listed twice")
        out.append(spec)
    return tuple(out)


LOCKED_SOURCE: Schema = {
    "url": (url_check, True),
    "suite": (_suite_or_flat, True),
    "components": (str_list(matching(COMPONENT, "a component name")), False),
    "key-sha256": (SHA256, True),
    "key-size": (whole_number, True),
    "key-url": (url_check, False),
    "key-path": (_archive_path, False),
    "key-local": (boolean, False),
    "release-date": (release_date, True),
    "inrelease-sha256": (SHA256, True),
}


@dataclass(frozen=True)
class LockedSource:
    """A third-party repository a layer's [[apt]] was resolved from: its key and its signed state then."""

    url: str
    suite: str
    components: tuple[str, ...]
    key_sha256: str
    key_size: int
    key_url: str | None
    key_path: str | None
    release_date: str
    inrelease_sha256: str
    key_local: bool = False

    @property
    def key_filename(self) -> str:
        return (self.key_url or self.key_path or "key").rstrip("/").rsplit("/", 1)[-1] or "key"

    def key_artifact(self) -> Artifact | None:
        """The key as fetch vendors it; None for a key of the project (``key-path``), read from there."""
        if self.key_url is None:
            return None
        return Artifact(kind="file", name=f"apt key of {self.url}", version="", filename=self.key_filename,
                        sha256=self.key_sha256, size=self.key_size, urls=(self.key_url,), local=self.key_local)

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"inrelease-sha256": self.inrelease_sha256, "key-sha256": self.key_sha256,
                             "key-size": self.key_size, "release-date": self.release_date, "suite": self.suite,
                             "url": self.url}
        if self.components:
            d["components"] = list(self.components)
        if self.key_url is not None:
            d["key-url"] = self.key_url
        if self.key_path is not None:
            d["key-path"] = self.key_path
        if self.key_local:
            d["key-local"] = True
        return d

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedSource:
        return cls(url=d["url"], suite=d["suite"], components=tuple(d.get("components", [])),
                   key_sha256=d["key-sha256"], key_size=int(d["key-size"]), key_url=d.get("key-url"),
                   key_path=d.get("key-path"), release_date=d["release-date"],
                   inrelease_sha256=d["inrelease-sha256"], key_local=bool(d.get("key-local", False)))


def check_sources(v: LockValidator, value: Any, where: str) -> None:
    """``[[apt-sources]]``: each of its shape, with exactly one of key-url and key-path."""
    for i, e in enumerate(v.entries(value, where)):
        at = label(where, i, e)
        v.table(e, LOCKED_SOURCE, at)
        if ("key-url" in e) == ("key-path" in e):
            raise v.fail(at, "key-url", "needs exactly one of key-url and key-path")
        if e["suite"].endswith("/") == bool(e.get("components")):
            raise v.fail(at, "components", "a suite has components, a flat repository ('./') none")


@dataclass(frozen=True)
class LockedDeb:
    name: str
    version: str
    architecture: str
    sha256: str
    size: int
    path: str  # archive path, e.g. pool/main/a/apt/apt_2.6.1_amd64.deb
    mirror: str

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def artifact(self, snapshot: str | None = None) -> Artifact:
        """The .deb to fetch: from its mirror, then (given the archive state's snapshot timestamp) from the
        snapshot service that keeps that state, when the mirror has one (``snapshot_base``)."""
        urls = [f"{self.mirror}/{self.path}"]
        if snapshot and (base := snapshot_base(self.mirror, snapshot)):
            urls.append(f"{base}/{self.path}")
        # local=True: the mirror is the one the recipe names (the freshness check holds the lock to it),
        # so a file: or loopback mirror is the recipe's own choice.
        return Artifact(kind="deb", name=self.name, version=self.version, filename=self.filename,
                        sha256=self.sha256, size=self.size, urls=tuple(urls), local=True)

    def to_toml(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "mirror": self.mirror, "name": self.name, "path": self.path,
                "sha256": self.sha256, "size": self.size, "version": self.version}

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedDeb:
        return cls(name=d["name"], version=d["version"], architecture=d["architecture"], sha256=d["sha256"],
                   size=int(d["size"]), path=d["path"], mirror=d["mirror"])


@dataclass(frozen=True)
class LockedArchive:
    """One archive a root was resolved from (the suite, its -updates, its -security), as signed then."""

    mirror: str
    suite: str
    codename: str
    release_date: str  # the signed Release's Date, verbatim
    inrelease_sha256: str
    # The snapshot timestamp that keeps this state (snapshot.debian.org, snapshot.ubuntu.com), by the rule
    # of ``snapshot_timestamp``; None in locks written before it was recorded (fetch derives it then).
    snapshot: str | None = None

    def to_toml(self) -> dict[str, Any]:
        d = {"inrelease-sha256": self.inrelease_sha256, "mirror": self.mirror,
             "release-date": self.release_date, "suite": self.suite}
        if self.codename:  # a flat repository's Release often names none
            d["codename"] = self.codename
        if self.snapshot:
            d["snapshot"] = self.snapshot
        return d

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedArchive:
        return cls(mirror=d["mirror"], suite=d["suite"], codename=d.get("codename", d["suite"]),
                   release_date=d["release-date"], inrelease_sha256=d["inrelease-sha256"],
                   snapshot=d.get("snapshot"))

    def snapshot_timestamp(self) -> str | None:
        """The recorded timestamp, or the one the rule gives for its Release date."""
        if self.snapshot:
            return self.snapshot
        try:
            return snapshot_timestamp(int(email.utils.parsedate_to_datetime(self.release_date).timestamp()))
        except (TypeError, ValueError):
            return None


# --- snapshots: where an archive state stays available -----------------------------------------------------------

# snapshot.debian.org imports the archive four times a day (snapshot.ubuntu.com likewise several times), and
# /archive/NAME/TIMESTAMP/ serves the newest import at or before TIMESTAMP. Six hours after a Release was
# signed, an import holds it (or a later Release of the same day, whose pool still holds every file the
# lock names: a file leaves the pool only once no current Release refers to it). docs/locks.md, "Snapshots".
SNAPSHOT_DELAY = 6 * 3600
_DEBIAN_HOSTS = re.compile(r"(deb|ftp|http|cdn-fastly\.deb|ftp\.[a-z]{2})\.debian\.(org|net)")
_UBUNTU_HOSTS = re.compile(r"([a-z]{2}\.)?(archive|security|ports)\.ubuntu\.com")


def archive_snapshot(mirror: str, epoch: int) -> str | None:
    """What a new lock records as an archive's ``snapshot``: the rule's timestamp, where a snapshot
    service keeps that archive."""
    stamp = snapshot_timestamp(epoch)
    return stamp if snapshot_base(mirror, stamp) else None


def deb_artifacts(debs: tuple[LockedDeb, ...], archives: tuple[LockedArchive, ...], epoch: int) -> list[Artifact]:
    """The .debs to fetch, each with the snapshot of its archive state as a second place: of the lock's
    archives on the deb's mirror the newest state (every one of them was current when the lock was made),
    or where the lock has no archives (a layer on a Debian root) the one of the lock's epoch, which is at
    least the newest Release date of the chain's archives."""
    stamps: dict[str, str] = {}
    for a in archives:
        stamp = a.snapshot_timestamp()
        if stamp and stamp > stamps.get(a.mirror.rstrip("/"), ""):
            stamps[a.mirror.rstrip("/")] = stamp
    fallback = snapshot_timestamp(epoch) if epoch else None
    return [d.artifact(stamps.get(d.mirror.rstrip("/"), fallback)) for d in debs]


def snapshot_timestamp(epoch: int) -> str:
    """The snapshot timestamp for an archive state whose newest Release was signed at ``epoch``."""
    return datetime.datetime.fromtimestamp(epoch + SNAPSHOT_DELAY, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def snapshot_base(mirror: str, timestamp: str) -> str | None:
    """The snapshot URL that mirrors ``mirror`` (Debian's or Ubuntu's official archive) at ``timestamp``;
    None for any other archive (a third-party repository, a company mirror: nobody keeps their past)."""
    parts = urlsplit(mirror)
    host, path = (parts.hostname or "").lower(), parts.path.strip("/")
    if _DEBIAN_HOSTS.fullmatch(host) and path in ("debian", "debian-security", "debian-ports"):
        return f"https://snapshot.debian.org/archive/{path}/{timestamp}"
    if host == "security.debian.org" and path in ("", "debian-security"):
        return f"https://snapshot.debian.org/archive/debian-security/{timestamp}"
    if _UBUNTU_HOSTS.fullmatch(host) and path in ("ubuntu", "ubuntu-ports"):
        return f"https://snapshot.ubuntu.com/{path}/{timestamp}"
    return None


def debs_toml(debs: tuple[LockedDeb, ...]) -> list[dict[str, Any]]:
    return [p.to_toml() for p in sorted(debs, key=lambda p: (p.name, p.architecture))]


def check_debs(v: LockValidator, value: Any, where: str) -> None:
    """An array of .debs: each of its shape, an archive path to a .deb, each (name, architecture) once."""
    def check(e: Any, at: str) -> None:
        v.table(e, DEB, at)
        if not e["path"].endswith(".deb"):
            raise v.fail(at, "path", f"{e['path']!r} is not a .deb")

    for _ in v.each(value, where, check, key=lambda e: (e["name"], e["architecture"])):
        pass


def check_archives(v: LockValidator, value: Any, where: str) -> None:
    for i, a in enumerate(v.entries(value, where)):
        v.table(a, ARCHIVE, label(where, i, a))


def dpkg_mismatch(installed: Mapping[str, str], expected: Mapping[str, str]) -> str | None:
    """How dpkg's packages (name -> version) differ from the locked ones; None when they are the same."""
    if installed == expected:
        return None
    extra = sorted(set(installed) - set(expected))
    missing = sorted(set(expected) - set(installed))
    changed = sorted(n for n in set(installed) & set(expected) if installed[n] != expected[n])
    return (f"installed but not locked: {extra or '-'}; locked but not installed: {missing or '-'}; "
            f"other version: {changed or '-'}")


def deb_component(d: LockedDeb) -> Component:
    purl = PackageURL("deb", "debian", d.name, d.version, {"arch": d.architecture})
    return Component("deb", d.name, d.version, purl.to_string(), d.sha256, f"{d.mirror}/{d.path}")


def deb_pin(d: LockedDeb) -> Pin:
    return Pin("apt", d.name, d.version, d.mirror)


@dataclass(frozen=True)
class AptSection(LockSection):
    """A layer's ``[[apt]]``; on a registry image also the archives it was resolved from and what the image had."""

    debs: tuple[LockedDeb, ...] = ()
    # A layer on a registry image: the Debian archives its [[apt]] was resolved from (the
    # suite first), and the requested packages that the image itself already has.
    archives: tuple[LockedArchive, ...] = ()
    in_image: tuple[str, ...] = ()
    # The recipe's [[apt.sources]] as resolved: their keys and signed states (the chain's others are in its locks).
    sources: tuple[LockedSource, ...] = ()

    KEYS: ClassVar[Mapping[str, Check | None]] = {"apt": None, "apt-archives": None, "apt-in-image": DEB_NAMES,
                                                  "apt-sources": None}

    def write(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.debs:
            d["apt"] = debs_toml(self.debs)
        if self.archives:
            d["apt-archives"] = [a.to_toml() for a in self.archives]  # in resolution order, not sorted
        if self.in_image:
            d["apt-in-image"] = sorted(self.in_image)
        if self.sources:
            d["apt-sources"] = [s.to_toml() for s in self.sources]  # in the recipe's order
        return d

    @classmethod
    def validate(cls, v: LockValidator, d: Mapping[str, Any]) -> None:
        if "apt" in d:
            check_debs(v, d["apt"], "[[apt]]")
        check_archives(v, d.get("apt-archives", []), "[[apt-archives]]")
        check_sources(v, d.get("apt-sources", []), "[[apt-sources]]")

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self:
        return cls(debs=tuple(LockedDeb.from_toml(p) for p in d.get("apt", [])),
                   archives=tuple(LockedArchive.from_toml(a) for a in d.get("apt-archives", [])),
                   in_image=tuple(d.get("apt-in-image", [])),
                   sources=tuple(LockedSource.from_toml(s) for s in d.get("apt-sources", [])))
