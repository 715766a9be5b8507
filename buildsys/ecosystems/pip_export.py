"""A chain's locked ``[pip]`` packages in the formats other tools read: PEP 751 ``pylock.toml``, requirements.txt.

The chain's, not only the recipe's own layer: what a laptop or CI needs to get
the image's Python environment is every distribution of the image, the
ancestors' first (a name is locked once per chain: parents must agree).
Every acceptable file of a pin is listed with its sha256, as the lock has them;
the pip that installs the layer at build time (``[pip-installer]``) and the
build requirements of ``from-source`` packages are not packages of the
environment and are left out. Both outputs are deterministic (sorted by name).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from packaging.utils import canonicalize_name

from buildsys.ecosystems.pip import PipSection
from buildsys.ecosystems.pip_resolve import LockedPip, LockedWheelFile
from buildsys.ecosystems.pip_source import is_sdist
from buildsys.model.lockfile import Lock

FORMATS = ("pylock", "requirements")


def chain_packages(chain: Sequence[Lock]) -> list[LockedPip]:
    """Every [pip] pin of the chain's locks, by canonical name (a name is pinned once per chain)."""
    pins: dict[str, LockedPip] = {}
    for lock in chain:
        for p in lock.section(PipSection).packages:
            pins.setdefault(str(canonicalize_name(p.name)), p)
    return [pins[n] for n in sorted(pins)]


def _python(chain: Sequence[Lock]) -> str | None:
    return next((lk.section(PipSection).python for lk in reversed(chain) if lk.section(PipSection).python), None)


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _file(f: LockedWheelFile) -> str:
    size = f", size = {f.size}" if f.size is not None else ""
    return f"name = {_q(f.name)}, url = {_q(f.url)}{size}, hashes = {{ sha256 = {_q(f.sha256)} }}"


def pylock(chain: Sequence[Lock], recipe: str) -> str:
    """PEP 751 ``pylock.toml`` (lock-version 1.0) of the chain's [pip] packages."""
    out = ['lock-version = "1.0"', f'created-by = {_q("buildsys")}']
    python = _python(chain)
    if python:
        major_minor = ".".join(python.split(".")[:2])
        out.append(f'requires-python = {_q("==" + major_minor + ".*")}')
        marker = f"python_version == {_q(major_minor)} and sys_platform == 'linux'"
        out.append(f"environments = [{_q(marker)}]")
    out.append(f"# The [pip] packages of the image of recipe {recipe}, as its locks pin them.")
    for p in chain_packages(chain):
        out += ["", "[[packages]]", f"name = {_q(p.name)}", f"version = {_q(p.version)}"]
        wheels = [f for f in p.files if not is_sdist(f.name)]
        sdists = [f for f in p.files if is_sdist(f.name)]
        if sdists:
            out.append(f"sdist = {{ {_file(sorted(sdists, key=lambda f: f.name)[0])} }}")
        if wheels:
            out.append("wheels = [\n" + "".join(f"    {{ {_file(f)} }},\n"
                                                for f in sorted(wheels, key=lambda f: f.name)) + "]")
    return "\n".join(out) + "\n"


def requirements(chain: Sequence[Lock], recipe: str) -> str:
    """A hashed requirements.txt (pip's hash-checking mode) of the chain's [pip] packages."""
    lines = [f"# The [pip] packages of the image of recipe {recipe}, as its locks pin them.",
             "# pip install --require-hashes --no-deps -r THIS_FILE"]
    for p in chain_packages(chain):
        hashes = "".join(f" \\\n    --hash=sha256:{f.sha256}" for f in sorted(p.files, key=lambda f: f.sha256))
        lines.append(f"{p.name}=={p.version}{hashes}")
    return "\n".join(lines) + "\n"


def export(fmt: str, chain: Sequence[Lock], recipe: str) -> str:
    return pylock(chain, recipe) if fmt == "pylock" else requirements(chain, recipe)
