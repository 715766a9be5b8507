"""``[apt]`` of a layer: Debian packages on top of a chain, as a flat repository in the build container.

apt resolves on this host with the parent chain's locked packages as the dpkg
status, from the same archive state as the chain's root (its InRelease hash):
a chain never mixes two states of the archive. On a registry image the image's
own dpkg status and Debian release take the place of a root lock
(``registry_apt``). A Debian root's ``[apt]`` is its bootstrap's ``include``
(``debian_root``); whether every requested package is locked is checked here
for both.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path

from buildsys.core import dpkg
from buildsys.core.errors import LockError
from buildsys.core.store import Artifact, Store
from buildsys.ecosystems.apt import (
    AptPackage,
    AptResolver,
    ReleaseInfo,
    SourceFailed,
    archive_moved,
    link_debs,
    make_local_repo,
)
from buildsys.ecosystems.apt_sections import (
    AptRecipe,
    AptSection,
    LockedDeb,
    LockedSource,
    deb_artifacts,
    deb_component,
    deb_pin,
    dpkg_mismatch,
)
from buildsys.ecosystems.apt_sources import (
    ChainSource,
    chain_sources,
    inherited_moved,
    own_locked,
    source_urls,
    sources_cover,
    unusable,
)
from buildsys.ecosystems.base import MOUNT, STEP_HEADER, STEP_MARKER, Component, Ecosystem, LockContext, Pin
from buildsys.ecosystems.deb_origin import DebOrigins, chain_archives, deb_license, distro
from buildsys.ecosystems.debian_root import DebianBaseLock, locked_debs
from buildsys.ecosystems.registry_apt import image_release, lock_apt_on_image
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe
from buildsys.oci.layer.tree import ParentTree

# dpkg's view after the install, printed between two of these: ``build`` compares it with the locks.
INSTALLED_MARKER = "::buildsys-installed::"


def chain_debs(locks: Sequence[Lock]) -> dict[str, LockedDeb]:
    """What a chain of layers has installed from Debian, by package name."""
    return {d.name: d for lk in locks for d in locked_debs(lk)}


def lock_apt(recipe: Recipe, root: Lock, ancestors: Sequence[Lock], store: Store,
             ) -> tuple[list[LockedDeb], tuple[LockedSource, ...], int]:
    """The closure of the recipe's apt packages minus what the ancestors installed, the recipe's own
    third-party sources as locked, and their newest Release date.

    The resolver sees the root's Debian archives and every third-party source of the chain.
    """
    apt = recipe.section(AptRecipe)
    if not apt.packages and not apt.sources:
        return [], (), 0
    cache = store.cache / "apt"
    base = root.get(DebianBaseLock)
    assert base is not None
    archives = base.all_archives
    chain = chain_sources(recipe, ancestors, store, cache)
    resolver = AptResolver(cache, base.mirror, base.suite, base.components, base.architecture,
                           extra=[(a.mirror, a.suite) for a in archives[1:]], third_party=[c.source for c in chain])
    try:
        debs, releases = _resolve(recipe, root, ancestors, resolver, chain, refresh=bool(apt.sources))
    except SourceFailed as e:
        raise unusable(recipe, chain, e) from e
    own = own_locked(chain, releases)
    return debs, own, max((r.epoch for c, r in zip(chain, releases, strict=True) if c.spec), default=0)


def _resolve(recipe: Recipe, root: Lock, ancestors: Sequence[Lock], resolver: AptResolver,
             sources: Sequence[ChainSource], refresh: bool) -> tuple[list[LockedDeb], list[ReleaseInfo]]:
    """Update the lists (fresh when the recipe brings its own sources), hold the chain to one state, resolve."""
    base = root.get(DebianBaseLock)
    assert base is not None
    archives = base.all_archives
    resolver.update(refresh=refresh)
    if not refresh and (archive_moved(resolver, archives)
                        or inherited_moved(recipe, sources, resolver.source_releases())):
        resolver.update(refresh=True)
    if moved := archive_moved(resolver, archives):
        locked, now = moved
        raise LockError(
            f"{recipe.path}: Debian's archive {locked.mirror} {locked.suite} changed since the root "
            f"'{root.recipe}' was locked (its Release: {locked.release_date}; now: {now}); a chain must not "
            "mix two archive states",
            f"relock from the root: `buildsys lock --upgrade {root.recipe} {recipe.name}`",
        )
    releases = resolver.source_releases()
    if why := inherited_moved(recipe, sources, releases):
        names = " ".join([*(lk.recipe for lk in ancestors if lk.section(AptSection).sources), recipe.name])
        raise LockError(f"{recipe.path}: {why}; a chain must not mix two states of a source",
                        f"relock the chain's apt layers together: `buildsys lock --upgrade {names}`")
    if not recipe.section(AptRecipe).packages:
        return [], releases
    installed = chain_debs(ancestors)
    with tempfile.TemporaryDirectory() as tmp:
        status = Path(tmp) / "status"
        resolver.write_status([AptPackage(name=d.name, version=d.version, architecture=d.architecture,
                                          sha256=d.sha256, size=d.size, filename=d.path)
                               for d in installed.values()], status)
        try:
            packages = resolver.resolve(recipe.section(AptRecipe).packages, status=status)
        except LockError as e:
            raise LockError(f"{recipe.path}: apt.packages: {e.message}", e.hint) from e
    return [LockedDeb(name=p.name, version=p.version, architecture=p.architecture, sha256=p.sha256, size=p.size,
                      path=p.filename, mirror=p.mirror or base.mirror) for p in packages], releases


def _origins(chain: Sequence[Lock]) -> DebOrigins:
    """The chain's archive state: a Debian root's, or the one its apt layers on a registry image recorded."""
    base = chain[0].get(DebianBaseLock)
    return DebOrigins(base.all_archives, debian_root=True) if base else DebOrigins(chain_archives(chain), False)


class Apt(Ecosystem):
    name = "apt"
    agree_as = "apt"
    recipe_section = AptRecipe
    lock_section = AptSection

    def prepare(self, ctx: LockContext) -> None:
        recipe = ctx.recipe
        if not recipe.section(AptRecipe).sources:
            return
        if recipe.is_root:
            raise LockError(f"{recipe.path}: apt.sources: a root takes no third-party sources (a Debian root is "
                            "bootstrapped from Debian's archive alone, a registry root is the image as it is)",
                            "move [[apt.sources]] and the packages from them to a child recipe")

    def lock(self, ctx: LockContext, lock: Lock) -> Lock:
        recipe = ctx.recipe
        if recipe.is_root:  # a Debian root's [apt] is its bootstrap's include (debian_root)
            return lock
        root = ctx.ancestors[0]
        image = root.get(ImageBaseLock)
        wanted = recipe.section(AptRecipe).packages
        sources = recipe.section(AptRecipe).sources
        if (wanted or sources) and image is not None:
            # The image's own packages are in no lock: read its dpkg status and release from the built parent.
            tree = ctx.parent_tree("to read its release and apt sources")
            release = image_release(recipe, image.reference, tree)
            ctx.progress(f"apt: {len(wanted)} packages against the image's dpkg status and "
                         + (f"its {len(release.sources)} apt sources" if release.sources
                            else f"Debian's {release.suite}") + f" ({release.pretty})")
            got = lock_apt_on_image(recipe, image, release, ctx.ancestors, ctx.store)
            return lock.with_sections(AptSection(tuple(got.debs), got.archives, got.in_image, got.sources),
                                      epoch=got.epoch)
        ctx.progress(f"apt: {len(wanted)} packages against the parent chain"
                     + (f" and {len(sources)} third-party sources" if sources else ""))
        debs, locked, epoch = lock_apt(recipe, root, ctx.ancestors, ctx.store)
        return lock.with_sections(AptSection(tuple(debs), sources=locked), epoch=epoch)

    def artifacts(self, lock: Lock) -> list[Artifact]:
        apt = lock.section(AptSection)
        keys = [a for s in apt.sources if (a := s.key_artifact()) is not None]
        return deb_artifacts(apt.debs, apt.archives, lock.source_date_epoch) + keys

    def stage(self, store: Store, recipe: Recipe, lock: Lock, folder: Path) -> list[str]:
        debs = lock.section(AptSection).debs
        if not debs:
            return []
        link_debs(store, recipe.name, debs, folder / "repo")
        make_local_repo(folder / "repo", "buildsys", "buildsys")
        (folder / "sources.list").write_text(f"deb [trusted=yes] file:{MOUNT}/repo ./\n")
        apt = (f"-o Dir::Etc::SourceList={MOUNT}/sources.list -o Dir::Etc::SourceParts=/nonexistent "
               "-o APT::Sandbox::User=root -o Acquire::Languages=none -o APT::Install-Recommends=false "
               "-o Dpkg::Use-Pty=0 -q")
        names = " ".join(shlex.quote(n) for n in sorted(recipe.section(AptRecipe).packages))
        # Two steps, each in a fresh PID namespace (build/steps.py): the index, then the install.
        return [
            STEP_HEADER + "\n".join([
                f"echo '{STEP_MARKER}apt: install {len(debs)} packages'",
                # No service may start inside a build container.
                "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
                f"apt-get {apt} update",
            ]) + "\n",
            STEP_HEADER + "\n".join([
                f"apt-get {apt} install -y {names}",
                "rm -f /usr/sbin/policy-rc.d",
                "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin",
                f"echo '{INSTALLED_MARKER}'",
                "dpkg-query -W -f '${db:Status-Abbrev} ${Package}=${Version}\\n' | awk '$1 == \"ii\" {print $2}'",
                f"echo '{INSTALLED_MARKER}'",
            ]) + "\n",
        ]

    def covers(self, recipe: Recipe, lock: Lock, above: Sequence[Lock]) -> list[str]:
        problems: list[str] = []
        debs = {d.name for lk in (lock, *above) for d in locked_debs(lk)}
        debs_or_image = debs | set(lock.section(AptSection).in_image)  # on a registry image: requested ones it has
        for pkg in recipe.section(AptRecipe).packages:
            if pkg.split(":", 1)[0] not in debs_or_image:
                problems.append(f"apt package '{pkg}' is not locked")
        root = next((base for lk in (lock, *above) if (base := lk.get(DebianBaseLock))), None)
        if root is not None:
            mirrors = sorted({a.mirror for a in root.all_archives})
            theirs = source_urls([lock, *above])  # a .deb of a third-party source names it as its mirror
            for d in locked_debs(lock):
                if d.mirror not in mirrors and d.mirror not in theirs:
                    problems.append(f"apt package '{d.name}' comes from {d.mirror}, not the root's mirror "
                                    f"{' or '.join(mirrors)}" + (" nor a source of the chain" if theirs else ""))
        problems += sources_cover(recipe, lock)
        return problems + _apt_archives_cover(lock, above, root is not None,
                                              any(lk.get(ImageBaseLock) is not None for lk in (lock, *above)))

    def check_built(self, chain: Sequence[Lock], output: str, below: ParentTree | None) -> str | None:
        """dpkg holds exactly the chain's locked packages (on a registry image: and what the image itself had)."""
        installed = installed_packages(output)
        if installed is None:
            return None
        expected: dict[str, str] = {}
        if chain[0].get(ImageBaseLock) is not None and below is not None:  # the image's own are in no lock
            expected.update(dpkg.installed(below.read("var/lib/dpkg/status") or b""))
        for lk in chain:
            expected.update({d.name: d.version for d in locked_debs(lk)})
        return dpkg_mismatch(installed, expected)

    def components(self, lock: Lock) -> list[Component]:
        debs = lock.section(AptSection).debs
        return [deb_component(d) for d in sorted(debs, key=lambda d: (d.name, d.architecture))]

    def chain_components(self, chain: Sequence[Lock]) -> list[Component]:
        return _origins(chain).components(chain[-1].section(AptSection).debs)

    def declared_license(self, component: Component, path: Path) -> str | None:
        return deb_license(component, path)

    def base_facts(self, chain: Sequence[Lock]) -> dict[str, str]:
        """On a registry image: the release its apt layers were resolved against (a Debian root says its own)."""
        if chain[0].get(DebianBaseLock) is not None or not (archives := chain_archives(chain)):
            return {}
        release = distro(archives, debian_root=False)
        return {"suite": archives[0].codename or archives[0].suite,
                **({"distro": q} if release and (q := release.qualifier) else {})}

    def pins(self, lock: Lock) -> list[Pin]:
        return [deb_pin(d) for d in lock.section(AptSection).debs]

    def states(self, lock: Lock) -> list[Pin]:
        apt = lock.section(AptSection)
        return ([Pin("apt-archive", f"{a.mirror} {a.suite}", a.release_date, a.mirror) for a in apt.archives]
                + [Pin("apt-source", f"{s.url} {s.suite}", s.release_date, s.url) for s in apt.sources])


