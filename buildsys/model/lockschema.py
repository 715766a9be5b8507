"""The lock schema, checked on every read: a lock is input, not trusted.

Locks arrive in pull requests and can be damaged or edited by hand. Values
read from them become paths in the vendor store (``sha256``), file names in
staging folders (``[[files]].name``, ``path``), URLs that ``fetch`` opens and
arguments of ``apt-get`` and ``pip``. So every value is checked for the shape
its ecosystem allows before anything uses it; one that is not is an error
(exit 2) that names the lock, the entry and the key. Nothing outside this
module needs to re-check a value of a lock it got from ``read_lock``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from buildsys.core import names
from buildsys.core.errors import LockFileError, did_you_mean

# An archive path (pool/main/a/apt/apt_2.6.1_amd64.deb): relative, no "..", no odd characters.
ARCHIVE_PATH = re.compile(r"[A-Za-z0-9+._~-]+(/[A-Za-z0-9+._~%-]+)*")
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


def is_safe_filename(name: str) -> bool:
    """A single path component that stays where it is put: no separator, no "..", no NUL."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name and "\\" not in name \
        and not name.startswith("-") and name.isprintable()


def _str(pattern: re.Pattern[str], words: str) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"must be a string, not {type(v).__name__}"
        return None if pattern.fullmatch(v) else f"{v!r} is not {words}"
    return check


def _int(v: Any) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        return f"{v!r} is not a whole number of 0 or more"
    return None


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"{v!r} is not true or false"


def _filename(v: Any) -> str | None:
    if not isinstance(v, str) or not is_safe_filename(v):
        return f"{v!r} is not a plain file name (no '/', '..' or leading '-')"
    return None


