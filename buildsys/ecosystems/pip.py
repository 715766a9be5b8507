"""The ``[pip]`` ecosystem: lock (``pip_resolve``), stage the vendored wheels, install them at build time.

Builds install offline from the vendored wheels with the locked pip, run straight
from its wheel file (``python3 pip-X.whl/pip install --no-index ...``). Packages
of ``[pip] from-source`` are built from their vendored sdist first, one step
each (``pip_source``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from packageurl import PackageURL
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from buildsys.core import licenses
from buildsys.core.errors import LockError, NotVendored, RecipeError
from buildsys.core.store import Artifact, Store, atomic_write
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems.apt_layer import chain_debs
from buildsys.ecosystems.base import (
    MOUNT,
    STEP_HEADER,
    STEP_MARKER,
    Component,
    Ecosystem,
    LockContext,
    Pin,
    missing_header,
)
from buildsys.ecosystems.pip_resolve import LockedPip, LockedWheelFile, PipRecipe, check_pip, lock_pip
from buildsys.ecosystems.pip_source import BUILD_DIR, build_step, is_sdist, split_pin
from buildsys.ecosystems.pypi import DEFAULT_INDEX
from buildsys.model.lockfile import Lock, LockSection
from buildsys.model.lockschema import Check, LockValidator, matching
from buildsys.model.recipe import Recipe

WHEELS_DIR = "/buildsys/wheels"
REQUIREMENTS = "requirements.txt"  # written by stage_wheels beside the wheels


# --- the lock's part -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipSection(LockSection):
    """``[[pip]]`` by name, the pip wheel that installs them (``[pip-installer]``), the Python they are for,
    and the build requirements of those built from source (``[[pip-build]]``, by name and version)."""

    packages: tuple[LockedPip, ...] = ()
    python: str | None = None  # the image's Python (e.g. "3.11.2") the pip set was resolved for
    installer: LockedPip | None = None  # the pip wheel that installs [[pip]] at build time
    build: tuple[LockedPip, ...] = ()  # wheels installed only to build the sdists of [[pip]], never into the image

    KEYS: ClassVar[Mapping[str, Check | None]] = {
        "python": matching(re.compile(r"[0-9]+(\.[0-9]+){1,2}"), "a Python version"),
        "pip": None,
        "pip-installer": None,
        "pip-build": None,
    }

    def write(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.python:
            d["python"] = self.python
        if self.packages:
            d["pip"] = [p.to_toml() for p in sorted(self.packages, key=lambda p: p.name)]
        if self.installer:
            d["pip-installer"] = self.installer.to_toml()
        if self.build:
            d["pip-build"] = [p.to_toml() for p in sorted(self.build, key=lambda p: (p.name, Version(p.version)))]
        return d

    @classmethod
    def validate(cls, v: LockValidator, d: Mapping[str, Any]) -> None:
        """``[[pip]]``: each distribution once, by its canonical name (``Foo_Bar`` is ``foo-bar``);
        ``[[pip-build]]``: each name and version once, each a wheel, each one some ``build-requires`` names."""
        def check_build(e: Any, at: str) -> None:
            check_pip(v, e, at)
            if "build-requires" in e:
                raise v.fail(at, "build-requires", "a build requirement is installed from a wheel, never built")

        def pinned(e: Any) -> tuple[str, str]:
            return str(canonicalize_name(e["name"])), str(Version(e["version"]))

        builds = {pinned(e): at for at, e in v.each(d.get("pip-build", []), "[[pip-build]]", check_build, key=pinned,
                                                      twice=lambda e: f"'{e['name']}' {e['version']} is locked twice")}
        used: set[tuple[str, str]] = set()
        for at, e in v.each(d.get("pip", []), "[[pip]]", lambda e, at: check_pip(v, e, at),
                            key=lambda e: canonicalize_name(e["name"])):
            for req in e.get("build-requires") or ():
                name, version = split_pin(req) or ("", "")
                wanted = (str(canonicalize_name(name)), str(Version(version)))
                if wanted not in builds:
                    raise v.fail(at, "build-requires", f"'{req}' is no [[pip-build]] entry of this lock")
                used.add(wanted)
        for bkey, at in builds.items():
            if bkey not in used:
                raise v.fail(at, "name", "no [[pip]] entry's build-requires names it")
        if "pip-installer" in d:
            check_pip(v, d["pip-installer"], "[pip-installer]")

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self:
        return cls(packages=tuple(LockedPip.from_toml(p) for p in d.get("pip", [])), python=d.get("python"),
                   installer=LockedPip.from_toml(d["pip-installer"]) if "pip-installer" in d else None,
                   build=tuple(LockedPip.from_toml(p) for p in d.get("pip-build", [])))

    def with_installer(self) -> tuple[LockedPip, ...]:
        """The locked distributions, the pip that installs them and the build requirements of the sdists."""
        return (*self.packages, *([self.installer] if self.installer else []), *self.build)

    def build_pin(self, req: str) -> LockedPip:
        """The ``[[pip-build]]`` entry a ``build-requires`` item names (the lock check made sure there is one)."""
        name, version = split_pin(req) or ("", "")
        return next(b for b in self.build
                    if canonicalize_name(b.name) == canonicalize_name(name) and Version(b.version) == Version(version))


# --- build time -----------------------------------------------------------------------------------------------------


def _selected_file(recipe: str, pin: LockedPip) -> LockedWheelFile:
    chosen = pin.chosen
    if len(chosen) != 1:
        raise LockError(f"{recipe}: the lock names no single file to install for {pin.name}=={pin.version}",
                        f"relock: `buildsys lock {recipe}`")
    f = chosen[0]
    shape = is_sdist(f.name) if pin.build_requires is not None else f.name.endswith(".whl")
    if "/" in f.name or f.name in (".", "..", REQUIREMENTS) or not shape:
        what = "a source distribution's" if pin.build_requires is not None else "a wheel's"
        raise LockError(f"{recipe}: the lock's file name for {pin.name} is not {what}: {f.name!r}",
                        f"relock: `buildsys lock {recipe}`")
    return f


def _link(store: Store, recipe: str, pin: LockedPip, dest: Path) -> LockedWheelFile:
    """Link the selected file of ``pin`` from the vendor store into ``dest`` under its own name."""
    f = _selected_file(recipe, pin)
    src = store.vendor_path(f.sha256)
    if not src.is_file() or (f.size is not None and src.stat().st_size != f.size):
        raise NotVendored(recipe, f"pip file {f.name} ({pin.name} {pin.version})")
    target = dest / f.name
    target.unlink(missing_ok=True)
    try:
        os.link(src, target)
    except OSError:  # another file system
        shutil.copyfile(src, target)
    return f


def _installer(lock: Lock) -> LockedPip:
    installer = lock.section(PipSection).installer
    if installer is None:
        raise LockError(f"{lock.recipe}: the lock pins [[pip]] packages but no pip to install them with",
                        f"relock: `buildsys lock {lock.recipe}`")
    return installer


def stage_wheels(store: Store, lock: Lock, dest: Path) -> None:
    """Link the selected files (wheels and sdists) and the installer into ``dest`` under their own names, with
    ``requirements.txt`` pinning each wheel to its sha256 (what ``install_script`` installs); and the build
    requirements of the sdists into ``dest/../pip-build``, with one ``NAME-VERSION.txt`` of hashes per sdist."""
    pip = lock.section(PipSection)
    if not pip.packages:
        return
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for pin in [*sorted(pip.packages, key=lambda p: p.name), _installer(lock)]:
        f = _link(store, lock.recipe, pin, dest)
        if pin is not pip.installer and pin.build_requires is None:
            lines.append(f"{pin.name}=={pin.version} --hash=sha256:{f.sha256}\n")
    atomic_write(dest / REQUIREMENTS, "".join(lines).encode())
    sources = [p for p in pip.packages if p.build_requires]
    if sources:
        build = dest.parent / BUILD_DIR
        build.mkdir(parents=True, exist_ok=True)
        for pin in sources:
            reqs = []
            for req in pin.build_requires or ():
                b = pip.build_pin(req)
                f = _link(store, lock.recipe, b, build)
                reqs.append(f"{b.name}=={b.version} --hash=sha256:{f.sha256}\n")
            atomic_write(build / _build_requirements(pin), "".join(reqs).encode())


def _build_requirements(pin: LockedPip) -> str:
    return f"{canonicalize_name(pin.name)}-{pin.version}.txt"


def install_script(lock: Lock, wheels_dir_in_container: str = WHEELS_DIR) -> str:
    """One sh command that installs the staged wheels with no network; "" when there is nothing to install.

    ``--break-system-packages``: Debian marks its python EXTERNALLY-MANAGED (PEP
    668); pip then installs into /usr/local/lib/python3.X/dist-packages, beside
    (never over) what dpkg owns. ``--isolated`` and ``PIP_CONFIG_FILE=/dev/null``:
    no PIP_* variable of the image and no pip.conf may change what is installed.
    """
    if not any(p.build_requires is None for p in lock.section(PipSection).packages):
        return ""
    d = wheels_dir_in_container.rstrip("/")
    pip = f"{d}/{_selected_file(lock.recipe, _installer(lock)).name}/pip"
    return (f"PIP_CONFIG_FILE=/dev/null python3 {shlex.quote(pip)} install --isolated --no-index "
            f"--find-links {shlex.quote(d)} --require-hashes --no-deps --no-cache-dir --disable-pip-version-check "
            "--no-warn-script-location --break-system-packages --root-user-action=ignore --no-input "
            f"-r {shlex.quote(f'{d}/{REQUIREMENTS}')}")


# --- the ecosystem ---------------------------------------------------------------------------------------------------

# Runs in the image for ``buildsys test``: import the module(s) each named distribution installs. The
# distribution -> module map is the image's own (importlib.metadata), so
# scikit-learn -> sklearn, PyYAML -> yaml, beautifulsoup4 -> bs4 need no table.
IMPORT_CHECK = r"""
import importlib, importlib.metadata as md, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
modules = {}
for mod, dists in md.packages_distributions().items():
    if mod.isidentifier() and not mod.startswith("_"):
        for d in dists:
            modules.setdefault(norm(d), set()).add(mod)
