"""apt on a chain rooted on a registry image: the archives the image's own apt reads, with its own keys.

A registry image comes with its own installed packages, which no lock of
ours lists. So the image is asked what it is, from the parent chain's
canonical layers as built (the same bytes every later build starts from):
``/etc/os-release`` says which release of the Debian family it is (Debian,
Ubuntu, or an ``ID_LIKE`` of either), ``/var/lib/dpkg/status`` what is
installed, and its apt sources (``apt_image_sources``: sources.list, .list
and deb822 .sources files, ``signed-by`` keyrings or trusted.gpg.d) which
archives it installs from: Ubuntu's main/universe with -updates and
-security, Debian's, NVIDIA's flat CUDA repository in an nvidia/cuda image.
The layer is resolved against exactly those archives, each InRelease checked
against the keys the image itself trusts for it, with the image's dpkg status
as what is installed. A Debian image with no sources at all is resolved
against its release, -updates and -security on deb.debian.org with Debian's
keyring. The archive states are recorded in the layer's ``[[apt-archives]]``;
a later apt layer of the same chain is resolved against the same states (one
archive state per chain, as for Debian roots). Anything else (Alpine, an
image without os-release or without dpkg, sources buildsys cannot check) is
refused with a ``LockError`` naming it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys.core import dpkg
from buildsys.core.errors import LockError
from buildsys.core.store import Store
from buildsys.ecosystems.apt import AptResolver, ReleaseInfo, SourceFailed, ThirdPartySource
from buildsys.ecosystems.apt_image_sources import ImageSource, ImageSourcesError, describe, read_sources
from buildsys.ecosystems.apt_sections import (
    AptRecipe,
    AptSection,
    LockedArchive,
    LockedDeb,
    LockedSource,
    archive_snapshot,
)
from buildsys.ecosystems.apt_sources import chain_sources, inherited_moved, keyring_file, own_locked, unusable
from buildsys.ecosystems.debian_root import DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe
from buildsys.oci.layer.tree import ParentTree

# Codenames of Debian releases; a derivative whose ID_LIKE is debian counts only with one of these.
DEBIAN_CODENAMES = ("buster", "bullseye", "bookworm", "trixie", "forky", "duke")
# os-release IDs of the Debian family: apt and dpkg, the same resolution.
_FAMILY = ("debian", "ubuntu")
# Docker's platform architecture -> Debian's.
_DEBIAN_ARCH = {"amd64": "amd64", "arm64": "arm64", "386": "i386", "ppc64le": "ppc64el", "s390x": "s390x",
                "riscv64": "riscv64", "arm/v7": "armhf", "arm/v5": "armel"}
_HINT = ("apt works on registry images of the Debian family (Debian, Ubuntu and images like them, with dpkg and "
         "signed apt sources): install what you need with pip or [[files]], or base the chain on "
         '[base] debian = { suite = "..." } and put the packages in [apt]')


class NotDebianImage(LockError):
    """An ``[apt]`` request on a registry image that is not a Debian-family release buildsys can resolve against."""

    def __init__(self, recipe: Recipe, reference: str, what: str) -> None:
        self.recipe, self.reference, self.what = recipe.name, reference, what
        super().__init__(f"{recipe.path}: [apt] on the registry image {reference}: {what}", _HINT)


@dataclass(frozen=True)
class ImageRelease:
    """What the parent image says it is."""

    suite: str  # the release's codename, e.g. "bookworm", "jammy"
    pretty: str  # PRETTY_NAME, for messages
    status: bytes  # /var/lib/dpkg/status
    sources: tuple[ImageSource, ...] = ()  # what the image's apt reads; () for a Debian image with none


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
    """The Debian-family release of the image ``tree`` holds and its apt sources, or a ``NotDebianImage``
    saying what it is instead."""
    raw = tree.read("etc/os-release")
    if raw is None:
        raw = tree.read("usr/lib/os-release")
    if raw is None:
        raise NotDebianImage(recipe, reference, "the image has no /etc/os-release, so buildsys cannot tell which "
                                                "Debian release (if any) it is")
    osr = parse_os_release(raw)
    ident, like = osr.get("ID", ""), osr.get("ID_LIKE", "").split()
    codename = osr.get("VERSION_CODENAME") or osr.get("UBUNTU_CODENAME", "")
    pretty = osr.get("PRETTY_NAME") or osr.get("NAME") or ident or "an unnamed system"
    if not (ident in _FAMILY or set(like) & set(_FAMILY)):
        raise NotDebianImage(recipe, reference, f"the image is {pretty} (ID={ident or '?'}"
                                                + (f", VERSION_CODENAME={codename}" if codename else "")
                                                + "), not a release of the Debian family (Debian, Ubuntu)")
    if not codename or not osr.get("VERSION_ID"):
        raise NotDebianImage(recipe, reference, f"the image is {pretty}, which names no release "
                                                "(VERSION_CODENAME and VERSION_ID; testing and sid images move "
                                                "daily and cannot be locked this way)")
    status = tree.read("var/lib/dpkg/status")
    if status is None:
        raise NotDebianImage(recipe, reference, f"the image says it is {pretty} but has no dpkg database "
                                                "(/var/lib/dpkg/status), so apt cannot install into it")
    try:
        sources = tuple(read_sources(tree.read, tree.children))
    except ImageSourcesError as e:
        raise LockError(f"{recipe.path}: [apt] on the registry image {reference} ({pretty}): {e.message}",
                        e.hint) from e
    if not sources and not (ident == "debian" or codename in DEBIAN_CODENAMES):
        raise NotDebianImage(recipe, reference, f"the image is {pretty}, whose apt has no sources "
                                                "(/etc/apt/sources.list and sources.list.d are empty)")
    return ImageRelease(suite=codename, pretty=pretty, status=status, sources=sources)


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
    """Resolve the recipe's apt packages on the image, against the archives its own apt reads (or Debian's
    of its release) and the chain's third-party sources (``[[apt.sources]]``)."""
    arch = _DEBIAN_ARCH.get(root.platform.split("/", 1)[1], "") if "/" in root.platform else ""
    if not arch:
        raise NotDebianImage(recipe, root.reference, f"its platform {root.platform} has no Debian architecture "
                                                     "buildsys knows")
    cache = store.cache / "apt"
    chain = chain_sources(recipe, ancestors, store, cache)
    own = bool(recipe.section(AptRecipe).sources)
    pinned = chain_state(recipe, ancestors)
    wanted = recipe.section(AptRecipe).packages
    where = f"{recipe.path}: [apt] on {root.reference} ({release.pretty})"
    try:
        resolver, n = image_resolver(cache, arch, release, [c.source for c in chain])
        if pinned:
            if [(a.mirror, a.suite) for a in pinned] != archives_of(resolver, n):
                raise LockError(f"{where}: the chain's earlier apt layer was resolved from "
                                f"{', '.join(a.mirror + ' ' + a.suite for a in pinned)}, this image reads "
                                f"{', '.join(m + ' ' + x for m, x in archives_of(resolver, n))}",
                                f"relock the chain: `buildsys lock --upgrade {recipe.name}` and its ancestors")
            resolver.update(refresh=own)  # a source of the recipe's own is read as it is now
            if not own and (moved_archive(resolver, pinned, n)
                            or inherited_moved(recipe, chain, source_releases(resolver, n))):
                resolver.update(refresh=True)
            if moved := moved_archive(resolver, pinned, n):
                locked, now = moved
                names = " ".join([*sorted(lk.recipe for lk in ancestors if lk.section(AptSection).archives),
                                   recipe.name])
                raise LockError(f"{where}: the archive {locked.mirror} {locked.suite} changed since the "
                                f"chain's earlier apt layer was locked (its Release: {locked.release_date}; now: "
                                f"{now}); a chain must not mix two archive states",
                                f"relock the chain's apt layers together: `buildsys lock --upgrade {names}`")
        else:
            resolver.update(refresh=True)  # the first apt layer of the chain takes the archive as it is now
        releases = image_releases(resolver, n)
        theirs = source_releases(resolver, n)
        if why := inherited_moved(recipe, chain, theirs):
            raise LockError(f"{where}: {why}; a chain must not mix two states of a source",
                            f"relock the chain's apt layers together: `buildsys lock --upgrade {recipe.name}` and "
                            "its ancestors")
        with tempfile.TemporaryDirectory() as tmp:
            status = Path(tmp) / "status"
            status.write_bytes(release.status)
            packages = resolver.resolve(wanted, status=status) if wanted else []
    except SourceFailed as e:
        err = unusable(recipe, chain, e)
        if err is e:  # one of the image's own sources: its keys are the image's
            raise LockError(f"{where}: {e.message}", "the image's apt would refuse this source too: check its "
                                                     "signed-by keyring, or base the chain on a newer image") from e
        raise err from e
    except LockError as e:
        if e.message.startswith(where):
            raise
        hint = e.hint
        if release.sources and e.message.startswith("signature check of "):
            hint = (f"the keys the image trusts for it ({_key_names(release.sources)}) do not sign it: the image's "
                    "own apt would refuse it too; base the chain on an image with a current keyring")
        raise LockError(f"{where}: {e.message}", hint) from e
    debs = [LockedDeb(name=p.name, version=p.version, architecture=p.architecture, sha256=p.sha256, size=p.size,
                      path=p.filename, mirror=p.mirror or DEFAULT_MIRROR) for p in packages]
    archives = tuple(LockedArchive(mirror=r.mirror, suite=r.suite, codename=r.codename, release_date=r.date,
                                   inrelease_sha256=r.inrelease_sha256, snapshot=archive_snapshot(r.mirror, r.epoch))
                     for r in releases)
    have = dpkg.installed(release.status)
    resolved = {d.name for d in debs}
    in_image = tuple(sorted({n for n in (p.split(":", 1)[0].split("=", 1)[0].split("/", 1)[0] for p in wanted)
                             if n in have and n not in resolved}))
    sources = own_locked(chain, theirs)
    epochs = [r.epoch for r in releases] + [r.epoch for c, r in zip(chain, theirs, strict=True) if c.spec]
    return ImageApt(debs, archives, in_image, max(epochs), sources)


