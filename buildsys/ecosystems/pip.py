"""Lock ``[pip]``: resolve inside the image being extended, for the Python it has.

A trixie image has Python 3.13 while the host may have 3.11, and wheels are
tagged per interpreter and platform, so resolution runs where the layer will
be installed: pip-compile inside a container of the parent chain (plus this
layer's apt packages), with network "host". The image needs only ``python3``:
pip-tools and its pure-Python dependencies, pinned below by version and sha256,
are installed once into the store's cache with the host's pip and mounted
read-only (Debian's python3 has neither pip nor ensurepip without extra
packages).

In the container, one script: probe the interpreter (version, tags), run
pip-compile (ancestors' pins as constraints, the previous lock's pins as the
existing output so they are kept), then ``pip install --dry-run --report``
over the compiled pins to learn which file pip picks for this interpreter, and
the same for the pip wheel that installs the layer at build time. On the host,
the index's JSON simple API (PEP 691, with PEP 700 sizes and upload times; the
HTML page of PEP 503 where the index has no JSON) lists every file of each
pinned version with its sha256: what ``pip-compile --generate-hashes`` would
emit (checked equal for six, markupsafe, pyyaml, jinja2, python-dateutil).
pip-compile is not asked to hash: pip-tools 7.6.2 looks for PyPI's JSON API at
``https://pypi.org/<name>/json`` (a 404), then downloads every file of every
pin to hash it (all of numpy's 72 wheels for one lock), and on an index without
that API it always does. The simple API rather than PyPI's per-release JSON
(``/pypi/<name>/<version>/json``) because every index speaks it, and because
that endpoint answered 404 through this workplace's network.

Builds install offline from the vendored wheels with that pip, run straight
from its wheel file (``python3 pip-X.whl/pip install --no-index ...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.utils
import hashlib
import html.parser
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

from packageurl import PackageURL
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, parse_tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from buildsys.core import net
from buildsys.core.errors import LockError, NotVendored, RecipeError
from buildsys.core.store import Artifact, Store, atomic_write
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems.apt_layer import chain_debs
from buildsys.ecosystems.base import MOUNT, STEP_MARKER, Component, Ecosystem, LockContext, Pin
from buildsys.engine import Engine
from buildsys.model.lockfile import Lock, LockedPip, LockedWheelFile
from buildsys.model.recipe import Recipe

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    from buildsys.engine import Engine

DEFAULT_INDEX = "https://pypi.org/simple"
# The oldest Python the pinned tools run on (click and build need 3.10; 3.11
# spares tomli and typing_extensions, which pip-tools needs below 3.11).
MIN_PYTHON = (3, 11)

# pip-tools and everything it imports, each the py3-none-any wheel on PyPI
# (name, version, sha256). Checked together: pip-tools 7.6.2's requirements
# are build, click, pip>=22.2, pyproject_hooks, setuptools, wheel (+ tomli and
# typing_extensions below Python 3.11); build and wheel need packaging.
# Verified with Debian bookworm's Python 3.11.2 and trixie's 3.13.5.
TOOLS: tuple[tuple[str, str, str], ...] = (
    ("build", "1.6.1", "ecd351a4be9d35a9eaaba244a7687143c9c7d4aea6ac964e7e7ddab20cbcf4e7"),
    ("click", "8.5.1", "8bb5376d2006950386f8c6427613334a2acadc5f559cb80e638d00b4df957e37"),
    ("packaging", "26.3", "d7193f7c8e4e93f444fde0262bf90af30e16fa0ad0ad44cb553c87339b23cd1c"),
    ("pip", "26.3", "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"),
    ("pip-tools", "7.6.2", "f37eb4b736859c2c30230e50977312c61918b7ef931071ff7811fd067715c25f"),
    ("pyproject-hooks", "1.3.3", "5fc53fdac9f7bd63fbcdc868fb5f90b4784d78a53a3d3388cd738b807441a20b"),
    ("setuptools", "84.2.1", "ca140b45d5325a9478f880e351484f62fef15f336462e449ca0c03c873d589c2"),
    ("wheel", "0.48.0", "3217dcc807155e45db462d7ef2431f5ddda0d7273b700d05a67b271ceb1287ab"),
)

TOOLS_MOUNT = "/buildsys-tools"
WORK_MOUNT = "/work"
CA_MOUNT = "/buildsys-ca.pem"
WHEELS_DIR = "/buildsys/wheels"
REQUIREMENTS = "requirements.txt"  # written by stage_wheels beside the wheels

_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# Exit statuses of the lock script, one per stage.
_NO_PYTHON, _PROBE, _COMPILE, _SELECT, _INSTALLER = 80, 81, 82, 83, 84


@dataclass(frozen=True)
class PipLock:
    python: str  # the image's Python, "X.Y.Z"
    packages: tuple[LockedPip, ...]  # this layer's pins, without those its ancestors already install
    installer: LockedPip  # the pip wheel that installs them at build time
    epoch: int  # newest upload time among the selected files (installer included)


# --- errors ---------------------------------------------------------------------------------------------------------


class PythonMissing(LockError):
    def __init__(self, recipe: str, image: str) -> None:
        self.recipe, self.image = recipe, image
        super().__init__(
            f"{recipe}: [pip] needs python3 in the image, and the image of the parent chain has no python3 ({image})",
            'add python3 to [apt] packages of this recipe or an ancestor (packages = ["python3"])',
        )


class PythonTooOld(LockError):
    def __init__(self, recipe: str, version: str) -> None:
        self.recipe, self.version = recipe, version
        need = ".".join(map(str, MIN_PYTHON))
        super().__init__(
            f"{recipe}: the image's Python is {version}; locking [pip] needs Python {need} or newer in the image",
            "build on a newer Debian suite (bookworm has 3.11, trixie 3.13)",
        )


class NoDistribution(LockError):
    """pip found no release of a requirement on the index (unknown name, or no version matches)."""

    def __init__(self, recipe: str, requirement: str, index: str, versions: str, python: str, detail: str) -> None:
        self.recipe, self.requirement, self.index, self.versions = recipe, requirement, index, versions
        name = _req_name(requirement)
        listed = [v.strip() for v in versions.split(",") if v.strip() and v.strip() != "none"]
        if "require a different python version" in detail:
            what = f"no release of '{name}' on {index} that satisfies {requirement} supports Python {python}"
            hint = "pin a release that supports this Python, or build on a Debian suite with another Python"
        elif not listed:
            what = f"no distribution named '{name}' on {index}"
            hint = f"check the name in [pip] packages (is it on {index}?) and that the index is reachable"
        else:
            what = f"no version of '{name}' on {index} satisfies {requirement} (Python {python})"
            shown = ", ".join(listed[-10:]) + (f" (and {len(listed) - 10} older)" if len(listed) > 10 else "")
            hint = f"versions there: {shown}; loosen the requirement in [pip] packages"
        super().__init__(f"{recipe}: pip: {what}" + _quote(detail), hint)


class ConflictingPins(LockError):
    def __init__(self, recipe: str, causes: Sequence[str], ancestors: Mapping[str, str], detail: str) -> None:
        self.recipe, self.causes, self.ancestors = recipe, tuple(causes), dict(ancestors)
        lines = [*causes, *(f"{n}=={v} (pinned by an ancestor layer)" for n, v in sorted(ancestors.items()))]
        body = "".join(f"\n  {ln}" for ln in lines)
        hint = "change [pip] packages so the requirements agree"
        if ancestors:
            hint += ("; an ancestor's pin stays as its lock has it (a layer cannot reinstall what its parents "
                     "installed): loosen this recipe's requirement, or relock the ancestor with "
                     f"`buildsys lock --upgrade-package {sorted(ancestors)[0]} <ancestor>`")
        super().__init__(f"{recipe}: pip: the requirements conflict:{body}" + _quote(detail), hint)


class ConstraintConflict(LockError):
    def __init__(self, recipe: str, package: str, ancestor: str, resolved: str) -> None:
        self.recipe, self.package, self.ancestor_version, self.resolved = recipe, package, ancestor, resolved
        super().__init__(
            f"{recipe}: pip resolved {package}=={resolved}, but an ancestor layer pins {package}=={ancestor}",
            f"make [pip] packages accept {package}=={ancestor}, or relock the ancestor",
        )


class NoWheel(LockError):
    """A pin has no wheel that the image's interpreter accepts; building sdists is not supported."""

    def __init__(self, recipe: str, missing: Sequence[tuple[str, str, Sequence[str]]], python: str,
                 tags: Sequence[str]) -> None:
        self.recipe, self.missing, self.python, self.tags = recipe, tuple(missing), python, tuple(tags)
        lines = []
        for name, version, files in missing:
            shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
            lines.append(f"\n  {name}=={version}: " + (f"published files: {shown}" if files else "no files"))
        accepted = ", ".join(tags[:3]) + (f", ... {tags[-1]} ({len(tags)} tags)" if len(tags) > 3 else "")
        super().__init__(
            f"{recipe}: pip: no wheel for the image's Python {python} (accepted tags: {accepted}):" + "".join(lines),
            "pin a version that publishes a wheel for this Python and platform (e.g. 'name<X' in [pip] packages), "
            "or install it from Debian ([apt] python3-<name>) in this recipe or an ancestor; "
            "building source distributions is not supported in this version",
        )