failed = []
for want in sys.argv[1:]:
    try:
        md.distribution(want)
    except md.PackageNotFoundError:
        failed.append(f"{want}: not installed"); continue
    mods = sorted(modules.get(norm(want), ()))
    same = [m for m in mods if norm(m) == norm(want)]
    for mod in same or mods[:1]:
        try:
            importlib.import_module(mod)
            print(f"{want}: import {mod} ok")
        except Exception as e:
            failed.append(f"{want}: import {mod} failed: {type(e).__name__}: {e}")
    if not mods:
        print(f"{want}: installed, no module to import")
for f in failed:
    print(f, file=sys.stderr)
sys.exit(1 if failed else 0)
"""


def take_pinned(recipe: Recipe, packages: Sequence[LockedPip]) -> tuple[LockedPip, ...]:
    """With a hashed requirements file, the lock holds exactly its pins and only the files it lists.

    pip-compile ran with the file's ``==`` pins, so versions can only differ if
    a distribution is missing from the file (pip-compile added it) or pip chose
    a file the file's hashes do not allow: either is the file's to fix, named
    with its line.
    """
    section = recipe.section(PipRecipe)
    pinned = {p.name: p for p in section.pinned}
    if not pinned:
        return tuple(packages)
    path = next(f.path for f in section.files if f.pinned)
    root = recipe.path.parent.parent
    out = []
    for p in packages:
        name = canonicalize_name(p.name)
        pin = pinned.get(name)
        if pin is None:
            raise RecipeError(recipe.path, f"{path} is hashed but lacks {p.name}, which its requirements need "
                                           f"(pip-compile takes {p.name}=={p.version})", key="pip.requirements",
                              hint=f"regenerate {path} with `pip-compile --generate-hashes` so it is complete")
        files = tuple(f for f in p.files if f.sha256 in pin.sha256)
        if p.version != pin.version or not any(f.name == p.selected for f in files):
            raise RecipeError(root / (pin.path or path),
                              f"{p.name}=={pin.version}: none of its --hash values is a file pip installs on "
                              f"this image's Python (it chose {p.selected})", line=pin.line,
                              hint="add that file's hash (`pip-compile --generate-hashes` on this Python), "
                                   "or pin another version")
        out.append(dataclasses.replace(p, files=files))
    return tuple(out)


def chain_pips(locks: Sequence[Lock]) -> dict[str, str]:
    """The pip pins of a chain of layers, name -> version."""
    return {p.name: p.version for lk in locks for p in lk.section(PipSection).packages}


class Pip(Ecosystem):
    name = "pip"
    agree_as = "pip"
    recipe_section = PipRecipe
    lock_section = PipSection

    def prepare(self, ctx: LockContext) -> None:
        if ctx.recipe.is_root and ctx.recipe.section(PipRecipe).packages:
            raise LockError(f"{ctx.recipe.path}: [pip] in a root recipe is not supported",
                            hint="put pip packages in a child recipe whose chain installs python3")

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        wanted = recipe.section(PipRecipe).packages
        if not wanted:
            return lock
        image = ctx.image(lock, "to resolve pip in it")
        ctx.progress(f"pip: resolving {len(wanted)} requirements inside the image")
        previous = ctx.previous.section(PipSection) if ctx.previous else PipSection()
        pip = lock_pip(ctx.engine(), image, recipe, ctx.store, constraints=chain_pips(ctx.ancestors),
                       previous=previous.packages, upgrade=ctx.upgrade, upgrade_packages=ctx.upgrade_packages,
                       previous_installer=previous.installer, previous_build=previous.build)
        packages = take_pinned(recipe, pip.packages)
        return lock.with_sections(PipSection(packages, pip.python, pip.installer, pip.build), epoch=pip.epoch)

    def artifacts(self, lock: Lock) -> list[Artifact]:
        return [a for p in lock.section(PipSection).with_installer() for a in p.artifacts()]

    def stage(self, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        packages = lock.section(PipSection).packages
        if not packages:
            return []
        stage_wheels(store, lock, folder / "wheels")
        wheels = [p for p in packages if p.build_requires is None]
        steps = [f"{STEP_HEADER}echo '{STEP_MARKER}pip: install {len(wheels)} packages'\n"
                 f"{install_script(lock, f'{MOUNT}/wheels')}\n"] if wheels else []
        pip = f"{MOUNT}/wheels/{_selected_file(lock.recipe, _installer(lock)).name}/pip"
        for p in sorted(packages, key=lambda p: canonicalize_name(p.name)):
            if p.build_requires is not None:
                steps.append(f"{STEP_HEADER}echo '{STEP_MARKER}pip: build {p.name} {p.version} from source'\n"
                             + build_step(canonicalize_name(p.name), p.version, _selected_file(lock.recipe, p).name,
                                          pip, f"{MOUNT}/wheels", f"{MOUNT}/{BUILD_DIR}",
                                          _build_requirements(p) if p.build_requires else None))
        return steps

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        problems: list[str] = []
        pins = {canonicalize_name(p.name): p.version for lk in (*above, lock) for p in lk.section(PipSection).packages}
        pinned = {p.name: p for p in recipe.section(PipRecipe).pinned}
        for spec in recipe.section(PipRecipe).packages:
            try:
                req = Requirement(spec)
            except InvalidRequirement:  # the recipe validator reports it; nothing to compare here
                continue
            name = canonicalize_name(req.name)
            if name not in pins:
                problems.append(f"pip package '{req.name}' is not locked")
            elif req.specifier and not req.specifier.contains(Version(pins[name]), prereleases=True):
                problems.append(f"pip package '{req.name}' is locked at {pins[name]}, which is not {req.specifier}")
        pip = lock.section(PipSection)
        for p in pip.packages:
            pin = pinned.get(canonicalize_name(p.name))
            if pin and (p.version != pin.version or not {f.sha256 for f in p.files} <= pin.sha256):
                problems.append(f"pip package '{p.name}' is locked at {p.version} with files the requirements file "
                                f"does not list ({pin.path}:{pin.line} pins {pin.version})")
        if pip.packages and pip.installer is None:
            problems.append("[pip-installer] (the pinned pip that installs [[pip]]) is missing")
        index = urlsplit(recipe.section(PipRecipe).index_url or DEFAULT_INDEX)
        for p in pip.with_installer():
            for f in p.files:
                if (why := local_reason(f.url)) and urlsplit(f.url)[:2] != index[:2]:
                    problems.append(f"pip file {f.name} is to be read from this machine ({why}), "
                                    f"which the recipe's index does not allow")
        return problems

    def failure_hint(self, output: str) -> str | None:
        """For a package built from source that failed: what its build most often lacks."""
        last = [ln for ln in output.splitlines() if ln.startswith(STEP_MARKER)]
        if not last or not last[-1].startswith(f"{STEP_MARKER}pip: build "):
            return None
        what = last[-1][len(f"{STEP_MARKER}pip: build "):].removesuffix(" from source")
        header = missing_header(output)
        missing = (f"the header {header[0]}, which Debian's {header[1]} provides" if header and header[1] else
                   f"the header {header[0]}, which a Debian -dev package provides" if header else
                   "a compiler" if re.search(r"command '[^']*(gcc|cc|g\+\+|c\+\+)' failed|"
                                             r"(gcc|cc|x86_64-linux-gnu-gcc): (not found|No such file)", output)
                   else None)
        if missing:
            return (f"pip package {what} needs {missing} to build from source: add it to [apt] packages of this "
                    "recipe or a parent (C extensions need build-essential and python3-dev), `buildsys lock`, "
                    "then build again")
        return (f"pip package {what} failed to build from its source distribution (see its output above); if a "
                "system library or compiler is missing, add its Debian package to [apt] packages, `buildsys lock`, "
                "then build again; or take it from a wheel (remove it from [pip] from-source)")

    def closure_problems(self, store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
        return pip_closure(store, chain, lock) if lock.section(PipSection).packages else []

    def components(self, lock: Lock) -> list[Component]:
        out = []
        for p in sorted(lock.section(PipSection).packages, key=lambda p: p.name):
            f = ([f for f in p.files if f.name == p.selected] or list(p.files)[:1])[0]
            purl = PackageURL("pypi", None, p.name.lower().replace("_", "-"), p.version)
            kind = "wheel" if p.build_requires is None else "sdist"
            out.append(Component(kind, p.name, p.version, purl.to_string(), f.sha256, f.url))
        return out

    def pins(self, lock: Lock) -> list[Pin]:
        return [Pin("pip", p.name, p.version, "") for p in lock.section(PipSection).packages]

    def declared_license(self, component: Component, path: Path) -> str | None:
        """A wheel's METADATA (an sdist's PKG-INFO): License-Expression, else its one exact classifier."""
        if component.kind not in ("wheel", "sdist"):
            return None
        text = _core_metadata(path)
        return licenses.from_core_metadata(text) if text else None

    def checks(self, recipe: Recipe) -> list[tuple[str, str]]:
        """Every [pip] package imports (the module its distribution installs, as the image itself says)."""
        names = []
        for spec in recipe.section(PipRecipe).packages:
            try:
                names.append(Requirement(spec).name)
            except InvalidRequirement:  # refused at recipe load already; never here
                continue
        if not names:
            return []
        return [(f"import {', '.join(names)}", shlex.join(["python3", "-c", IMPORT_CHECK, *names]))]


def pip_closure(store: Store, chain_locks: Sequence[Lock], lock: Lock) -> list[str]:
    """Dependencies of ``lock``'s vendored wheels that no lock of the chain pins ("pkg needs dep").

    The wheels' METADATA is covered by the locked sha256, unlike anything written
    in the lock; pip installs with ``--no-deps``, so without this an image would
    quietly lack a dependency. Markers are evaluated for the image's Python
    (``PipSection.python``) on Linux x86_64; a dependency met by a Debian package of
    the chain (``python3-NAME``) counts as met, since pip-compile inside the
    image saw it installed.
    """
    pins = {canonicalize_name(p.name): Version(p.version) for lk in chain_locks
            for p in lk.section(PipSection).packages}
    debs = set(chain_debs(chain_locks))
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    pip = lock.section(PipSection)
    if pip.python:
        env.update(python_version=".".join(pip.python.split(".")[:2]), python_full_version=pip.python)
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine="x86_64",
               implementation_name="cpython", platform_python_implementation="CPython")
    missing: list[str] = []
    for p in pip.packages:
        for art in p.artifacts():
            path = store.vendor_path(art.sha256)
            if not path.is_file():
                continue
            for req in _requires(path) if art.filename.endswith(".whl") else _sdist_requires(path):
                if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                    continue
                name = canonicalize_name(req.name)
                wanted = f"{req.name}{req.specifier}"
                if name in pins:
                    if not req.specifier.contains(pins[name], prereleases=True):
                        missing.append(f"{p.name} {p.version} needs '{wanted}', the chain pins {pins[name]}")
                elif f"python3-{name}" not in debs:
                    missing.append(f"{p.name} {p.version} needs '{wanted}', which no lock of the chain pins")
    return sorted(set(missing))


def _sdist_requires(sdist: Path) -> Iterable[Requirement]:
    """An sdist's ``Requires-Dist`` from its PKG-INFO when that metadata is binding (Metadata-Version 2.2 or
    later, the field not ``Dynamic``); otherwise none: the lock's resolution built its metadata instead."""
    try:
        if sdist.name.endswith(".zip") or zipfile.is_zipfile(sdist):
            with zipfile.ZipFile(sdist) as z:
                name = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith("/PKG-INFO")), None)
                text = z.read(name).decode("utf-8", errors="replace") if name else ""
        else:
            with tarfile.open(sdist) as t:
                member = next((m for m in t if m.isfile() and m.name.count("/") == 1
                               and m.name.endswith("/PKG-INFO")), None)
                fileobj = t.extractfile(member) if member else None
                text = fileobj.read().decode("utf-8", errors="replace") if fileobj else ""
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError):
        return []  # the hash check of the vendored file reports a damaged sdist
    headers = HeaderParser().parsestr(text)
    try:
        binding = Version(headers.get("Metadata-Version", "1.0")) >= Version("2.2")
    except InvalidVersion:
        binding = False
    if not binding or "requires-dist" in {d.strip().lower() for d in headers.get_all("Dynamic") or []}:
        return []
    return _parsed(headers.get_all("Requires-Dist") or [])