def _apt_archives_cover(lock: Lock, above: Sequence[Lock], debian_root: bool, image_root: bool) -> list[str]:
    """On a registry image, every .deb comes from the archives the chain's apt layers recorded."""
    apt = lock.section(AptSection)
    if debian_root:  # a Debian root's archives are checked above; the per-layer table is not its
        return ["[[apt-archives]] belongs to layers on a registry image, not to a chain on a Debian root"] \
            if apt.archives or apt.in_image else []
    if not image_root or not apt.debs:  # (a chain whose root lock is not at hand: nothing to compare with)
        return []
    states = [lk.section(AptSection).archives for lk in (lock, *above) if lk.section(AptSection).archives]
    if not apt.archives and not states:
        return ["[[apt]] is locked without [[apt-archives]] (the Debian archives it was resolved from)"]
    mirrors = sorted({a.mirror for state in states for a in state})
    theirs = source_urls([lock, *above])  # a .deb of a third-party source names it as its mirror
    return [f"apt package '{d.name}' comes from {d.mirror}, not from the chain's archives {' or '.join(mirrors)}"
            + (" nor a source of the chain" if theirs else "") for d in apt.debs
            if d.mirror not in mirrors and d.mirror not in theirs]


def installed_packages(output: str) -> dict[str, str] | None:
    """``name -> version`` as dpkg-query printed it between the markers, if it did."""
    parts = output.split(INSTALLED_MARKER)
    if len(parts) < 3:
        return None
    pkgs = {}
    for line in parts[-2].strip().splitlines():
        name, _, version = line.strip().partition("=")
        if name and version:
            pkgs[name.split(":")[0]] = version
    return pkgs


APT = Apt()