class PipToolFailed(LockError):
    """pip or pip-tools failed in a way not recognised above: shows its last lines."""

    def __init__(self, recipe: str, what: str, output: str, hint: str | None = None) -> None:
        self.recipe, self.output = recipe, output
        tail = "\n".join(f"  | {ln}" for ln in _relevant(output)[-25:])
        super().__init__(f"{recipe}: {what} failed" + (f":\n{tail}" if tail else ""),
                         hint or "check [pip] packages and index-url, and that the index is reachable")


class IndexUnreachable(LockError):
    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot read {url}: {reason}", "check [pip] index-url and the network, then lock again")


def _quote(detail: str) -> str:
    """pip's own words: its ERROR and WARNING lines and the final exception, not the traceback."""
    lines = [s for s in _relevant(detail) if s.startswith(("ERROR", "WARNING", "Ignored", "pip._internal.exc"))]
    return ("\n  --- pip said ---\n" + "\n".join(f"  | {ln}" for ln in lines[-8:])) if lines else ""


def _relevant(output: str) -> list[str]:
    """pip-tools prints pip's traceback after its message; keep the words, drop the frames."""
    keep = []
    for ln in output.splitlines():
        s = ln.strip()
        if (not s or s.startswith(("File \"", "Traceback", "The above exception", "^", "~", "!!"))
                or (ln.startswith("    ") and not s.startswith(("ERROR", "WARNING")))):
            continue
        keep.append(s)
    return keep