def image_resolver(cache: Path, arch: str, release: ImageRelease,
                   chain: Sequence[ThirdPartySource]) -> tuple[AptResolver, int]:
    """apt over exactly the image's sources, then the chain's own third-party sources; and how many of the
    resolver's third-party sources are the image's (recorded as its archives, not as ``[[apt-sources]]``).

    The image's first suite-style source is the release, every other one beside it with its own keys (a
    flat repository's ``/`` as apt also reads it, ``./``). A Debian image without sources: its release,
    -updates and -security on deb.debian.org, with Debian's keyring.
    """
    if not release.sources:
        suite = release.suite
        extra = [(DEFAULT_MIRROR, f"{suite}-updates"), (DEFAULT_SECURITY_MIRROR, f"{suite}-security")]
        return AptResolver(cache, DEFAULT_MIRROR, suite, ("main",), arch, extra=extra, third_party=chain), 0
    sources = release.sources
    primary = next((s for s in sources if not s.flat), None)
    if primary is None:
        raise LockError(f"the image's apt reads only flat repositories ({describe(sources)})",
                        "a release archive (a suite with components) is needed beside them")
    others = [ThirdPartySource(s.uri.rstrip("/") if s.flat else s.uri, "./" if s.suite == "/" else s.suite,
                               s.components, _keyring(cache, s.keys))
              for s in sources if s is not primary and (s.architectures == () or arch in s.architectures)]
    resolver = AptResolver(cache, primary.uri, primary.suite, primary.components, arch,
                           keyring=_keyring(cache, primary.keys), third_party=[*others, *chain])
    return resolver, len(others)


