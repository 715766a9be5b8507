"""Recipes: parse ``recipes/*.toml`` into frozen, validated objects.

Validation is driven by one schema table so that every key of the contract
(docs/recipes.md) is checked the same way: unknown keys are rejected with a close
name suggested, wrong types name the key path and the line.

This module knows the keys every recipe has (``description``, ``parents``,
``run``, ``[image]``, ``[test]``) and nothing of any ecosystem: what a recipe
installs (``[apt]``, ``[pip]``, ``[cran]``, ``[[files]]``) and a root's kind
(``[base] debian = ...``, ``[base] image = ...``) are ``RecipeSection`` parts that
each ecosystem's module defines (their schema, their checks, their parsed form)
and ``ecosystems/`` registers (``register_recipe_sections``).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast
from urllib.parse import urlsplit

import tomlkit
import tomlkit.exceptions

from buildsys.core import names
from buildsys.core.errors import RecipeError
from buildsys.model.sections import Sections

_URL_SCHEMES = ("http", "https", "file")
_APT_UPDATE = re.compile(r"\bapt(-get)?\s+(-\S+\s+)*update\b")
# Labels buildsys puts on images and containers to find its own (see buildsys.engine): recipes may not set them.
RESERVED_LABELS = "io.buildsys."
OCI_PREFIX = "org.opencontainers.image."
# Set by buildsys from the lock, the chain and the git checkout (oci/image.py oci_labels); never by a recipe.
DERIVED_LABELS = {OCI_PREFIX + "created": "the lock's source-date-epoch",
                  OCI_PREFIX + "revision": "the git commit that last changed the chain's recipes and locks",
                  OCI_PREFIX + "base.name": "the registry image the chain starts from",
                  OCI_PREFIX + "base.digest": "the registry image the chain starts from"}

# Schema: a key maps to a type tag or a nested schema (a dict).
# Type tags: "str", "str-list", "int-list", "str-map", "bool"; ("tables", schema): an array of tables.
IMAGE_SCHEMA: dict[str, Any] = {
    "env": "str-map",
    "user": "str",
    "workdir": "str",
    "expose": "int-list",
    "cmd": "str-list",
    "entrypoint": "str-list",
    "labels": "str-map",
}
# gpu: commands that need a GPU; `buildsys test` reports them skipped unless --gpus is given.
TEST_SCHEMA: dict[str, Any] = {"commands": "str-list", "gpu": "str-list"}
_TYPE_WORDS = {
    "str": "a string",
    "str-list": "an array of strings",
    "int-list": "an array of integers",
    "str-map": "a table of strings",
    "bool": "true or false",
}
# What each type tag must be, and what the elements of an array or table of that tag must be.
_TAG_TYPES: dict[str, type] = {"str": str, "bool": bool, "str-list": list, "int-list": list, "str-map": dict}
_ELEMENT_TYPES: dict[str, type] = {"str-list": str, "int-list": int, "str-map": str}


S = TypeVar("S", bound="RecipeSection")


class RecipeSection:
    """One ecosystem's part of a recipe: the value of its key, checked and parsed by its module.

    A subclass is a frozen dataclass in its ecosystem's module. ``KEY`` is its top-level
    key (``apt``), ``SCHEMA`` the shape of its value (a table, ``("tables", {...})`` for an
    array of tables, or a type tag); ``parse`` is given that value (empty when the
    recipe lacks the key) and its key path, checks what the shape does not say
    (``v.fail`` names the key and its line) and makes the part. Its fields all have
    defaults: a recipe without the key has the empty part.

    A root's kind (``ROOT = True``) is the key ``KEY`` of ``[base]`` instead (``debian``,
    ``image``), with ``EXTRA`` keys of ``[base]`` allowed beside it only; a root has
    exactly one kind, the recipe's ``base``, and its ``parse`` is given ``[base]`` (its key
    and the ``EXTRA`` keys beside it) at ``("base",)``.
    """

    KEY: ClassVar[str] = ""
    SCHEMA: ClassVar[Any] = {}
    ROOT: ClassVar[bool] = False
    EXTRA: ClassVar[Mapping[str, Any]] = {}  # a root's kind: [base] keys allowed only with it
    EXAMPLE: ClassVar[str] = ""  # a root's kind: how to write it, for a hint

    @classmethod
    def parse(cls, v: RecipeValidator, value: Any, key: KeyPath) -> Self:
        """The part, from its value at ``key`` in the recipe (its shape already checked against the schema)."""
        return cls()

    def count(self) -> int:
        """How many things this part installs (0 for none), for a layer's summary."""
        return 0

    def inputs(self) -> tuple[tuple[str, str], ...]:
        """Project files this part read (path relative to the project root, sha256 of its bytes): they count in
        the recipe hash, so an edit to one makes the lock stale (``[pip] requirements``, ``[cran] renv``)."""
        return ()