# --- the tools ------------------------------------------------------------------------------------------------------


def _tools_requirements() -> str:
    return "".join(f"{n}=={v} --hash=sha256:{h}\n" for n, v, h in TOOLS)


def host_pip_env() -> dict[str, str]:
    """The host's environment without any PIP_* setting, and no pip configuration file."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def tools_dir(store: Store) -> Path:
    """pip-tools and its dependencies, installed once per pin set under the store's cache.

    Installed with the host's pip into a temporary folder beside the final one,
    then renamed: a folder under its final name is always complete.
    """
    reqs = _tools_requirements()
    key = hashlib.sha256(reqs.encode()).hexdigest()[:16]
    final = store.cache / "pip-tools" / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}."))
    try:
        target = tmp / "lib"
        req_file = tmp / "requirements.txt"
        req_file.write_text(reqs)
        argv = [sys.executable, "-m", "pip", "install", "--target", str(target), "--only-binary=:all:", "--no-deps",
                "--require-hashes", "--no-cache-dir", "--index-url", DEFAULT_INDEX, "--quiet", "-r", str(req_file)]
        proc = subprocess.run(argv, env=host_pip_env(), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PipToolFailed("pip-tools", f"installing pip-tools into {final.parent} with the host's pip",
                                proc.stdout + proc.stderr, hint=f"check that {DEFAULT_INDEX} is reachable from here")
        try:
            os.rename(target, final)
        except OSError:
            if not final.is_dir():  # not another process that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- locking --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pin:
    name: str  # canonical
    version: str


@dataclass(frozen=True)
class _IndexFile:
    name: str
    url: str
    sha256: str
    size: int | None
    uploaded: int | None  # seconds since the epoch


@dataclass(frozen=True)
class _Resolved:
    """What the lock container found."""

    python: str
    pins: list[_Pin]  # pip-compile's output, ancestors' pins included
    selected: dict[str, tuple[str, str]]  # name -> (url, sha256) of the file pip installs
    installer: tuple[str, str]  # (url, sha256) of the pip wheel


def lock_pip(engine: Engine, image: str, recipe: Recipe, store: Store, *, constraints: Mapping[str, str],
             previous: Sequence[LockedPip], upgrade: bool, upgrade_packages: Sequence[str],
             previous_installer: LockedPip | None = None) -> PipLock:
    """Resolve ``recipe.pip_packages`` for the Python of ``image`` (which must have python3).

    ``constraints`` are the ancestors' pins (name -> version): they bound the
    resolution and are left out of the result. ``previous`` pins are kept
    unless ``upgrade`` or named in ``upgrade_packages``; so is
    ``previous_installer`` (the pip that installs at build time), otherwise
    the newest pip that supports the image's Python is taken.
    """
    _check_requirements(recipe)
    index = (recipe.pip_index_url or DEFAULT_INDEX).rstrip("/")
    ancestors = {_canon(n): v for n, v in constraints.items()}
    moving = sorted({_canon(n) for n in upgrade_packages})
    kept = [p for p in previous if _canon(p.name) not in ancestors] if not upgrade else []
    keep_installer = previous_installer if not upgrade and "pip" not in moving else None
    found = _resolve_in_image(engine, image, recipe, store, index, ancestors, kept, upgrade, moving, keep_installer)

    for pin in found.pins:
        if pin.name in ancestors and not _same_version(pin.version, ancestors[pin.name]):
            raise ConstraintConflict(recipe.name, pin.name, ancestors[pin.name], pin.version)
    own = [p for p in found.pins if p.name not in ancestors]
    files = _index_files_many(index, sorted({p.name for p in own} | {"pip"}))
    before = {_canon(p.name): p for p in kept}
    packages, epochs = [], []
    for pin in own:
        url, sha = found.selected[pin.name]
        locked, uploaded = _locked(pin.name, pin.version, url, sha, files[pin.name], before.get(pin.name))
        packages.append(locked)
        epochs.append(uploaded)
    # The installer is one wheel: no other file of its release can run as pip at build time.
    url, sha = found.installer
    installer, uploaded = _locked("pip", _version_from_wheel(url), url, sha, files["pip"], None, only_selected=True)
    epochs.append(uploaded)
    return PipLock(python=found.python, packages=tuple(sorted(packages, key=lambda p: p.name)), installer=installer,
                   epoch=max((e for e in epochs if e is not None), default=0))


def _check_requirements(recipe: Recipe) -> None:
    """Each entry is one PEP 508 requirement on a project of the index: no pip options, no URLs."""
    for i, text in enumerate(recipe.pip_packages):
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
                      upgrade_packages: Sequence[str], installer: LockedPip | None) -> _Resolved:
    """One container of ``image``: probe, pip-compile, then pip's choice of files; failures explained."""
    tools = tools_dir(store)
    with store.scratch("pip-lock") as scratch:
        work = Path(scratch)
        (work / "in.txt").write_text("".join(f"{r}\n" for r in recipe.pip_packages))
        (work / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(ancestors.items())))
        (work / "out.txt").write_text(_existing_output(previous))
        (work / "probe.py").write_text(_PROBE_PY)
        (work / "lock.sh").write_text(_script(index, upgrade, upgrade_packages,
                                              installer.version if installer else None))
        mounts = [(str(tools), TOOLS_MOUNT, True), (str(work), WORK_MOUNT, False)]
        env = {"PYTHONPATH": TOOLS_MOUNT, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "HOME": "/tmp", **{k: v for k in _PROXY_VARS if (v := os.environ.get(k))}}
        ca = host_ca_bundle()
        if ca:
            mounts.append((str(ca), CA_MOUNT, True))
            env.update(PIP_CERT=CA_MOUNT, SSL_CERT_FILE=CA_MOUNT)
        result = engine.run(image, [f"{WORK_MOUNT}/lock.sh"], entrypoint=["/bin/sh"], network="host", user="0:0",
                            env=env, mounts=mounts, workdir=WORK_MOUNT)
        logs = {n: _read(work / f"{n}.log") for n in ("probe", "compile", "select", "installer")}
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
        if code != 0:
            raise PipToolFailed(recipe.name, f"locking [pip] in {image} (exit status {code})",
                                result.output + "\n" + logs["probe"])
        selected = _read_report(recipe, work / "report.json")
        pip = _read_report(recipe, work / "installer.json")
    missing = [p for p in pins if p.name not in selected]
    if missing or set(pip) != {"pip"}:
        what = (f"finding the file pip installs for {missing[0].name}=={missing[0].version}" if missing
                else "choosing the pip that installs [pip] packages")
        raise PipToolFailed(recipe.name, what, logs["select"] if missing else logs["installer"])
    return _Resolved(python=python, pins=pins, selected=selected, installer=pip["pip"])