def _key_names(sources: Sequence[ImageSource]) -> str:
    names = dict.fromkeys(n for s in sources for n in s.key_names)
    return ", ".join(list(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def archives_of(resolver: AptResolver, n: int) -> list[tuple[str, str]]:
    """(url, suite) of the image's archives the resolver reads, in the order their states are recorded."""
    return [*resolver.sources, *((s.url, s.suite) for s in resolver.third_party[:n])]


def image_releases(resolver: AptResolver, n: int) -> list[ReleaseInfo]:
    return [*resolver.releases(), *(resolver.source_releases()[:n] if n else [])]


def source_releases(resolver: AptResolver, n: int) -> list[ReleaseInfo]:
    """The Release states of the chain's ``[[apt.sources]]`` (after the image's own)."""
    return resolver.source_releases()[n:] if len(resolver.third_party) > n else []


def moved_archive(resolver: AptResolver, archives: Sequence[LockedArchive],
                  n: int) -> tuple[LockedArchive, str] | None:
    """The first archive whose signed Release is not the one a chain was locked against, and its date now."""
    for locked, now in zip(archives, image_releases(resolver, n), strict=True):
        if now.inrelease_sha256 != locked.inrelease_sha256:
            return locked, now.date
    return None


_ARMORED = re.compile(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S)


def dearmor(data: bytes) -> bytes:
    """An OpenPGP key file as binary packets (what ``gpg --dearmor`` writes); binary input as it is."""
    blocks = _ARMORED.findall(data)
    if not blocks:
        return data
    out = b""
    for block in blocks:
        lines = block.decode("ascii", "replace").splitlines()
        if "" in lines and any(":" in ln for ln in lines[:lines.index("")]):  # armor headers (Version: ...)
            lines = lines[lines.index("") + 1:]
        body = "".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith("="))
        out += base64.b64decode(body)
    return out


def _keyring(cache: Path, keys: Sequence[bytes]) -> Path:
    """The image's keys for one source as one binary keyring under the cache, named by its content."""
    data = b"".join(dearmor(k) for k in keys)
    return keyring_file(cache, hashlib.sha256(data).hexdigest(), data)
