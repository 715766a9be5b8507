"""A Debian root: the bootstrap package set of a suite/variant, pinned (``[base] debian = {...}``).

Its part of a recipe is ``DebianBase`` (``[base.debian]``), of a lock ``DebianBaseLock`` (``[base]``).

Its ``[apt]`` packages are the bootstrap's ``include``; its .debs are listed,
fetched and described like a layer's (``apt_layer``), and ``build.bootstrap``
installs them from the local repository ``bootstrap_repository`` makes, then
holds the result to them (``check_bootstrap``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from buildsys.core import names
from buildsys.core.errors import LockError, did_you_mean
from buildsys.core.store import Artifact, Store
from buildsys.ecosystems.apt import AptResolver, link_debs, make_local_repo
from buildsys.ecosystems.apt_sections import (
    DEB_NAMES,
    AptRecipe,
    AptSection,
    LockedArchive,
    LockedDeb,
    archive_snapshot,
    check_archives,
    check_debs,
    deb_artifacts,
    deb_component,
    deb_pin,
    debs_toml,
    dpkg_mismatch,
    release_date,
)
from buildsys.ecosystems.base import Component, Ecosystem, LockContext, Pin
from buildsys.ecosystems.deb_origin import DebOrigins, deb_license, distro
from buildsys.model.lockfile import Lock, LockSection
from buildsys.model.lockschema import SHA256, Check, LockValidator, Schema, matching, str_list, url_check
from buildsys.model.recipe import KeyPath, Recipe, RecipeSection, RecipeValidator

VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "standard")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Suites with no -updates or -security archive of their own (testing's security support is
# best effort and not in mmdebstrap's default either).
ROLLING_SUITES = ("sid", "unstable", "testing", "experimental")
_EXAMPLE = 'debian = { suite = "bookworm", variant = "minbase" }'


@dataclass(frozen=True)
class DebianBase(RecipeSection):
    """``[base] debian = { suite, variant, ... }``: a root bootstrapped from a Debian suite."""

    suite: str
    variant: str = "minbase"
    mirror: str = DEFAULT_MIRROR
    architecture: str = "amd64"
    components: tuple[str, ...] = ("main",)
    # An ordinary installation of a release gets its point-release updates and its
    # security fixes; a root does too unless the recipe opts out (updates/security = false).
    updates: bool = True
    security: bool = True
    security_mirror: str = DEFAULT_SECURITY_MIRROR

    KEY = "debian"
    ROOT = True
    SCHEMA = {
        "suite": "str",
        "variant": "str",
        "mirror": "str",
        "architecture": "str",
        "components": "str-list",
        "updates": "bool",
        "security": "bool",
        "security-mirror": "str",
    }
    EXAMPLE = _EXAMPLE

    @property
    def archives(self) -> tuple[tuple[str, str], ...]:
        """(mirror, suite) of every archive the root is resolved from, the suite itself first.

        As Debian's own sources (and mmdebstrap's default): SUITE-updates on the
        mirror, SUITE-security on the security mirror; rolling suites have neither.
        """
        out = [(self.mirror, self.suite)]
        if self.suite not in ROLLING_SUITES:
            if self.updates:
                out.append((self.mirror, f"{self.suite}-updates"))
            if self.security:
                out.append((self.security_mirror, f"{self.suite}-security"))
        return tuple(out)

    @classmethod
    def parse(cls, v: RecipeValidator, value: Any, key: KeyPath) -> Self:
        """``[base.debian]``: a suite, a known mmdebstrap variant and http(s) or file mirrors; the rest defaults."""
        d, at = value[cls.KEY], (*key, cls.KEY)
        if not d.get("suite"):
            raise v.fail((*at, "suite"), "is required", hint=f"e.g. {_EXAMPLE}")
        variant = d.get("variant", "minbase")
        if variant not in VARIANTS:
            raise v.fail((*at, "variant"),
                         f"unknown variant '{variant}'{did_you_mean(variant, VARIANTS)}",
                         hint=f"one of: {', '.join(VARIANTS)}")
        for mirror in ("mirror", "security-mirror"):
            if mirror in d:
                v.url((*at, mirror), d[mirror])
        return cls(
            suite=d["suite"],
            variant=variant,
            mirror=d.get("mirror", DEFAULT_MIRROR).rstrip("/"),
            architecture=d.get("architecture", "amd64"),
            components=tuple(d.get("components", ["main"])),
            updates=d.get("updates", True),
            security=d.get("security", True),
            security_mirror=d.get("security-mirror", DEFAULT_SECURITY_MIRROR).rstrip("/"),
        )

BASE: Schema = {
    "kind": (matching(re.compile("debian"), "'debian'"), True),
    "suite": (matching(names.SUITE, "a Debian suite"), True),
    "codename": (matching(names.SUITE, "a Debian codename"), False),
    "variant": (matching(re.compile(r"[a-z]+"), "an mmdebstrap variant"), True),
    "architecture": (matching(names.DEB_ARCH, "a Debian architecture"), True),
    "components": (str_list(matching(names.SUITE, "a component name")), True),
    "mirror": (url_check, True),
    "release-date": (release_date, True),
    "inrelease-sha256": (SHA256, True),
    "include": (DEB_NAMES, False),
    "packages": (None, False),
    "archives": (None, False),
}


@dataclass(frozen=True)
class DebianBaseLock(LockSection):
    """A Debian root's ``[base]``: the archive state it was resolved from and its bootstrap's .debs."""

    suite: str
    codename: str
    variant: str
    architecture: str
    components: tuple[str, ...]
    mirror: str
    release_date: str
    inrelease_sha256: str
    include: tuple[str, ...]  # the recipe's [apt] packages, given to the bootstrap
    packages: tuple[LockedDeb, ...]
    # Every archive resolved from, the suite itself first. A lock written before roots took
    # their updates has none: then it is the suite alone (the top-level fields).
    archives: tuple[LockedArchive, ...] = ()

    KEYS: ClassVar[Mapping[str, Check | None]] = {"base": None}  # shared with a registry root's [base.image]

    @property
    def all_archives(self) -> tuple[LockedArchive, ...]:
        return self.archives or (LockedArchive(self.mirror, self.suite, self.codename, self.release_date,
                                               self.inrelease_sha256),)

    def write(self) -> dict[str, Any]:
        d = {
            "architecture": self.architecture,
            "codename": self.codename,
            "components": list(self.components),
            "include": list(self.include),
            "inrelease-sha256": self.inrelease_sha256,
            "kind": "debian",
            "mirror": self.mirror,
            "packages": debs_toml(self.packages),
            "release-date": self.release_date,
            "suite": self.suite,
            "variant": self.variant,
        }
        if self.archives:
            d["archives"] = [a.to_toml() for a in self.archives]  # in resolution order, not sorted
        return {"base": d}

    @classmethod
    def present(cls, d: Mapping[str, Any]) -> bool:
        """A ``[base]`` that is not a registry root's ``[base.image]`` (one that is no table is checked here)."""
        return "base" in d and not (isinstance(d["base"], dict) and "image" in d["base"])

    @classmethod
    def validate(cls, v: LockValidator, d: Mapping[str, Any]) -> None:
        """``[base]`` of a Debian root, with its packages and the archives they came from."""
        base = d["base"]
        v.table(base, BASE, "[base]")
        check_debs(v, base.get("packages", []), "[[base.packages]]")
        check_archives(v, base.get("archives", []), "[[base.archives]]")

    @classmethod
    def read(cls, d: Mapping[str, Any]) -> Self:
        b = d["base"]
        return cls(suite=b["suite"], codename=b.get("codename", b["suite"]), variant=b["variant"],
                   architecture=b["architecture"], components=tuple(b["components"]), mirror=b["mirror"],
                   release_date=b["release-date"], inrelease_sha256=b["inrelease-sha256"],
                   include=tuple(b.get("include", [])),
                   packages=tuple(LockedDeb.from_toml(p) for p in b.get("packages", [])),
                   archives=tuple(LockedArchive.from_toml(a) for a in b.get("archives", [])))


