"""Lock ``[cran]``: R source packages from a CRAN-like repository, pinned by sha256.

A CRAN-like repository is a folder holding ``src/contrib/PACKAGES`` (DCF, one
stanza per package, optionally ``PACKAGES.gz``) and ``NAME_VERSION.tar.gz``
beside it; a version that the repository has moved past lives under
``src/contrib/Archive/NAME/``. Resolution is the transitive closure over
Depends, Imports and LinkingTo (what ``install.packages`` follows by default),
less base and recommended packages and whatever the parent image already has
installed (Debian's ``r-cran-*`` included), read from the image itself.

The data (index, recipe and lock parts) is in ``cran_index``, the build side in ``cran_build``.
"""

from __future__ import annotations

import hashlib
import shlex
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from packageurl import PackageURL

from buildsys.core import licenses, net
from buildsys.core.dcf import DcfError, parse_dcf
from buildsys.core.errors import FetchError, HashMismatch, LockError, RecipeError
from buildsys.core.store import Artifact, Store
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems.apt_layer import chain_debs
from buildsys.ecosystems.base import HEADER_PACKAGES, MOUNT, Component, Ecosystem, LockContext, Pin
from buildsys.ecosystems.cran_build import (
    DESCRIPTION_CAP,
    MAKEVARS,
    R_BASE_PACKAGES,
    cran_closure,
    failure_hint,
    install_steps,
    stage_tarballs,
    tarball_needs,
)
from buildsys.ecosystems.cran_index import (
    BUILD_DIR,
    DEP_FIELDS,
    INDEX_CAP,
    SITE_LIBRARY,
    CranConstraintUnmet,
    CranIndexError,
    CranLock,
    CranPackageMissing,
    CranRecipe,
    CranRepoUnreachable,
    CranSection,
    Dependency,
    IndexEntry,
    InstalledR,
    LockedCran,
    compare_versions,
    contrib,
    gunzip_index,
    install_order,
    parse_deps,
    parse_index,
    repo_relative_problem,
    tarball_urls,
)
from buildsys.ecosystems.cran_renv import RenvLock, same_minor
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe

if TYPE_CHECKING:  # docker's client is imported only where an engine is used
    from buildsys.engine import Engine

# Names that moved to cran_index and cran_build with the split, still importable from here.
__all__ = [
    "BUILD_DIR",
    "compare_versions",
    "contrib",
    "cran_closure",
    "CranConstraintUnmet",
    "CranIndexError",
    "CranLock",
    "CranPackageMissing",
    "CranRecipe",
    "CranRepoUnreachable",
    "CranSection",
    "DEP_FIELDS",
    "Dependency",
    "DESCRIPTION_CAP",
    "failure_hint",
    "HEADER_PACKAGES",
    "INDEX_CAP",
    "IndexEntry",
    "install_order",
    "install_steps",
    "InstalledR",
    "LockedCran",
    "MAKEVARS",
    "parse_deps",
    "parse_index",
    "R_BASE_PACKAGES",
    "repo_relative_problem",
    "SITE_LIBRARY",
    "stage_tarballs",
    "tarball_needs",
    "tarball_urls",
    "CRAN",
    "Cran",
]


