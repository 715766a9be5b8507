"""Lock ``[pip]``: resolve inside the image being extended, for the Python it has.

A trixie image has Python 3.13 while the host may have 3.11, and wheels are
tagged per interpreter and platform, so resolution runs where the layer will
be installed: pip-compile inside a container of the parent chain (plus this
layer's apt packages), with network "host", with the tools of ``pip_tools``.

In the container, one script: probe the interpreter (version, tags), run
pip-compile (ancestors' pins as constraints, the previous lock's pins as the
existing output so they are kept), then ``pip install --dry-run --report``
over the compiled pins to learn which file pip picks for this interpreter, and
the same for the pip wheel that installs the layer at build time. On the host,
``pypi`` lists every file of each pinned version with its sha256.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, parse_tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from buildsys.core import mirrors, names
from buildsys.core.errors import LockError, RecipeError
from buildsys.core.store import Artifact, Store
from buildsys.ecosystems.pip_errors import (
    ConflictingPins,
    ConstraintConflict,
    NoDistribution,
    NoWheel,
    PythonMissing,
    PythonTooOld,
    requirement_name,
)
from buildsys.ecosystems.pip_files import Pinned, RequirementsFile, read_pyproject, read_requirements
from buildsys.ecosystems.pip_layers import LayerSpec, parse_layers
from buildsys.ecosystems.pip_source import SOURCES_PY, is_sdist, split_pin
from buildsys.ecosystems.pip_tools import MIN_PYTHON, PipToolFailed, host_ca_bundle, tools_dir
from buildsys.ecosystems.pypi import (
    DEFAULT_INDEX,
    IndexFile,
    canonical_name,
    head_file,
    index_files_many,
    release_files,
)
from buildsys.engine import Engine
from buildsys.model.lockschema import SHA256, LockValidator, Schema, filename_check, matching, url_check, whole_number
from buildsys.model.recipe import KeyPath, Recipe, RecipeSection, RecipeValidator, render_key

TOOLS_MOUNT = "/buildsys-tools"
WORK_MOUNT = "/work"
CA_MOUNT = "/buildsys-ca.pem"

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# pip reads a wheel's dependencies from its METADATA. Where the index serves that file alone (PEP 658, said by
# the index page's core-metadata), pip downloads it; otherwise pip downloads the whole wheel, and the lock
# script's pip runs twice (pip-compile, then the dry run, with no cache between): torch's 900 MB wheel twice,
# 6 GB for `lock pytorch`. This workplace's PyPI pages carry no core-metadata. fast-deps reads the wheel's zip
# directory and METADATA with HTTP range requests instead; pip 26.3 still tries PEP 658 first, and takes the
# whole file from a server without ranges, as before. Hashes never needed the file: they come from the index
# (pypi.py). bench/bench_lock.py measures it (docs/locks.md, "How a lock gets its hashes").
_LAZY_WHEELS = "export PIP_USE_FEATURE=fast-deps"

# Exit statuses of the lock script, one per stage.
_NO_PYTHON, _PROBE, _COMPILE, _SELECT, _INSTALLER, _SOURCES = 80, 81, 82, 83, 84, 85


@dataclass(frozen=True)
class PipRecipe(RecipeSection):
    """``[pip]``: PEP 508 requirements, the index they are resolved from (PyPI unless ``index-url``), and
    the distributions built from their source distribution in the layer (``from-source``).

    ``requirements`` and ``pyproject`` (with ``extras``) name project files whose requirements join
    ``packages`` (``pip_files``); ``packages`` here is all of them, the recipe's own first.
    """

    packages: tuple[str, ...] = ()
    index_url: str | None = None
    from_source: tuple[str, ...] = ()
    files: tuple[RequirementsFile, ...] = ()  # the project files read, requirements first, then pyproject
    layers: tuple[LayerSpec, ...] = ()  # [[pip.layers]]: groups with a layer of their own (pip_layers)
    split: bool = True  # false: one layer whatever the set weighs

    KEY = "pip"
    SCHEMA = {"packages": "str-list", "index-url": "str", "from-source": "str-list", "requirements": "str",
              "pyproject": "str", "extras": "str-list", "split": "bool",
              "layers": ("tables", {"name": "str", "packages": "str-list"})}

    @classmethod
    def parse(cls, v: RecipeValidator, value: Any, key: KeyPath) -> Self:
        if "index-url" in value:
            v.url((*key, "index-url"), value["index-url"])
        for i, name in enumerate(value.get("from-source", [])):
            if not names.PIP_NAME.fullmatch(name):
                raise RecipeError(v.path, f"{name!r} is not a Python distribution name",
                                  key=render_key((*key, "from-source", i)),
                                  hint='name distributions as [pip] packages does, without a version: "markupsafe"')
        if "extras" in value and "pyproject" not in value:
            raise v.fail((*key, "extras"), "names optional-dependency groups, but [pip] has no pyproject",
                         hint='add pyproject = "pyproject.toml"')
        files = []
        if "requirements" in value:
            files.append(read_requirements(v, (*key, "requirements"), value["requirements"],
                                           value.get("index-url", DEFAULT_INDEX)))
        if "pyproject" in value:
            files.append(read_pyproject(v, (*key, "pyproject"), value["pyproject"],
                                        tuple(value.get("extras", []))))
        if any(f.pinned for f in files) and (value.get("packages") or len(files) > 1):
            pinned = next(f for f in files if f.pinned)
            raise v.fail((*key, "packages" if value.get("packages") else "pyproject"),
                         f"{pinned.path} is hashed (--hash lines): it is the whole pin set, so nothing may be "
                         "resolved beside it", hint=f"add these requirements to {pinned.path} "
                                                    "(`pip-compile --generate-hashes`), or drop its --hash lines")
        layers = parse_layers(value.get("layers", []), lambda k, problem, hint: v.fail(k, problem, hint=hint),
                              (*key, "layers"))
        if layers and value.get("split") is False:
            raise v.fail((*key, "split"), "is false, but [[pip.layers]] lists layers to split into",
                         hint="remove one of them")
        own = list(value.get("packages", []))
        extra = [spec for f in files for spec, _ in f.requirements if spec not in own]
        return cls(tuple(own + list(dict.fromkeys(extra))), value.get("index-url"),
                   tuple(value.get("from-source", [])), tuple(files), layers, value.get("split", True))

    def count(self) -> int:
        return len(self.packages)

    def inputs(self) -> tuple[tuple[str, str], ...]:
        return tuple(i for f in self.files for i in ((f.path, f.sha256), *f.included))

    @property
    def pinned(self) -> tuple[Pinned, ...]:
        """The hashed requirements file's pins (the lock takes exactly these), or none."""
        return next((f.pinned for f in self.files if f.pinned), ())

    def origin(self, spec: str) -> str:
        """Where a requirement was written: ``pip.packages[i]`` or ``requirements.txt:LINE``."""
        for f in self.files:
            for text, where in f.requirements:
                if text == spec:
                    return where
        return "pip.packages"


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
    """One locked distribution: ``[[pip]]`` (or ``[pip-installer]``) of a lock."""

    name: str
    version: str
    files: tuple[LockedWheelFile, ...]  # every acceptable file (pip-compile --generate-hashes)
    # The file the image's interpreter installs (chosen at lock time for its tags).
    selected: str | None = None
    # Built from its sdist (the selected file): its build requirements, "name==version" each, every one
    # a [[pip-build]] entry of the same lock. None for a wheel.
    build_requires: tuple[str, ...] | None = None

    @property
    def chosen(self) -> list[LockedWheelFile]:
        """The file(s) the build installs: the selected one, or every file of an older lock without one."""
        return [f for f in self.files if f.name == self.selected] if self.selected else list(self.files)

    def artifacts(self) -> list[Artifact]:
        chosen = self.chosen
        # local=True: wheel URLs on this machine pass the freshness check only under a local index-url.
        return [Artifact(kind="wheel", name=self.name, version=self.version, filename=f.name, sha256=f.sha256,
                         size=f.size, urls=(f.url,), local=True) for f in chosen]

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "version": self.version,
                             "files": [f.to_toml() for f in sorted(self.files, key=lambda f: f.name)]}
        if self.selected:
            d["selected"] = self.selected
        if self.build_requires is not None:
            d["build-requires"] = list(self.build_requires)
        return d

    @classmethod
    def from_toml(cls, d: Mapping[str, Any]) -> LockedPip:
        files = tuple(LockedWheelFile(name=f["name"], sha256=f["sha256"], url=f["url"], size=f.get("size"))
                      for f in d.get("files", []))
        build = tuple(d["build-requires"]) if "build-requires" in d else None
        return cls(name=d["name"], version=d["version"], files=files, selected=d.get("selected"),
                   build_requires=build)