def lock_debian_root(recipe: Recipe, cache_dir: Path) -> tuple[DebianBaseLock, int]:
    """Resolve what mmdebstrap would install; return the [base] table and its epoch.

    The epoch is the newest signed Release ``Date`` of the archives (the suite,
    its -updates and -security): every locked .deb was in its archive when
    that Release was signed, so no file in them is newer. It comes from the
    archives, never from the wall clock.
    """
    base = recipe.base
    assert isinstance(base, DebianBase)
    resolver = AptResolver(cache_dir, base.mirror, base.suite, base.components, base.architecture,
                           extra=base.archives[1:])
    try:
        release = resolver.update()
        releases = resolver.releases()
    except LockError as e:
        raise LockError(f"{recipe.path}: base.debian: {e.message}", e.hint) from e
    try:
        packages = resolver.bootstrap_set(base.variant, include=recipe.section(AptRecipe).packages)
    except LockError as e:
        raise LockError(f"{recipe.path}: apt.packages: {e.message}", e.hint) from e
    locked = tuple(
        LockedDeb(name=p.name, version=p.version, architecture=p.architecture, sha256=p.sha256, size=p.size,
                  path=p.filename, mirror=p.mirror or base.mirror)
        for p in packages
    )
    archives = tuple(LockedArchive(mirror=r.mirror, suite=r.suite, codename=r.codename, release_date=r.date,
                                   inrelease_sha256=r.inrelease_sha256, snapshot=archive_snapshot(r.mirror, r.epoch))
                     for r in releases)
    table = DebianBaseLock(
        suite=base.suite,
        codename=release.codename,
        variant=base.variant,
        architecture=base.architecture,
        components=tuple(base.components),
        mirror=base.mirror,
        release_date=release.date,
        inrelease_sha256=release.inrelease_sha256,
        include=tuple(sorted(recipe.section(AptRecipe).packages)),
        packages=locked,
        # A lock of the suite alone keeps the old form (no archives table): nothing changes for it.
        archives=archives if len(archives) > 1 else (),
    )
    return table, max(r.epoch for r in releases)


