"""The lock schema's vocabulary, checked on every read: a lock is input, not trusted.

Locks arrive in pull requests and can be damaged or edited by hand. Values
read from them become paths in the vendor store (``sha256``), file names in
staging folders (``[[files]].name``, ``path``), URLs that ``fetch`` opens and
arguments of ``apt-get`` and ``pip``. So every value is checked for the shape
its ecosystem allows before anything uses it; one that is not is an error
(exit 2) that names the lock, the entry and the key. Nothing outside the lock
reader needs to re-check a value of a lock it got from ``read_lock``.

This module holds what every part of a lock is checked with: the checks of one
value (a string of a pattern, a whole number, a URL, a plain file name...),
``LockValidator`` (tables, arrays of tables, the error naming the lock, entry
and key) and the top level's own keys. Each ecosystem's module holds the shape
of its own part (``model.lockfile.LockSection.validate``); ``validate_lock`` in
``model.lockfile`` runs them all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from buildsys.core import names
from buildsys.core.errors import LockFileError, did_you_mean

URL_SCHEMES = ("http", "https", "file")

# Layer media types a registry base may have, and how each is compressed (``lock.image``, ``baseimage``).
LAYER_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
IMAGE_MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json")

_HINT = "the lock was damaged or edited by hand: review where it came from, then relock with `buildsys lock {recipe}`"

Check = Callable[[Any], str | None]  # None when the value is fine, else what is wrong with it
Schema = Mapping[str, tuple[Check | None, bool]]  # key -> (check, or None when checked apart; required)
EntryCheck = Callable[[Any, str], None]  # raises LockValidator.fail for an entry (given its label) not of its shape


def is_safe_filename(name: str) -> bool:
    """A single path component that stays where it is put: no separator, no "..", no NUL."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name and "\\" not in name \
        and not name.startswith("-") and name.isprintable()


def matching(pattern: re.Pattern[str], words: str) -> Check:
    """A string that ``pattern`` matches whole; ``words`` say what it must be."""
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"must be a string, not {type(v).__name__}"
        return None if pattern.fullmatch(v) else f"{v!r} is not {words}"
    return check


def whole_number(v: Any) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        return f"{v!r} is not a whole number of 0 or more"
    return None


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"{v!r} is not true or false"


def filename_check(v: Any) -> str | None:
    if not isinstance(v, str) or not is_safe_filename(v):
        return f"{v!r} is not a plain file name (no '/', '..' or leading '-')"
    return None


def url_check(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {type(v).__name__}"
    parts = urlsplit(v)
    if parts.scheme not in URL_SCHEMES or not (parts.netloc or parts.scheme == "file") or (
            # str methods, not a per-character loop: every pinned URL passes here on each read.
            # isprintable() is False for all whitespace but the ASCII space.
            " " in v or not v.isprintable()):
        return f"{v!r} is not an http(s) or file URL"
    return None


def str_list(item: Check) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"must be an array, not {type(v).__name__}"
        for i, x in enumerate(v):
            if (err := item(x)) is not None:
                return f"[{i}]: {err}"
        return None
    return check


def one_of(choices: Sequence[str], words: str) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in choices else f"{v!r} is not {words} ({', '.join(choices)})"
    return check


SHA256 = matching(names.HEX64, "64 lowercase hex digits")
DIGEST = matching(names.DIGEST, "'sha256:' and 64 lowercase hex digits")

# A layer blob of a registry image, as the lock and the registry client check it.
IMAGE_LAYER: dict[str, tuple[Check, bool]] = {
    "digest": (DIGEST, True),
    "size": (whole_number, True),
    "media-type": (one_of(sorted(LAYER_MEDIA_TYPES), "a layer media type"), True),
}
# The top level's own keys; each ecosystem's part adds its own (``LockSection.KEYS``).
TOP: Schema = {
    "version": (whole_number, True),
    "recipe": (matching(names.RECIPE_NAME, "a recipe name"), True),
    "recipe-hash": (DIGEST, True),
    "source-date-epoch": (whole_number, True),
    "parents": (None, False),
}


class LockValidator:
    """Checks the tables of one lock file; every failure names the lock, where in it, and the key."""

    def __init__(self, path: Path, recipe: str) -> None:
        self.path = path
        self.recipe = recipe

    def fail(self, where: str, key: str, problem: str) -> LockFileError:
        return LockFileError(self.path, where, key, problem, _HINT.format(recipe=self.recipe or "RECIPE"))

    def table(self, d: Any, schema: Schema, where: str) -> None:
        if not isinstance(d, dict):
            raise self.fail(where, "", f"must be a table, not {type(d).__name__}")
        for key in d:
            if key not in schema:
                raise self.fail(where, key, f"unknown key{did_you_mean(key, schema)}")
        for key, (check, required) in schema.items():
            if key not in d:
                if required:
                    raise self.fail(where, key, "is missing")
                continue
            if check is not None and (err := check(d[key])) is not None:
                raise self.fail(where, key, err)

    def entries(self, v: Any, where: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(where, "", f"must be an array of tables, not {type(v).__name__}")
        return v

    def each(self, v: Any, where: str, check: Schema | EntryCheck,
             key: Callable[[Any], Hashable] = lambda e: e["name"],
             twice: Callable[[Any], str] = lambda e: f"'{e['name']}' is locked twice",
             ) -> Iterator[tuple[str, Any]]:
        """Each entry of the array of tables ``v`` with how errors name it (``label``), once it is checked.

        ``check``: the entry's schema, or a function that raises ``self.fail`` for what is wrong with the
        entry (given its label). Then each ``key`` of an entry may be locked once: a second is refused with
        ``twice``, at its ``name``. What the caller checks in its loop comes after both, entry by entry.
        """
        seen: set[Hashable] = set()
        for i, e in enumerate(self.entries(v, where)):
            at = label(where, i, e)
            if callable(check):
                check(e, at)
            else:
                self.table(e, check, at)
            k = key(e)
            if k in seen:
                raise self.fail(at, "name", twice(e))
            seen.add(k)
            yield at, e

    def parents(self, parents: Any) -> None:
        """``[parents]``: recipe name -> the lock hash of that parent."""
        if not isinstance(parents, dict):
            raise self.fail("top level", "parents", "must be a table")
        for name, h in parents.items():
            if not names.RECIPE_NAME.fullmatch(name):
                raise self.fail("[parents]", name, "is not a recipe name")
            if not isinstance(h, str) or not names.DIGEST.fullmatch(h):
                raise self.fail("[parents]", name, f"{h!r} is not 'sha256:' and 64 lowercase hex digits")


def label(where: str, i: int, entry: Any) -> str:
    """How an error names entry ``i`` of an array of tables: ``[[apt]] #3 ('curl')``."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"{where} #{i + 1}" + (f" ({name!r})" if isinstance(name, str) else "")


def lock_validator(path: Path, data: Mapping[str, Any]) -> LockValidator:
    """The validator of the lock ``data`` read from ``path`` (its hint names the recipe when that is of its shape)."""
    recipe = data.get("recipe")
    return LockValidator(path, recipe if isinstance(recipe, str) and names.RECIPE_NAME.fullmatch(recipe) else "")