def read_index(recipe: Recipe) -> tuple[dict[str, IndexEntry], str]:
    """The repo's PACKAGES index (PACKAGES.gz first, as R does) and the sha256 of the bytes read."""
    repo = recipe.section(CranRecipe).repo
    assert repo
    allow_local = local_reason(repo) is not None  # the recipe names a loopback/file repo on purpose
    failures = []
    for name in ("PACKAGES.gz", "PACKAGES"):
        url = f"{contrib(repo)}/{name}"
        try:
            with net.Client(net.Policy(local_ok=allow_local), attempts=3) as client, \
                    client.send("GET", url) as resp:
                if resp.status_code >= 400:
                    failures.append(f"{url}: HTTP {resp.status_code}")
                    continue
                raw = resp.read(INDEX_CAP, f"the repository index {name}")
        except net.TooLarge as e:
            raise CranIndexError(url, f"larger than {INDEX_CAP >> 20} MiB, the cap for an index") from e
        except net.NetError as e:
            raise CranRepoUnreachable(recipe.path, repo, e.message) from e
        try:
            text = (gunzip_index(raw, url) if name.endswith(".gz") else raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CranIndexError(url, f"not UTF-8 text ({e})") from e
        return parse_index(text, url), hashlib.sha256(raw).hexdigest()
    raise CranRepoUnreachable(recipe.path, repo, "; ".join(failures))


def resolve_closure(recipe: Recipe, index: Mapping[str, IndexEntry], installed: InstalledR,
                    above: Mapping[str, str] | None = None) -> list[IndexEntry]:
    """The packages to install, in install order (dependencies first, ties by name).

    ``above``: R packages the ancestors' locks pinned from CRAN (they are in the
    image too, but named here so a missing one says where it was expected).
    """
    repo = recipe.section(CranRecipe).repo or ""
    have = dict(above or {})
    have.update({n: v for n, (v, _) in installed.packages.items()})
    chosen: dict[str, IndexEntry] = {}
    todo: list[tuple[str, Dependency | None, str]] = [(p, None, "") for p in recipe.section(CranRecipe).packages]
    while todo:
        name, dep, parent = todo.pop()
        where = f"{parent} needs '{dep}'" if dep and parent else f"the recipe asks for '{name}'"
        if name in have:
            if dep is not None and not dep.met_by(have[name]):
                what = "ships with R" if installed.is_shipped(name) else "is in the parent image"
                raise CranConstraintUnmet(
                    f"{recipe.path}: cran.packages: {where}, but {name} {have[name]} {what}",
                    hint=f"upgrade {name} in the parent (its r-cran-* package or its recipe), or pick a snapshot "
                         f"date in cran.repo where {parent or name} fits; then `buildsys lock {recipe.name}`")
            continue
        entry = index.get(name)
        if entry is None:
            raise CranPackageMissing(recipe.path, name, parent, repo, index)
        if dep is not None and not dep.met_by(entry.version):
            raise CranConstraintUnmet(f"{recipe.path}: cran.packages: {where}, but {repo} has {name} {entry.version}",
                                      hint="use a cran.repo snapshot that has a version that fits, then "
                                           f"`buildsys lock {recipe.name}`")
        for r in entry.r_needed:
            if not r.met_by(installed.version):
                raise CranConstraintUnmet(
                    f"{recipe.path}: cran.packages: {name} {entry.version} needs '{r}', the image has R "
                    f"{installed.version}",
                    hint=f"use an older cran.repo snapshot (one from R {installed.version}'s time), or a newer R "
                         f"in the parent chain; then `buildsys lock {recipe.name}`")
        if name in chosen:
            continue
        chosen[name] = entry
        todo += [(d.name, d, name) for d in reversed(entry.depends)]
    return install_order(chosen.values())


# The image's R: its version, then every package folder of every library with Version and Priority.
_INSPECT = r"""
set -eu
command -v R >/dev/null || { echo '::no-r::'; exit 0; }
for d in /usr/lib/R/library/base /usr/lib/R/library/*/ /usr/lib/R/site-library/*/ \
         /usr/local/lib/R/site-library/*/; do
  f="${d%/}/DESCRIPTION"
  [ -f "$f" ] || continue
  echo "::pkg::"
  grep -E '^(Package|Version|Priority):' "$f" || true
done
"""


def inspect_image(engine: Engine, image: str) -> InstalledR | None:
    """What R the image has and which packages (None: no R at all)."""
    result = engine.run(image, ["/bin/sh", "-c", _INSPECT], network="none", user="0:0", entrypoint=())
    if result.exit_code != 0:
        raise LockError(f"reading the R packages of image {image[:19]} failed (exit {result.exit_code}): "
                        f"{result.output[-500:]}", hint="run again with -v; this is a buildsys bug if it persists")
    if "::no-r::" in result.output:
        return None
    packages: dict[str, tuple[str, str]] = {}
    r_version = ""
    for chunk in result.output.split("::pkg::")[1:]:
        fields = dict(ln.split(":", 1) for ln in chunk.strip().splitlines() if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        name, version = fields.get("Package", ""), fields.get("Version", "")
        if not name or not version:
            continue
        if name == "base":
            r_version = version
        packages.setdefault(name, (version, fields.get("Priority", "")))  # first in .libPaths() order wins
    return InstalledR(version=r_version, packages=packages)


def check_repo(recipe: Recipe) -> tuple[dict[str, IndexEntry], str]:
    """Read the index before anything costly (the parent image is built after): an unreachable repo says so first."""
    if not recipe.section(CranRecipe).repo:
        raise LockError(f"{recipe.path}: [cran] needs repo = \"...\" (a dated CRAN snapshot)",
                        hint='add repo = "https://packagemanager.posit.co/cran/2025-06-02" (or your mirror)')
    return read_index(recipe)


def lock_cran(recipe: Recipe, store: Store, engine: Engine, image: str, above: Mapping[str, str],
              index: tuple[dict[str, IndexEntry], str],
              progress: Callable[[str], None] = lambda message: None) -> CranLock:
    """Resolve the recipe's [cran] packages for the R in ``image``; pin each tarball by its sha256."""
    repo = recipe.section(CranRecipe).repo
    assert repo
    installed = inspect_image(engine, image)
    if installed is None:
        raise LockError(f"{recipe.path}: [cran] packages need R in the image, and the parent chain has none",
                        hint='add [apt] packages = ["r-base-core", "r-base-dev"] to this recipe or a parent')
    allow_local = local_reason(repo) is not None
    renv = recipe.section(CranRecipe).renv
    if renv is not None:
        return CranLock(lock_renv(recipe, renv, store, index[0], installed, allow_local, progress), index[1],
                        installed.version)
    entries = resolve_closure(recipe, index[0], installed, above)
    progress(f"cran: {len(entries)} packages to pin (R {installed.version}): "
             + " ".join(f"{e.name}={e.version}" for e in entries))
    locked = []
    for e in entries:
        url = tarball_urls(repo, e.name, e.version, e.path)[0]
        sha, size = _download(store, url, e, allow_local)
        locked.append(LockedCran(name=e.name, version=e.version, sha256=sha, size=size, url=url,
                                 depends=tuple(sorted({d.name for d in e.depends}))))
    return CranLock(tuple(locked), index[1], installed.version)


def lock_renv(recipe: Recipe, renv: RenvLock, store: Store, index: Mapping[str, IndexEntry], installed: InstalledR,
              allow_local: bool, progress: Callable[[str], None]) -> tuple[LockedCran, ...]:
    """renv.lock's versions exactly: current ones from the top level, others from Archive/NAME/ (no resolution)."""
    renv_file = recipe.path.parent.parent / renv.path
    if not same_minor(renv.r_version, installed.version):
        raise RecipeError(renv_file, f"R.Version is {renv.r_version}, the image's R is {installed.version}: "
                                     "packages are built for one R minor release", line=renv.r_line or None,
                          hint="snapshot renv with the image's R, or give the layer a parent chain with "
                               f"R {'.'.join(renv.r_version.split('.')[:2])}")
    repo = recipe.section(CranRecipe).repo or ""
    progress(f"cran: {len(renv.versions)} packages pinned by {renv.path} (R {installed.version})")
    locked = []
    for name, version, line in renv.versions:
        have = installed.packages.get(name)
        if have is not None:
            if have[0] != version:
                raise RecipeError(renv_file, f"{name} {version}: the parent image already has {name} {have[0]}",
                                  line=line or None,
                                  hint=f"pin {name} {have[0]} in {renv.path}, or drop it there and from the parent")
            continue
        current = index.get(name)
        if current is not None and current.version == version:
            entry, url = current, tarball_urls(repo, name, version, current.path)[0]
        else:  # the repository moved on: the version is kept under Archive/NAME/
            entry, url = IndexEntry(name, version, (), ()), tarball_urls(repo, name, version)[1]
        sha, size = _download(store, url, entry, allow_local)
        needs = entry.depends if current is entry else tarball_needs(store.vendor_path(sha), name) or []
        locked.append(LockedCran(name=name, version=version, sha256=sha, size=size, url=url,
                                 depends=tuple(sorted({d.name for d in needs}))))
    return tuple(locked)


def _download(store: Store, url: str, entry: IndexEntry, allow_local: bool) -> tuple[str, int]:
    """The tarball into the vendor store; checked against the index's MD5sum when it has one."""
    md5 = hashlib.md5(usedforsecurity=False)

    def md5_matches() -> None:
        if entry.md5 and md5.hexdigest() != entry.md5.lower():
            raise HashMismatch(f"R package {entry.name} {entry.version} (MD5sum in PACKAGES)", url, entry.md5,
                               md5.hexdigest(), algorithm="MD5")

    try:
        with net.Client(net.Policy(local_ok=allow_local), attempts=3) as client, client.send("GET", url) as resp:
            if resp.status_code >= 400:
                listed = "the repository's index lists it" if entry.md5 or entry.depends else \
                    "the recipe pins that version (the repository keeps older ones under Archive/NAME/)"
                raise FetchError(f"{entry.name} {entry.version}: {url} answered HTTP {resp.status_code}, though "
                                 f"{listed}",
                                 hint="the repository may be mid-update: run `buildsys lock` again later, or use "
                                      "a dated snapshot")
            return store.vendor_stream(resp.reader(None, url), "cran-", also=[md5], check=md5_matches)
    except net.NetError as e:
        raise FetchError(f"{entry.name} {entry.version}: cannot download {url}: {e.message}",
                         hint="check the network and cran.repo, then `buildsys lock` again") from e


def tarball_artifact(c: LockedCran) -> Artifact:
    """A locked tarball, where it was at lock time first, then where the repository keeps older versions."""
    repo = c.url.rsplit("/src/contrib/", 1)[0]
    urls = tuple(dict.fromkeys((c.url, *tarball_urls(repo, c.name, c.version))))
    # local=True: the repository is the one the recipe names (the freshness check holds the lock to it).
    return Artifact(kind="cran", name=c.name, version=c.version, filename=f"{c.name}_{c.version}.tar.gz",
                    sha256=c.sha256, size=c.size, urls=urls, local=True)


class Cran(Ecosystem):
    name = "cran"
    agree_as = "CRAN"
    recipe_section = CranRecipe
    lock_section = CranSection

    def prepare(self, ctx: LockContext) -> None:
        recipe = ctx.recipe
        wanted = recipe.section(CranRecipe)
        if not wanted.packages:
            return
        if recipe.is_root:
            raise LockError(f"{recipe.path}: [cran] in a root recipe is not supported",
                            hint="put CRAN packages in a child recipe whose chain installs R (r-base-core)")
        ctx.progress(f"cran: reading the index of {wanted.repo}")
        ctx.notes["cran-index"] = check_repo(recipe)

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        wanted = recipe.section(CranRecipe)
        if not wanted.packages:
            return lock
        image = ctx.image(lock, "to resolve CRAN packages against its R")
        above = {c.name: c.version for lk in ctx.ancestors for c in lk.section(CranSection).packages}
        cran = lock_cran(recipe, ctx.store, ctx.engine(), image, above, ctx.notes["cran-index"],
                         progress=ctx.progress)
        return lock.with_sections(CranSection(cran.packages, wanted.repo, cran.index_sha256, cran.r_version))

    def artifacts(self, lock: Lock) -> list[Artifact]:
        return [tarball_artifact(c) for c in lock.section(CranSection).packages]

    def stage(self, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        part = lock.section(CranSection)
        if not part.packages:
            return []
        stage_tarballs(store, recipe.name, part.packages, folder / "cran")
        return install_steps(part.packages, part.repo or "", MOUNT, lock.source_date_epoch)

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        """Every [cran] package is pinned here or in the chain (Debian's r-cran-NAME counts), from the recipe's repo."""
        problems: list[str] = []
        debs = chain_debs([*above, lock])
        pinned = {c.name for lk in (*above, lock) for c in lk.section(CranSection).packages}
        wanted = recipe.section(CranRecipe)
        for name in wanted.packages:
            if name not in pinned and f"r-cran-{name.lower()}" not in debs:
                problems.append(f"R package '{name}' is not locked")
        mine = {c.name: c.version for c in lock.section(CranSection).packages}
        renv = wanted.renv
        for name, version, line in renv.versions if renv else ():
            if renv and name in mine and mine[name] != version:
                problems.append(f"R package '{name}' is locked at {mine[name]}, {renv.path}:{line} "
                                f"pins {version}")
        cran = lock.section(CranSection)
        if (cran.packages or wanted.packages) and cran.repo != wanted.repo:
            problems.append(f"[cran-repo] is {cran.repo!r}, the recipe's cran.repo is {wanted.repo!r}")
        for c in cran.packages:
            if why := repo_relative_problem(c.url, wanted.repo or ""):
                problems.append(f"R package '{c.name}' comes from {c.url}, not the recipe's cran.repo ({why})")
        return problems

    def closure_problems(self, store: Store, chain: Sequence[Lock], lock: Lock) -> list[str]:
        return cran_closure(store, chain, lock) if lock.section(CranSection).packages else []

    def components(self, lock: Lock) -> list[Component]:
        return [Component("cran", c.name, c.version, PackageURL("cran", None, c.name, c.version).to_string(),
                          c.sha256, c.url) for c in sorted(lock.section(CranSection).packages, key=lambda c: c.name)]

    def pins(self, lock: Lock) -> list[Pin]:
        return [Pin("cran", c.name, c.version, "") for c in lock.section(CranSection).packages]

    def declared_license(self, component: Component, path: Path) -> str | None:
        """The ``License`` of the tarball's own DESCRIPTION (``NAME/DESCRIPTION``)."""
        if component.kind != "cran":
            return None
        try:
            with tarfile.open(path) as tf:
                member = tf.getmember(f"{component.name}/DESCRIPTION")
                f = tf.extractfile(member) if member.isfile() and member.size <= DESCRIPTION_CAP else None
                text = f.read().decode("utf-8", "replace") if f else ""
            fields = parse_dcf(text)
        except (KeyError, tarfile.TarError, OSError, EOFError, DcfError):
            return None  # no DESCRIPTION there: nothing declared (the hash check reports a damaged tarball)
        return licenses.from_cran(fields[0].get("License", "")) if fields else None

    def checks(self, recipe: Recipe) -> list[tuple[str, str]]:
        """Every [cran] package loads with ``library()``."""
        packages = recipe.section(CranRecipe).packages
        if not packages:
            return []
        quoted = ", ".join(f'"{n}"' for n in packages)
        script = (f"for (p in c({quoted})) {{ suppressPackageStartupMessages(library(p, character.only = TRUE)); "
                  f"cat(p, as.character(packageVersion(p)), \"ok\\n\") }}")
        return [(f"library({', '.join(packages)})", shlex.join(["Rscript", "-e", script]))]

    def failure_hint(self, output: str) -> str | None:
        return failure_hint(output)


CRAN = Cran()