class DebianRoot(Ecosystem):
    name = "debian"
    agree_as = "apt"  # one namespace with the layers' [apt]: dpkg knows one version of a package

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        if not (recipe.is_root and isinstance(recipe.base, DebianBase)):
            return lock
        base, epoch = lock_debian_root(recipe, ctx.store.cache / "apt")
        return lock.with_sections(base, epoch=epoch)

    recipe_section = DebianBase
    lock_section = DebianBaseLock

    def artifacts(self, lock: Lock) -> list[Artifact]:
        base = lock.get(DebianBaseLock)
        return deb_artifacts(base.packages, base.all_archives, lock.source_date_epoch) if base else []

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        b = lock.get(DebianBaseLock)
        if b is None or not isinstance(recipe.base, DebianBase):
            return []
        problems: list[str] = []
        want = recipe.base
        for key, have, asked in (("suite", b.suite, want.suite), ("variant", b.variant, want.variant),
                                 ("architecture", b.architecture, want.architecture),
                                 ("mirror", b.mirror, want.mirror), ("components", b.components, want.components)):
            if have != asked:
                problems.append(f"[base] {key} is {have!r}, the recipe asks for {asked!r}")
        have_archives = [(a.mirror, a.suite) for a in b.all_archives]
        if have_archives != list(want.archives):
            problems.append(f"[base] is resolved from {_archives(have_archives)}, the recipe asks for "
                            f"{_archives(want.archives)}")
        include = sorted(recipe.section(AptRecipe).packages)
        if sorted(b.include) != include:
            problems.append(f"[base] include is {sorted(b.include)}, the recipe's [apt] is {include}")
        return problems

    def components(self, lock: Lock) -> list[Component]:
        return [deb_component(d) for d in sorted(root_debs(lock), key=lambda d: (d.name, d.architecture))]

    def chain_components(self, chain: Sequence[Lock]) -> list[Component]:
        base = chain[-1].get(DebianBaseLock)
        return DebOrigins(base.all_archives, debian_root=True).components(base.packages) if base else []

    def declared_license(self, component: Component, path: Path) -> str | None:
        return deb_license(component, path)

    def base_facts(self, chain: Sequence[Lock]) -> dict[str, str]:
        base = chain[0].get(DebianBaseLock)
        if base is None:
            return {}
        release = distro(base.all_archives, debian_root=True)
        return {"suite": base.suite, **({"distro": q} if release and (q := release.qualifier) else {})}

    def pins(self, lock: Lock) -> list[Pin]:
        return [deb_pin(d) for d in root_debs(lock)]

    def states(self, lock: Lock) -> list[Pin]:
        base = lock.get(DebianBaseLock)
        return [Pin("apt-archive", f"{a.mirror} {a.suite}", a.release_date, a.mirror)
                for a in (base.all_archives if base else ())]


def root_debs(lock: Lock) -> tuple[LockedDeb, ...]:
    """A Debian root's bootstrap set; () for any other lock."""
    base = lock.get(DebianBaseLock)
    return base.packages if base else ()


def locked_debs(lock: Lock) -> tuple[LockedDeb, ...]:
    """Every .deb a lock installs: a Debian root's bootstrap set, a layer's [apt]."""
    return (*root_debs(lock), *lock.section(AptSection).debs)


def bootstrap_repository(store: Store, lock: Lock, folder: Path) -> None:
    """The root's vendored .debs in ``folder`` as a flat apt repository of its suite, for mmdebstrap."""
    base = lock.get(DebianBaseLock)
    assert base is not None
    link_debs(store, lock.recipe, locked_debs(lock), folder)
    make_local_repo(folder, base.suite, base.codename)


def check_bootstrap(lock: Lock, installed: dict[str, str]) -> str | None:
    """How the bootstrapped root's dpkg packages differ from the lock's; None when they are the same."""
    return dpkg_mismatch(installed, {d.name: d.version for d in locked_debs(lock)})


def _archives(archives: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{mirror} {suite}" for mirror, suite in archives)


DEBIAN_ROOT = DebianRoot()
