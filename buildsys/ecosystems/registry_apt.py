"""apt on a chain rooted on a registry image: Debian's archive of the image's own release.

A registry image comes with its own installed packages, which no lock of
ours lists. So the image is asked what it is, from the parent chain's
canonical layers as built (the same bytes every later build starts from):
``/etc/os-release`` says which Debian release it is (``ID=debian``, or an
``ID_LIKE`` of debian with a Debian ``VERSION_CODENAME``), and
``/var/lib/dpkg/status`` what is installed. The layer is then resolved as on a
Debian root: against the release, its ``-updates`` and its ``-security``
archive on deb.debian.org, each InRelease checked against Debian's keyring,
with the image's dpkg status as what is installed. The archive states are
recorded in the layer's ``[[apt-archives]]``; a later apt layer of the same
chain is resolved against the same states (one archive state per chain, as
for Debian roots). Anything else (Ubuntu, Alpine, an image without
os-release or without dpkg) is refused with a ``LockError`` naming it.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys.core import dpkg
from buildsys.core.errors import LockError
from buildsys.core.store import Store
from buildsys.ecosystems.apt import AptResolver, SourceFailed, archive_moved
from buildsys.ecosystems.apt_sections import AptRecipe, AptSection, LockedArchive, LockedDeb, LockedSource
from buildsys.ecosystems.apt_sources import chain_sources, inherited_moved, own_locked, unusable
from buildsys.ecosystems.debian_root import DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe
from buildsys.oci.layer.tree import ParentTree

# Codenames of Debian releases; a derivative whose ID_LIKE is debian counts only with one of these.
DEBIAN_CODENAMES = ("buster", "bullseye", "bookworm", "trixie", "forky", "duke")
# Docker's platform architecture -> Debian's.
_DEBIAN_ARCH = {"amd64": "amd64", "arm64": "arm64", "386": "i386", "ppc64le": "ppc64el", "s390x": "s390x",
                "riscv64": "riscv64", "arm/v7": "armhf", "arm/v5": "armel"}
_HINT = ("apt works only on Debian-based registry images for now: install what you need with pip or [[files]], "
         'or base the chain on [base] debian = { suite = "..." } and put the packages in [apt]')


class NotDebianImage(LockError):
    """An ``[apt]`` request on a registry image that is not a Debian release buildsys can resolve against."""

    def __init__(self, recipe: Recipe, reference: str, what: str) -> None:
        self.recipe, self.reference, self.what = recipe.name, reference, what
        super().__init__(f"{recipe.path}: [apt] on the registry image {reference}: {what}", _HINT)


@dataclass(frozen=True)
class ImageRelease:
    """What the parent image says it is."""

    suite: str  # the Debian codename, e.g. "bookworm"
    pretty: str  # PRETTY_NAME, for messages
    status: bytes  # /var/lib/dpkg/status


def parse_os_release(data: bytes) -> dict[str, str]:
    """``KEY=value`` lines, values unquoted as a shell would (os-release(5))."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        out[key] = " ".join(words)
    return out


def image_release(recipe: Recipe, reference: str, tree: ParentTree) -> ImageRelease:
    """The Debian release of the image ``tree`` holds, or a ``NotDebianImage`` saying what it is instead."""
    raw = tree.read("etc/os-release")
    if raw is None:
        raw = tree.read("usr/lib/os-release")
    if raw is None:
        raise NotDebianImage(recipe, reference, "the image has no /etc/os-release, so buildsys cannot tell which "
                                                "Debian release (if any) it is")
    osr = parse_os_release(raw)
    ident, like, codename = osr.get("ID", ""), osr.get("ID_LIKE", "").split(), osr.get("VERSION_CODENAME", "")
    pretty = osr.get("PRETTY_NAME") or osr.get("NAME") or ident or "an unnamed system"
    if not (ident == "debian" or ("debian" in like and codename in DEBIAN_CODENAMES)):
        raise NotDebianImage(recipe, reference, f"the image is {pretty} (ID={ident or '?'}"
                                                + (f", VERSION_CODENAME={codename}" if codename else "")
                                                + "), not a Debian release")
    if not codename or not osr.get("VERSION_ID"):
        raise NotDebianImage(recipe, reference, f"the image is {pretty}, which names no Debian release "
                                                "(VERSION_CODENAME and VERSION_ID; testing and sid images move "
                                                "daily and cannot be locked this way)")
    status = tree.read("var/lib/dpkg/status")
    if status is None:
        raise NotDebianImage(recipe, reference, f"the image says it is {pretty} but has no dpkg database "
                                                "(/var/lib/dpkg/status), so apt cannot install into it")
    return ImageRelease(suite=codename, pretty=pretty, status=status)


