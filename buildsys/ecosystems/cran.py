"""Lock ``[cran]``: R source packages from a CRAN-like repository, pinned by sha256.

A CRAN-like repository is a folder holding ``src/contrib/PACKAGES`` (DCF, one
stanza per package, optionally ``PACKAGES.gz``) and ``NAME_VERSION.tar.gz``
beside it; a version that the repository has moved past lives under
``src/contrib/Archive/NAME/``. Resolution is the transitive closure over
Depends, Imports and LinkingTo (what ``install.packages`` follows by default),
less base and recommended packages and whatever the parent image already has
installed (Debian's ``r-cran-*`` included), read from the image itself.

The build side (``install_steps``) lives here too, as pip's does in ``pip``.
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import re
import shlex
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from packageurl import PackageURL

from buildsys.core import names, net
from buildsys.core.dcf import parse_dcf
from buildsys.core.errors import FetchError, HashMismatch, LockError, NotVendored, did_you_mean
from buildsys.core.store import Artifact, Store
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems.apt_layer import chain_debs
from buildsys.ecosystems.base import MOUNT, STEP_HEADER, STEP_MARKER, Component, Ecosystem, LockContext, Pin
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.lockfile import Lock, LockSection
from buildsys.model.lockschema import (
    SHA256,
    Check,
    LockValidator,
    Schema,
    label,
    matching,
    str_list,
    url_check,
    whole_number,
)
from buildsys.model.recipe import Recipe, RecipeSection, RecipeValidator

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    from buildsys.engine import Engine

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

# Headers a failed compile may name, and the Debian package that provides them.
HEADER_PACKAGES = {
    "sodium.h": "libsodium-dev", "curl/curl.h": "libcurl4-openssl-dev", "openssl/ssl.h": "libssl-dev",
    "libxml/parser.h": "libxml2-dev", "libxml/tree.h": "libxml2-dev", "zmq.h": "libzmq3-dev",
    "png.h": "libpng-dev", "jpeglib.h": "libjpeg-dev", "zlib.h": "zlib1g-dev", "gmp.h": "libgmp-dev",
    "gsl/gsl_math.h": "libgsl-dev", "fftw3.h": "libfftw3-dev", "sqlite3.h": "libsqlite3-dev",
    "git2.h": "libgit2-dev", "ft2build.h": "libfreetype-dev", "fontconfig/fontconfig.h": "libfontconfig-dev",
    "cairo.h": "libcairo2-dev", "uv.h": "libuv1-dev", "hdf5.h": "libhdf5-dev", "netcdf.h": "libnetcdf-dev",
    "proj.h": "libproj-dev", "gdal.h": "libgdal-dev", "geos_c.h": "libgeos-dev", "udunits2.h": "libudunits2-dev",
    "magick/api.h": "libmagick++-dev", "Magick++.h": "libmagick++-dev", "tiff.h": "libtiff-dev",
    "harfbuzz/hb.h": "libharfbuzz-dev", "fribidi/fribidi.h": "libfribidi-dev", "mysql.h": "libmariadb-dev",
    "libpq-fe.h": "libpq-dev", "unicode/utypes.h": "libicu-dev", "lzma.h": "liblzma-dev", "bzlib.h": "libbz2-dev",
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
    """``[cran]``: R package names, from the CRAN-like repository ``repo`` (a dated snapshot)."""

    packages: tuple[str, ...] = ()
    repo: str | None = None

    KEY = "cran"
    SCHEMA = {"packages": "str-list", "repo": "str"}

    @classmethod
    def parse(cls, v: RecipeValidator, data: Mapping[str, Any]) -> Self:
        cran = data.get("cran", {})
        for i, pkg in enumerate(cran.get("packages", [])):
            if not names.R_NAME.fullmatch(pkg):
                raise v.fail(("cran", "packages", i), f"'{pkg}' is not an R package name",
                             hint="versions come from the dated snapshot in cran.repo and the lock, not the recipe")
        if "repo" in cran:
            v.url(("cran", "repo"), cran["repo"])
        return cls(tuple(cran.get("packages", [])), cran.get("repo"))

    def count(self) -> int:
        return len(self.packages)


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
        r_names: set[str] = set()
        for i, e in enumerate(v.entries(d.get("cran", []), "[[cran]]")):
            at = label("[[cran]]", i, e)
            v.table(e, LOCKED_CRAN, at)
            if not e["url"].endswith(f"/{e['name']}_{e['version']}.tar.gz"):
                raise v.fail(at, "url", f"{e['url']!r} is not {e['name']}_{e['version']}.tar.gz")
            if e["name"] in r_names:
                raise v.fail(at, "name", f"'{e['name']}' is locked twice")
            r_names.add(e["name"])

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self | None:
        if not any(key in d for key in cls.KEYS):
            return None
        return cls(packages=tuple(LockedCran.from_toml(c) for c in d.get("cran", [])),
                   repo=d.get("cran-repo", {}).get("url"), index_sha256=d.get("cran-repo", {}).get("index-sha256"),
                   r_version=d.get("r"))


@dataclass(frozen=True)
class CranStaging:
    """What ``Cran.stage`` reads of a lock, under the names it had when [[cran]] was a field of ``Lock``.

    (``Cran.stage``'s body is being reworked on another branch; ``_staging`` hands it this until that is merged.)
    """

    cran: tuple[LockedCran, ...]
    cran_repo: str | None
    source_date_epoch: int


def _staging(stage: Callable[[Cran, Store, Recipe, CranStaging, Path], list[str]],
             ) -> Callable[[Cran, Store, Recipe, Lock, Path], list[str]]:
    def staged(self: Cran, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        part = lock.section(CranSection)
        return stage(self, store, recipe, CranStaging(part.packages, part.repo, lock.source_date_epoch), folder)
    return staged


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


def read_index(recipe: Recipe) -> tuple[dict[str, IndexEntry], str]:
    """The repo's PACKAGES index (PACKAGES.gz first, as R does) and the sha256 of the bytes read."""
    repo = recipe.section(CranRecipe).repo
    assert repo
    allow_local = local_reason(repo) is not None  # the recipe names a loopback/file repo on purpose
    failures = []
    for name in ("PACKAGES.gz", "PACKAGES"):
        url = f"{contrib(repo)}/{name}"
        try:
            with net.Client(net.Policy(local_ok=allow_local), attempts=3) as client, \
                    client.send("GET", url) as resp:
                if resp.status_code >= 400:
                    failures.append(f"{url}: HTTP {resp.status_code}")
                    continue
                raw = resp.read(INDEX_CAP, f"the repository index {name}")
        except net.TooLarge as e:
            raise CranIndexError(url, f"larger than {INDEX_CAP >> 20} MiB, the cap for an index") from e
        except net.NetError as e:
            raise CranRepoUnreachable(recipe.path, repo, e.message) from e
        try:
            text = (_gunzip(raw, url) if name.endswith(".gz") else raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CranIndexError(url, f"not UTF-8 text ({e})") from e
        return parse_index(text, url), hashlib.sha256(raw).hexdigest()
    raise CranRepoUnreachable(recipe.path, repo, "; ".join(failures))


def _gunzip(raw: bytes, url: str) -> bytes:
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


def resolve_closure(recipe: Recipe, index: Mapping[str, IndexEntry], installed: InstalledR,
                    above: Mapping[str, str] | None = None) -> list[IndexEntry]:
    """The packages to install, in install order (dependencies first, ties by name).

    ``above``: R packages the ancestors' locks pinned from CRAN (they are in the
    image too, but named here so a missing one says where it was expected).
    """
    repo = recipe.section(CranRecipe).repo or ""
    have = dict(above or {})
    have.update({n: v for n, (v, _) in installed.packages.items()})
    chosen: dict[str, IndexEntry] = {}
    todo: list[tuple[str, Dependency | None, str]] = [(p, None, "") for p in recipe.section(CranRecipe).packages]
    while todo:
        name, dep, parent = todo.pop()
        where = f"{parent} needs '{dep}'" if dep and parent else f"the recipe asks for '{name}'"
        if name in have:
            if dep is not None and not dep.met_by(have[name]):
                what = "ships with R" if installed.is_shipped(name) else "is in the parent image"
                raise CranConstraintUnmet(
                    f"{recipe.path}: cran.packages: {where}, but {name} {have[name]} {what}",
                    hint=f"upgrade {name} in the parent (its r-cran-* package or its recipe), or pick a snapshot "
                         f"date in cran.repo where {parent or name} fits; then `buildsys lock {recipe.name}`")
            continue
        entry = index.get(name)
        if entry is None:
            raise CranPackageMissing(recipe.path, name, parent, repo, index)
        if dep is not None and not dep.met_by(entry.version):
            raise CranConstraintUnmet(f"{recipe.path}: cran.packages: {where}, but {repo} has {name} {entry.version}",
                                      hint="use a cran.repo snapshot that has a version that fits, then "
                                           f"`buildsys lock {recipe.name}`")
        for r in entry.r_needed:
            if not r.met_by(installed.version):
                raise CranConstraintUnmet(
                    f"{recipe.path}: cran.packages: {name} {entry.version} needs '{r}', the image has R "
                    f"{installed.version}",
                    hint=f"use an older cran.repo snapshot (one from R {installed.version}'s time), or a newer R "
                         f"in the parent chain; then `buildsys lock {recipe.name}`")
        if name in chosen:
            continue
        chosen[name] = entry
        todo += [(d.name, d, name) for d in reversed(entry.depends)]
    return install_order(chosen.values())


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


# The image's R: its version, then every package folder of every library with Version and Priority.
_INSPECT = r"""
set -eu
command -v R >/dev/null || { echo '::no-r::'; exit 0; }
for d in /usr/lib/R/library/base /usr/lib/R/library/*/ /usr/lib/R/site-library/*/ \
         /usr/local/lib/R/site-library/*/; do
  f="${d%/}/DESCRIPTION"
  [ -f "$f" ] || continue
  echo "::pkg::"
  grep -E '^(Package|Version|Priority):' "$f" || true
done
"""


def inspect_image(engine: Engine, image: str) -> InstalledR | None:
    """What R the image has and which packages (None: no R at all)."""
    result = engine.run(image, ["/bin/sh", "-c", _INSPECT], network="none", user="0:0", entrypoint=())
    if result.exit_code != 0:
        raise LockError(f"reading the R packages of image {image[:19]} failed (exit {result.exit_code}): "
                        f"{result.output[-500:]}", hint="run again with -v; this is a buildsys bug if it persists")
    if "::no-r::" in result.output:
        return None
    packages: dict[str, tuple[str, str]] = {}
    r_version = ""
    for chunk in result.output.split("::pkg::")[1:]:
        fields = dict(ln.split(":", 1) for ln in chunk.strip().splitlines() if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        name, version = fields.get("Package", ""), fields.get("Version", "")
        if not name or not version:
            continue
        if name == "base":
            r_version = version
        packages.setdefault(name, (version, fields.get("Priority", "")))  # first in .libPaths() order wins
    return InstalledR(version=r_version, packages=packages)


def check_repo(recipe: Recipe) -> tuple[dict[str, IndexEntry], str]:
    """Read the index before anything costly (the parent image is built after): an unreachable repo says so first."""
    if not recipe.section(CranRecipe).repo:
        raise LockError(f"{recipe.path}: [cran] needs repo = \"...\" (a dated CRAN snapshot)",
                        hint='add repo = "https://packagemanager.posit.co/cran/2025-06-02" (or your mirror)')
    return read_index(recipe)


def lock_cran(recipe: Recipe, store: Store, engine: Engine, image: str, above: Mapping[str, str],
              index: tuple[dict[str, IndexEntry], str],
              progress: Callable[[str], None] = lambda message: None) -> CranLock:
    """Resolve the recipe's [cran] packages for the R in ``image``; pin each tarball by its sha256."""
    repo = recipe.section(CranRecipe).repo
    assert repo
    installed = inspect_image(engine, image)
    if installed is None:
        raise LockError(f"{recipe.path}: [cran] packages need R in the image, and the parent chain has none",
                        hint='add [apt] packages = ["r-base-core", "r-base-dev"] to this recipe or a parent')
    entries = resolve_closure(recipe, index[0], installed, above)
    progress(f"cran: {len(entries)} packages to pin (R {installed.version}): "
             + " ".join(f"{e.name}={e.version}" for e in entries))
    allow_local = local_reason(repo) is not None
    locked = []
    for e in entries:
        url = tarball_urls(repo, e.name, e.version, e.path)[0]
        sha, size = _download(store, url, e, allow_local)
        locked.append(LockedCran(name=e.name, version=e.version, sha256=sha, size=size, url=url,
                                 depends=tuple(sorted({d.name for d in e.depends}))))
    return CranLock(tuple(locked), index[1], installed.version)


def _download(store: Store, url: str, entry: IndexEntry, allow_local: bool) -> tuple[str, int]:
    """The tarball into the vendor store; checked against the index's MD5sum when it has one."""
    md5 = hashlib.md5(usedforsecurity=False)

    def md5_matches() -> None:
        if entry.md5 and md5.hexdigest() != entry.md5.lower():
            raise HashMismatch(f"R package {entry.name} {entry.version} (MD5sum in PACKAGES)", url, entry.md5,
                               md5.hexdigest(), algorithm="MD5")

    try:
        with net.Client(net.Policy(local_ok=allow_local), attempts=3) as client, client.send("GET", url) as resp:
            if resp.status_code >= 400:
                raise FetchError(f"{entry.name} {entry.version}: {url} answered HTTP {resp.status_code}, though "
                                 "the repository's index lists it",
                                 hint="the repository may be mid-update: run `buildsys lock` again later, or use "
                                      "a dated snapshot")
            return store.vendor_stream(resp.reader(None, url), "cran-", also=[md5], check=md5_matches)
    except net.NetError as e:
        raise FetchError(f"{entry.name} {entry.version}: cannot download {url}: {e.message}",
                         hint="check the network and cran.repo, then `buildsys lock` again") from e


_NOT_PINNED = "not what the lock pins"


def install_steps(packages: Sequence[LockedCran], repo: str, mount: str, epoch: int) -> list[str]:
    """The build steps that install the vendored tarballs in dependency order, reproducibly: one per package.

    Each source and its fix is in docs/reproducibility.md ("R packages"). Each package is its own
    step, so R CMD INSTALL of each runs in a fresh PID namespace and sees the same process IDs on
    every build (cli records the PID of the R that installed it). A tarball whose DESCRIPTION is
    another package or version than the lock pins (its sha256 vouches for the bytes, not for what
    they claim) is refused before R installs it, and what R installed is read back.
    """
    built = shlex.quote(_utc(epoch))
    env = "\n".join([
        f"mkdir -p {SITE_LIBRARY} {BUILD_DIR}",
        # Compiler flags: Debian's R Makeconf already maps its own build path; map ours, and
        # keep -g (debug info is then path-free and the same every time).
        f"export R_MAKEVARS_USER={mount}/cran/Makevars",
        "export R_LIBS_USER=/nonexistent R_LIBS=",
        "export R_INSTALL_STAGED=false",
        # NAME VERSION FILE WHAT: FILE's Package and Version are exactly the pinned ones, or the build stops.
        "buildsys_cran_is() { "
        "p=$(sed -n 's/^Package:[[:space:]]*//p' \"$3\" 2>/dev/null | head -n1 | tr -d '[:space:]'); "
        "v=$(sed -n 's/^Version:[[:space:]]*//p' \"$3\" 2>/dev/null | head -n1 | tr -d '[:space:]'); "
        "[ \"$p\" = \"$1\" ] && [ \"$v\" = \"$2\" ] || { echo \"R package $1 $2: $4 is ${p:-?} ${v:-?}, "
        f"{_NOT_PINNED}\"; exit 1; }}; }}",
    ])
    steps = []
    for p in install_order(packages):
        tar = f"{mount}/cran/{p.name}_{p.version}.tar.gz"
        steps.append(STEP_HEADER + "\n".join([
            f"echo '{STEP_MARKER}cran: install {p.name} {p.version}'",
            env,
            f"rm -rf {BUILD_DIR}/{p.name} && tar -xzf {tar} -C {BUILD_DIR} --no-same-owner",
            f"test -d {BUILD_DIR}/{p.name} || {{ echo 'R package {p.name}: its tarball has no folder "
            f"{p.name}/'; exit 1; }}",
            f"buildsys_cran_is {p.name} {p.version} {BUILD_DIR}/{p.name}/DESCRIPTION 'its tarball'",
            f"R CMD INSTALL --no-multiarch --built-timestamp={built} --library={SITE_LIBRARY} "
            f"{BUILD_DIR}/{p.name}",
            f"buildsys_cran_is {p.name} {p.version} {SITE_LIBRARY}/{p.name}/DESCRIPTION 'what R installed'",
            f"rm -rf {BUILD_DIR}/{p.name}",
        ]) + "\n")
    rprofile = f'options(repos = c(CRAN = "{_r_string(repo)}"))'
    steps.append(STEP_HEADER + "\n".join([
        f"rm -rf {BUILD_DIR}",
        "mkdir -p /etc/R",
        # Debian's Rprofile.site is a conffile; only our line is appended, once.
        f"grep -qxF {shlex.quote(rprofile)} /etc/R/Rprofile.site 2>/dev/null || "
        f"echo {shlex.quote(rprofile)} >> /etc/R/Rprofile.site",
    ]) + "\n")
    return steps


MAKEVARS = f"""\
# buildsys: build paths out of debug info and macros (docs/reproducibility.md)
PREFIX_MAP = -ffile-prefix-map={BUILD_DIR}=. -fdebug-prefix-map={BUILD_DIR}=. -Wdate-time
CFLAGS += $(PREFIX_MAP)
CXXFLAGS += $(PREFIX_MAP)
CXX11FLAGS += $(PREFIX_MAP)
CXX14FLAGS += $(PREFIX_MAP)
CXX17FLAGS += $(PREFIX_MAP)
FFLAGS += -ffile-prefix-map={BUILD_DIR}=.
FCFLAGS += -ffile-prefix-map={BUILD_DIR}=.
"""


def stage_tarballs(store: Store, recipe: str, packages: Sequence[LockedCran], folder: Path) -> None:
    folder.mkdir(parents=True)
    for p in packages:
        src = store.vendor_path(p.sha256)
        if not src.is_file():
            raise NotVendored(recipe, f"R package {p.name} {p.version} ({p.url})")
        (folder / f"{p.name}_{p.version}.tar.gz").hardlink_to(src)
    (folder / "Makevars").write_text(MAKEVARS)


# R's own packages: in every R, never on CRAN, never an r-cran-* package.
R_BASE_PACKAGES = frozenset({"base", "compiler", "datasets", "graphics", "grDevices", "grid", "methods", "parallel",
                             "splines", "stats", "stats4", "tcltk", "tools", "utils"})
DESCRIPTION_CAP = 1 << 20  # a DESCRIPTION is a few KiB; CRAN's largest is far below this


def tarball_needs(tarball: Path, name: str) -> list[Dependency] | None:
    """Depends, Imports and LinkingTo (R itself left out) of ``NAME/DESCRIPTION`` in a vendored source tarball.

    None when the tarball has no readable DESCRIPTION for ``name`` (the build refuses such a
    tarball too, naming it). The tarball is read as a stream, up to its DESCRIPTION.
    """
    try:
        with tarfile.open(tarball, "r|gz") as tf:
            for m in tf:
                if m.name.removeprefix("./") != f"{name}/DESCRIPTION":
                    continue
                f = tf.extractfile(m) if m.isfile() and m.size <= DESCRIPTION_CAP else None
                if f is None:
                    return None
                fields = parse_dcf(f.read().decode("utf-8", errors="replace"))
                return [d for fld in DEP_FIELDS for d in parse_deps(fields[0].get(fld, "")) if d.name != "R"]
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, IndexError):
        return None
    return None


def cran_closure(store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
    """What the vendored tarballs of ``lock`` need that the chain does not have ("pkg needs dep").

    Read from each tarball's own DESCRIPTION (its sha256 vouches for it, unlike anything
    written in the lock), as the pip closure is read from the wheels: so a hand-deleted
    ``[[cran]]`` entry is found before any container starts. A dependency is met by a pin of
    the chain (whose version must fit), by R's own packages, or by Debian's r-cran-NAME in the
    chain. On a registry image the image's own R packages are not in any lock, so there only
    the version of a pinned dependency is checked.
    """
    pins = {c.name: c.version for lk in (*chain, lock) for c in lk.section(CranSection).packages}
    debs = chain_debs([*chain, lock])
    image_root = any(lk.get(ImageBaseLock) is not None for lk in chain)
    problems: list[str] = []
    for c in lock.section(CranSection).packages:
        path = store.vendor_path(c.sha256)
        if not path.is_file():
            continue  # the vendor check names a missing file
        needs = tarball_needs(path, c.name)
        if needs is None:
            problems.append(f"R package {c.name} {c.version}: its tarball has no readable {c.name}/DESCRIPTION")
            continue
        for dep in needs:
            if dep.name in pins:
                if not dep.met_by(pins[dep.name]):
                    problems.append(f"R package {c.name} {c.version} needs '{dep}', the chain pins "
                                    f"{pins[dep.name]}")
            elif not (dep.name in R_BASE_PACKAGES or f"r-cran-{dep.name.lower()}" in debs or image_root):
                problems.append(f"R package {c.name} {c.version} needs '{dep}', which no lock of the chain pins")
    return sorted(set(problems))


def failure_hint(output: str) -> str | None:
    """For a failed R package compile: which [apt] package provides the missing header, when known."""
    if _NOT_PINNED in output:
        return ("the repository served a tarball (the one whose sha256 the lock pins) that is another package "
                "or version than its index said: use a repository you trust, then `buildsys lock` again")
    last = [ln for ln in output.splitlines() if ln.startswith(STEP_MARKER)]
    if not last or not last[-1].startswith(f"{STEP_MARKER}cran: install "):
        return None
    pkg = last[-1].split()[2]
    header = re.findall(r"fatal error: ([^:\s]+): No such file or directory", output)
    if header:
        h: str = header[-1]
        deb = HEADER_PACKAGES.get(h) or HEADER_PACKAGES.get(h.rsplit("/", 1)[-1])
        if deb:
            return (f"R package {pkg} needs the header {h}, which Debian's {deb} provides: add \"{deb}\" to "
                    "[apt] packages of this recipe (or a parent), `buildsys lock`, then build again")
        return (f"R package {pkg} needs the header {h}: add the Debian -dev package that provides it to [apt] "
                "packages (`apt-file search " + h + "` names it), `buildsys lock`, then build again")
    # Packages that test for a library in ``configure`` (the "anticonf" script many CRAN packages share)
    # hide the compiler's message and name the Debian package themselves: "* deb: libxml2-dev (Debian, ...)".
    named = re.findall(r"^\s*\*?\s*deb: ([a-z0-9][a-z0-9+.-]+)", output, re.M)
    if named:
        return (f"R package {pkg}'s configure did not find a system library, which Debian's {named[-1]} provides: "
                f"add \"{named[-1]}\" to [apt] packages (here or in a parent), `buildsys lock`, then build again")
    return (f"R package {pkg} failed to install (see its output above); if a system library is missing, add its "
            "Debian -dev package to [apt] packages, `buildsys lock`, then build again")


def _utc(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _r_string(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')



def tarball_artifact(c: LockedCran) -> Artifact:
    """A locked tarball, where it was at lock time first, then where the repository keeps older versions."""
    repo = c.url.rsplit("/src/contrib/", 1)[0]
    urls = tuple(dict.fromkeys((c.url, *tarball_urls(repo, c.name, c.version))))
    # local=True: the repository is the one the recipe names (the freshness check holds the lock to it).
    return Artifact(kind="cran", name=c.name, version=c.version, filename=f"{c.name}_{c.version}.tar.gz",
                    sha256=c.sha256, size=c.size, urls=urls, local=True)


class Cran(Ecosystem):
    name = "cran"
    agree_as = "CRAN"
    recipe_section = CranRecipe
    lock_section = CranSection

    def prepare(self, ctx: LockContext) -> None:
        recipe = ctx.recipe
        wanted = recipe.section(CranRecipe)
        if not wanted.packages:
            return
        if recipe.is_root:
            raise LockError(f"{recipe.path}: [cran] in a root recipe is not supported",
                            hint="put CRAN packages in a child recipe whose chain installs R (r-base-core)")
        ctx.progress(f"cran: reading the index of {wanted.repo}")
        ctx.notes["cran-index"] = check_repo(recipe)

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        wanted = recipe.section(CranRecipe)
        if not wanted.packages:
            return lock
        image = ctx.image(lock, "to resolve CRAN packages against its R")
        above = {c.name: c.version for lk in ctx.ancestors for c in lk.section(CranSection).packages}
        cran = lock_cran(recipe, ctx.store, ctx.engine(), image, above, ctx.notes["cran-index"],
                         progress=ctx.progress)
        return lock.with_sections(CranSection(cran.packages, wanted.repo, cran.index_sha256, cran.r_version))

    def artifacts(self, lock: Lock) -> list[Artifact]:
        return [tarball_artifact(c) for c in lock.section(CranSection).packages]

    @_staging
    def stage(self, store: Store, recipe: Recipe, lock: CranStaging, folder: Path) -> list[str]:
        if not lock.cran:
            return []
        stage_tarballs(store, recipe.name, lock.cran, folder / "cran")
        return install_steps(lock.cran, lock.cran_repo or "", MOUNT, lock.source_date_epoch)

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        """Every [cran] package is pinned here or in the chain (Debian's r-cran-NAME counts), from the recipe's repo."""
        problems: list[str] = []
        debs = chain_debs([*above, lock])
        pinned = {c.name for lk in (*above, lock) for c in lk.section(CranSection).packages}
        wanted = recipe.section(CranRecipe)
        for name in wanted.packages:
            if name not in pinned and f"r-cran-{name.lower()}" not in debs:
                problems.append(f"R package '{name}' is not locked")
        cran = lock.section(CranSection)
        if (cran.packages or wanted.packages) and cran.repo != wanted.repo:
            problems.append(f"[cran-repo] is {cran.repo!r}, the recipe's cran.repo is {wanted.repo!r}")
        for c in cran.packages:
            if why := repo_relative_problem(c.url, wanted.repo or ""):
                problems.append(f"R package '{c.name}' comes from {c.url}, not the recipe's cran.repo ({why})")
        return problems

    def closure_problems(self, store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
        return cran_closure(store, chain, lock) if lock.section(CranSection).packages else []

    def components(self, lock: Lock) -> list[Component]:
        return [Component("cran", c.name, c.version, PackageURL("cran", None, c.name, c.version).to_string(),
                          c.sha256, c.url) for c in sorted(lock.section(CranSection).packages, key=lambda c: c.name)]

    def pins(self, lock: Lock) -> list[Pin]:
        return [Pin("cran", c.name, c.version, "") for c in lock.section(CranSection).packages]

    def checks(self, recipe: Recipe) -> list[tuple[str, str]]:
        """Every [cran] package loads with ``library()``."""
        packages = recipe.section(CranRecipe).packages
        if not packages:
            return []
        quoted = ", ".join(f'"{n}"' for n in packages)
        script = (f"for (p in c({quoted})) {{ suppressPackageStartupMessages(library(p, character.only = TRUE)); "
                  f"cat(p, as.character(packageVersion(p)), \"ok\\n\") }}")
        return [(f"library({', '.join(packages)})", shlex.join(["Rscript", "-e", script]))]

    def failure_hint(self, output: str) -> str | None:
        return failure_hint(output)


CRAN = Cran()
