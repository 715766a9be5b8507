"""The lock file format: ``locks/<recipe>.lock`` (TOML, ``version = 1``).

Deterministic by construction: keys sorted (``version`` first), arrays sorted
by name, no timestamp of when it was written, so a relock with nothing new
upstream is byte-identical. The lock hash (sha256 of the file's bytes) is what
children record in ``[parents]`` and what goes into cache keys.

This module knows the top level (the recipe, its hash, the epoch, the
parents) and nothing of any ecosystem: each ecosystem's part of a lock is a
``LockSection`` that its module defines (its entries, its keys' TOML out and
in, their shape on read) and ``ecosystems/`` registers (``register_sections``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import tomlkit
import tomlkit.exceptions
import tomlkit.items

from buildsys.core.errors import FormatVersionError, MissingLock, RecipeError
from buildsys.core.store import atomic_write
from buildsys.model.lockschema import TOP, Check, LockValidator, Schema, lock_validator
from buildsys.model.sections import Sections

LOCK_VERSION = 1

S = TypeVar("S", bound="LockSection")


class LockSection:
    """One ecosystem's part of a lock: the top-level keys it owns, written, checked and read by its module.

    A subclass is a frozen dataclass in its ecosystem's module. ``write`` gives its
    keys (nothing when it holds nothing); ``present`` says whether a lock just read
    holds the part, and only then does ``validate`` check its keys (``v.fail`` names
    the lock, the entry and the key) and ``read`` make the part from the checked
    lock. ``read_lock`` knows the parts ``register_sections`` was given.
    """

    # Its top-level keys, each with the check of its value, or None where ``validate`` checks it.
    KEYS: ClassVar[Mapping[str, Check | None]] = {}

    def write(self) -> dict[str, Any]:
        """Its keys of the lock's TOML, as plain data (``dumps`` orders them)."""
        return {}

    def __bool__(self) -> bool:
        """False when it holds nothing (every field empty or None): a lock has no such part."""
        return dataclasses.is_dataclass(self) and any(getattr(self, f.name) for f in dataclasses.fields(self))

    @classmethod
    def present(cls, d: Mapping[str, Any]) -> bool:
        """Whether the lock ``d`` (not checked yet) holds this part: any of its keys."""
        return any(key in d for key in cls.KEYS)

    @classmethod
    def validate(cls, v: LockValidator, d: Mapping[str, Any]) -> None:
        """Raise ``v.fail(...)`` for the first value of its keys in the lock ``d`` that is not of its shape."""

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self:
        """Its part of the checked lock ``d``, which holds it (``present``)."""
        return cls()


def _top(kinds: tuple[type[LockSection], ...]) -> Schema:
    return {**TOP, **{key: (check, False) for kind in kinds for key, check in kind.KEYS.items()}}


# The parts a lock may have, and its top level's schema made from them (what ``validate_lock`` checks first).
_SECTIONS: Sections[type[LockSection], Schema] = Sections("lock section", "reading a lock", _top)


def register_sections(*kinds: type[LockSection]) -> None:
    """Make the lock reader know these parts; ``ecosystems/`` registers each ecosystem's, in its order.

    The order is the order in which a lock's parts are checked on read (which of several
    bad values is reported), after the top level and ``[parents]``.
    """
    _SECTIONS.register(*kinds)


def registered_sections() -> tuple[type[LockSection], ...]:
    return _SECTIONS.kinds()


@dataclass(frozen=True)
class Lock:
    recipe: str
    recipe_hash: str
    source_date_epoch: int
    parents: Mapping[str, str] = field(default_factory=dict)  # parent name -> its lock hash
    # Each ecosystem's part, by its type (``get``, ``section``, ``with_sections``); a part that holds nothing is absent.
    sections: Mapping[type[LockSection], LockSection] = field(default_factory=dict)
    # sha256 of the serialized bytes; filled by dumps()/read_lock().
    lock_hash: str = ""

    def get(self, kind: type[S]) -> S | None:
        """The lock's part of type ``kind``, or None when it has none (a root's ``[base]``)."""
        part = self.sections.get(kind)
        return part if isinstance(part, kind) else None

    def section(self, kind: type[S]) -> S:
        """The lock's part of type ``kind``, or the empty one (for parts whose fields all have defaults)."""
        return self.get(kind) or kind()

    def with_sections(self, *parts: LockSection, epoch: int = 0) -> Lock:
        """This lock with ``parts`` in place of its parts of their types (an empty part removes its type's).

        ``epoch``: the newest time of what ``parts`` pin; the lock's SOURCE_DATE_EPOCH is the newest of all.
        """
        sections = dict(self.sections)
        for part in parts:
            if part:
                sections[type(part)] = part
            else:
                sections.pop(type(part), None)
        return dataclasses.replace(self, sections=sections, source_date_epoch=max(self.source_date_epoch, epoch))

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": LOCK_VERSION,
            "recipe": self.recipe,
            "recipe-hash": self.recipe_hash,
            "source-date-epoch": self.source_date_epoch,
        }
        if self.parents:
            d["parents"] = dict(sorted(self.parents.items()))
        for part in self.sections.values():
            d |= part.write()
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
            sections={kind: part for kind in registered_sections() if kind.present(d) and (part := kind.read(d))},
            lock_hash=hash_bytes(raw),
        )
    except KeyError as e:
        raise RecipeError(path, f"lock file lacks key {e}", hint="relock: `buildsys lock`") from e


def validate_lock(path: Path, data: Mapping[str, Any]) -> None:
    """Raise ``LockFileError`` (exit 2) for the first value of ``data`` that is not of its shape."""
    kinds = registered_sections()
    v = lock_validator(path, data)
    # The order of these checks decides which of several bad values is reported: keep it.
    v.table(data, _SECTIONS.derived(), "top level")
    v.parents(data.get("parents", {}))
    for kind in kinds:
        if kind.present(data):
            kind.validate(v, data)


def hash_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_lock(project: Path, recipe: str) -> Lock:
    path = lock_path(project, recipe)
    if not path.is_file():
        raise MissingLock(recipe, path)
    return read_lock(path)