def _url(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {type(v).__name__}"
    parts = urlsplit(v)
    if parts.scheme not in URL_SCHEMES or not (parts.netloc or parts.scheme == "file") or (
            # str methods, not a per-character loop: every pinned URL passes here on each read.
            # isprintable() is False for all whitespace but the ASCII space.
            " " in v or not v.isprintable()):
        return f"{v!r} is not an http(s) or file URL"
    return None


def _archive_path(v: Any) -> str | None:
    err = _str(ARCHIVE_PATH, "a relative archive path")(v)
    if err is None and ".." in v.split("/"):
        return f"{v!r} climbs out of the archive ('..')"
    return err


def _pip_version(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {type(v).__name__}"
    try:
        Version(v)
    except InvalidVersion:
        return f"{v!r} is not a PEP 440 version"
    return None


def _str_list(item: Check) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"must be an array, not {type(v).__name__}"
        for i, x in enumerate(v):
            if (err := item(x)) is not None:
                return f"[{i}]: {err}"
        return None
    return check


def _date(v: Any) -> str | None:
    return None if isinstance(v, str) and v.isprintable() and len(v) < 64 else f"{v!r} is not a Release date"


DEB: dict[str, tuple[Check, bool]] = {  # key -> (check, required)
    "name": (_str(names.DEB_NAME, "a Debian package name"), True),
    "version": (_str(names.DEB_VERSION, "a Debian version"), True),
    "architecture": (_str(names.DEB_ARCH, "a Debian architecture"), True),
    "sha256": (_str(names.HEX64, "64 lowercase hex digits"), True),
    "size": (_int, True),
    "path": (_archive_path, True),
    "mirror": (_url, True),
}
WHEEL_FILE = {
    "name": (_filename, True),
    "sha256": (_str(names.HEX64, "64 lowercase hex digits"), True),
    "url": (_url, True),
    "size": (_int, False),
}
PIP = {
    "name": (_str(names.PIP_NAME, "a Python package name"), True),
    "version": (_pip_version, True),
    "selected": (_filename, False),
    "files": (None, False),  # checked entry by entry below
}
FILE = {
    "name": (_filename, True),
    "url": (_url, True),
    "sha256": (_str(names.HEX64, "64 lowercase hex digits"), True),
    "size": (_int, True),
    "local": (_bool, False),
}
BASE = {
    "kind": (_str(re.compile("debian"), "'debian'"), True),
    "suite": (_str(names.SUITE, "a Debian suite"), True),
    "codename": (_str(names.SUITE, "a Debian codename"), False),
    "variant": (_str(re.compile(r"[a-z]+"), "an mmdebstrap variant"), True),
    "architecture": (_str(names.DEB_ARCH, "a Debian architecture"), True),
    "components": (_str_list(_str(names.SUITE, "a component name")), True),
    "mirror": (_url, True),
    "release-date": (_date, True),
    "inrelease-sha256": (_str(names.HEX64, "64 lowercase hex digits"), True),
    "include": (_str_list(_str(names.DEB_NAME, "a Debian package name")), False),
    "packages": (None, False),
    "archives": (None, False),
}
# HOST[:PORT]/REPO[:TAG][@sha256:HEX], with the repository and tag rules registry.Reference checks.
IMAGE_REF = re.compile(rf"[A-Za-z0-9.-]+(:[0-9]+)?/{names.IMAGE_REPOSITORY.pattern}"
                       rf"(:{names.IMAGE_TAG.pattern})?(@{names.DIGEST.pattern})?")


def _one_of(choices: Sequence[str], words: str) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in choices else f"{v!r} is not {words} ({', '.join(choices)})"
    return check


def _ref(v: Any) -> str | None:
    err = _str(IMAGE_REF, "an image reference HOST/REPO[:TAG][@sha256:DIGEST]")(v)
    if err is None and ("." not in v.split("/", 1)[0] and ":" not in v.split("/", 1)[0]
                        and v.split("/", 1)[0] != "localhost"):
        return f"{v!r} does not name a registry host"
    return err


IMAGE = {
    "reference": (_ref, True),
    "platform": (_str(names.PLATFORM, "OS/ARCH[/VARIANT]"), True),
    "manifest-digest": (_str(names.DIGEST, "'sha256:' and 64 lowercase hex digits"), True),
    "manifest-media-type": (_one_of(IMAGE_MANIFEST_TYPES, "an image manifest media type"), True),
    "manifest-size": (_int, True),
    "config-digest": (_str(names.DIGEST, "'sha256:' and 64 lowercase hex digits"), True),
    "config-size": (_int, True),
    "layers": (None, True),
}
IMAGE_LAYER = {
    "digest": (_str(names.DIGEST, "'sha256:' and 64 lowercase hex digits"), True),
    "size": (_int, True),
    "media-type": (_one_of(sorted(LAYER_MEDIA_TYPES), "a layer media type"), True),
}
ARCHIVE = {
    "mirror": (_url, True),
    "suite": (_str(names.SUITE, "a Debian suite"), True),
    "codename": (_str(names.SUITE, "a Debian codename"), False),
    "release-date": (_date, True),
    "inrelease-sha256": (_str(names.HEX64, "64 lowercase hex digits"), True),
}
CRAN = {
    "name": (_str(names.R_NAME, "an R package name"), True),
    "version": (_str(names.R_VERSION, "an R package version"), True),
    "sha256": (_str(names.HEX64, "64 lowercase hex digits"), True),
    "size": (_int, True),
    "url": (_url, True),
    "depends": (_str_list(_str(names.R_NAME, "an R package name")), False),
}
CRAN_REPO = {
    "url": (_url, True),
    "index-sha256": (_str(names.HEX64, "64 lowercase hex digits"), True),
}
TOP = {
    "version": (_int, True),
    "recipe": (_str(names.RECIPE_NAME, "a recipe name"), True),
    "recipe-hash": (_str(names.DIGEST, "'sha256:' and 64 lowercase hex digits"), True),
    "source-date-epoch": (_int, True),
    "python": (_str(re.compile(r"[0-9]+(\.[0-9]+){1,2}"), "a Python version"), False),
    "parents": (None, False),
    "base": (None, False),
    "apt": (None, False),
    "apt-archives": (None, False),
    "apt-in-image": (_str_list(_str(names.DEB_NAME, "a Debian package name")), False),
    "pip": (None, False),
    "pip-installer": (None, False),
    "files": (None, False),
    "r": (_str(names.R_VERSION, "an R version"), False),
    "cran-repo": (None, False),
    "cran": (None, False),
}


class _Validator:
    def __init__(self, path: Path, recipe: str) -> None:
        self.path = path
        self.recipe = recipe

    def fail(self, where: str, key: str, problem: str) -> LockFileError:
        return LockFileError(self.path, where, key, problem, _HINT.format(recipe=self.recipe or "RECIPE"))

    def table(self, d: Any, schema: Mapping[str, tuple[Check | None, bool]], where: str) -> None:
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

    def debs(self, v: Any, where: str) -> None:
        seen: set[tuple[str, str]] = set()
        for i, e in enumerate(self.entries(v, where)):
            label = _label(where, i, e)
            self.table(e, DEB, label)
            if not e["path"].endswith(".deb"):
                raise self.fail(label, "path", f"{e['path']!r} is not a .deb")
            if (e["name"], e["architecture"]) in seen:
                raise self.fail(label, "name", f"'{e['name']}' is locked twice")
            seen.add((e["name"], e["architecture"]))

    def pip(self, e: Any, label: str) -> None:
        self.table(e, PIP, label)
        files = self.entries(e.get("files", []), f"{label}.files")
        for j, f in enumerate(files):
            self.table(f, WHEEL_FILE, f"{label}.files[{j}]")
        if "selected" in e and e["selected"] not in [f["name"] for f in files]:
            raise self.fail(label, "selected", f"{e['selected']!r} is none of the entry's files")
        if not files:
            raise self.fail(label, "files", "no file is locked for it")

    def validate(self, d: Mapping[str, Any]) -> None:
        # The order of these checks decides which of several bad values is reported: keep it.
        self.table(d, TOP, "top level")
        self.parents(d.get("parents", {}))
        if isinstance(d.get("base"), dict) and "image" in d["base"]:
            self.image_base(d["base"])
        elif "base" in d:
            self.debian_base(d["base"])
        if "apt" in d:
            self.debs(d["apt"], "[[apt]]")
        self.archives(d.get("apt-archives", []), "[[apt-archives]]")
        self.pips(d.get("pip", []))
        if "pip-installer" in d:
            self.pip(d["pip-installer"], "[pip-installer]")
        if "cran-repo" in d:
            self.table(d["cran-repo"], CRAN_REPO, "[cran-repo]")
        self.cran(d.get("cran", []))
        self.files(d.get("files", []))

    def parents(self, parents: Any) -> None:
        """``[parents]``: recipe name -> the lock hash of that parent."""
        if not isinstance(parents, dict):
            raise self.fail("top level", "parents", "must be a table")
        for name, h in parents.items():
            if not names.RECIPE_NAME.fullmatch(name):
                raise self.fail("[parents]", name, "is not a recipe name")
            if not isinstance(h, str) or not names.DIGEST.fullmatch(h):
                raise self.fail("[parents]", name, f"{h!r} is not 'sha256:' and 64 lowercase hex digits")

    def image_base(self, base: Mapping[str, Any]) -> None:
        """``[base.image]`` of a registry root: the manifest and config pinned, and at least one layer."""
        self.table(base, {"image": (None, True)}, "[base]")
        self.table(base["image"], IMAGE, "[base.image]")
        layers = self.entries(base["image"]["layers"], "[[base.image.layers]]")
        if not layers:
            raise self.fail("[base.image]", "layers", "no layer is locked")
        for i, la in enumerate(layers):
            self.table(la, IMAGE_LAYER, f"[[base.image.layers]] #{i + 1}")

    def debian_base(self, base: Any) -> None:
        """``[base]`` of a Debian root, with its packages and the archives they came from."""
        self.table(base, BASE, "[base]")
        self.debs(base.get("packages", []), "[[base.packages]]")
        self.archives(base.get("archives", []), "[[base.archives]]")

    def archives(self, v: Any, where: str) -> None:
        for i, a in enumerate(self.entries(v, where)):
            self.table(a, ARCHIVE, _label(where, i, a))

    def pips(self, v: Any) -> None:
        """``[[pip]]``: each distribution once, by its canonical name (``Foo_Bar`` is ``foo-bar``)."""
        seen: set[str] = set()
        for i, e in enumerate(self.entries(v, "[[pip]]")):
            label = _label("[[pip]]", i, e)
            self.pip(e, label)
            key = canonicalize_name(e["name"])
            if key in seen:
                raise self.fail(label, "name", f"'{e['name']}' is locked twice")
            seen.add(key)

    def cran(self, v: Any) -> None:
        """``[[cran]]``: each package once, its URL the tarball of that name and version."""
        r_names: set[str] = set()
        for i, e in enumerate(self.entries(v, "[[cran]]")):
            label = _label("[[cran]]", i, e)
            self.table(e, CRAN, label)
            if not e["url"].endswith(f"/{e['name']}_{e['version']}.tar.gz"):
                raise self.fail(label, "url", f"{e['url']!r} is not {e['name']}_{e['version']}.tar.gz")
            if e["name"] in r_names:
                raise self.fail(label, "name", f"'{e['name']}' is locked twice")
            r_names.add(e["name"])

    def files(self, v: Any) -> None:
        """``[[files]]``: each name once, since they share one staging folder."""
        file_names: set[str] = set()
        for i, e in enumerate(self.entries(v, "[[files]]")):
            label = _label("[[files]]", i, e)
            self.table(e, FILE, label)
            if e["name"] in file_names:
                raise self.fail(label, "name", f"a second file named {e['name']!r}")
            file_names.add(e["name"])


def _label(where: str, i: int, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"{where} #{i + 1}" + (f" ({name!r})" if isinstance(name, str) else "")


def validate_lock(path: Path, data: Mapping[str, Any]) -> None:
    """Raise ``LockFileError`` (exit 2) for the first value of ``data`` that is not of its shape."""
    recipe = data.get("recipe")
    name = recipe if isinstance(recipe, str) and names.RECIPE_NAME.fullmatch(recipe) else ""
    _Validator(path, name).validate(data)