def _existing_output(previous: Sequence[LockedPip]) -> str:
    """The previous pins as pip-compile's own output, so that it keeps them."""
    return "".join(f"{_canon(p.name)}=={p.version}\n" for p in sorted(previous, key=lambda p: _canon(p.name)))


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


def _script(index: str, upgrade: bool, upgrade_packages: Sequence[str], installer_version: str | None) -> str:
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
        f"command -v python3 >/dev/null 2>&1 || exit {_NO_PYTHON}",
        f"python3 {WORK_MOUNT}/probe.py >{WORK_MOUNT}/probe.log 2>&1 || exit {_PROBE}",
        f"python3 -m piptools compile {shlex.join(compile_args)} >{WORK_MOUNT}/compile.log 2>&1 || exit {_COMPILE}",
        # (an empty [pip] list compiles to nothing, and then there is nothing to choose)
        f"if grep -q '==' {WORK_MOUNT}/out.txt; then",
        f"  {dry} --report {WORK_MOUNT}/report.json -r {WORK_MOUNT}/out.txt >{WORK_MOUNT}/select.log 2>&1 "
        f"|| exit {_SELECT}",
        f"else echo '{{\"install\": []}}' >{WORK_MOUNT}/report.json; fi",
        # The kept installer, or (when it no longer supports this Python) the newest one.
        f"{dry} --report {WORK_MOUNT}/installer.json {pip_pin} >{WORK_MOUNT}/installer.log 2>&1 "
        f"|| {dry} --report {WORK_MOUNT}/installer.json pip >>{WORK_MOUNT}/installer.log 2>&1 || exit {_INSTALLER}",
        "",
    ])


