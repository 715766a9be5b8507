"""Third-party apt repositories of a chain (``[[apt.sources]]``): their keys, their signed states.

A layer's apt resolution sees the Debian archives of its root plus every
third-party source of the chain: the recipe's own (``[[apt.sources]]``) and
those its ancestors' locks recorded (``[[apt-sources]]``), each with its own
``signed-by`` key. A key is a file pinned by sha256: downloaded once (a URL
key's sha256 must be in the recipe) or read from the project (``path``), put
in the vendor store under its hash, and copied into the resolver's private
tree as ``KEYSHA.asc`` (armored) or ``KEYSHA.gpg`` (binary): apt reads both by
the extension, so no ``gpg --dearmor`` is needed. A relock, and a child's lock,
read the key from the vendor store; ``fetch`` vendors URL keys like any
artifact.

One state per chain, as for Debian's archives: a child resolves against its
ancestors' sources only while their InRelease is the one the ancestor locked.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys.core import net
from buildsys.core.errors import LockError
from buildsys.core.store import Store, atomic_write
from buildsys.ecosystems.apt import ReleaseInfo, SourceFailed, ThirdPartySource
from buildsys.ecosystems.apt_sections import AptRecipe, AptSection, AptSourceSpec, LockedSource
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe

KEY_CAP = 1 << 20  # a vendor's key is a few KiB; a keyring of every Debian key ~400 KiB
_ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
# The first byte of a binary key: a Public-Key packet (tag 6), old format (1- or 2-byte length) or new.
_BINARY_KEY = (0x98, 0x99, 0xC6)


class KeyProblem(LockError):
    """A source's key cannot be had, is not the pinned one, or is not an OpenPGP public key."""

    def __init__(self, recipe: Recipe, key: str, problem: str, hint: str) -> None:
        self.recipe, self.key = recipe.name, key
        super().__init__(f"{recipe.path}: {key}: {problem}", hint)


class SourceUnusable(LockError):
    """apt refused a third-party source at lock time; names the recipe, the source and its key."""

    def __init__(self, recipe: Recipe, source: ChainSource, failure: SourceFailed) -> None:
        self.recipe, self.url, self.key = recipe.name, source.source.url, source.key
        hint = ("the key does not sign this repository: check that the pinned key is the vendor's current one "
                "(its sha256 and fingerprint on the vendor's page)" if "not signed" in failure.what else
                "the repository is broken or being synced; try again later, or ask its owner"
                if "hashes" in failure.what else
                "is the URL right, and the repository reachable from here? (curl -I URL/InRelease)")
        super().__init__(f"{recipe.path}: {source.where} ({source.source.url} {source.source.suite}, key "
                         f"{source.key}): {failure.what}:\n{failure.detail}", hint)


@dataclass(frozen=True)
class ChainSource:
    """A third-party source as the resolver takes it, and where it comes from (for messages and the lock)."""

    source: ThirdPartySource
    where: str  # "apt.sources[0]", or "[[apt-sources]] #1 of parent 'tools'"
    key: str  # how messages name the key
    key_sha256: str
    key_size: int
    spec: AptSourceSpec | None = None  # the recipe's own source
    locked: LockedSource | None = None  # an ancestor's


