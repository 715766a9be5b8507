"""The build side of ``[cran]``: the install steps, the staged tarballs and Makevars, the closure
re-read from the tarballs, and the hint for a failed compile (docs/reproducibility.md, "R packages").
"""

from __future__ import annotations

import datetime
import re
import shlex
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.core.dcf import parse_dcf
from buildsys.core.errors import NotVendored
from buildsys.core.store import Store
from buildsys.ecosystems.apt_layer import chain_debs
from buildsys.ecosystems.base import STEP_HEADER, STEP_MARKER, missing_header
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.lockfile import Lock

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    pass
from buildsys.ecosystems.cran_index import (
    BUILD_DIR,
    DEP_FIELDS,
    SITE_LIBRARY,
    CranSection,
    Dependency,
    LockedCran,
    install_order,
    parse_deps,
)

_NOT_PINNED = "not what the lock pins"


def install_steps(packages: Sequence[LockedCran], repo: str, mount: str, epoch: int) -> list[str]:
    """The build steps that install the vendored tarballs in dependency order, reproducibly: one per package.

    Each source and its fix is in docs/reproducibility.md ("R packages"). Each package is its own
    step, so R CMD INSTALL of each runs in a fresh PID namespace and sees the same process IDs on
    every build (cli records the PID of the R that installed it). A tarball whose DESCRIPTION is
    another package or version than the lock pins (its sha256 vouches for the bytes, not for what
    they claim) is refused before R installs it, and what R installed is read back.
    """
    built = shlex.quote(_utc(epoch))
    env = "\n".join([
        f"mkdir -p {SITE_LIBRARY} {BUILD_DIR}",
        # Compiler flags: Debian's R Makeconf already maps its own build path; map ours, and
        # keep -g (debug info is then path-free and the same every time).
        f"export R_MAKEVARS_USER={mount}/cran/Makevars",
        "export R_LIBS_USER=/nonexistent R_LIBS=",
        "export R_INSTALL_STAGED=false",
        # NAME VERSION FILE WHAT: FILE's Package and Version are exactly the pinned ones, or the build stops.
        "buildsys_cran_is() { "
        "p=$(sed -n 's/^Package:[[:space:]]*//p' \"$3\" 2>/dev/null | head -n1 | tr -d '[:space:]'); "
        "v=$(sed -n 's/^Version:[[:space:]]*//p' \"$3\" 2>/dev/null | head -n1 | tr -d '[:space:]'); "
        "[ \"$p\" = \"$1\" ] && [ \"$v\" = \"$2\" ] || { echo \"R package $1 $2: $4 is ${p:-?} ${v:-?}, "
        f"{_NOT_PINNED}\"; exit 1; }}; }}",
    ])
    steps = []
    for p in install_order(packages):
        tar = f"{mount}/cran/{p.name}_{p.version}.tar.gz"
        steps.append(STEP_HEADER + "\n".join([
            f"echo '{STEP_MARKER}cran: install {p.name} {p.version}'",
            env,
            f"rm -rf {BUILD_DIR}/{p.name} && tar -xzf {tar} -C {BUILD_DIR} --no-same-owner",
            f"test -d {BUILD_DIR}/{p.name} || {{ echo 'R package {p.name}: its tarball has no folder "
            f"{p.name}/'; exit 1; }}",
            f"buildsys_cran_is {p.name} {p.version} {BUILD_DIR}/{p.name}/DESCRIPTION 'its tarball'",
            f"R CMD INSTALL --no-multiarch --built-timestamp={built} --library={SITE_LIBRARY} "
            f"{BUILD_DIR}/{p.name}",
            f"buildsys_cran_is {p.name} {p.version} {SITE_LIBRARY}/{p.name}/DESCRIPTION 'what R installed'",
            f"rm -rf {BUILD_DIR}/{p.name}",
        ]) + "\n")
    rprofile = f'options(repos = c(CRAN = "{_r_string(repo)}"))'
    steps.append(STEP_HEADER + "\n".join([
        f"rm -rf {BUILD_DIR}",
        "mkdir -p /etc/R",
        # Debian's Rprofile.site is a conffile; only our line is appended, once.
        f"grep -qxF {shlex.quote(rprofile)} /etc/R/Rprofile.site 2>/dev/null || "
        f"echo {shlex.quote(rprofile)} >> /etc/R/Rprofile.site",
    ]) + "\n")
    return steps


MAKEVARS = f"""\
# buildsys: build paths out of debug info and macros (docs/reproducibility.md)
PREFIX_MAP = -ffile-prefix-map={BUILD_DIR}=. -fdebug-prefix-map={BUILD_DIR}=. -Wdate-time
CFLAGS += $(PREFIX_MAP)
CXXFLAGS += $(PREFIX_MAP)
CXX11FLAGS += $(PREFIX_MAP)
CXX14FLAGS += $(PREFIX_MAP)
CXX17FLAGS += $(PREFIX_MAP)
FFLAGS += -ffile-prefix-map={BUILD_DIR}=.
FCFLAGS += -ffile-prefix-map={BUILD_DIR}=.
"""