def host_ca_bundle() -> Path | None:
    """The CA bundle the host trusts, so the container trusts the same (e.g. a TLS-inspecting proxy's CA)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), os.environ.get("REQUESTS_CA_BUNDLE"), paths.cafile,
                      paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


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
        pins.append(_Pin(_canon(m[1]), m[2]))
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
        out[_canon(item["metadata"]["name"])] = (info.get("url", ""), sha.lower())
    return out


def _canon(name: str) -> str:
    return str(canonicalize_name(name))


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _req_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return m[1] if m else requirement


# "Could not find a version that satisfies the requirement six==9 (from versions: 1.0, 1.1)"
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
        names = {_canon(_req_name(c)) for c in causes}
        names |= {n for n in ancestors if re.search(rf"\b{re.escape(n)}\b", log, re.IGNORECASE)}
        return ConflictingPins(recipe.name, causes, {n: v for n, v in ancestors.items() if n in names}, log)
    return PipToolFailed(recipe.name, f"pip-compile of [pip] packages for Python {python}", log)


def _recipe_req(recipe: Recipe, line: int) -> str:
    return recipe.pip_packages[line - 1] if 0 < line <= len(recipe.pip_packages) else f"[pip] packages[{line - 1}]"


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
        files = _index_files_many(index, sorted({p.name for p in pins}))
    except LockError:
        return PipToolFailed(recipe.name, f"choosing wheels for Python {python}", log)
    missing = []
    for pin in pins:
        own = _release_files(files.get(pin.name, {}), pin.name, pin.version).values()
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


def _release_files(listed: Mapping[str, _IndexFile], name: str, version: str) -> dict[str, _IndexFile]:
    """The files of one release among a project's files (wheels and sdists, by their names)."""
    try:
        wanted = Version(version)
    except InvalidVersion:
        return {}
    out = {}
    for sha, f in listed.items():
        try:
            n, v = parse_wheel_filename(f.name)[:2] if f.name.endswith(".whl") else parse_sdist_filename(f.name)
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            continue
        if n == _canon(name) and v == wanted:
            out[sha] = f
    return out


