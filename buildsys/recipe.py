"""Recipes: parse ``recipes/*.toml`` into frozen, validated objects.

Validation is driven by one schema table so that every key of the contract
(DESIGN.md) is checked the same way: unknown keys are rejected with a close
name suggested, wrong types name the key path and the line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from buildsys.errors import RecipeError, did_you_mean

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
DEBIAN_VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "standard")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Schema: a key maps to a type tag or a nested schema (a dict).
# Type tags: "str", "str-list", "int-list", "str-map", "tables:<name>" (array of tables).
_DEBIAN: dict[str, Any] = {
    "suite": "str",
    "variant": "str",
    "mirror": "str",
    "architecture": "str",
    "components": "str-list",
}
_FILE: dict[str, Any] = {"url": "str", "name": "str", "sha256": "str"}
SCHEMA: dict[str, Any] = {
    "description": "str",
    "parents": "str-list",
    "base": {"debian": _DEBIAN, "image": "str"},
    "apt": {"packages": "str-list"},
    "pip": {"packages": "str-list", "index-url": "str"},
    "cran": {"packages": "str-list", "repo": "str"},
    "files": ("tables", _FILE),
    "run": "str-list",
    "image": {
        "env": "str-map",
        "user": "str",
        "workdir": "str",
        "expose": "int-list",
        "cmd": "str-list",
        "entrypoint": "str-list",
        "labels": "str-map",
    },
    "test": {"commands": "str-list"},
}
_TYPE_WORDS = {
    "str": "a string",
    "str-list": "an array of strings",
    "int-list": "an array of integers",
    "str-map": "a table of strings",
}


@dataclass(frozen=True)
class DebianBase:
    suite: str
    variant: str = "minbase"
    mirror: str = DEFAULT_MIRROR
    architecture: str = "amd64"
    components: tuple[str, ...] = ("main",)


@dataclass(frozen=True)
class ImageBase:
    image: str


@dataclass(frozen=True)
class FileSpec:
    url: str
    name: str
    sha256: str | None = None


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
    base: DebianBase | ImageBase | None = None
    apt_packages: tuple[str, ...] = ()
    pip_packages: tuple[str, ...] = ()
    pip_index_url: str | None = None
    cran_packages: tuple[str, ...] = ()
    cran_repo: str | None = None
    files: tuple[FileSpec, ...] = ()
    run: tuple[str, ...] = ()
    image: ImageConfig = field(default_factory=ImageConfig)
    tests: tuple[str, ...] = ()
    # The parsed document as plain data, the input of ``recipe_hash``.
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_root(self) -> bool:
        return not self.parents

    @property
    def recipe_hash(self) -> str:
        """sha256 of the canonical content: formatting and comments do not count."""
        return "sha256:" + hashlib.sha256(canonical_json(self.data)).hexdigest()


def canonical_json(data: Any) -> bytes:
    """The one serialization that goes into digests: sorted, compact, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _line_of(text: str, keypath: str) -> int | None:
    """Best-effort line number of ``keypath`` (tomlkit keeps no positions)."""
    parts = [re.sub(r"\[\d+\]$", "", p) for p in keypath.split(".")]
    lines = text.splitlines()
    start = 0
    # Find the deepest table header that prefixes the path, then the key below it.
    for depth in range(len(parts) - 1, 0, -1):
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(".".join(parts[:depth])) + r"\s*\]\]?\s*$")
        hit = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
        if hit is not None:
            start = hit
            parts = parts[depth:]
            if not parts:
                return hit + 1
            break
    key = re.compile(r"^\s*(\"?)" + re.escape(parts[0]) + r"\1\s*[=.]")
    table = re.compile(r"^\s*\[\[?\s*" + re.escape(parts[0]) + r"[\].]")
    for i in range(start, len(lines)):
        if key.match(lines[i]) or (start == 0 and table.match(lines[i])):
            return i + 1
    return None


