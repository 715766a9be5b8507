"""Does a lock still say what its recipe asks for? And is what it pins closed?

The recipe hash tells that the recipe did not change since the lock was
written; it says nothing about the lock itself, which can be edited (an entry
deleted in a pull request, a mirror swapped). ``covers`` compares the lock with
its recipe and its ancestors' locks: every requested apt and pip package and
every ``[[files]]`` entry is there, pip pins meet the recipe's specifiers, and
every URL comes from a source the recipe declares. ``pip_closure`` reads the
requirements of the vendored wheels themselves (their METADATA is covered by
the locked sha256, unlike anything written in the lock) and finds a locked
package whose dependency is locked nowhere in the chain; pip installs with
``--no-deps``, so without this an image would quietly lack it. apt needs no
such check: apt-get itself refuses to install a set with a missing dependency.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping, Sequence
from email.parser import HeaderParser
from pathlib import Path
from urllib.parse import urlsplit

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from buildsys.core.store import Store
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems.cran import repo_relative_problem  # moves with _cran_covers (house step 2)
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import DebianBase, ImageBase, Recipe


def ancestors(lock: Lock, locks: Mapping[str, Lock]) -> list[Lock]:
    """The locks of every ancestor of ``lock`` that ``locks`` holds (following ``parents``)."""
    seen: dict[str, Lock] = {}
    todo = list(lock.parents)
    while todo:
        name = todo.pop()
        if name in seen or name not in locks:
            continue
        seen[name] = locks[name]
        todo += list(locks[name].parents)
    return [seen[n] for n in sorted(seen)]


def covers(recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
    """What the lock lacks or holds against its recipe; empty when it covers it. ``above``: ancestors' locks."""
    problems: list[str] = []
    debs = {d.name for lk in (lock, *above) for d in (*(lk.base.packages if lk.base else ()), *lk.apt)}
    debs_or_image = debs | set(lock.apt_in_image)  # on a registry image: requested ones it already has
    for pkg in recipe.apt_packages:
        if pkg.split(":", 1)[0] not in debs_or_image:
            problems.append(f"apt package '{pkg}' is not locked")
    root = next((lk for lk in (lock, *above) if lk.base), None)
    if lock.base is not None and isinstance(recipe.base, DebianBase):
        b, want = lock.base, recipe.base
        for key, have, asked in (("suite", b.suite, want.suite), ("variant", b.variant, want.variant),
                                 ("architecture", b.architecture, want.architecture),
                                 ("mirror", b.mirror, want.mirror), ("components", b.components, want.components)):
            if have != asked:
                problems.append(f"[base] {key} is {have!r}, the recipe asks for {asked!r}")
        have_archives = [(a.mirror, a.suite) for a in b.all_archives]
        if have_archives != list(want.archives):
            problems.append(f"[base] is resolved from {_archives(have_archives)}, the recipe asks for "
                            f"{_archives(want.archives)}")
        if sorted(b.include) != sorted(recipe.apt_packages):
            problems.append(f"[base] include is {sorted(b.include)}, "
                            f"the recipe's [apt] is {sorted(recipe.apt_packages)}")
    if isinstance(recipe.base, ImageBase):
        pinned = lock.image_base
        if pinned is None:
            problems.append(f"[base] is not the registry image {recipe.base.image}")
        elif (pinned.reference, pinned.platform) != (recipe.base.image, recipe.base.platform):
            problems.append(f"[base.image] pins {pinned.reference} ({pinned.platform}), the recipe asks for "
                            f"{recipe.base.image} ({recipe.base.platform})")
    elif lock.image_base is not None:
        problems.append(f"[base.image] pins {lock.image_base.reference}, the recipe's base is not an image")
    if root is not None and root.base is not None:
        mirrors = sorted({a.mirror for a in root.base.all_archives})
        for d in (*(lock.base.packages if lock.base else ()), *lock.apt):
            if d.mirror not in mirrors:
                problems.append(f"apt package '{d.name}' comes from {d.mirror}, not the root's mirror "
                                f"{' or '.join(mirrors)}")
    problems += _apt_archives_cover(lock, above, root is not None,
                                    any(lk.image_base is not None for lk in (lock, *above)))
    problems += _pip_covers(recipe, lock, above)
    problems += _files_cover(recipe, lock)
    problems += _cran_covers(recipe, lock, above, debs)
    return problems