def _pip_version(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {type(v).__name__}"
    try:
        Version(v)
    except InvalidVersion:
        return f"{v!r} is not a PEP 440 version"
    return None


WHEEL_FILE: Schema = {
    "name": (filename_check, True),
    "sha256": (SHA256, True),
    "url": (url_check, True),
    "size": (whole_number, False),
}
PIP: Schema = {
    "name": (matching(names.PIP_NAME, "a Python package name"), True),
    "version": (_pip_version, True),
    "selected": (filename_check, False),
    "files": (None, False),  # checked entry by entry below
    "build-requires": (None, False),  # checked below
}


def _is_pin(text: Any) -> bool:
    pin = split_pin(text) if isinstance(text, str) else None
    return pin is not None and _pip_version(pin[1]) is None


def check_pip(v: LockValidator, e: Any, where: str) -> None:
    """One ``LockedPip`` in a lock: its files each of their shape, at least one, the selected one among them."""
    v.table(e, PIP, where)
    files = v.entries(e.get("files", []), f"{where}.files")
    for j, f in enumerate(files):
        v.table(f, WHEEL_FILE, f"{where}.files[{j}]")
    if "selected" in e and e["selected"] not in [f["name"] for f in files]:
        raise v.fail(where, "selected", f"{e['selected']!r} is none of the entry's files")
    if not files:
        raise v.fail(where, "files", "no file is locked for it")
    build = e.get("build-requires")
    if build is not None and (not isinstance(build, list) or not all(_is_pin(b) for b in build)):
        raise v.fail(where, "build-requires", 'must be a list of "name==version" strings')
    chosen = e.get("selected") or (files[0]["name"] if len(files) == 1 else "")
    if is_sdist(chosen) and build is None:
        raise v.fail(where, "build-requires", f"{chosen} is a source distribution: its build requirements must be "
                                              "locked with it")
    if build is not None and not is_sdist(chosen):
        raise v.fail(where, "build-requires", f"only a source distribution is built, and {chosen!r} is none")


@dataclass(frozen=True)
class PipLock:
    python: str  # the image's Python, "X.Y.Z"
    packages: tuple[LockedPip, ...]  # this layer's pins, without those its ancestors already install
    installer: LockedPip  # the pip wheel that installs them at build time
    epoch: int  # newest upload time among the selected files (installer and build requirements included)
    build: tuple[LockedPip, ...] = ()  # the build requirements of the packages built from source


@dataclass(frozen=True)
class _Pin:
    name: str  # canonical
    version: str


@dataclass(frozen=True)
class _Resolved:
    """What the lock container found."""

    python: str
    pins: list[_Pin]  # pip-compile's output, ancestors' pins included
    selected: dict[str, tuple[str, str]]  # name -> (url, sha256) of the file pip installs
    installer: tuple[str, str]  # (url, sha256) of the pip wheel
    # sdist name -> its build requirements' (name, version, url, sha256), as pip chose them
    sources: dict[str, list[tuple[str, str, str, str]]]


def lock_pip(engine: Engine, image: str, recipe: Recipe, store: Store, *, constraints: Mapping[str, str],
             previous: Sequence[LockedPip], upgrade: bool, upgrade_packages: Sequence[str],
             previous_installer: LockedPip | None = None, previous_build: Sequence[LockedPip] = ()) -> PipLock:
    """Resolve the recipe's ``[pip]`` packages for the Python of ``image`` (which must have python3).

    ``constraints`` are the ancestors' pins (name -> version): they bound the
    resolution and are left out of the result. ``previous`` pins are kept
    unless ``upgrade`` or named in ``upgrade_packages``; so is
    ``previous_installer`` (the pip that installs at build time), otherwise
    the newest pip that supports the image's Python is taken. The build
    requirements of ``from-source`` packages are kept as they were
    (``previous_build``) while they still satisfy them.
    """
    _check_requirements(recipe)
    index = (recipe.section(PipRecipe).index_url or DEFAULT_INDEX).rstrip("/")
    ancestors = {canonical_name(n): v for n, v in constraints.items()}
    moving = sorted({canonical_name(n) for n in upgrade_packages})
    kept = [p for p in previous if canonical_name(p.name) not in ancestors] if not upgrade else []
    keep_installer = previous_installer if not upgrade and "pip" not in moving else None
    build_before = {canonical_name(p.name): list(p.build_requires) for p in kept if p.build_requires}
    found = _resolve_in_image(engine, image, recipe, store, index, ancestors, kept, upgrade, moving, keep_installer,
                              build_before)

    for pin in found.pins:
        if pin.name in ancestors and not _same_version(pin.version, ancestors[pin.name]):
            raise ConstraintConflict(recipe.name, pin.name, ancestors[pin.name], pin.version)
    own = [p for p in found.pins if p.name not in ancestors]
    _check_from_source(recipe, own, ancestors)
    build_names = {b[0] for reqs in found.sources.values() for b in reqs}
    files = index_files_many(index, sorted({p.name for p in own} | {"pip"} | build_names))
    before = {canonical_name(p.name): p for p in kept}
    packages, epochs = [], []
    build: dict[tuple[str, str], LockedPip] = {}
    earlier_build = {(canonical_name(b.name), b.version): b for b in previous_build}
    for pin in own:
        url, sha = found.selected[pin.name]
        locked, uploaded = _locked(pin.name, pin.version, url, sha, files[pin.name], before.get(pin.name))
        epochs.append(uploaded)
        if pin.name in found.sources:
            needs = []
            for name, version, burl, bsha in found.sources[pin.name]:
                if (name, version) not in build:
                    build[name, version], buploaded = _locked(name, version, burl, bsha, files.get(name, {}),
                                                              earlier_build.get((name, version)))
                    epochs.append(buploaded)
                needs.append(f"{name}=={version}")
            locked = dataclasses.replace(locked, build_requires=tuple(sorted(needs)))
        packages.append(locked)
    # The installer is one wheel: no other file of its release can run as pip at build time.
    url, sha = found.installer
    installer, uploaded = _locked("pip", _version_from_wheel(url), url, sha, files["pip"], None, only_selected=True)
    epochs.append(uploaded)
    return PipLock(python=found.python, packages=tuple(sorted(packages, key=lambda p: p.name)), installer=installer,
                   epoch=max((e for e in epochs if e is not None), default=0),
                   build=tuple(sorted(build.values(), key=lambda p: (p.name, Version(p.version)))))


def _check_from_source(recipe: Recipe, own: Sequence[_Pin], ancestors: Mapping[str, str]) -> None:
    """Each ``from-source`` name is a distribution this layer installs (not one of an ancestor, not a typo)."""
    mine = {p.name for p in own}
    for i, name in enumerate(recipe.section(PipRecipe).from_source):
        key = canonical_name(name)
        if key in mine:
            continue
        where = "a parent installs it" if key in ancestors else "[pip] packages do not need it"
        raise RecipeError(recipe.path, f"from-source names {name!r}, which this layer does not install ({where})",
                          key=f"pip.from-source[{i}]",
                          hint="name distributions that [pip] packages of this recipe install, or remove the entry")


def _check_requirements(recipe: Recipe) -> None:
    """Each entry is one PEP 508 requirement on a project of the index: no pip options, no URLs."""
    for i, text in enumerate(recipe.section(PipRecipe).packages):
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            raise RecipeError(recipe.path, f"not a requirement: {e}", key=f"pip.packages[{i}]",
                              hint='write a project name with an optional version, e.g. "numpy>=2,<3"') from e
        if req.url:
            raise RecipeError(recipe.path, f"{text!r}: direct URL requirements cannot be locked here",
                              key=f"pip.packages[{i}]",
                              hint="publish the package on an index and set [pip] index-url, or use [[files]]")


def _resolve_in_image(engine: Engine, image: str, recipe: Recipe, store: Store, index: str,
                      ancestors: Mapping[str, str], previous: Sequence[LockedPip], upgrade: bool,
                      upgrade_packages: Sequence[str], installer: LockedPip | None,
                      build_before: Mapping[str, Sequence[str]]) -> _Resolved:
    """One container of ``image``: probe, pip-compile, then pip's choice of files; failures explained."""
    tools = tools_dir(store)
    with store.scratch("pip-lock") as scratch:
        work = Path(scratch)
        (work / "in.txt").write_text("".join(f"{r}\n" for r in recipe.section(PipRecipe).packages))
        (work / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(ancestors.items())))
        (work / "out.txt").write_text(_existing_output(previous))
        (work / "probe.py").write_text(_PROBE_PY)
        (work / "sources.py").write_text(SOURCES_PY)
        (work / "build-previous.json").write_text(json.dumps(dict(build_before)))
        from_source = sorted({canonical_name(n) for n in recipe.section(PipRecipe).from_source})
        # pip in the container reads the index from its mirror where one is configured (core/mirrors);
        # the URLs it reports are mapped back to upstream's below.
        (work / "lock.sh").write_text(_script(mirrors.active().mirrored(index), upgrade, upgrade_packages,
                                              installer.version if installer else None, from_source))
        mounts = [(str(tools), TOOLS_MOUNT, True), (str(work), WORK_MOUNT, False)]
        env = {"PYTHONPATH": TOOLS_MOUNT, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "HOME": "/tmp", **{k: v for k in _PROXY_VARS if (v := os.environ.get(k))}}
        ca = host_ca_bundle()
        if ca:
            mounts.append((str(ca), CA_MOUNT, True))
            env.update(PIP_CERT=CA_MOUNT, SSL_CERT_FILE=CA_MOUNT)
        result = engine.run(image, [f"{WORK_MOUNT}/lock.sh"], entrypoint=["/bin/sh"], network="host", user="0:0",
                            env=env, mounts=mounts, workdir=WORK_MOUNT)
        logs = {n: _read(work / f"{n}.log") for n in ("probe", "compile", "select", "installer", "sources")}
        probe = json.loads(_read(work / "probe.json") or "{}")
        python = str(probe.get("version", "?"))
        code = result.exit_code
        if code == _NO_PYTHON:
            raise PythonMissing(recipe.name, image)
        if code == _PROBE and probe.get("version") and not probe.get("supported"):
            raise PythonTooOld(recipe.name, python)
        if code == _COMPILE:
            raise _compile_error(recipe, index, python, logs["compile"], ancestors)
        pins = _parse_output(_read(work / "out.txt")) if code in (0, _SELECT, _INSTALLER) else []
        if code == _SELECT:
            raise _select_error(recipe, index, python, probe.get("tags", []), pins, logs["select"])
        if code == _INSTALLER:
            raise PipToolFailed(recipe.name, f"choosing the pip that installs [pip] packages on Python {python}",
                                logs["installer"])
        if code == _SOURCES:
            said = [ln[len("buildsys: "):] for ln in logs["sources"].splitlines() if ln.startswith("buildsys: ")]
            raise PipToolFailed(recipe.name, "locking the build requirements of [pip] from-source packages"
                                + (f" ({said[-1]})" if said else ""), logs["sources"],
                                hint="check the package's [build-system] and that its build requirements "
                                     "publish wheels for this Python")
        if code != 0:
            raise PipToolFailed(recipe.name, f"locking [pip] in {image} (exit status {code})",
                                result.output + "\n" + logs["probe"])
        selected = _read_report(recipe, work / "report.json")
        pip = _read_report(recipe, work / "installer.json")
        sources = _read_sources(recipe, work / "sources.json") if from_source else {}
    missing = [p for p in pins if p.name not in selected]
    if missing or set(pip) != {"pip"}:
        what = (f"finding the file pip installs for {missing[0].name}=={missing[0].version}" if missing
                else "choosing the pip that installs [pip] packages")
        raise PipToolFailed(recipe.name, what, logs["select"] if missing else logs["installer"])
    return _Resolved(python=python, pins=pins, selected=selected, installer=pip["pip"], sources=sources)


