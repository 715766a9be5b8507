"""Lock ``[[files]]``: download each URL once, pin its sha256 and size.

The downloaded file goes straight into the vendor store (it is content
addressed, so a later ``fetch`` has nothing to do for it).
"""

from __future__ import annotations

import email.utils
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import unquote, urlsplit

from packageurl import PackageURL

from buildsys.core import names, net
from buildsys.core.errors import FetchError, HashMismatch, NotVendored, RecipeError
from buildsys.core.store import Artifact, Store
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems.base import Component, Ecosystem, LockContext, Pin
from buildsys.model.lockfile import Lock, LockSection
from buildsys.model.lockschema import (
    SHA256,
    Check,
    LockValidator,
    Schema,
    boolean,
    filename_check,
    url_check,
    whole_number,
)
from buildsys.model.recipe import KeyPath, Recipe, RecipeSection, RecipeValidator


@dataclass(frozen=True)
class FileSpec:
    url: str
    name: str
    sha256: str | None = None
    local: bool = False  # may read from this machine (file:, loopback): an explicit opt-in, see urlpolicy


@dataclass(frozen=True)
class FilesRecipe(RecipeSection):
    """``[[files]]``: files by URL, each under a distinct plain name, with an optional sha256 to hold them to."""

    files: tuple[FileSpec, ...] = ()

    KEY = "files"
    SCHEMA = ("tables", {"url": "str", "name": "str", "sha256": "str", "local": "bool"})

    @classmethod
    def parse(cls, v: RecipeValidator, value: Any, key: KeyPath) -> Self:
        """Each a URL and a distinct plain file name; one on this machine only with ``local = true``."""
        files: list[FileSpec] = []
        for i, f in enumerate(value):
            if "url" not in f:
                raise v.fail((*key, i, "url"), "is required")
            v.url((*key, i, "url"), f["url"])
            fname = f.get("name") or urlsplit(f["url"]).path.rstrip("/").rsplit("/", 1)[-1]
            if not fname or "/" in fname or fname in (".", ".."):
                raise v.fail((*key, i, "name"), f"'{fname}' is not a usable file name",
                             hint='set name = "tool.deb"')
            sha = f.get("sha256")
            if sha is not None and not names.HEX64.fullmatch(sha):
                raise v.fail((*key, i, "sha256"), "must be 64 lowercase hex digits")
            if fname in (seen.name for seen in files):
                raise v.fail((*key, i, "name" if "name" in f else "url"), f"a second file named '{fname}'",
                             hint='give each a distinct name = "..."')
            local = f.get("local", False)
            if not local and (why := local_reason(f["url"])):
                raise v.fail((*key, i, "url"), f"'{f['url']}' reads from this machine: {why}",
                             hint="a recipe may do that only on purpose: add local = true to this [[files]] entry")
            files.append(FileSpec(url=f["url"], name=fname, sha256=sha, local=local))
        return cls(tuple(files))

    def count(self) -> int:
        return len(self.files)


LOCKED_FILE: Schema = {
    "name": (filename_check, True),
    "url": (url_check, True),
    "sha256": (SHA256, True),
    "size": (whole_number, True),
    "local": (boolean, False),
}


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
class FilesSection(LockSection):
    """``[[files]]`` by name."""

    files: tuple[LockedFile, ...] = ()

    KEYS: ClassVar[Mapping[str, Check | None]] = {"files": None}

    def write(self) -> dict[str, Any]:
        return {"files": [f.to_toml() for f in sorted(self.files, key=lambda f: f.name)]} if self.files else {}

    @classmethod
    def validate(cls, v: LockValidator, d: Mapping[str, Any]) -> None:
        """``[[files]]``: each name once, since they share one staging folder."""
        for _ in v.each(d.get("files", []), "[[files]]", LOCKED_FILE,
                        twice=lambda e: f"a second file named {e['name']!r}"):
            pass

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self:
        return cls(tuple(LockedFile.from_toml(f) for f in d["files"]))


@dataclass(frozen=True)
class FilesLock:
    locked: tuple[LockedFile, ...]
    epochs: tuple[int, ...]  # Last-Modified of each file, where the server gave one


def lock_files(recipe: Recipe, store: Store, warn: Callable[[str], None] = lambda message: None,
               ) -> FilesLock:
    """Download and pin each ``[[files]]`` entry; ``warn`` hears of every local source allowed."""
    locked, epochs = [], []
    for i, spec in enumerate(recipe.section(FilesRecipe).files):
        what = f"{recipe.path}: files[{i}] ({spec.name})"
        reason = local_reason(spec.url, resolve=True)
        if reason and not spec.local:
            raise RecipeError(recipe.path, f"'{spec.url}' reads from this machine: {reason}", key=f"files[{i}].url",
                              hint="a recipe may do that only on purpose: add local = true to this [[files]] entry")
        if reason:
            warn(f"files[{i}] ({spec.name}): reading {spec.url} from this machine, as local = true allows")
        sha, size, modified = _download(store, spec.url, what, allow_local=spec.local)
        if spec.sha256 and spec.sha256 != sha:
            raise HashMismatch(what, spec.url, spec.sha256, sha)
        locked.append(LockedFile(url=spec.url, name=spec.name, sha256=sha, size=size, local=spec.local))
        if modified is not None:
            epochs.append(modified)
    return FilesLock(tuple(locked), tuple(epochs))