def chain_state(recipe: Recipe, ancestors: Sequence[Lock]) -> tuple[LockedArchive, ...]:
    """The archive state an earlier apt layer of the chain resolved against; () when none did."""
    states = {lk.section(AptSection).archives for lk in ancestors if lk.section(AptSection).archives}
    if len(states) > 1:
        names = sorted(lk.recipe for lk in ancestors if lk.section(AptSection).archives)
        raise LockError(f"{recipe.path}: the parent chain's apt layers ({', '.join(names)}) were resolved against "
                        "different states of Debian's archive; a chain must not mix two",
                        f"relock them together: `buildsys lock --upgrade {' '.join(names)} {recipe.name}`")
    return states.pop() if states else ()


@dataclass(frozen=True)
class ImageApt:
    """A layer's apt part on a registry image, as resolved."""

    debs: list[LockedDeb]
    archives: tuple[LockedArchive, ...]
    in_image: tuple[str, ...]  # requested packages the image already has
    epoch: int
    sources: tuple[LockedSource, ...] = ()  # the recipe's own [[apt.sources]], as locked


def lock_apt_on_image(recipe: Recipe, root: ImageBaseLock, release: ImageRelease, ancestors: Sequence[Lock],
                      store: Store) -> ImageApt:
    """Resolve the recipe's apt packages on the image, against Debian's archives of its release and the
    chain's third-party sources."""
    arch = _DEBIAN_ARCH.get(root.platform.split("/", 1)[1], "") if "/" in root.platform else ""
    if not arch:
        raise NotDebianImage(recipe, root.reference, f"its platform {root.platform} has no Debian architecture "
                                                     "buildsys knows")
    suite = release.suite
    extra = [(DEFAULT_MIRROR, f"{suite}-updates"), (DEFAULT_SECURITY_MIRROR, f"{suite}-security")]
    cache = store.cache / "apt"
    chain = chain_sources(recipe, ancestors, store, cache)
    own = bool(recipe.section(AptRecipe).sources)
    resolver = AptResolver(cache, DEFAULT_MIRROR, suite, ("main",), arch, extra=extra,
                           third_party=[c.source for c in chain])
    pinned = chain_state(recipe, ancestors)
    wanted = recipe.section(AptRecipe).packages
    where = f"{recipe.path}: [apt] on {root.reference} ({release.pretty})"
    try:
        if pinned:
            if [(a.mirror, a.suite) for a in pinned] != list(resolver.sources):
                raise LockError(f"{where}: the chain's earlier apt layer was resolved from "
                                f"{', '.join(a.mirror + ' ' + a.suite for a in pinned)}, this image is {suite}",
                                f"relock the chain: `buildsys lock --upgrade {recipe.name}` and its ancestors")
            resolver.update(refresh=own)  # a source of the recipe's own is read as it is now
            if not own and (archive_moved(resolver, pinned)
                            or inherited_moved(recipe, chain, resolver.source_releases())):
                resolver.update(refresh=True)
            if moved := archive_moved(resolver, pinned):
                locked, now = moved
                names = " ".join([*sorted(lk.recipe for lk in ancestors if lk.section(AptSection).archives),
                                   recipe.name])
                raise LockError(f"{where}: Debian's archive {locked.mirror} {locked.suite} changed since the "
                                f"chain's earlier apt layer was locked (its Release: {locked.release_date}; now: "
                                f"{now}); a chain must not mix two archive states",
                                f"relock the chain's apt layers together: `buildsys lock --upgrade {names}`")
        else:
            resolver.update(refresh=True)  # the first apt layer of the chain takes the archive as it is now
        releases = resolver.releases()
        source_releases = resolver.source_releases()
        if why := inherited_moved(recipe, chain, source_releases):
            raise LockError(f"{where}: {why}; a chain must not mix two states of a source",
                            f"relock the chain's apt layers together: `buildsys lock --upgrade {recipe.name}` and "
                            "its ancestors")
        with tempfile.TemporaryDirectory() as tmp:
            status = Path(tmp) / "status"
            status.write_bytes(release.status)
            packages = resolver.resolve(wanted, status=status)
    except SourceFailed as e:
        raise unusable(recipe, chain, e) from e
    except LockError as e:
        if e.message.startswith(where):
            raise
        raise LockError(f"{where}: {e.message}", e.hint) from e
    debs = [LockedDeb(name=p.name, version=p.version, architecture=p.architecture, sha256=p.sha256, size=p.size,
                      path=p.filename, mirror=p.mirror or DEFAULT_MIRROR) for p in packages]
    archives = tuple(LockedArchive(mirror=r.mirror, suite=r.suite, codename=r.codename, release_date=r.date,
                                   inrelease_sha256=r.inrelease_sha256) for r in releases)
    have = dpkg.installed(release.status)
    resolved = {d.name for d in debs}
    in_image = tuple(sorted({n for n in (p.split(":", 1)[0].split("=", 1)[0].split("/", 1)[0] for p in wanted)
                             if n in have and n not in resolved}))
    sources = own_locked(chain, source_releases)
    epochs = [r.epoch for r in releases] + [r.epoch for c, r in zip(chain, source_releases, strict=True) if c.spec]
    return ImageApt(debs, archives, in_image, max(epochs), sources)