def _apt_archives_cover(lock: Lock, above: Sequence[Lock], debian_root: bool, image_root: bool) -> list[str]:
    """On a registry image, every .deb comes from the archives the chain's apt layers recorded."""
    if debian_root:  # a Debian root's archives are checked above; the per-layer table is not its
        return ["[[apt-archives]] belongs to layers on a registry image, not to a chain on a Debian root"] \
            if lock.apt_archives or lock.apt_in_image else []
    if not image_root or not lock.apt:  # (a chain whose root lock is not at hand: nothing to compare with)
        return []
    states = [lk.apt_archives for lk in (lock, *above) if lk.apt_archives]
    if not lock.apt_archives and not states:
        return ["[[apt]] is locked without [[apt-archives]] (the Debian archives it was resolved from)"]
    mirrors = sorted({a.mirror for state in states for a in state})
    return [f"apt package '{d.name}' comes from {d.mirror}, not from the chain's archives {' or '.join(mirrors)}"
            for d in lock.apt if d.mirror not in mirrors]


def _cran_covers(recipe: Recipe, lock: Lock, above: Sequence[Lock], debs: set[str]) -> list[str]:
    """Every [cran] package is pinned here or in the chain (Debian's r-cran-NAME counts); every URL is the repo's."""
    problems: list[str] = []
    pinned = {c.name for lk in (*above, lock) for c in lk.cran}
    for name in recipe.cran_packages:
        if name not in pinned and f"r-cran-{name.lower()}" not in debs:
            problems.append(f"R package '{name}' is not locked")
    if (lock.cran or recipe.cran_packages) and lock.cran_repo != recipe.cran_repo:
        problems.append(f"[cran-repo] is {lock.cran_repo!r}, the recipe's cran.repo is {recipe.cran_repo!r}")
    for c in lock.cran:
        if why := repo_relative_problem(c.url, recipe.cran_repo or ""):
            problems.append(f"R package '{c.name}' comes from {c.url}, not the recipe's cran.repo ({why})")
    return problems


def _archives(archives: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{mirror} {suite}" for mirror, suite in archives)


def _pip_covers(recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
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
    index = urlsplit(recipe.pip_index_url or "https://pypi.org/simple")
    for p in (*lock.pip, *([lock.pip_installer] if lock.pip_installer else [])):
        for f in p.files:
            if (why := local_reason(f.url)) and urlsplit(f.url)[:2] != index[:2]:
                problems.append(f"pip file {f.name} is to be read from this machine ({why}), "
                                f"which the recipe's index does not allow")
    return problems


def _files_cover(recipe: Recipe, lock: Lock) -> list[str]:
    problems: list[str] = []
    locked = {f.name: f for f in lock.files}
    for spec in recipe.files:
        f = locked.pop(spec.name, None)
        if f is None:
            problems.append(f"file '{spec.name}' ({spec.url}) is not locked")
        elif f.url != spec.url:
            problems.append(f"file '{spec.name}' is locked from {f.url}, the recipe says {spec.url}")
        elif spec.sha256 and f.sha256 != spec.sha256:
            problems.append(f"file '{spec.name}' is locked with sha256 {f.sha256}, the recipe pins {spec.sha256}")
        elif f.local != spec.local:
            problems.append(f"file '{spec.name}' has local = {str(f.local).lower()} in the lock, "
                            f"{str(spec.local).lower()} in the recipe")
    problems += [f"file '{name}' ({f.url}) is locked but not in the recipe" for name, f in sorted(locked.items())]
    return problems


def pip_closure(store: Store, chain_locks: Sequence[Lock], lock: Lock) -> list[str]:
    """Dependencies of ``lock``'s vendored wheels that no lock of the chain pins ("pkg needs dep").

    Markers are evaluated for the image's Python (``lock.python``) on Linux
    x86_64; a dependency met by a Debian package of the chain (``python3-NAME``)
    counts as met, since pip-compile inside the image saw it installed.
    """
    pins = {canonicalize_name(p.name): Version(p.version) for lk in chain_locks for p in lk.pip}
    debs = {d.name for lk in chain_locks for d in (*(lk.base.packages if lk.base else ()), *lk.apt)}
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
