"""CRAN data: a repository's index (PACKAGES, dependencies, version order) and a layer's parts of a recipe and a lock.

What ``cran`` (resolution and the ecosystem) and ``cran_build`` (the build side) share; no I/O
beyond reading an index it is handed.
"""

from __future__ import annotations

import heapq
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from buildsys.core import names
from buildsys.core.dcf import parse_dcf
from buildsys.core.errors import LockError, did_you_mean
from buildsys.ecosystems.cran_renv import RenvLock, read_renv
from buildsys.model.lockfile import LockSection
from buildsys.model.lockschema import (
    SHA256,
    Check,
    LockValidator,
    Schema,
    matching,
    str_list,
    url_check,
    whole_number,
)
from buildsys.model.recipe import KeyPath, RecipeSection, RecipeValidator

# Where R packages of a layer go: Debian's R puts /usr/local/lib/R/site-library first in .libPaths().
# One fixed path, because lazy-load databases and Meta/*.rds record where a package was installed.
SITE_LIBRARY = "/usr/local/lib/R/site-library"


# Sources are unpacked and compiled here, always the same path, mapped away by -ffile-prefix-map.
BUILD_DIR = "/tmp/buildsys-cran"


DEP_FIELDS = ("Depends", "Imports", "LinkingTo")


# A repository index is read whole (and then parsed): CRAN's own PACKAGES, about 21 000 stanzas of
# ~500 bytes, is ~10 MB; 64 MiB leaves six times that and keeps a gzip bomb (a 400 KB PACKAGES.gz that
# inflated to 400 MB took 1.7 GB RSS, issue 25) to one bounded buffer. Compressed or not, the same cap.
INDEX_CAP = 64 << 20


# A Path: field names a folder under src/contrib (CRAN's "Archive/NAME", "4.4.0/Recommended"): plain
# segments only, so a tarball URL can never leave the repository (no "..", no "%2e", no space).
_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


_DEP = re.compile(r"^\s*([A-Za-z][A-Za-z0-9.]*)\s*(?:\(\s*([<>=!]+)\s*([^)\s]+)\s*\))?\s*$")

LOCKED_CRAN: Schema = {
    "name": (matching(names.R_NAME, "an R package name"), True),
    "version": (matching(names.R_VERSION, "an R package version"), True),
    "sha256": (SHA256, True),
    "size": (whole_number, True),
    "url": (url_check, True),
    "depends": (str_list(matching(names.R_NAME, "an R package name")), False),
}
CRAN_REPO: Schema = {
    "url": (url_check, True),
    "index-sha256": (SHA256, True),
}


class CranRepoUnreachable(LockError):
    def __init__(self, recipe: Path, repo: str, why: str) -> None:
        self.repo, self.why = repo, why
        super().__init__(f"{recipe}: cran.repo: cannot read the CRAN repository {repo}: {why}",
                         hint="check the network and the URL (it must hold src/contrib/PACKAGES); behind a "
                              "firewall, set cran.repo to your organisation's CRAN mirror, then run `buildsys "
                              "lock` again")


class CranIndexError(LockError):
    def __init__(self, index_url: str, problem: str) -> None:
        self.index_url, self.problem = index_url, problem
        super().__init__(f"the CRAN index {index_url} does not parse: {problem}",
                         hint="check that cran.repo is a CRAN-like repository (src/contrib/PACKAGES in DCF), "
                              "then run `buildsys lock` again")


class CranPackageMissing(LockError):
    def __init__(self, recipe: Path, package: str, needed_by: str, repo: str, known: Iterable[str]) -> None:
        self.package, self.needed_by, self.repo = package, needed_by, repo
        why = f" (needed by {needed_by})" if needed_by else ""
        super().__init__(f"{recipe}: cran.packages: R package '{package}'{why} is not in {repo}"
                         f"{did_you_mean(package, known)}",
                         hint="check the name (R package names are case-sensitive), or use a repository or "
                              "snapshot date that has it, then run `buildsys lock` again")


class CranConstraintUnmet(LockError):
    """A dependency's version constraint that the image or the repository cannot meet."""


@dataclass(frozen=True)
class Dependency:
    name: str
    op: str = ""
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.op} {self.version})" if self.op else self.name

    def met_by(self, version: str) -> bool:
        if not self.op:
            return True
        c = compare_versions(version, self.version)
        return {">=": c >= 0, ">": c > 0, "<=": c <= 0, "<": c < 0, "==": c == 0, "=": c == 0,
                "!=": c != 0}.get(self.op, False)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    depends: tuple[Dependency, ...]  # Depends + Imports + LinkingTo, R itself left out
    r_needed: tuple[Dependency, ...]  # constraints on R itself
    md5: str = ""
    path: str = ""  # relative to src/contrib, when the index says (Path: field)


@dataclass(frozen=True)
class InstalledR:
    """What an image's R has: its version and every installed package (name -> (version, priority))."""

    version: str
    packages: Mapping[str, tuple[str, str]]

    def is_shipped(self, name: str) -> bool:
        return self.packages.get(name, ("", ""))[1] in ("base", "recommended")