def _download(store: Store, url: str, what: str, allow_local: bool) -> tuple[str, int, int | None]:
    """Stream ``url`` into the vendor store; return its sha256, size and Last-Modified time."""
    if urlsplit(url).scheme == "file":  # only with local = true (checked by the caller)
        return _copy(store, url, what)
    client = net.Client(net.Policy(local_ok=allow_local), attempts=3)
    try:
        with client.send("GET", url) as resp:
            if resp.status_code >= 400:
                raise FetchError(f"{what}: {url} answered HTTP {resp.status_code}", hint="check the URL")
            lm = resp.headers.get("Last-Modified")
            modified = _last_modified(lm)
            sha, size = store.vendor_stream(resp.reader(None, url), "file-")
    except net.URLRefused as e:
        raise RecipeError(what.split(": ", 1)[0], f"{url} was redirected to {e.url}, which buildsys refuses: "
                          f"{e.reason}", key=what.split(": ", 1)[-1],
                          hint="pin the final URL, or add local = true to the entry if this is on purpose") from e
    except net.NetError as e:
        raise FetchError(f"{what}: cannot download {url}: {e.message}", hint="check the URL and the network") from e
    finally:
        client.close()
    return sha, size, modified


def _copy(store: Store, url: str, what: str) -> tuple[str, int, int | None]:
    path = Path(unquote(urlsplit(url).path))
    try:
        with open(path, "rb") as f:
            modified = int(os.fstat(f.fileno()).st_mtime)
            sha, size = store.vendor_stream(f, "file-")
    except OSError as e:
        raise FetchError(f"{what}: cannot read {path}: {e.strerror}", hint="check the path") from e
    return sha, size, modified


class Files(Ecosystem):
    """``[[files]]``: downloads by URL, pinned by sha256, staged by name for the recipe's ``run`` steps."""

    name = "files"
    recipe_section = FilesRecipe
    lock_section = FilesSection

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        if not ctx.recipe.section(FilesRecipe).files:
            return lock
        files = lock_files(ctx.recipe, ctx.store, warn=ctx.warn)
        return lock.with_sections(FilesSection(files.locked), epoch=max(files.epochs, default=0))

    def artifacts(self, lock: Lock) -> list[Artifact]:
        return [f.artifact() for f in lock.section(FilesSection).files]

    def stage(self, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        files = lock.section(FilesSection).files
        if not files:
            return []
        (folder / "files").mkdir()
        for f in files:
            src = store.vendor_path(f.sha256)
            if not src.is_file():
                raise NotVendored(recipe.name, f"file {f.name} ({f.url})")
            (folder / "files" / f.name).hardlink_to(src)
        return []

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        problems: list[str] = []
        locked = {f.name: f for f in lock.section(FilesSection).files}
        for spec in recipe.section(FilesRecipe).files:
            f = locked.pop(spec.name, None)
            if f is None:
                problems.append(f"file '{spec.name}' ({spec.url}) is not locked")
            elif f.url != spec.url:
                problems.append(f"file '{spec.name}' is locked from {f.url}, the recipe says {spec.url}")
            elif spec.sha256 and f.sha256 != spec.sha256:
                problems.append(f"file '{spec.name}' is locked with sha256 {f.sha256}, the recipe pins {spec.sha256}")
            elif f.local != spec.local:
                problems.append(f"file '{spec.name}' has local = {str(f.local).lower()} in the lock, "
                                f"{str(spec.local).lower()} in the recipe")
        return problems + [f"file '{name}' ({f.url}) is locked but not in the recipe"
                           for name, f in sorted(locked.items())]

    def components(self, lock: Lock) -> list[Component]:
        return [Component("file", f.name, "", PackageURL("generic", None, f.name, None,
                                                         {"checksum": f"sha256:{f.sha256}",
                                                          "download_url": f.url}).to_string(), f.sha256, f.url)
                for f in sorted(lock.section(FilesSection).files, key=lambda f: f.name)]

    def pins(self, lock: Lock) -> list[Pin]:
        return [Pin("files", f.name, f.sha256[:12], f.url) for f in lock.section(FilesSection).files]


FILES = Files()


def _last_modified(value: str | None) -> int | None:
    """A Last-Modified header as epoch seconds; one a server garbled is no date (never a traceback)."""
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, OverflowError):
        return None