def _schema(kinds: tuple[type[RecipeSection], ...]) -> dict[str, Any]:
    base: dict[str, Any] = {}
    for kind in kinds:
        if kind.ROOT:
            base |= {kind.KEY: kind.SCHEMA, **kind.EXTRA}
    return {
        "description": "str",
        "parents": "str-list",
        "base": base,
        **{kind.KEY: kind.SCHEMA for kind in kinds if not kind.ROOT},
        "run": "str-list",
        "image": IMAGE_SCHEMA,
        "test": TEST_SCHEMA,
    }


# The parts a recipe may have, and the whole schema made from them (``schema``).
_SECTIONS: Sections[type[RecipeSection], dict[str, Any]] = Sections("recipe section", "parsing a recipe", _schema)


def register_recipe_sections(*kinds: type[RecipeSection]) -> None:
    """Make the recipe parser know these parts; ``ecosystems/`` registers each ecosystem's, in its order.

    The order is the order of their checks (which of several mistakes is reported first)
    and of the tables a "did you mean ... in [apt], [pip] or [cran]" names.
    """
    _SECTIONS.register(*kinds)


def registered_recipe_sections() -> tuple[type[RecipeSection], ...]:
    return _SECTIONS.kinds()


def schema() -> dict[str, Any]:
    """Every key a recipe may have: its own and each registered part's, in the order of the recipe contract."""
    return _SECTIONS.derived()


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    workdir: str | None = None
    expose: tuple[int, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str = ""
    parents: tuple[str, ...] = ()
    base: RecipeSection | None = None  # a root's kind: [base] debian = {...} or image = "..."
    # Each ecosystem's part ([apt], [pip], ...), in registration order (``get``, ``section``).
    sections: tuple[RecipeSection, ...] = ()
    run: tuple[str, ...] = ()
    image: ImageConfig = field(default_factory=ImageConfig)
    tests: tuple[str, ...] = ()
    gpu_tests: tuple[str, ...] = ()  # [test] gpu: run only with a GPU request, else reported skipped
    # The parsed document as plain data, the input of ``recipe_hash``.
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The project files its parts read, (path, sha256) sorted: in ``recipe_hash`` too when there are any.
    inputs: tuple[tuple[str, str], ...] = ()

    @property
    def is_root(self) -> bool:
        return not self.parents

    def get(self, kind: type[S]) -> S | None:
        return next((part for part in self.sections if isinstance(part, kind)), None)

    def section(self, kind: type[S]) -> S:
        """The recipe's part of type ``kind``; the empty one when it has none."""
        return self.get(kind) or kind()

    @property
    def recipe_hash(self) -> str:
        """sha256 of the canonical content: formatting and comments do not count; the content of the project
        files it names does (a recipe that names none hashes as before there were any)."""
        content = {"recipe": self.data, "files": dict(self.inputs)} if self.inputs else self.data
        return "sha256:" + hashlib.sha256(canonical_json(content)).hexdigest()


def canonical_json(data: Any) -> bytes:
    """The one serialization that goes into digests: sorted, compact, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


KeyPath = tuple[str | int, ...]


def render_key(path: KeyPath) -> str:
    """``("files", 1, "url")`` -> ``files[1].url``, quoting keys that are not bare, as TOML does."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _BARE_KEY.fullmatch(part) else json.dumps(part))
    return out


def _parse_key(keypath: str) -> KeyPath:
    path: list[str | int] = []
    for segment in keypath.split("."):
        name, *indices = segment.split("[")
        path.append(name)
        path += [int(i.rstrip("]")) for i in indices]
    return tuple(path)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\r\n]+")