@dataclass(frozen=True)
class CranRecipe(RecipeSection):
    """``[cran]``: R package names, from the CRAN-like repository ``repo`` (a dated snapshot); or renv's exact
    versions (``renv``, ``cran_renv``), whose names are then ``packages`` too."""

    packages: tuple[str, ...] = ()
    repo: str | None = None
    renv: RenvLock | None = None

    KEY = "cran"
    SCHEMA = {"packages": "str-list", "repo": "str", "renv": "str"}

    @classmethod
    def parse(cls, v: RecipeValidator, value: Any, key: KeyPath) -> Self:
        for i, pkg in enumerate(value.get("packages", [])):
            if not names.R_NAME.fullmatch(pkg):
                raise v.fail((*key, "packages", i), f"'{pkg}' is not an R package name",
                             hint="versions come from the dated snapshot in cran.repo and the lock, not the recipe")
        if "repo" in value:
            v.url((*key, "repo"), value["repo"])
        renv = read_renv(v, (*key, "renv"), value["renv"]) if "renv" in value else None
        if renv and value.get("packages"):
            raise v.fail((*key, "packages"), f"{renv.path} is the whole R package set: nothing may be resolved "
                                             "beside it", hint=f"add them to {renv.path} (renv::snapshot())")
        own = tuple(n for n, _, _ in renv.versions) if renv else tuple(value.get("packages", []))
        repo = value.get("repo") or (renv.repository if renv else None)
        if renv and repo and "repo" not in value and not repo.startswith(("https://", "http://")):
            raise v.fail((*key, "renv"), f"{renv.path}'s CRAN repository {repo!r} is not an http(s) URL",
                         hint='set [cran] repo = "https://..." in the recipe')
        return cls(own, repo, renv)

    def count(self) -> int:
        return len(self.packages)

    def inputs(self) -> tuple[tuple[str, str], ...]:
        return ((self.renv.path, self.renv.sha256),) if self.renv else ()


@dataclass(frozen=True)
class LockedCran:
    """One R source package from the recipe's CRAN-like repository."""

    name: str
    version: str
    sha256: str
    size: int
    url: str  # where it was at lock time; fetch also tries src/contrib/Archive/NAME/
    depends: tuple[str, ...] = ()  # its Depends/Imports/LinkingTo that this lock installs or the chain has

    def to_toml(self) -> dict[str, Any]:
        return {"depends": list(self.depends), "name": self.name, "sha256": self.sha256, "size": self.size,
                "url": self.url, "version": self.version}

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedCran:
        return cls(name=d["name"], version=d["version"], sha256=d["sha256"], size=int(d["size"]), url=d["url"],
                   depends=tuple(d.get("depends", ())))