class _Validator:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, key: str, problem: str, hint: str | None = None) -> RecipeError:
        return RecipeError(self.path, problem, key=key, line=_line_of(self.text, key), hint=hint)

    def check(self, data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
        for key, value in data.items():
            keypath = f"{prefix}{key}"
            if key not in schema:
                raise self.fail(
                    keypath,
                    f"unknown key{did_you_mean(key, schema)}",
                    hint=f"allowed here: {', '.join(sorted(schema))}",
                )
            self.check_value(keypath, value, schema[key])

    def check_value(self, keypath: str, value: Any, spec: Any) -> None:
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise self.fail(keypath, f"must be a table, not {_kind(value)}")
            self.check(value, spec, keypath + ".")
        elif isinstance(spec, tuple):  # array of tables
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise self.fail(keypath, f"must be an array of tables ([[{keypath}]]), not {_kind(value)}")
            for i, item in enumerate(value):
                self.check(item, spec[1], f"{keypath}[{i}].")
        elif spec == "str":
            if not isinstance(value, str):
                raise self.fail(keypath, f"must be {_TYPE_WORDS[spec]}, not {_kind(value)}")
        elif spec in ("str-list", "int-list"):
            want = str if spec == "str-list" else int
            if not isinstance(value, list):
                raise self.fail(keypath, f"must be {_TYPE_WORDS[spec]}, not {_kind(value)}")
            for i, item in enumerate(value):
                if not isinstance(item, want) or isinstance(item, bool):
                    raise self.fail(f"{keypath}[{i}]", f"must be {'a string' if want is str else 'an integer'}, not {_kind(item)}")
        elif spec == "str-map":
            if not isinstance(value, dict):
                raise self.fail(keypath, f"must be {_TYPE_WORDS[spec]}, not {_kind(value)}")
            for k, v in value.items():
                if not isinstance(v, str):
                    raise self.fail(f"{keypath}.{k}", f"must be a string, not {_kind(v)}")
        else:  # pragma: no cover - schema typo
            raise AssertionError(spec)


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


def parse_recipe(path: Path) -> Recipe:
    """Read and validate one recipe file."""
    name = path.name.removesuffix(".toml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(path, f"not UTF-8 text ({e.reason})") from e
    try:
        data: dict[str, Any] = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as e:
        raise RecipeError(path, f"invalid TOML: {e}", line=e.line, hint="see https://toml.io for the syntax") from e
    if not NAME_RE.match(name):
        raise RecipeError(path, f"recipe name '{name}' must match {NAME_RE.pattern}", hint="rename the file")
    v = _Validator(path, text)
    v.check(data, SCHEMA)

    parents = tuple(data.get("parents", []))
    for i, p in enumerate(parents):
        if not NAME_RE.match(p):
            raise v.fail(f"parents[{i}]", f"'{p}' is not a recipe name ({NAME_RE.pattern})")
    if len(set(parents)) != len(parents):
        raise v.fail("parents", "lists a parent twice")

    base: DebianBase | ImageBase | None = None
    if "base" in data:
        b = data["base"]
        if len(b) != 1:
            raise v.fail("base", "must hold exactly one of 'debian' or 'image'")
        if "debian" in b:
            d = b["debian"]
            if "suite" not in d:
                raise v.fail("base.debian.suite", "is required", hint='e.g. debian = { suite = "bookworm", variant = "minbase" }')
            variant = d.get("variant", "minbase")
            if variant not in DEBIAN_VARIANTS:
                raise v.fail("base.debian.variant", f"unknown variant '{variant}'{did_you_mean(variant, DEBIAN_VARIANTS)}",
                             hint=f"one of: {', '.join(DEBIAN_VARIANTS)}")
            base = DebianBase(
                suite=d["suite"],
                variant=variant,
                mirror=d.get("mirror", DEFAULT_MIRROR).rstrip("/"),
                architecture=d.get("architecture", "amd64"),
                components=tuple(d.get("components", ["main"])),
            )
        else:
            base = ImageBase(b["image"])

    files = []
    for i, f in enumerate(data.get("files", [])):
        if "url" not in f:
            raise v.fail(f"files[{i}].url", "is required")
        fname = f.get("name") or f["url"].rstrip("/").rsplit("/", 1)[-1]
        if not fname or "/" in fname or fname in (".", ".."):
            raise v.fail(f"files[{i}].name", f"'{fname}' is not a usable file name", hint="set name = \"tool.deb\"")
        sha = f.get("sha256")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise v.fail(f"files[{i}].sha256", "must be 64 lowercase hex digits")
        files.append(FileSpec(url=f["url"], name=fname, sha256=sha))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise v.fail("files", "two entries have the same file name", hint="give each a distinct name = \"...\"")

    img = data.get("image", {})
    for i, port in enumerate(img.get("expose", [])):
        if not 0 < port < 65536:
            raise v.fail(f"image.expose[{i}]", f"{port} is not a port number (1-65535)")
    image = ImageConfig(
        env=tuple(sorted(img.get("env", {}).items())),
        user=img.get("user"),
        workdir=img.get("workdir"),
        expose=tuple(img.get("expose", [])),
        cmd=tuple(img["cmd"]) if "cmd" in img else None,
        entrypoint=tuple(img["entrypoint"]) if "entrypoint" in img else None,
        labels=tuple(sorted(img.get("labels", {}).items())),
    )
    for i, pkg in enumerate(data.get("apt", {}).get("packages", [])):
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?", pkg):
            raise v.fail(f"apt.packages[{i}]", f"'{pkg}' is not a Debian package name",
                         hint="versions are pinned by the lock, not in the recipe")
    return Recipe(
        name=name,
        path=path,
        description=data.get("description", ""),
        parents=parents,
        base=base,
        apt_packages=tuple(data.get("apt", {}).get("packages", [])),
        pip_packages=tuple(data.get("pip", {}).get("packages", [])),
        pip_index_url=data.get("pip", {}).get("index-url"),
        cran_packages=tuple(data.get("cran", {}).get("packages", [])),
        cran_repo=data.get("cran", {}).get("repo"),
        files=tuple(files),
        run=tuple(data.get("run", [])),
        image=image,
        tests=tuple(data.get("test", {}).get("commands", [])),
        data=data,
    )


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