_WS = " \t"
_WS_NL = " \t\r\n"


class _Scanner:
    """Where each key, table header and array element of a TOML text starts.

    tomlkit keeps no source positions, so once it has accepted the text this
    walks it again, only far enough to know where each key path first appears.
    A path has array-of-tables entries and array elements as integers, the way
    the validator names them (``files[1].url``, ``apt.packages[3]``).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.found: dict[KeyPath, int] = {}  # key path -> offset of its first appearance
        self.tables: dict[KeyPath, int] = {}  # array-of-tables path -> entries so far
        self.assigned: set[KeyPath] = set()
        self.duplicate: int | None = None  # offset of the first key assigned twice

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while self.skip(_WS_NL, comments=True) < len(self.text):
            start = self.pos
            if self.text.startswith("[[", start):
                self.pos += 2
                keys = self.key()
                self.expect("]]")
                array = self.resolve(keys[:-1]) + keys[-1:]
                self.tables[array] = self.tables.get(array, 0) + 1
                table = (*array, self.tables[array] - 1)
                self.mark(table, start)
            elif self.text[start] == "[":
                self.pos += 1
                table = self.resolve(self.key())
                self.expect("]")
                self.mark(table, start)
            else:
                self.keyval(table)
        return self.found

    def mark(self, path: KeyPath, offset: int) -> None:
        # Prefixes too: `image.user = ...` or `[base.debian]` is where "image" or "base" appears first.
        for k in range(1, len(path) + 1):
            self.found.setdefault(path[:k], offset)

    def resolve(self, keys: tuple[str, ...]) -> KeyPath:
        """A header's path, with the index of the latest entry of each array of tables on the way."""
        path: KeyPath = ()
        for k in keys:
            path = (*path, k)
            if path in self.tables:
                path = (*path, self.tables[path] - 1)
        return path

    def skip(self, chars: str, comments: bool = False) -> int:
        t = self.text
        while self.pos < len(t):
            if t[self.pos] in chars:
                self.pos += 1
            elif comments and t[self.pos] == "#":
                end = t.find("\n", self.pos)
                self.pos = len(t) if end < 0 else end
            else:
                break
        return self.pos

    def expect(self, token: str) -> None:
        self.skip(_WS)
        if not self.text.startswith(token, self.pos):
            raise ValueError(f"expected {token!r} at offset {self.pos}")
        self.pos += len(token)

    def key(self) -> tuple[str, ...]:
        parts = []
        t = self.text
        while True:
            self.skip(_WS)
            if t[self.pos] in "\"'":
                start = self.pos
                self.string(t[self.pos])
                raw = t[start + 1 : self.pos - 1]
                try:
                    parts.append(json.loads(f'"{raw}"') if t[start] == '"' else raw)
                except ValueError:
                    parts.append(raw)
            else:
                m = _BARE_KEY.match(t, self.pos)
                if not m:
                    raise ValueError(f"no key at offset {self.pos}")
                parts.append(m.group())
                self.pos = m.end()
            self.skip(_WS)
            if self.pos < len(t) and t[self.pos] == ".":
                self.pos += 1
            else:
                return tuple(parts)

    def keyval(self, table: KeyPath) -> None:
        start = self.pos
        path = table + self.key()
        self.expect("=")
        if path in self.assigned and self.duplicate is None:
            self.duplicate = start
        self.assigned.add(path)
        self.mark(path, start)
        self.value(path)

    def value(self, path: KeyPath) -> None:
        self.skip(_WS)
        t = self.text
        if t.startswith(('"""', "'''"), self.pos):
            self.string(t[self.pos : self.pos + 3])
        elif t[self.pos] in "\"'":
            self.string(t[self.pos])
        elif t[self.pos] in "[{":
            array = t[self.pos] == "["
            close = "]" if array else "}"
            self.pos += 1
            index = 0
            while self.skip(_WS_NL, comments=True) < len(t) and t[self.pos] != close:
                if array:
                    self.mark((*path, index), self.pos)
                    self.value((*path, index))
                    index += 1
                else:
                    self.keyval(path)
                self.skip(_WS_NL, comments=True)
                if t[self.pos] == ",":
                    self.pos += 1
                elif t[self.pos] != close:
                    raise ValueError(f"expected ',' or {close!r} at offset {self.pos}")
            self.pos += 1
        else:
            m = _SCALAR.match(t, self.pos)
            if not m:
                raise ValueError(f"no value at offset {self.pos}")
            self.pos = m.end()

    def string(self, quote: str) -> None:
        t = self.text
        i = self.pos + len(quote)
        while not t.startswith(quote, i):
            if i >= len(t):
                raise ValueError("unterminated string")
            i += 2 if t[i] == "\\" and quote[0] == '"' else 1
        i += len(quote)
        if len(quote) == 3:  # up to two quotes may sit right before the closing delimiter
            for _ in range(2):
                if i < len(t) and t[i] == quote[0]:
                    i += 1
        self.pos = i