@dataclass(frozen=True)
class CranSection(LockSection):
    """The R version, the repository with the sha256 of the index read, and ``[[cran]]`` by name."""

    packages: tuple[LockedCran, ...] = ()
    repo: str | None = None  # the recipe's repository, and the sha256 of the PACKAGES index read
    index_sha256: str | None = None
    r_version: str | None = None  # the image's R the [[cran]] set was resolved for

    KEYS: ClassVar[Mapping[str, Check | None]] = {
        "r": matching(names.R_VERSION, "an R version"), "cran-repo": None, "cran": None}

    def write(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.r_version:
            d["r"] = self.r_version
        if self.repo:
            d["cran-repo"] = {"url": self.repo, "index-sha256": self.index_sha256 or ""}
        if self.packages:
            d["cran"] = [c.to_toml() for c in sorted(self.packages, key=lambda c: c.name)]
        return d

    @classmethod
    def validate(cls, v: LockValidator, d: Mapping[str, Any]) -> None:
        """``[cran-repo]``, and ``[[cran]]``: each package once, its URL the tarball of that name and version."""
        if "cran-repo" in d:
            v.table(d["cran-repo"], CRAN_REPO, "[cran-repo]")
        def check(e: Any, at: str) -> None:
            v.table(e, LOCKED_CRAN, at)
            if not e["url"].endswith(f"/{e['name']}_{e['version']}.tar.gz"):
                raise v.fail(at, "url", f"{e['url']!r} is not {e['name']}_{e['version']}.tar.gz")

        for _ in v.each(d.get("cran", []), "[[cran]]", check):
            pass

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self:
        return cls(packages=tuple(LockedCran.from_toml(c) for c in d.get("cran", [])),
                   repo=d.get("cran-repo", {}).get("url"), index_sha256=d.get("cran-repo", {}).get("index-sha256"),
                   r_version=d.get("r"))


@dataclass(frozen=True)
class CranLock:
    packages: tuple[LockedCran, ...]
    index_sha256: str
    r_version: str


Entry = TypeVar("Entry", IndexEntry, LockedCran)


def compare_versions(a: str, b: str) -> int:
    """R's package_version order: numbers split on '.' and '-'."""
    def key(v: str) -> list[int]:
        return [int(x) for x in re.split(r"[.-]", v.strip()) if x.isdigit()]
    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def parse_deps(value: str) -> list[Dependency]:
    out = []
    for part in value.split(","):
        if not part.strip():
            continue
        m = _DEP.match(part)
        if not m:
            raise ValueError(f"{part.strip()!r} is not 'name' or 'name (op version)'")
        out.append(Dependency(m.group(1), m.group(2) or "", m.group(3) or ""))
    return out


def parse_index(text: str, index_url: str) -> dict[str, IndexEntry]:
    try:
        stanzas = parse_dcf(text)
        entries: dict[str, IndexEntry] = {}
        for st in stanzas:
            if "Package" not in st or "Version" not in st:
                raise ValueError(f"a stanza without Package or Version: {sorted(st)[:5]}")
            name, version = st["Package"], st["Version"]
            if not names.R_NAME.fullmatch(name) or not names.R_VERSION.fullmatch(version):
                raise ValueError(f"'{name}' '{version}' is not an R package name and version")
            deps = [d for f in DEP_FIELDS for d in parse_deps(st.get(f, ""))]
            path = st.get("Path", "").strip("/")
            if path and (why := _path_problem(path)):
                raise ValueError(f"{name} {version}: Path: {path!r} {why}")
            entry = IndexEntry(name=name, version=version, depends=tuple(d for d in deps if d.name != "R"),
                               r_needed=tuple(d for d in deps if d.name == "R"), md5=st.get("MD5sum", ""),
                               path=path)
            old = entries.get(name)
            if old is None or compare_versions(version, old.version) > 0:
                entries[name] = entry
    except ValueError as e:
        raise CranIndexError(index_url, str(e)) from e
    if not entries:
        raise CranIndexError(index_url, "it lists no package")
    return entries


def contrib(repo: str) -> str:
    return repo.rstrip("/") + "/src/contrib"


def _path_problem(path: str) -> str:
    """Why a relative path under src/contrib may not be used ("" when it may)."""
    parts = path.split("/")
    if any(p in (".", "..") for p in parts):
        return "leaves the repository (a '..' or '.' segment)"
    if not all(_PATH_PART.fullmatch(p) for p in parts):
        return "is not plain folder names (letters, digits, '.', '_', '+', '-'; no spaces, no '%')"
    return ""


def repo_relative_problem(url: str, repo: str) -> str:
    """Why a locked tarball URL is not a file of the repository's src/contrib ("" when it is).

    The lock check calls it: a lock whose URL leaves the repository (``Path: ../../elsewhere``
    pinned by an older buildsys, or an edited lock) is stale, not fetched.
    """
    base = contrib(repo) + "/"
    if not url.startswith(base):
        return f"it is not under {base}"
    rest = url[len(base):]
    folder, _, name = rest.rpartition("/")
    why = _path_problem(folder) if folder else ""
    if why or not name.endswith(".tar.gz") or not _PATH_PART.fullmatch(name):
        return f"{rest!r} {why or 'is not a tarball name'}"
    return ""


def tarball_urls(repo: str, name: str, version: str, path: str = "") -> tuple[str, ...]:
    """Where a pinned version is: the top level while current, ``Archive/NAME/`` once the repo moved on."""
    base = contrib(repo) + (f"/{path}" if path else "")
    return (f"{base}/{name}_{version}.tar.gz", f"{contrib(repo)}/Archive/{name}/{name}_{version}.tar.gz")


def gunzip_index(raw: bytes, url: str) -> bytes:
    """gzip members inflated into at most ``INDEX_CAP`` bytes; a bomb is refused at the cap, not after."""
    out: list[bytes] = []
    size = 0
    data = raw
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while True:
                chunk = d.decompress(data, INDEX_CAP + 1 - size)
                size += len(chunk)
                out.append(chunk)
                if size > INDEX_CAP:
                    raise CranIndexError(url, f"it inflates past {INDEX_CAP >> 20} MiB, the cap for an index "
                                              f"({len(raw)} bytes compressed): refused as a gzip bomb")
                if not d.unconsumed_tail:
                    break
                data = d.unconsumed_tail
        except zlib.error as e:
            raise CranIndexError(url, f"not gzip'd text ({e})") from e
        if not d.eof:
            raise CranIndexError(url, "the gzip stream stops before its end: truncated")
        data = d.unused_data.lstrip(b"\0")  # padding after the last member, as gzip allows
    return b"".join(out)


def install_order(entries: Iterable[Entry]) -> list[Entry]:
    """Dependencies first, ties broken by name: the same order for the same set, always."""
    by_name = {e.name: e for e in entries}
    deps = {n: {d if isinstance(d, str) else d.name for d in e.depends} & set(by_name) for n, e in by_name.items()}
    waiting = {n: len(d) for n, d in deps.items()}
    users: dict[str, list[str]] = {n: [] for n in by_name}
    for n, ds in deps.items():
        for d in ds:
            users[d].append(n)
    ready = [n for n, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        n = heapq.heappop(ready)
        out.append(by_name[n])
        for u in users[n]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(out) != len(by_name):
        cycle = sorted(set(by_name) - {e.name for e in out})
        raise LockError(f"R packages depend on each other in a cycle: {', '.join(cycle)}",
                        hint="report it to the packages' maintainers; pin other versions meanwhile")
    return out