def _locked(name: str, version: str, url: str, sha: str, listed: Mapping[str, _IndexFile],
            previous: LockedPip | None, only_selected: bool = False) -> tuple[LockedPip, int | None]:
    """The pin with every file of its release, and the upload time of the selected one.

    A pin kept from the previous lock keeps the files it had (as pip-compile
    reuses existing hashes), so wheels uploaded later for an old release do not
    change a lock that nothing else changed.
    """
    release = _release_files(listed, name, version)
    chosen = release.get(sha) or listed.get(sha)
    if chosen is None or chosen.size is None or chosen.uploaded is None:
        # An index that does not list this file with its hash, size or upload time: ask the file itself.
        head = _head(chosen.url if chosen else url, sha)
        chosen = _IndexFile(chosen.name if chosen else head.name, head.url, sha,
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


# --- the index, from the host ---------------------------------------------------------------------------------------


def _index_files_many(index: str, projects: Sequence[str]) -> dict[str, dict[str, _IndexFile]]:
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="pip-index") as pool:
        return dict(zip(projects, pool.map(lambda p: index_files(index, p), projects), strict=True))


def index_files(index: str, project: str) -> dict[str, _IndexFile]:
    """Every file of a project on a simple index, by sha256: the JSON API (PEP 691, sizes and
    upload times of PEP 700) where the index speaks it, else the HTML page (PEP 503)."""
    url = f"{index.rstrip('/')}/{_canon(project)}/"
    body, ctype, final = _http_get(url, f"{_SIMPLE_JSON}, text/html;q=0.1")
    out: dict[str, _IndexFile] = {}
    if ctype.startswith(_SIMPLE_JSON) or ctype.startswith("application/json"):
        for f in json.loads(body).get("files", []):
            sha = (f.get("hashes") or {}).get("sha256")
            if not sha:
                continue
            size = f.get("size")
            out[sha.lower()] = _IndexFile(f["filename"], urljoin(final, f["url"]), sha.lower(),
                                          int(size) if isinstance(size, int) else None, _iso_time(f.get("upload-time")))
        return out
    parser = _Anchors()
    parser.feed(body.decode(errors="replace"))
    for href, text in parser.links:
        link = urljoin(final, href)
        base, _, frag = link.partition("#")
        if frag.startswith("sha256="):
            sha = frag.removeprefix("sha256=").lower()
            name = text.strip() or unquote(urlsplit(base).path.rsplit("/", 1)[-1])
            out[sha] = _IndexFile(name, base, sha, None, None)
    return out


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text)))
            self._href = None