def _line_of(text: str, key: KeyPath | str) -> int | None:
    """Line of ``key``, or of its nearest enclosing key or table that the text has."""
    path = _parse_key(key) if isinstance(key, str) else key
    scanner = _Scanner(text)
    try:
        found = scanner.scan()
    except (IndexError, ValueError):  # pragma: no cover - tomlkit accepted the text; keep what was found
        found = scanner.found
    for k in range(len(path), 0, -1):
        if path[:k] in found:
            return text.count("\n", 0, found[path[:k]]) + 1
    return None


# Names carried over from Dockerfiles and compose files, which difflib cannot match to ours.
_ALIASES = {
    "environment": "env",
    "envs": "env",
    "ports": "expose",
    "port": "expose",
    "command": "cmd",
    "working_dir": "workdir",
    "label": "labels",
    "requirements": "packages",
    "from": "parents",
}


def _tables(table: Mapping[str, Any] | None = None, header: str = "") -> list[tuple[str, Any]]:
    """Every table of the schema with its header as written in TOML ("" for the top level)."""
    table = schema() if table is None else table
    out = [(header, table)]
    for key, spec in table.items():
        name = f"{header.strip('[]')}.{key}" if header else key
        if isinstance(spec, dict):
            out += _tables(spec, f"[{name}]")
        elif isinstance(spec, tuple):
            out += _tables(spec[1], f"[[{name}]]")
    return out


def _suggest(key: str, table: Mapping[str, Any]) -> str:
    """A "did you mean" for an unknown key: a close name here, or the table where it belongs."""
    wanted = _ALIASES.get(key.lower(), key.lower())
    if wanted in table:
        return f" (did you mean '{wanted}'?)"
    elsewhere = [h for h, s in _tables() if wanted in s and s is not table]
    if elsewhere == [""]:
        return f" (did you mean the top-level '{wanted}'? top-level keys go above the first [table] header)"
    if elsewhere:
        tables = [h for h in elsewhere if h]
        where = tables[0] if len(tables) == 1 else ", ".join(tables[:-1]) + " or " + tables[-1]
        return f" (did you mean '{wanted}' in {where}?)" if wanted != key else f" (it belongs in {where})"
    names = {**{a: t for a, t in _ALIASES.items() if t in table}, **{k: k for k in table}}
    close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return f" (did you mean '{names[close[0]]}'?)" if close else ""