def stage_tarballs(store: Store, recipe: str, packages: Sequence[LockedCran], folder: Path) -> None:
    folder.mkdir(parents=True)
    for p in packages:
        src = store.vendor_path(p.sha256)
        if not src.is_file():
            raise NotVendored(recipe, f"R package {p.name} {p.version} ({p.url})")
        (folder / f"{p.name}_{p.version}.tar.gz").hardlink_to(src)
    (folder / "Makevars").write_text(MAKEVARS)


# R's own packages: in every R, never on CRAN, never an r-cran-* package.
R_BASE_PACKAGES = frozenset({"base", "compiler", "datasets", "graphics", "grDevices", "grid", "methods", "parallel",
                             "splines", "stats", "stats4", "tcltk", "tools", "utils"})


DESCRIPTION_CAP = 1 << 20  # a DESCRIPTION is a few KiB; CRAN's largest is far below this


def tarball_needs(tarball: Path, name: str) -> list[Dependency] | None:
    """Depends, Imports and LinkingTo (R itself left out) of ``NAME/DESCRIPTION`` in a vendored source tarball.

    None when the tarball has no readable DESCRIPTION for ``name`` (the build refuses such a
    tarball too, naming it). The tarball is read as a stream, up to its DESCRIPTION.
    """
    try:
        with tarfile.open(tarball, "r|gz") as tf:
            for m in tf:
                if m.name.removeprefix("./") != f"{name}/DESCRIPTION":
                    continue
                f = tf.extractfile(m) if m.isfile() and m.size <= DESCRIPTION_CAP else None
                if f is None:
                    return None
                fields = parse_dcf(f.read().decode("utf-8", errors="replace"))
                return [d for fld in DEP_FIELDS for d in parse_deps(fields[0].get(fld, "")) if d.name != "R"]
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, IndexError):
        return None
    return None


def cran_closure(store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
    """What the vendored tarballs of ``lock`` need that the chain does not have ("pkg needs dep").

    Read from each tarball's own DESCRIPTION (its sha256 vouches for it, unlike anything
    written in the lock), as the pip closure is read from the wheels: so a hand-deleted
    ``[[cran]]`` entry is found before any container starts. A dependency is met by a pin of
    the chain (whose version must fit), by R's own packages, or by Debian's r-cran-NAME in the
    chain. On a registry image the image's own R packages are not in any lock, so there only
    the version of a pinned dependency is checked.
    """
    pins = {c.name: c.version for lk in (*chain, lock) for c in lk.section(CranSection).packages}
    debs = chain_debs([*chain, lock])
    image_root = any(lk.get(ImageBaseLock) is not None for lk in chain)
    problems: list[str] = []
    for c in lock.section(CranSection).packages:
        path = store.vendor_path(c.sha256)
        if not path.is_file():
            continue  # the vendor check names a missing file
        needs = tarball_needs(path, c.name)
        if needs is None:
            problems.append(f"R package {c.name} {c.version}: its tarball has no readable {c.name}/DESCRIPTION, "
                            "so it is not that package's source")
            continue
        for dep in needs:
            if dep.name in pins:
                if not dep.met_by(pins[dep.name]):
                    problems.append(f"R package {c.name} {c.version} needs '{dep}', the chain pins "
                                    f"{pins[dep.name]}")
            elif not (dep.name in R_BASE_PACKAGES or f"r-cran-{dep.name.lower()}" in debs or image_root):
                problems.append(f"R package {c.name} {c.version} needs '{dep}', which no lock of the chain pins")
    return sorted(set(problems))


def failure_hint(output: str) -> str | None:
    """For a failed R package compile: which [apt] package provides the missing header, when known."""
    if _NOT_PINNED in output:
        return ("the repository served a tarball (the one whose sha256 the lock pins) that is another package "
                "or version than its index said: use a repository you trust, then `buildsys lock` again")
    last = [ln for ln in output.splitlines() if ln.startswith(STEP_MARKER)]
    if not last or not last[-1].startswith(f"{STEP_MARKER}cran: install "):
        return None
    pkg = last[-1].split()[2]
    if missing := missing_header(output):
        h, deb = missing
        if deb:
            return (f"R package {pkg} needs the header {h}, which Debian's {deb} provides: add \"{deb}\" to "
                    "[apt] packages of this recipe (or a parent), `buildsys lock`, then build again")
        return (f"R package {pkg} needs the header {h}: add the Debian -dev package that provides it to [apt] "
                "packages (`apt-file search " + h + "` names it), `buildsys lock`, then build again")
    # Packages that test for a library in ``configure`` (the "anticonf" script many CRAN packages share)
    # hide the compiler's message and name the Debian package themselves: "* deb: libxml2-dev (Debian, ...)".
    named = re.findall(r"^\s*\*?\s*deb: ([a-z0-9][a-z0-9+.-]+)", output, re.M)
    if named:
        return (f"R package {pkg}'s configure did not find a system library, which Debian's {named[-1]} provides: "
                f"add \"{named[-1]}\" to [apt] packages (here or in a parent), `buildsys lock`, then build again")
    return (f"R package {pkg} failed to install (see its output above); if a system library is missing, add its "
            "Debian -dev package to [apt] packages, `buildsys lock`, then build again")


def _utc(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _r_string(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