def _parsed(lines: Iterable[str]) -> list[Requirement]:
    reqs = []
    for line in lines:
        try:
            reqs.append(Requirement(line))
        except InvalidRequirement:
            continue
    return reqs


def _core_metadata(path: Path) -> str | None:
    """The core metadata of a wheel (``NAME.dist-info/METADATA``) or an sdist (``NAME/PKG-INFO``); None if none."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.count("/") == 1
                             and (n.endswith(".dist-info/METADATA") or n.endswith("/PKG-INFO"))), None)
                return z.read(name).decode("utf-8", errors="replace") if name else None
        with tarfile.open(path) as t:
            member = next((m for m in t if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")),
                          None)
            fileobj = t.extractfile(member) if member else None
            return fileobj.read().decode("utf-8", errors="replace") if fileobj else None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError):
        return None


def _requires(wheel: Path) -> Iterable[Requirement]:
    try:
        with zipfile.ZipFile(wheel) as z:
            meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
            if meta is None:
                return []
            headers = HeaderParser().parsestr(z.read(meta).decode("utf-8", errors="replace"))
    except (zipfile.BadZipFile, OSError):
        return []  # the hash check of the vendored file reports a damaged wheel
    return _parsed(headers.get_all("Requires-Dist") or [])


PIP = Pip()
