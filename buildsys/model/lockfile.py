"""The lock file format: ``locks/<recipe>.lock`` (TOML, ``version = 1``).

Deterministic by construction: keys sorted (``version`` first), arrays sorted
by name, no timestamp of when it was written, so a relock with nothing new
upstream is byte-identical. The lock hash (sha256 of the file's bytes) is what
children record in ``[parents]`` and what goes into cache keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
import tomlkit.items

from buildsys.core.errors import FormatVersionError, MissingLock, RecipeError
from buildsys.core.store import Artifact, atomic_write
from buildsys.model.lockschema import validate_lock

LOCK_VERSION = 1


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

    def artifact(self) -> Artifact:
        # local=True: the mirror is the one the recipe names (the freshness check holds the lock to it),
        # so a file: or loopback mirror is the recipe's own choice.
        return Artifact(kind="deb", name=self.name, version=self.version, filename=self.filename,
                        sha256=self.sha256, size=self.size, urls=(f"{self.mirror}/{self.path}",), local=True)

    def to_toml(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "mirror": self.mirror, "name": self.name, "path": self.path,
                "sha256": self.sha256, "size": self.size, "version": self.version}

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedDeb:
        return cls(name=d["name"], version=d["version"], architecture=d["architecture"], sha256=d["sha256"],
                   size=int(d["size"]), path=d["path"], mirror=d["mirror"])


@dataclass(frozen=True)
class LockedFile:
    url: str
    name: str
    sha256: str
    size: int
    local: bool = False  # the recipe allowed a URL on this machine (urlpolicy); recorded so it is seen

    def artifact(self) -> Artifact:
        return Artifact(kind="file", name=self.name, version="", filename=self.name, sha256=self.sha256,
                        size=self.size, urls=(self.url,), local=self.local)

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "size": self.size, "url": self.url}
        if self.local:
            d["local"] = True
        return d

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedFile:
        return cls(url=d["url"], name=d["name"], sha256=d["sha256"], size=int(d["size"]),
                   local=bool(d.get("local", False)))


@dataclass(frozen=True)
class LockedWheelFile:
    name: str  # the file name, e.g. six-1.17.0-py2.py3-none-any.whl
    sha256: str
    url: str
    size: int | None = None

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "url": self.url}
        if self.size is not None:
            d["size"] = self.size
        return d


@dataclass(frozen=True)
class LockedPip:
    name: str
    version: str
    files: tuple[LockedWheelFile, ...]  # every acceptable file (pip-compile --generate-hashes)
    # The file the image's interpreter installs (chosen at lock time for its tags).
    selected: str | None = None

    def artifacts(self) -> list[Artifact]:
        chosen = [f for f in self.files if f.name == self.selected] if self.selected else list(self.files)
        # local=True: wheel URLs on this machine pass the freshness check only under a local index-url.
        return [Artifact(kind="wheel", name=self.name, version=self.version, filename=f.name, sha256=f.sha256,
                         size=f.size, urls=(f.url,), local=True) for f in chosen]

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "version": self.version,
                             "files": [f.to_toml() for f in sorted(self.files, key=lambda f: f.name)]}
        if self.selected:
            d["selected"] = self.selected
        return d

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedPip:
        files = tuple(LockedWheelFile(name=f["name"], sha256=f["sha256"], url=f["url"], size=f.get("size"))
                      for f in d.get("files", []))
        return cls(name=d["name"], version=d["version"], files=files, selected=d.get("selected"))


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
class LockedArchive:
    """One archive a root was resolved from (the suite, its -updates, its -security), as signed then."""

    mirror: str
    suite: str
    codename: str
    release_date: str  # the signed Release's Date, verbatim
    inrelease_sha256: str

    def to_toml(self) -> dict[str, Any]:
        return {"codename": self.codename, "inrelease-sha256": self.inrelease_sha256, "mirror": self.mirror,
                "release-date": self.release_date, "suite": self.suite}

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedArchive:
        return cls(mirror=d["mirror"], suite=d["suite"], codename=d.get("codename", d["suite"]),
                   release_date=d["release-date"], inrelease_sha256=d["inrelease-sha256"])


@dataclass(frozen=True)
class DebianBaseLock:
    suite: str
    codename: str
    variant: str
    architecture: str
    components: tuple[str, ...]
    mirror: str
    release_date: str
    inrelease_sha256: str
    include: tuple[str, ...]  # the recipe's [apt] packages, given to the bootstrap
    packages: tuple[LockedDeb, ...]
    # Every archive resolved from, the suite itself first. A lock written before roots took
    # their updates has none: then it is the suite alone (the top-level fields).
    archives: tuple[LockedArchive, ...] = ()

    @property
    def all_archives(self) -> tuple[LockedArchive, ...]:
        return self.archives or (LockedArchive(self.mirror, self.suite, self.codename, self.release_date,
                                               self.inrelease_sha256),)

    def to_toml(self) -> dict[str, Any]:
        d = {
            "architecture": self.architecture,
            "codename": self.codename,
            "components": list(self.components),
            "include": list(self.include),
            "inrelease-sha256": self.inrelease_sha256,
            "kind": "debian",
            "mirror": self.mirror,
            "packages": [p.to_toml() for p in sorted(self.packages, key=lambda p: (p.name, p.architecture))],
            "release-date": self.release_date,
            "suite": self.suite,
            "variant": self.variant,
        }
        if self.archives:
            d["archives"] = [a.to_toml() for a in self.archives]  # in resolution order, not sorted
        return d

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> DebianBaseLock:
        return cls(suite=d["suite"], codename=d.get("codename", d["suite"]), variant=d["variant"],
                   architecture=d["architecture"], components=tuple(d["components"]), mirror=d["mirror"],
                   release_date=d["release-date"], inrelease_sha256=d["inrelease-sha256"],
                   include=tuple(d.get("include", [])),
                   packages=tuple(LockedDeb.from_toml(p) for p in d.get("packages", [])),
                   archives=tuple(LockedArchive.from_toml(a) for a in d.get("archives", [])))


@dataclass(frozen=True)
class LockedLayer:
    """One layer blob of a registry base, as the registry stores it (compressed)."""

    digest: str  # sha256:... of the blob's bytes
    size: int
    media_type: str

    def to_toml(self) -> dict[str, Any]:
        return {"digest": self.digest, "media-type": self.media_type, "size": self.size}

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedLayer:
        return cls(digest=d["digest"], size=int(d["size"]), media_type=d["media-type"])


@dataclass(frozen=True)
class ImageBaseLock:
    """``[base.image]``: a registry image pinned to its manifest, config and every layer blob.

    Everything ``build`` needs is in the vendor store after ``fetch`` (the manifest
    and config bytes too), so the registry may forget the tag, or be gone.
    """

    reference: str  # as the recipe wrote it
    platform: str
    manifest_digest: str
    manifest_media_type: str
    manifest_size: int
    config_digest: str
    config_size: int
    layers: tuple[LockedLayer, ...]

    def to_toml(self) -> dict[str, Any]:
        return {"config-digest": self.config_digest, "config-size": self.config_size,
                "layers": [la.to_toml() for la in self.layers],  # bottom first: their order is the image
                "manifest-digest": self.manifest_digest, "manifest-media-type": self.manifest_media_type,
                "manifest-size": self.manifest_size, "platform": self.platform, "reference": self.reference}

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> ImageBaseLock:
        return cls(reference=d["reference"], platform=d["platform"], manifest_digest=d["manifest-digest"],
                   manifest_media_type=d["manifest-media-type"], manifest_size=int(d["manifest-size"]),
                   config_digest=d["config-digest"], config_size=int(d["config-size"]),
                   layers=tuple(LockedLayer.from_toml(la) for la in d.get("layers", [])))


@dataclass(frozen=True)
class Lock:
    recipe: str
    recipe_hash: str
    source_date_epoch: int
    parents: Mapping[str, str] = field(default_factory=dict)  # parent name -> its lock hash
    base: DebianBaseLock | None = None  # a Debian root's [base]
    image_base: ImageBaseLock | None = None  # a registry root's [base.image]
    apt: tuple[LockedDeb, ...] = ()
    # A layer on a registry image: the Debian archives its [[apt]] was resolved from (the
    # suite first), and the requested packages that the image itself already has.
    apt_archives: tuple[LockedArchive, ...] = ()
    apt_in_image: tuple[str, ...] = ()
    pip: tuple[LockedPip, ...] = ()
    python: str | None = None  # the image's Python (e.g. "3.11.2") the pip set was resolved for
    pip_installer: LockedPip | None = None  # the pip wheel that installs [[pip]] at build time
    files: tuple[LockedFile, ...] = ()
    cran: tuple[LockedCran, ...] = ()
    cran_repo: str | None = None  # the recipe's repository, and the sha256 of the PACKAGES index read
    cran_index_sha256: str | None = None
    r_version: str | None = None  # the image's R the [[cran]] set was resolved for
    # sha256 of the serialized bytes; filled by dumps()/read_lock().
    lock_hash: str = ""

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": LOCK_VERSION,
            "recipe": self.recipe,
            "recipe-hash": self.recipe_hash,
            "source-date-epoch": self.source_date_epoch,
        }
        if self.python:
            d["python"] = self.python
        if self.parents:
            d["parents"] = dict(sorted(self.parents.items()))
        if self.base:
            d["base"] = self.base.to_toml()
        if self.image_base:
            d["base"] = {"image": self.image_base.to_toml()}
        return d | self._apt_toml() | self._pip_toml() | self._files_toml() | self._cran_toml()

    def _apt_toml(self) -> dict[str, Any]:
        """``[[apt]]``, and on a registry image the archives it came from and what the image already had."""
        d: dict[str, Any] = {}
        if self.apt:
            d["apt"] = [p.to_toml() for p in sorted(self.apt, key=lambda p: (p.name, p.architecture))]
        if self.apt_archives:
            d["apt-archives"] = [a.to_toml() for a in self.apt_archives]  # in resolution order, not sorted
        if self.apt_in_image:
            d["apt-in-image"] = sorted(self.apt_in_image)
        return d

    def _pip_toml(self) -> dict[str, Any]:
        """``[[pip]]`` by name, and the pip wheel that installs them."""
        d: dict[str, Any] = {}
        if self.pip:
            d["pip"] = [p.to_toml() for p in sorted(self.pip, key=lambda p: p.name)]
        if self.pip_installer:
            d["pip-installer"] = self.pip_installer.to_toml()
        return d

    def _files_toml(self) -> dict[str, Any]:
        return {"files": [f.to_toml() for f in sorted(self.files, key=lambda f: f.name)]} if self.files else {}

    def _cran_toml(self) -> dict[str, Any]:
        """The R version, the repository with the sha256 of the index read, and ``[[cran]]`` by name."""
        d: dict[str, Any] = {}
        if self.r_version:
            d["r"] = self.r_version
        if self.cran_repo:
            d["cran-repo"] = {"url": self.cran_repo, "index-sha256": self.cran_index_sha256 or ""}
        if self.cran:
            d["cran"] = [c.to_toml() for c in sorted(self.cran, key=lambda c: c.name)]
        return d


def dumps(lock: Lock) -> bytes:
    """Serialize: version first, then scalars, tables and arrays of tables, each sorted."""
    return _to_document(lock.to_toml()).as_string().encode()


def _to_document(data: Mapping[str, Any]) -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    _fill(doc, data, top=True)
    return doc


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _fill(container: Any, data: Mapping[str, Any], top: bool = False) -> None:
    keys = sorted(data)
    if top and "version" in data:
        keys.remove("version")
        keys.insert(0, "version")
    scalars = [k for k in keys if not isinstance(data[k], dict) and not _is_aot(data[k])]
    tables = [k for k in keys if isinstance(data[k], dict)]
    aots = [k for k in keys if _is_aot(data[k])]
    for k in scalars:
        v = data[k]
        item = tomlkit.item(v)
        if isinstance(item, tomlkit.items.Array):
            item.multiline(len(v) > 3)
        container[k] = item
    for k in tables:
        t = tomlkit.table()
        _fill(t, data[k])
        container[k] = t
    for k in aots:
        aot = tomlkit.aot()
        for item in data[k]:
            t = tomlkit.table()
            _fill(t, item)
            aot.append(t)
        container[k] = aot


def lock_path(project: Path, recipe: str) -> Path:
    return project / "locks" / f"{recipe}.lock"


def write_lock(project: Path, lock: Lock) -> tuple[Path, bool, Lock]:
    """Write atomically; return (path, changed, the lock with its hash). Unchanged content is not rewritten."""
    path = lock_path(project, lock.recipe)
    data = dumps(lock)
    hashed = dataclasses.replace(lock, lock_hash=hash_bytes(data))
    if path.is_file() and path.read_bytes() == data:
        return path, False, hashed
    atomic_write(path, data)
    return path, True, hashed


def read_lock(path: Path) -> Lock:
    raw = path.read_bytes()
    try:
        # tomllib, not tomlkit, to read: ~10x faster, and reading locks is most of a no-op build.
        d = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(path, f"lock file is not valid TOML: {e}", hint="relock: `buildsys lock`") from e
    if d.get("version") != LOCK_VERSION:
        raise FormatVersionError(path, d.get("version"), LOCK_VERSION)
    validate_lock(path, d)  # every value has its shape before any becomes a path, a URL or an argument
    try:
        return Lock(
            recipe=d["recipe"],
            recipe_hash=d["recipe-hash"],
            source_date_epoch=int(d["source-date-epoch"]),
            parents=dict(d.get("parents", {})),
            base=DebianBaseLock.from_toml(d["base"]) if "base" in d and "image" not in d["base"] else None,
            image_base=ImageBaseLock.from_toml(d["base"]["image"]) if "image" in d.get("base", {}) else None,
            apt=tuple(LockedDeb.from_toml(p) for p in d.get("apt", [])),
            apt_archives=tuple(LockedArchive.from_toml(a) for a in d.get("apt-archives", [])),
            apt_in_image=tuple(d.get("apt-in-image", [])),
            pip=tuple(LockedPip.from_toml(p) for p in d.get("pip", [])),
            python=d.get("python"),
            pip_installer=LockedPip.from_toml(d["pip-installer"]) if "pip-installer" in d else None,
            files=tuple(LockedFile.from_toml(f) for f in d.get("files", [])),
            cran=tuple(LockedCran.from_toml(c) for c in d.get("cran", [])),
            cran_repo=d.get("cran-repo", {}).get("url"),
            cran_index_sha256=d.get("cran-repo", {}).get("index-sha256"),
            r_version=d.get("r"),
            lock_hash=hash_bytes(raw),
        )
    except KeyError as e:
        raise RecipeError(path, f"lock file lacks key {e}", hint="relock: `buildsys lock`") from e


def hash_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_lock(project: Path, recipe: str) -> Lock:
    path = lock_path(project, recipe)
    if not path.is_file():
        raise MissingLock(recipe, path)
    return read_lock(path)

