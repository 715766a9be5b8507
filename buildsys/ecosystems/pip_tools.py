"""pip-tools for locking ``[pip]``, installed on the host and mounted into the image.

The image needs only ``python3``: pip-tools and its pure-Python dependencies,
pinned below by version and sha256, are installed once into the store's cache
with the host's pip and mounted read-only (Debian's python3 has neither pip nor
ensurepip without extra packages).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from buildsys.core.errors import LockError
from buildsys.core.store import Store
from buildsys.ecosystems.pypi import DEFAULT_INDEX

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


class PipToolFailed(LockError):
    """pip or pip-tools failed in a way not recognised by pip_errors: shows its last lines."""

    def __init__(self, recipe: str, what: str, output: str, hint: str | None = None) -> None:
        self.recipe, self.output = recipe, output
        tail = "\n".join(f"  | {ln}" for ln in relevant_lines(output)[-25:])
        super().__init__(f"{recipe}: {what} failed" + (f":\n{tail}" if tail else ""),
                         hint or "check [pip] packages and index-url, and that the index is reachable")


def relevant_lines(output: str) -> list[str]:
    """pip-tools prints pip's traceback after its message; keep the words, drop the frames."""
    keep = []
    for ln in output.splitlines():
        s = ln.strip()
        if (not s or s.startswith(("File \"", "Traceback", "The above exception", "^", "~", "!!"))
                or (ln.startswith("    ") and not s.startswith(("ERROR", "WARNING")))):
            continue
        keep.append(s)
    return keep


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


def host_ca_bundle() -> Path | None:
    """The CA bundle the host trusts, so the container trusts the same (e.g. a TLS-inspecting proxy's CA)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), os.environ.get("REQUESTS_CA_BUNDLE"), paths.cafile,
                      paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None