def _read_sources(recipe: Recipe, path: Path) -> dict[str, list[tuple[str, str, str, str]]]:
    """``sources.py``'s answer: sdist name -> its build requirements' (name, version, url, sha256)."""
    try:
        data = json.loads(path.read_text())
        return {canonical_name(name): [(canonical_name(b["name"]), str(b["version"]),
                                        mirrors.active().to_upstream(str(b["url"])),
                                        str(b["sha256"]).lower()) for b in entry["pins"]]
                for name, entry in data.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LockError(f"{recipe.name}: the build requirements of [pip] from-source packages were not "
                        f"written readably ({path.name}): {e}",
                        f"lock again (`buildsys lock {recipe.name}`); if it repeats, `buildsys -v lock "
                        f"{recipe.name}` shows what the lock container said") from e


def _existing_output(previous: Sequence[LockedPip]) -> str:
    """The previous pins as pip-compile's own output, so that it keeps them."""
    ordered = sorted(previous, key=lambda p: canonical_name(p.name))
    return "".join(f"{canonical_name(p.name)}=={p.version}\n" for p in ordered)


_PROBE_PY = """\
import json, platform, sys
out = {"version": "%d.%d.%d" % sys.version_info[:3], "machine": platform.machine(),
       "supported": sys.version_info >= MIN_PYTHON}
if out["supported"]:
    from packaging import tags
    out["tags"] = [str(t) for t in tags.sys_tags()]
with open("/work/probe.json", "w") as f:
    json.dump(out, f)
sys.exit(0 if out["supported"] else 3)
""".replace("MIN_PYTHON", repr(MIN_PYTHON))


def _script(index: str, upgrade: bool, upgrade_packages: Sequence[str], installer_version: str | None,
            from_source: Sequence[str] = ()) -> str:
    q = shlex.quote
    compile_args = ["--allow-unsafe", "--no-header", "--no-annotate", "--strip-extras",
                    "--no-config", "--no-emit-index-url", "--index-url", index, "-c", f"{WORK_MOUNT}/constraints.txt"]
    if upgrade:
        compile_args.append("--upgrade")
    for name in upgrade_packages:
        compile_args += ["--upgrade-package", name]
    compile_args += ["-o", f"{WORK_MOUNT}/out.txt", f"{WORK_MOUNT}/in.txt"]
    dry = ("python3 -m pip install --dry-run --ignore-installed --no-deps --only-binary=:all: "
           f"--index-url {q(index)}")
    # from-source packages: their sdist (pip's --no-binary NAME wins over --only-binary=:all: for that name).
    select = dry + "".join(f" --no-binary {q(n)}" for n in from_source)
    pip_pin = q(f"pip=={installer_version}") if installer_version else "pip"
    return "\n".join([
        "#!/bin/sh",
        "set -u",
        # Nothing from the image's environment or configuration may steer pip.
        "for v in $(env | sed -n 's/^\\(PIP_[A-Za-z0-9_]*\\)=.*/\\1/p'); do",
        "  [ \"$v\" = PIP_CERT ] || unset \"$v\"",
        "done",
        "export PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1",
        "export PIP_ROOT_USER_ACTION=ignore",
        _LAZY_WHEELS,
        f"command -v python3 >/dev/null 2>&1 || exit {_NO_PYTHON}",
        f"python3 {WORK_MOUNT}/probe.py >{WORK_MOUNT}/probe.log 2>&1 || exit {_PROBE}",
        f"python3 -m piptools compile {shlex.join(compile_args)} >{WORK_MOUNT}/compile.log 2>&1 || exit {_COMPILE}",
        # (an empty [pip] list compiles to nothing, and then there is nothing to choose)
        f"if grep -q '==' {WORK_MOUNT}/out.txt; then",
        f"  {select} --report {WORK_MOUNT}/report.json -r {WORK_MOUNT}/out.txt >{WORK_MOUNT}/select.log 2>&1 "
        f"|| exit {_SELECT}",
        f"else echo '{{\"install\": []}}' >{WORK_MOUNT}/report.json; fi",
        # The kept installer, or (when it no longer supports this Python) the newest one.
        f"{dry} --report {WORK_MOUNT}/installer.json {pip_pin} >{WORK_MOUNT}/installer.log 2>&1 "
        f"|| {dry} --report {WORK_MOUNT}/installer.json pip >>{WORK_MOUNT}/installer.log 2>&1 || exit {_INSTALLER}",
        *([f"python3 {WORK_MOUNT}/sources.py {q(index)} >{WORK_MOUNT}/sources.log 2>&1 || exit {_SOURCES}"]
          if from_source else []),
        "",
    ])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def _parse_output(text: str) -> list[_Pin]:
    """pip-compile's output: ``name==version [; marker] [--hash=...]``, maybe with continuation lines."""
    pins = []
    for line in text.replace("\\\n", " ").splitlines():
        s = line.split(" #", 1)[0].strip()
        if not s or s.startswith(("#", "-")):
            continue
        m = _REQ_LINE.match(s)
        if not m:
            raise LockError(f"pip-compile wrote a requirement buildsys cannot pin: {s[:200]}",
                            "use plain project names and version specifiers in [pip] packages (no URLs or paths)")
        pins.append(_Pin(canonical_name(m[1]), m[2]))
    return sorted(pins, key=lambda p: p.name)


def _read_report(recipe: Recipe, path: Path) -> dict[str, tuple[str, str]]:
    """``pip install --report``: canonical name -> (url, sha256) of the file pip chose."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LockError(f"{recipe.name}: pip wrote no readable installation report ({path.name}): {e}") from e
    out = {}
    for item in report.get("install", []):
        info = item.get("download_info", {})
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if not sha:  # older pips only have "hash": "sha256=..."
            h = info.get("archive_info", {}).get("hash", "")
            sha = h.split("=", 1)[1] if h.startswith("sha256=") else ""
        out[canonical_name(item["metadata"]["name"])] = (mirrors.active().to_upstream(info.get("url", "")),
                                                         sha.lower())
    return out


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


_NOT_FOUND = re.compile(r"Could not find a version that satisfies the requirement (.+?) \(from versions: ([^)]*)\)")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
# RequirementInformation(requirement=SpecifierRequirement('markupsafe<2'), parent=LinkCandidate('https://.../x.whl
_CAUSE = re.compile(r"RequirementInformation\(requirement=\w+\('([^']*)'\), parent=(None|\w+\('([^' ]*))")
_IN_LINE = re.compile(r"-r /work/in\.txt \(line (\d+)\)")


def _compile_error(recipe: Recipe, index: str, python: str, log: str, ancestors: Mapping[str, str]) -> LockError:
    def named(text: str) -> str:  # "-r /work/in.txt (line 2)" -> the recipe's own words
        return _IN_LINE.sub(lambda m: _recipe_req(recipe, int(m[1])), text)

    log = named(log)
    m = _NOT_FOUND.search(log)
    if m:
        return NoDistribution(recipe.name, m[1], index, m[2].strip(), python, log)
    m = _NO_MATCH.search(log)
    if m:
        return NoDistribution(recipe.name, m[1], index, "", python, log)
    if "ResolutionImpossible" in log or "conflicting dependencies" in log:
        causes: list[str] = []
        for req, parent, url in _CAUSE.findall(log):
            who = "asked by the recipe" if parent == "None" else f"asked by {_dist_of(url) or parent}"
            if f"{req} ({who})" not in causes:
                causes.append(f"{req} ({who})")
        names = {canonical_name(requirement_name(c)) for c in causes}
        names |= {n for n in ancestors if re.search(rf"\b{re.escape(n)}\b", log, re.IGNORECASE)}
        return ConflictingPins(recipe.name, causes, {n: v for n, v in ancestors.items() if n in names}, log)
    return PipToolFailed(recipe.name, f"pip-compile of [pip] packages for Python {python}", log)


def _recipe_req(recipe: Recipe, line: int) -> str:
    pip = recipe.section(PipRecipe)
    if not 0 < line <= len(pip.packages):
        return f"[pip] packages[{line - 1}]"
    spec = pip.packages[line - 1]
    where = pip.origin(spec)
    return spec if where == "pip.packages" else f"{spec} ({where})"


def _dist_of(url: str) -> str:
    """'https://.../jinja2-3.1.4-py3-none-any.whl' -> 'jinja2 3.1.4'."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) if url else ""
    try:
        dist, version, *_ = parse_wheel_filename(name)
        return f"{dist} {version}"
    except InvalidWheelFilename:
        return name


def _select_error(recipe: Recipe, index: str, python: str, tags: Sequence[str], pins: Sequence[_Pin],
                  log: str) -> LockError:
    """The dry run found no installable file: say which pins lack a wheel for this interpreter."""
    accepted: set[Tag] = set().union(*(parse_tag(t) for t in tags))
    try:
        files = index_files_many(index, sorted({p.name for p in pins}))
    except LockError:
        return PipToolFailed(recipe.name, f"choosing wheels for Python {python}", log)
    missing = []
    for pin in pins:
        own = release_files(files.get(pin.name, {}), pin.name, pin.version).values()
        if not any(_wheel_tags(f.name) & accepted for f in own):
            missing.append((pin.name, pin.version, sorted(f.name for f in own)))
    if missing:
        return NoWheel(recipe.name, missing, python, list(tags))
    return PipToolFailed(recipe.name, f"choosing wheels for Python {python}", log)


def _wheel_tags(filename: str) -> frozenset[Tag]:
    try:
        return parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return frozenset()


def _version_from_wheel(url: str) -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return str(parse_wheel_filename(name)[1])


def _locked(name: str, version: str, url: str, sha: str, listed: Mapping[str, IndexFile],
            previous: LockedPip | None, only_selected: bool = False) -> tuple[LockedPip, int | None]:
    """The pin with every file of its release, and the upload time of the selected one.

    A pin kept from the previous lock keeps the files it had (as pip-compile
    reuses existing hashes), so wheels uploaded later for an old release do not
    change a lock that nothing else changed.
    """
    release = release_files(listed, name, version)
    chosen = release.get(sha) or listed.get(sha)
    if chosen is None or chosen.size is None or chosen.uploaded is None:
        # An index that does not list this file with its hash, size or upload time: ask the file itself.
        head = head_file(chosen.url if chosen else url, sha)
        chosen = IndexFile(chosen.name if chosen else head.name, head.url, sha,
                            (chosen.size if chosen else None) or head.size,
                            (chosen.uploaded if chosen else None) or head.uploaded)
    release[sha] = chosen
    files = [LockedWheelFile(name=f.name, sha256=f.sha256, url=f.url, size=f.size)
             for f in ([chosen] if only_selected else release.values())]
    if previous is not None and previous.version == version and sha in {f.sha256 for f in previous.files}:
        files = list(previous.files)
    locked = LockedPip(name=name, version=version, selected=chosen.name,
                       files=tuple(sorted(files, key=lambda f: f.name)))
    return locked, chosen.uploaded