class RecipeValidator:
    """Checks one recipe's document; every failure names the file, the key path and its line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, key: KeyPath, problem: str, hint: str | None = None) -> RecipeError:
        return RecipeError(self.path, problem, key=render_key(key), line=_line_of(self.text, key), hint=hint)

    def check(self, data: Mapping[str, Any], table: Mapping[str, Any], prefix: KeyPath = ()) -> None:
        for key, value in data.items():
            keypath = (*prefix, key)
            if key not in table:
                raise self.fail(
                    keypath,
                    f"unknown key{_suggest(key, table)}",
                    hint=f"allowed here: {', '.join(sorted(table))}",
                )
            self.check_value(keypath, value, table[key])

    def check_value(self, keypath: KeyPath, value: Any, spec: Any) -> None:
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise self.fail(keypath, f"must be a table, not {_kind(value)}")
            self.check(value, spec, keypath)
        elif isinstance(spec, tuple):  # array of tables
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise self.fail(keypath, f"must be an array of tables ([[{render_key(keypath)}]]), not {_kind(value)}")
            for i, item in enumerate(value):
                self.check(item, spec[1], (*keypath, i))
        else:
            self.check_typed(keypath, value, spec)

    def check_typed(self, keypath: KeyPath, value: Any, spec: str) -> None:
        """A value of a type tag: its own type, then each element of an array or table of strings.

        A boolean is never taken for an integer (TOML keeps them apart; Python's bool is an int).
        """
        if spec not in _TAG_TYPES:  # pragma: no cover - schema typo
            raise AssertionError(spec)
        if not isinstance(value, _TAG_TYPES[spec]):
            raise self.fail(keypath, f"must be {_TYPE_WORDS[spec]}, not {_kind(value)}")
        want = _ELEMENT_TYPES.get(spec)
        if want is None:
            return
        elements: Iterable[tuple[str | int, Any]] = (
            value.items() if isinstance(value, dict) else enumerate(cast(list[Any], value)))
        for k, item in elements:
            if not isinstance(item, want) or isinstance(item, bool):
                word = "a string" if want is str else "an integer"
                raise self.fail((*keypath, k), f"must be {word}, not {_kind(item)}")

    def url(self, keypath: KeyPath, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _URL_SCHEMES or not (parts.netloc or parts.scheme == "file"):
            raise self.fail(keypath, f"'{url}' is not an http(s) or file URL", hint="e.g. https://example.org/tool.deb")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _toml_error(path: Path, text: str, e: tomlkit.exceptions.TOMLKitError) -> RecipeError:
    line: int | None = getattr(e, "line", None)
    problem = re.sub(r" at line \d+ col \d+$", "", str(e))
    if "'\\x00'" in problem:  # tomlkit's end-of-input marker, reported at line 1 col 0
        problem = "the file ends inside a value: a bracket, brace or quote is not closed"
        line = text.count("\n") + (not text.endswith("\n"))
    elif isinstance(e, tomlkit.exceptions.ParseError):
        problem = problem.replace("Unexpected character: '\\n'", "unexpected end of line")
        problem += f" (column {e.col + 1})"
    elif isinstance(e, tomlkit.exceptions.KeyAlreadyPresent):  # raised without a position
        scanner = _Scanner(text)
        with contextlib.suppress(IndexError, ValueError):
            scanner.scan()
        if scanner.duplicate is not None:
            line = text.count("\n", 0, scanner.duplicate) + 1
    return RecipeError(path, f"invalid TOML: {problem}", line=line or None, hint="see https://toml.io for the syntax")


def parse_recipe(path: Path, text: str | None = None) -> Recipe:
    """Read and validate one recipe file (``text``: its content, not yet written at ``path``)."""
    name = path.name.removesuffix(".toml")
    text, data = _read_toml(path, text)
    if not names.RECIPE_NAME.fullmatch(name):
        raise RecipeError(path, f"recipe name '{name}' must match {names.RECIPE_NAME.pattern}", hint="rename the file")
    v = RecipeValidator(path, text)
    v.check(data, schema())
    # The checks run in this order, so a recipe with several mistakes is told about the same one first:
    # its own keys, then each ecosystem's part in registration order.
    parents = _parents(v, data.get("parents", []))
    base = _base(v, data["base"]) if "base" in data else None
    image = _image(v, data.get("image", {}))
    _check_run(v, data.get("run", []))
    # Each part is given its own value: an empty table (or array of tables) when the recipe lacks its key.
    sections = tuple(kind.parse(v, data.get(kind.KEY, [] if isinstance(kind.SCHEMA, tuple) else {}), (kind.KEY,))
                     for kind in registered_recipe_sections() if not kind.ROOT)
    return Recipe(
        name=name,
        path=path,
        description=data.get("description", ""),
        parents=parents,
        base=base,
        sections=sections,
        run=tuple(data.get("run", [])),
        image=image,
        tests=tuple(data.get("test", {}).get("commands", [])),
        gpu_tests=tuple(data.get("test", {}).get("gpu", [])),
        data=data,
        inputs=tuple(sorted({i for part in sections for i in part.inputs()})),
    )


def _read_toml(path: Path, text: str | None = None) -> tuple[str, dict[str, Any]]:
    """The recipe's text and its parsed document, a read or TOML failure as a ``RecipeError`` with the line."""
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
    except UnicodeDecodeError as e:
        raise RecipeError(path, f"not UTF-8 text ({e.reason})", hint="save the file as UTF-8") from e
    except OSError as e:
        raise RecipeError(path, f"cannot be read: {e.strerror or e}") from e
    try:
        data: dict[str, Any] = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.TOMLKitError as e:
        raise _toml_error(path, text, e) from e
    return text, data


def _parents(v: RecipeValidator, parents: list[str]) -> tuple[str, ...]:
    """``parents``: recipe names, each once (the graph checks that they exist)."""
    for i, p in enumerate(parents):
        if not names.RECIPE_NAME.fullmatch(p):
            raise v.fail(("parents", i), f"'{p}' is not a recipe name ({names.RECIPE_NAME.pattern})")
        if p in parents[:i]:
            raise v.fail(("parents", i), f"lists '{p}' twice")
    return tuple(parents)


def _base(v: RecipeValidator, b: dict[str, Any]) -> RecipeSection:
    """``[base]`` of a root: exactly one of its kinds (a Debian suite, a registry image), and what goes with it."""
    kinds = sorted((k for k in registered_recipe_sections() if k.ROOT), key=lambda k: k.KEY)
    present = [k for k in kinds if k.KEY in b]
    if len(present) != 1 or any(key in b and key not in present[0].EXTRA for k in kinds for key in k.EXTRA):
        extras = [f"'{key}' only with '{k.KEY}'" for k in kinds for key in k.EXTRA]
        raise v.fail(("base",), f"must hold exactly one of {' or '.join(repr(k.KEY) for k in kinds)}"
                                + (f" (and {', '.join(extras)})" if extras else ""),
                     hint=next((f"e.g. {k.EXAMPLE}" for k in kinds if k.EXAMPLE), None))
    return present[0].parse(v, b, ("base",))


def _image(v: RecipeValidator, img: dict[str, Any]) -> ImageConfig:
    """``[image]``: ports, variable names, labels outside buildsys's namespace, an absolute working directory."""
    for i, port in enumerate(img.get("expose", [])):
        if not 0 < port < 65536:
            raise v.fail(("image", "expose", i), f"{port} is not a port number (1-65535)")
    for var in img.get("env", {}):
        if not names.ENV_NAME.fullmatch(var):
            raise v.fail(("image", "env", var), "is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    for key in img.get("labels", {}):
        if key.lower().startswith(RESERVED_LABELS):
            # buildsys finds its own containers by these labels; a container inherits its image's labels,
            # so a recipe setting them would make anyone's container of the image look like buildsys's.
            raise v.fail(("image", "labels", key), f"the label namespace '{RESERVED_LABELS}' is reserved for "
                         "buildsys itself", hint='use your own namespace, e.g. "org.example.team"')
        if key.lower() in DERIVED_LABELS:
            # Written by hand it would say what the image is not, the first time the inputs move.
            raise v.fail(("image", "labels", key), f"is set by buildsys from {DERIVED_LABELS[key.lower()]}",
                         hint="remove it; the free-text ones (version, vendor, licenses, url, documentation, "
                              "authors, source, title) are yours to set")
    if "workdir" in img and not img["workdir"].startswith("/"):
        raise v.fail(("image", "workdir"), f"'{img['workdir']}' must be an absolute path",
                     hint="docker refuses a relative working directory")
    return ImageConfig(
        env=tuple(sorted(img.get("env", {}).items())),
        user=img.get("user"),
        workdir=img.get("workdir"),
        expose=tuple(img.get("expose", [])),
        cmd=tuple(img["cmd"]) if "cmd" in img else None,
        entrypoint=tuple(img["entrypoint"]) if "entrypoint" in img else None,
        labels=tuple(sorted(img.get("labels", {}).items())),
    )


def _check_run(v: RecipeValidator, steps: list[str]) -> None:
    """``run``: no step may update apt's lists, since builds have no network."""
    for i, step in enumerate(steps):
        if _APT_UPDATE.search(step):
            raise v.fail(("run", i), "runs `apt-get update`, which cannot reach anything: builds have no network",
                         hint='put the packages in [apt] packages = [...]; they are locked and installed offline')


def project_file(v: RecipeValidator, key: KeyPath, value: str) -> tuple[Path, bytes]:
    """The project file ``value`` (relative to the project root, the folder above ``recipes/``) and its bytes.

    A recipe may name files of its project (``[pip] requirements``, ``[cran] renv``): their content is then part
    of the recipe hash (``RecipeSection.inputs``), so they must be inside the project, where git keeps them.
    """
    root = v.path.parent.parent
    rel = Path(value)
    if rel.is_absolute() or ".." in rel.parts:
        raise v.fail(key, f"'{value}' must be a path inside the project, relative to its root",
                     hint='e.g. requirements = "requirements.txt"')
    path = root / rel
    try:
        return path, path.read_bytes()
    except FileNotFoundError as e:
        raise v.fail(key, f"names {path}, which does not exist",
                     hint=f"create it, or fix the path (relative to the project root {root})") from e
    except OSError as e:
        raise v.fail(key, f"cannot read {path}: {e.strerror or e}") from e


def key_line(path: Path, key: KeyPath | str) -> int | None:
    """Line of ``key`` in the recipe file at ``path`` (for errors found after parsing, e.g. by the graph)."""
    try:
        return _line_of(path.read_text(encoding="utf-8"), key)
    except (OSError, UnicodeDecodeError):
        return None


def load_recipes(project: Path) -> dict[str, Recipe]:
    """All recipes of a project folder, by name."""
    folder = project / "recipes"
    if not folder.is_dir():
        raise RecipeError(folder, "no recipes folder here", hint=f"create {folder}/<name>.toml, or pass -C PROJECT")
    recipes = {}
    for path in sorted(folder.glob("*.toml")):
        r = parse_recipe(path)
        recipes[r.name] = r
    if not recipes:
        raise RecipeError(folder, "holds no *.toml recipes", hint="add one, e.g. recipes/base.toml")
    return recipes