def _check_key(recipe: Recipe, key: str, data: bytes, pinned: str | None, origin: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    if pinned and sha != pinned:
        raise KeyProblem(recipe, key, f"the key read from {origin} has sha256 {sha}, the recipe pins {pinned}",
                         "nothing was written; if the vendor rotated its key, check the new one's fingerprint "
                         "on the vendor's own page, then pin its sha256")
    if not (data.lstrip().startswith(_ARMOR) or (data[:1] and data[0] in _BINARY_KEY)):
        raise KeyProblem(recipe, key, f"{origin} is not an OpenPGP public key (neither ASCII-armored nor binary)",
                         "name the vendor's signing key (.asc, .pub or .gpg), not a page about it")
    return sha


def _download(recipe: Recipe, key: str, url: str, local: bool) -> bytes:
    client = net.Client(net.Policy(local_ok=local), attempts=3)
    try:
        with client.send("GET", url) as resp:
            if resp.status_code >= 400:
                raise KeyProblem(recipe, key, f"{url} answered HTTP {resp.status_code}",
                                 "check the key's URL on the vendor's page")
            data = resp.reader(KEY_CAP, url).read()
    except net.URLRefused as e:
        raise KeyProblem(recipe, key, f"{url} led to {e.url}, which buildsys refuses: {e.reason}",
                         "pin the final URL, or add local = true to the key if this machine is meant") from e
    except net.NetError as e:
        raise KeyProblem(recipe, key, f"cannot download {url}: {e.message}",
                         "check the URL and the network (a key already vendored needs neither)") from e
    finally:
        client.close()
    return bytes(data)


def _vendored(store: Store, sha: str | None) -> bytes | None:
    if not sha:
        return None
    path = store.vendor_path(sha)
    if not path.is_file():
        return None
    data = path.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == sha else None


def keyring_file(cache: Path, sha: str, data: bytes) -> Path:
    """The key where the resolver's sources.list names it; the extension tells apt how to read it."""
    path = cache / "keys" / f"{sha}{'.asc' if data.lstrip().startswith(_ARMOR) else '.gpg'}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    return path


def _own(recipe: Recipe, i: int, spec: AptSourceSpec, store: Store, cache: Path) -> ChainSource:
    key = f"apt.sources[{i}].key"
    data = _vendored(store, spec.key.sha256)
    origin = spec.key.describe()
    if data is None:
        if spec.key.url is not None:
            data = _download(recipe, key, spec.key.url, spec.key.local)
        else:
            assert spec.key.path is not None
            path = recipe.path.parent.parent / spec.key.path
            try:
                data = path.read_bytes()[: KEY_CAP + 1]
            except OSError as e:
                raise KeyProblem(recipe, key, f"cannot read {path}: {e.strerror}", "check the path") from e
    sha = _check_key(recipe, key, data, spec.key.sha256, origin)
    store.vendor_stream(io.BytesIO(data), "key-")
    src = ThirdPartySource(spec.url, spec.suite, spec.components, keyring_file(cache, sha, data))
    return ChainSource(src, f"apt.sources[{i}]", f"{key} ({origin}, sha256 {sha[:12]}…)", sha, len(data), spec=spec)


def _inherited(recipe: Recipe, parent: Lock, i: int, locked: LockedSource, store: Store,
               cache: Path) -> ChainSource:
    where = f"[[apt-sources]] #{i + 1} of parent '{parent.recipe}'"
    key = f"{where}: key"
    data = _vendored(store, locked.key_sha256)
    if data is None and locked.key_url is not None:
        data = _download(recipe, key, locked.key_url, locked.key_local)
    elif data is None and locked.key_path is not None:
        path = recipe.path.parent.parent / locked.key_path
        data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise KeyProblem(recipe, key, f"the key of {locked.url} is neither in the vendor store nor readable",
                         f"run `buildsys fetch {parent.recipe}`, or relock `{parent.recipe}`")
    sha = _check_key(recipe, key, data, locked.key_sha256, locked.key_url or locked.key_path or "the store")
    src = ThirdPartySource(locked.url, locked.suite, locked.components, keyring_file(cache, sha, data))
    return ChainSource(src, where, f"{key} (sha256 {sha[:12]}…)", sha, len(data), locked=locked)


def chain_sources(recipe: Recipe, ancestors: Sequence[Lock], store: Store, cache: Path) -> list[ChainSource]:
    """The ancestors' sources (oldest first), then the recipe's own; a source listed again is taken once."""
    out: list[ChainSource] = []
    seen: set[tuple[str, str]] = set()
    for lk in ancestors:
        for i, locked in enumerate(lk.section(AptSection).sources):
            if (locked.url, locked.suite) not in seen:
                seen.add((locked.url, locked.suite))
                out.append(_inherited(recipe, lk, i, locked, store, cache))
    for i, spec in enumerate(recipe.section(AptRecipe).sources):
        if (spec.url, spec.suite) in seen:
            raise LockError(f"{recipe.path}: apt.sources[{i}]: {spec.url} {spec.suite} is already a source of the "
                            "parent chain", "drop it here: a child resolves against its ancestors' sources")
        seen.add((spec.url, spec.suite))
        out.append(_own(recipe, i, spec, store, cache))
    return out


def unusable(recipe: Recipe, chain: Sequence[ChainSource], failure: SourceFailed) -> LockError:
    """The resolver's ``SourceFailed`` as the error a person reads: the recipe, where the source is, its key."""
    for c in chain:
        if c.source.url == failure.source.url and c.source.suite == failure.source.suite:
            return SourceUnusable(recipe, c, failure)
    return failure


def inherited_moved(recipe: Recipe, chain: Sequence[ChainSource], releases: Sequence[ReleaseInfo]) -> str | None:
    """How an ancestor's source moved since it was locked (a chain must not mix two states), or None."""
    for c, now in zip(chain, releases, strict=True):
        if c.locked is not None and now.inrelease_sha256 != c.locked.inrelease_sha256:
            return (f"{c.where} ({c.locked.url} {c.locked.suite}) changed since it was locked (its Release: "
                    f"{c.locked.release_date}; now: {now.date})")
    return None


def own_locked(chain: Sequence[ChainSource], releases: Sequence[ReleaseInfo]) -> tuple[LockedSource, ...]:
    """The recipe's own sources for its lock: key and signed state, in the recipe's order."""
    out = []
    for c, r in zip(chain, releases, strict=True):
        if c.spec is None:
            continue
        out.append(LockedSource(url=c.spec.url, suite=c.spec.suite, components=c.spec.components,
                                key_sha256=c.key_sha256, key_size=c.key_size, key_url=c.spec.key.url,
                                key_path=c.spec.key.path, release_date=r.date, inrelease_sha256=r.inrelease_sha256,
                                key_local=c.spec.key.local))
    return tuple(out)


def sources_cover(recipe: Recipe, lock: Lock) -> list[str]:
    """The lock's [[apt-sources]] are the recipe's [[apt.sources]], entry by entry."""
    problems = []
    locked = {(s.url, s.suite): s for s in lock.section(AptSection).sources}
    for i, spec in enumerate(recipe.section(AptRecipe).sources):
        s = locked.pop((spec.url, spec.suite), None)
        if s is None:
            problems.append(f"apt.sources[{i}] ({spec.url} {spec.suite}) is not locked")
        elif s.components != spec.components:
            problems.append(f"apt.sources[{i}] is locked with components {list(s.components)}, the recipe has "
                            f"{list(spec.components)}")
        elif (s.key_url, s.key_path, s.key_local) != (spec.key.url, spec.key.path, spec.key.local):
            problems.append(f"apt.sources[{i}].key is locked as {s.key_url or s.key_path}, the recipe names "
                            f"{spec.key.describe()}")
        elif spec.key.sha256 and s.key_sha256 != spec.key.sha256:
            problems.append(f"apt.sources[{i}].key is locked with sha256 {s.key_sha256}, the recipe pins "
                            f"{spec.key.sha256}")
    return problems + [f"apt source {url} {suite} is locked but not in the recipe" for url, suite in sorted(locked)]


def source_urls(locks: Sequence[Lock]) -> set[str]:
    """The URLs of every third-party source the locks recorded (a .deb of theirs names one as its mirror)."""
    return {s.url for lk in locks for s in lk.section(AptSection).sources}
