"""One interface for every kind of thing a recipe installs: the ``Ecosystem``.

A Debian root, ``[apt]`` (on a Debian chain or on a registry image), ``[pip]``,
``[cran]``, ``[[files]]`` and a registry-image root each implement it in their
own module; ``ECOSYSTEMS`` (``ecosystems/__init__``) lists them, and the code
that locks, checks, stages, tests and describes a layer iterates that tuple
and names none of them (pip-tools' ``repositories/base.py`` and repo2docker's
buildpacks are the models). An ecosystem is stateless: what one resolution
needs to keep between ``prepare`` and ``lock`` goes into ``LockContext.notes``.

Each ecosystem's part of a recipe is a ``model.recipe.RecipeSection`` (its
key, its schema and checks, its parsed form) and its part of a lock a
``model.lockfile.LockSection`` (its entries, its TOML out and in, its shape on
read), both defined in its module and named as ``recipe_section`` and
``lock_section``; ``ecosystems/__init__`` registers them with ``model/``. An
ecosystem reads and fills its own parts (``recipe.section(...)``,
``lock.section(...)``, ``lock.with_sections(...)``), and another's only
through its types (apt on a root's lock part).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from buildsys.core.store import Artifact, Store
from buildsys.model.lockfile import Lock, LockSection
from buildsys.model.recipe import Recipe, RecipeSection
from buildsys.oci.layer.tree import ParentTree

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    from buildsys.engine import Engine

# Where a layer's staged inputs are mounted in its build container (read-only), and the line
# the build script prints before each step, so that a failure names its step.
MOUNT = "/buildsys"
STEP_MARKER = "::buildsys-step::"
# What a step script starts with: build steps stop at the first error and at an unset variable,
# and never inherit a umask or a folder (each step is its own process tree, build/steps.py).
STEP_HEADER = "set -eu\numask 022\ncd /\n"

# Headers a failed compile may name, and the Debian package that provides them.
HEADER_PACKAGES = {
    "sodium.h": "libsodium-dev", "curl/curl.h": "libcurl4-openssl-dev", "openssl/ssl.h": "libssl-dev",
    "libxml/parser.h": "libxml2-dev", "libxml/tree.h": "libxml2-dev", "zmq.h": "libzmq3-dev",
    "png.h": "libpng-dev", "jpeglib.h": "libjpeg-dev", "zlib.h": "zlib1g-dev", "gmp.h": "libgmp-dev",
    "gsl/gsl_math.h": "libgsl-dev", "fftw3.h": "libfftw3-dev", "sqlite3.h": "libsqlite3-dev",
    "git2.h": "libgit2-dev", "ft2build.h": "libfreetype-dev", "fontconfig/fontconfig.h": "libfontconfig-dev",
    "cairo.h": "libcairo2-dev", "uv.h": "libuv1-dev", "hdf5.h": "libhdf5-dev", "netcdf.h": "libnetcdf-dev",
    "proj.h": "libproj-dev", "gdal.h": "libgdal-dev", "geos_c.h": "libgeos-dev", "udunits2.h": "libudunits2-dev",
    "magick/api.h": "libmagick++-dev", "Magick++.h": "libmagick++-dev", "tiff.h": "libtiff-dev",
    "harfbuzz/hb.h": "libharfbuzz-dev", "fribidi/fribidi.h": "libfribidi-dev", "mysql.h": "libmariadb-dev",
    "libpq-fe.h": "libpq-dev", "unicode/utypes.h": "libicu-dev", "lzma.h": "liblzma-dev", "bzlib.h": "libbz2-dev",
}


def missing_header(output: str) -> tuple[str, str | None] | None:
    """The header a failed compile could not find (the last one it names), and the Debian package that
    provides it when known: for the hints of every ecosystem that compiles (R packages, pip sdists)."""
    found = re.findall(r"fatal error: ([^:\s]+): No such file or directory", output)
    if not found:
        return None
    h: str = found[-1]
    return h, HEADER_PACKAGES.get(h) or HEADER_PACKAGES.get(h.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Component:
    """One locked thing as a bill of materials lists it."""

    kind: str  # image | deb | wheel | cran | file
    name: str
    version: str
    purl: str
    sha256: str
    url: str


@dataclass(frozen=True)
class Pin:
    """One locked version: what ``lock --upgrade --check`` compares and parents must agree on."""

    kind: str  # as the upgrade report shows it: apt | pip | cran | files | image
    name: str
    version: str
    source: str  # where it comes from: a mirror, a URL, a platform ("" when the kind says it)


class Downloads(Protocol):
    """An ecosystem's downloads of its own URLs for one ``fetch`` run, shared by the run's threads."""

    def download(self, url: str, fd: int, have: int, size: int | None) -> int:
        """Append the file at ``url`` to ``fd`` from byte ``have`` on (from the start, the file emptied, when the
        server does not resume); return the bytes written. Reading stops one byte past ``size``
        (``net.TooLarge``); ``fetch`` hashes the finished file. A failure is a ``net.NetError``
        (``transient`` when another try may help) and one writing ``fd`` an ``OSError``: an
        ecosystem translates its own errors, ``fetch`` knows no other."""
        ...

    def close(self) -> None: ...


class LockContext(Protocol):
    """What an ecosystem may ask of the resolve loop while it locks one recipe (``lock/`` implements it)."""

    @property
    def recipe(self) -> Recipe: ...

    @property
    def store(self) -> Store: ...

    @property
    def ancestors(self) -> Sequence[Lock]:
        """The locks of the recipe's chain above it, the root first; empty for a root."""
        ...

    @property
    def previous(self) -> Lock | None:
        """The lock being replaced, whose pins are kept unless upgrading."""
        ...

    @property
    def upgrade(self) -> bool: ...

    @property
    def upgrade_packages(self) -> Sequence[str]: ...

    @property
    def notes(self) -> MutableMapping[str, Any]:
        """Per-recipe scratch: what an ecosystem's ``prepare`` read, for its ``lock``."""
        ...

    def progress(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def engine(self) -> Engine:
        """The docker engine; a LockError that says what needs it when there is none."""
        ...

    def parent_tree(self, why: str) -> ParentTree:
        """The files of the parent chain's image (built first when needed)."""
        ...

    def image(self, lock: Lock, why: str) -> str:
        """An image of the parent chain plus what ``lock`` holds so far, to resolve in.

        Built at the first call of a resolution and removed at its end: the
        ecosystems before the caller in ``ECOSYSTEMS`` (apt) are in it.
        """
        ...


class Ecosystem:
    """One kind of locked input. Defaults are "nothing to do"; each module overrides what it has."""

    name: str = ""
    # The word for its packages when parents disagree on one ("parents disagree on CRAN package"),
    # or None when parents may differ (a file is staged for its own layer only).
    agree_as: str | None = None
    # Its part of a recipe (its key, or its kind of root under [base]) and of a lock (the keys it owns
    # in the lock file), or None when it has none of its own.
    recipe_section: type[RecipeSection] | None = None
    lock_section: type[LockSection] | None = None

    def prepare(self, ctx: LockContext) -> None:
        """Before anything costly: refuse what the recipe cannot have here, read an index."""

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        """``lock`` with this ecosystem's part resolved for ``ctx.recipe`` (unchanged when it has none)."""
        return lock

    def artifacts(self, lock: Lock) -> list[Artifact]:
        """The files ``fetch`` puts in the vendor store for this part of ``lock``."""
        return []

    def stage(self, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        """Link this part's inputs into the staging ``folder``; return the steps that install them.

        Each step is a whole shell script (start it with ``STEP_HEADER``) that the build runs as
        the first process of a fresh PID namespace, in order, stopping at the first that fails: it
        carries nothing to the next but the filesystem (no variable, function or folder), and the
        process IDs it sees are the same on every build (docs/reproducibility.md, "Process IDs").
        Split an install into one step per package where a package may record a process ID.
        """
        return []

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        """What ``lock`` lacks or holds against ``recipe`` (``above``: the ancestors' locks); empty when it covers."""
        return []

    def closure_problems(self, store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
        """What the vendored files of ``lock`` need that no lock of ``chain`` pins (read before a build)."""
        return []

    def components(self, lock: Lock) -> list[Component]:
        """This part of ``lock`` for the SBOM, sorted."""
        return []

    def chain_components(self, chain: Sequence[Lock]) -> list[Component]:
        """This part of the chain's top lock (``chain``: root first) for the SBOM, sorted: ``components``, or
        where the chain tells more (a .deb's release, from the root's archives) with that."""
        return self.components(chain[-1])

    def declared_license(self, component: Component, path: Path) -> str | None:
        """The license ``component`` (one of this ecosystem's) declares in its own vendored file at ``path``, as
        ``core.licenses`` reads it; None when it declares none, or the component is another ecosystem's."""
        return None

    def base_facts(self, chain: Sequence[Lock]) -> dict[str, str]:
        """What the chain stands on, for the SBOM's metadata (``base-image``, ``base-image-digest``,
        ``suite``, ``distro``), as far as this ecosystem's part of the chain's locks says."""
        return {}

    def pins(self, lock: Lock) -> list[Pin]:
        return []

    def states(self, lock: Lock) -> list[Pin]:
        """The signed upstream states ``lock`` was resolved against (an apt archive's Release, by its date),
        for ``lock --upgrade --check`` to say which moved; never packages."""
        return []

    def checks(self, recipe: Recipe) -> list[tuple[str, str]]:
        """(label, shell command) of the checks ``buildsys test`` runs for this part of ``recipe``."""
        return []

    def failure_hint(self, output: str) -> str | None:
        """A next step for a build that failed in this ecosystem's step, if it knows one."""
        return None

    def check_built(self, chain: Sequence[Lock], output: str, below: ParentTree | None) -> str | None:
        """What a layer just built holds against the locks, read from its build script's ``output``.

        ``chain``: the locks of its chain, the root first and the layer's own last; ``below``: the
        parent chain's files. None when it holds what they pin (or this ecosystem cannot tell).
        """
        return None

    # The scheme of the vendor store's URLs this ecosystem downloads itself (``downloads``), if any.
    url_scheme: str | None = None

    def downloads(self) -> Downloads:
        """What downloads this ecosystem's URLs (of ``url_scheme``) for one ``fetch`` run, which closes it."""
        raise NotImplementedError(f"{self.name} downloads no URL of its own")