def _iso_time(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _head(url: str, sha: str) -> _IndexFile:
    """Size and Last-Modified of one file, for indexes that do not list them."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    size = uploaded = None
    with contextlib.suppress(IndexUnreachable):
        _, _, _, headers = _request(url, method="HEAD")
        if headers.get("Content-Length", "").isdigit():
            size = int(headers["Content-Length"])
        if headers.get("Last-Modified"):
            with contextlib.suppress(TypeError, ValueError):
                uploaded = int(email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp())
    return _IndexFile(name, url.split("#", 1)[0], sha, size, uploaded)


def _http_get(url: str, accept: str) -> tuple[bytes, str, str]:
    body, ctype, final, _ = _request(url, accept=accept)
    return body, ctype, final


def _request(url: str, *, accept: str = "*/*", method: str = "GET",
             tries: int = 3) -> tuple[bytes, str, str, Mapping[str, str]]:
    # Through the one client: the policy on every redirect (a remote index may not lead to this
    # machine), a deadline, a bounded page; an index on this machine by the recipe's intent may stay here.
    policy = net.Policy(local_ok=local_reason(url) is not None)
    try:
        with net.Client(policy, attempts=tries) as client, \
                client.send(method, url, headers={"Accept": accept}) as resp:
            if resp.status_code >= 400:
                raise IndexUnreachable(url, f"HTTP {resp.status_code}")
            body = resp.read(net.MAX_INDEX, "the index page") if method == "GET" else b""
            return body, resp.headers.get("Content-Type", ""), resp.url, dict(resp.headers)
    except net.NetError as e:
        raise IndexUnreachable(url, e.problem) from e


# --- build time -----------------------------------------------------------------------------------------------------


def _selected_file(recipe: str, pin: LockedPip) -> LockedWheelFile:
    chosen = [f for f in pin.files if f.name == pin.selected] if pin.selected else list(pin.files)
    if len(chosen) != 1:
        raise LockError(f"{recipe}: the lock names no single file to install for {pin.name}=={pin.version}",
                        f"relock: `buildsys lock {recipe}`")
    f = chosen[0]
    if "/" in f.name or f.name in (".", "..", REQUIREMENTS) or not f.name.endswith(".whl"):
        raise LockError(f"{recipe}: the lock's file name for {pin.name} is not a wheel's: {f.name!r}",
                        f"relock: `buildsys lock {recipe}`")
    return f


def _installer(lock: Lock) -> LockedPip:
    if lock.pip_installer is None:
        raise LockError(f"{lock.recipe}: the lock pins [[pip]] packages but no pip to install them with",
                        f"relock: `buildsys lock {lock.recipe}`")
    return lock.pip_installer


def stage_wheels(store: Store, lock: Lock, dest: Path) -> None:
    """Link the selected wheels and the installer into ``dest`` under their own names, with
    ``requirements.txt`` pinning each to its sha256 (what ``install_script`` installs)."""
    if not lock.pip:
        return
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for pin in [*sorted(lock.pip, key=lambda p: p.name), _installer(lock)]:
        f = _selected_file(lock.recipe, pin)
        src = store.vendor_path(f.sha256)
        if not src.is_file() or (f.size is not None and src.stat().st_size != f.size):
            raise NotVendored(lock.recipe, f"pip wheel {f.name} ({pin.name} {pin.version})")
        target = dest / f.name
        target.unlink(missing_ok=True)
        try:
            os.link(src, target)
        except OSError:  # another file system
            shutil.copyfile(src, target)
        if pin is not lock.pip_installer:
            lines.append(f"{pin.name}=={pin.version} --hash=sha256:{f.sha256}\n")
    atomic_write(dest / REQUIREMENTS, "".join(lines).encode())


def install_script(lock: Lock, wheels_dir_in_container: str = WHEELS_DIR) -> str:
    """One sh command that installs the staged wheels with no network; "" when there is nothing to install.

    ``--break-system-packages``: Debian marks its python EXTERNALLY-MANAGED (PEP
    668); pip then installs into /usr/local/lib/python3.X/dist-packages, beside
    (never over) what dpkg owns. ``--isolated`` and ``PIP_CONFIG_FILE=/dev/null``:
    no PIP_* variable of the image and no pip.conf may change what is installed.
    """
    if not lock.pip:
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


def chain_pips(locks: Sequence[Lock]) -> dict[str, str]:
    """The pip pins of a chain of layers, name -> version."""
    return {p.name: p.version for lk in locks for p in lk.pip}


class Pip(Ecosystem):
    name = "pip"
    agree_as = "pip"

    def prepare(self, ctx: LockContext) -> None:
        if ctx.recipe.is_root and ctx.recipe.pip_packages:
            raise LockError(f"{ctx.recipe.path}: [pip] in a root recipe is not supported",
                            hint="put pip packages in a child recipe whose chain installs python3")

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        if not recipe.pip_packages:
            return lock
        image = ctx.image(lock, "to resolve pip in it")
        ctx.progress(f"pip: resolving {len(recipe.pip_packages)} requirements inside the image")
        previous = ctx.previous
        pip = lock_pip(ctx.engine(), image, recipe, ctx.store, constraints=chain_pips(ctx.ancestors),
                       previous=previous.pip if previous else (), upgrade=ctx.upgrade,
                       upgrade_packages=ctx.upgrade_packages,
                       previous_installer=previous.pip_installer if previous else None)
        return dataclasses.replace(lock, pip=pip.packages, python=pip.python, pip_installer=pip.installer,
                                   source_date_epoch=max(lock.source_date_epoch, pip.epoch))

    def artifacts(self, lock: Lock) -> list[Artifact]:
        return [a for p in (*lock.pip, *([lock.pip_installer] if lock.pip_installer else [])) for a in p.artifacts()]

    def stage(self, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        if not lock.pip:
            return []
        stage_wheels(store, lock, folder / "wheels")
        return [f"echo '{STEP_MARKER}pip: install {len(lock.pip)} packages'", install_script(lock, f"{MOUNT}/wheels")]

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        problems: list[str] = []
        pins = {canonicalize_name(p.name): p.version for lk in (*above, lock) for p in lk.pip}
        for spec in recipe.pip_packages:
            try:
                req = Requirement(spec)
            except InvalidRequirement:  # the recipe validator reports it; nothing to compare here
                continue
            name = canonicalize_name(req.name)
            if name not in pins:
                problems.append(f"pip package '{req.name}' is not locked")
            elif req.specifier and not req.specifier.contains(Version(pins[name]), prereleases=True):
                problems.append(f"pip package '{req.name}' is locked at {pins[name]}, which is not {req.specifier}")
        if lock.pip and lock.pip_installer is None:
            problems.append("[pip-installer] (the pinned pip that installs [[pip]]) is missing")
        index = urlsplit(recipe.pip_index_url or DEFAULT_INDEX)
        for p in (*lock.pip, *([lock.pip_installer] if lock.pip_installer else [])):
            for f in p.files:
                if (why := local_reason(f.url)) and urlsplit(f.url)[:2] != index[:2]:
                    problems.append(f"pip file {f.name} is to be read from this machine ({why}), "
                                    f"which the recipe's index does not allow")
        return problems

    def closure_problems(self, store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
        return pip_closure(store, chain, lock) if lock.pip else []

    def components(self, lock: Lock) -> list[Component]:
        out = []
        for p in sorted(lock.pip, key=lambda p: p.name):
            f = ([f for f in p.files if f.name == p.selected] or list(p.files)[:1])[0]
            purl = PackageURL("pypi", None, p.name.lower().replace("_", "-"), p.version)
            out.append(Component("wheel", p.name, p.version, purl.to_string(), f.sha256, f.url))
        return out

    def pins(self, lock: Lock) -> list[Pin]:
        return [Pin("pip", p.name, p.version, "") for p in lock.pip]

    def checks(self, recipe: Recipe) -> list[tuple[str, str]]:
        """Every [pip] package imports (the module its distribution installs, as the image itself says)."""
        names = []
        for spec in recipe.pip_packages:
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
    (``lock.python``) on Linux x86_64; a dependency met by a Debian package of
    the chain (``python3-NAME``) counts as met, since pip-compile inside the
    image saw it installed.
    """
    pins = {canonicalize_name(p.name): Version(p.version) for lk in chain_locks for p in lk.pip}
    debs = set(chain_debs(chain_locks))
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    if lock.python:
        env.update(python_version=".".join(lock.python.split(".")[:2]), python_full_version=lock.python)
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine="x86_64",
               implementation_name="cpython", platform_python_implementation="CPython")
    missing: list[str] = []
    for p in lock.pip:
        for art in p.artifacts():
            path = store.vendor_path(art.sha256)
            if not path.is_file() or not art.filename.endswith(".whl"):
                continue
            for req in _requires(path):
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


def _requires(wheel: Path) -> Iterable[Requirement]:
    try:
        with zipfile.ZipFile(wheel) as z:
            meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
            if meta is None:
                return []
            headers = HeaderParser().parsestr(z.read(meta).decode("utf-8", errors="replace"))
    except (zipfile.BadZipFile, OSError):
        return []  # the hash check of the vendored file reports a damaged wheel
    reqs = []
    for line in headers.get_all("Requires-Dist") or []:
        try:
            reqs.append(Requirement(line))
        except InvalidRequirement:
            continue
    return reqs


PIP = Pip()
