"""Resolve Debian packages to exact, hash-pinned .debs with apt itself.

apt runs as an adapter at the edge: a private configuration tree per
(mirror, suite, components, architecture, keyring) under the store's cache,
pointed to by ``APT_CONFIG``, so nothing of the host's ``/etc/apt`` (extra
repositories, proxies, apt.conf.d snippets, trusted keys) leaks into a lock,
and the host's apt and dpkg state is never touched. apt checks the InRelease
signature against the keyring named in ``signed-by``; a bad one is an error.

The bootstrap set is computed the way mmdebstrap computes it (see
``/usr/bin/mmdebstrap``, ``run_download`` and ``run_install``): first the
``Essential: yes`` packages from an empty status, then, on top of those as
installed, the priority set of the variant and the ``--include`` packages.
For bookworm one apt run over both gives the same sets (measured for
essential, apt, minbase, buildd, standard), but apt may choose another
alternative of a dependency once the essential set is installed, so the two
stages are kept as mmdebstrap has them.

At build time the other way round: the locked .debs, from the vendor store,
become a flat local repository that apt (or mmdebstrap) installs from with no
network (``link_debs``, ``make_local_repo``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote, unquote

from debian import deb822

from buildsys.core import mirrors, names
from buildsys.core.errors import BuildError, LockError, NotVendored, ToolMissing, did_you_mean
from buildsys.core.store import Artifact, Store
from buildsys.ecosystems.apt_sections import LockedArchive, LockedDeb

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# Suggested when a suite has no Release file; the archive itself cannot be
# listed portably (dists/ is an HTML index on some mirrors, absent on others).
KNOWN_SUITES = (
    "buster", "bullseye", "bookworm", "trixie", "forky", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable", "experimental",
    "bullseye-updates", "bookworm-updates", "trixie-updates",
    "bullseye-backports", "bookworm-backports", "trixie-backports",
)  # fmt: skip

# mmdebstrap's variants; minbase is its alias of required, debootstrap of important.
VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "standard")
_PRIORITY_PATTERNS = {
    "required": "?and(?priority(required),?not(?essential))",
    "buildd": "?and(?priority(required),?not(?essential))",
    "important": "?and(?or(?priority(required),?priority(important)),?not(?essential))",
    "standard": "?and(?or(?priority(required),?priority(important),?priority(standard)),?not(?essential))",
}

# A package as apt-get takes it: name, optional :arch, optional =version or /release.
_PKG_RE = re.compile(rf"{names.DEB_NAME_ARCH.pattern}(=[A-Za-z0-9.+~:-]+|/[A-Za-z0-9.+~-]+)?")
_SUITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$")
_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A flat repository's directory as a sources.list names it: "./", or a path ending in "/" (CRAN's "bookworm-cran40/").
_FLAT_DIR_RE = re.compile(r"^(\./|[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*/)$")
# "Inst libc6 [2.36-9] (2.36-9+deb12u14 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64]) []"
_INST_RE = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) (.*)\[([^\]]+)\]\)")
# "'http://deb.debian.org/debian-security/pool/updates/…/tzdata_2026f-0%2bdeb12u1_all.deb' tzdata_… 307832 SHA256:…"
# apt names the strongest hash the index has: SHA512 where a repository lists it (apt-ftparchive's do).
_URI_RE = re.compile(r"^'([^']+)' (\S+) (\d+) (SHA256|SHA512|SHA1|MD5Sum):([0-9a-fA-F]+)$")
_REMV_RE = re.compile(r"^Remv (\S+)")
_SIGNATURE_RE = re.compile(r"NO_PUBKEY|BADSIG|EXPKEYSIG|GPG error|is not signed|signatures (were invalid|couldn't be)")

# Fields of an archive stanza that have no place in a dpkg status file.
_ARCHIVE_ONLY = {"Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512", "Description-md5", "Tag"}


class UnknownSuite(LockError):
    def __init__(self, suite: str, mirror: str) -> None:
        self.suite, self.mirror = suite, mirror
        super().__init__(
            f"suite '{suite}' does not exist on {mirror} (apt found no Release file)"
            + did_you_mean(suite, KNOWN_SUITES),
            f"known Debian suites include: {', '.join(KNOWN_SUITES[:12])}; see {mirror.rstrip('/')}/dists/",
        )


class UnknownPackage(LockError):
    def __init__(self, package: str, mirror: str, suite: str, detail: str = "no such package") -> None:
        self.package, self.mirror, self.suite = package, mirror, suite
        super().__init__(
            f"apt package '{package}': {detail} in {mirror} {suite}",
            "check the name (`apt-cache search` on a Debian machine, or https://packages.debian.org), "
            "and that the suite and components hold it",
        )


class AptFailed(LockError):
    """apt refused; carries the command and apt's own words."""

    def __init__(self, what: str, output: str, hint: str | None = None) -> None:
        self.output = output
        tail = "\n".join(f"  | {ln}" for ln in output.strip().splitlines()[-20:])
        super().__init__(f"{what} failed:\n{tail}" if tail else f"{what} failed", hint)


class SourceFailed(LockError):
    """``apt-get update`` failed for a third-party source: its signature, an index, the repository itself."""

    def __init__(self, source: ThirdPartySource, what: str, output: str) -> None:
        self.source, self.what, self.output = source, what, output
        lines = [ln for ln in output.splitlines() if source.url in ln] or output.strip().splitlines()[-5:]
        self.detail = "\n".join(f"  | {ln.strip()}" for ln in lines[:6])
        super().__init__(f"{source.url} {source.suite}: {what}:\n{self.detail}")


@dataclass(frozen=True)
class ThirdPartySource:
    """A repository beside Debian's archives (NVIDIA's, CRAN's, Posit's), with its own ``signed-by`` key.

    ``suite`` is a suite of a ``dists/`` archive (then ``components`` are listed), or a flat
    repository's directory ending in ``/`` (``./``; no components), as a sources.list line has them.
    """

    url: str
    suite: str
    components: tuple[str, ...]
    keyring: Path  # an OpenPGP key file: .asc (armored) or .gpg (binary); apt reads both by extension

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")

    def line(self, url: str | None = None) -> str:
        """Its sources.list line; ``url``: where apt reads it from instead (a configured mirror)."""
        return (f"deb [signed-by={self.keyring}] {url or self.url} {self.suite} {' '.join(self.components)}".rstrip()
                + "\n")


@dataclass(frozen=True)
class AptPackage:
    """One binary package, pinned to the exact .deb in the archive."""

    name: str
    version: str
    architecture: str
    sha256: str
    size: int
    filename: str  # archive path: pool/main/a/apt/apt_2.6.1_amd64.deb
    priority: str = "optional"
    essential: bool = False
    mirror: str = ""  # the archive it comes from (a root may use several: the suite, -updates, -security)

    @property
    def deb_name(self) -> str:
        return PurePosixPath(self.filename).name

    def url(self, mirror: str) -> str:
        # Quoted as apt does ('+' -> %2B): some object-store mirrors read a raw '+' as a space.
        return f"{mirror.rstrip('/')}/{quote(self.filename, safe='/')}"

    def artifact(self, mirror: str) -> Artifact:
        return Artifact(
            kind="deb",
            name=self.name,
            version=self.version,
            filename=self.deb_name,
            sha256=self.sha256,
            size=self.size,
            urls=(self.url(mirror),),
        )


@dataclass(frozen=True)
class ReleaseInfo:
    """What the signed InRelease file said when the lists were last updated."""

    mirror: str
    suite: str
    codename: str
    date: str  # the Release 'Date:' field, verbatim
    epoch: int  # that date in Unix seconds
    inrelease_sha256: str
    components: tuple[str, ...]
    architecture: str
    version: str = ""  # e.g. "12.15"; empty for suites without one (sid)
    archive: str = ""  # the Release's Suite field (oldstable-security), as apt names origins


class AptResolver:
    """apt-get and apt-cache with a private configuration; needs no root.

    ``mirror``/``suite`` is the release; ``extra`` adds archives of it that apt
    takes as well (``(mirror, "bookworm-updates")``, ``(security, "bookworm-security")``):
    apt then picks each package's candidate across all of them, as on a
    Debian machine with those sources.
    """

    def __init__(
        self,
        cache_dir: Path,
        mirror: str,
        suite: str,
        components: Sequence[str] = ("main",),
        architecture: str = "amd64",
        *,
        keyring: Path = DEBIAN_KEYRING,
        extra: Sequence[tuple[str, str]] = (),
        third_party: Sequence[ThirdPartySource] = (),
    ) -> None:
        for _, s in ((mirror, suite), *extra):
            if not _SUITE_RE.match(s):
                raise LockError(f"invalid Debian suite name {s!r}")
        for word in (*components, architecture):
            if not _WORD_RE.match(word):
                raise LockError(f"invalid Debian component or architecture name {word!r}")
        if not components:
            raise LockError("no Debian components given", 'use components = ["main"]')
        for src in third_party:
            if not (_FLAT_DIR_RE.match(src.suite) if src.flat else _SUITE_RE.match(src.suite)):
                raise LockError(f"invalid suite or flat directory {src.suite!r} of {src.url}")
            if src.flat == bool(src.components) or not all(_WORD_RE.match(c) for c in src.components):
                raise LockError(f"invalid components {list(src.components)} of {src.url} {src.suite}")
        self.mirror = mirror.rstrip("/")
        self.suite = suite
        self.components = tuple(components)
        self.architecture = architecture
        self.keyring = keyring
        self.sources = ((self.mirror, suite), *((m.rstrip("/"), x) for m, x in extra))
        self.third_party = tuple(dataclasses.replace(s, url=s.url.rstrip("/")) for s in third_party)
        # Keyed by where apt reads from: a configured mirror (core/mirrors) has lists of its own.
        key = "\n".join([*(f"{mirrors.active().mirrored(m)} {x}" for m, x in self.sources),
                         " ".join(self.components), architecture, str(keyring),
                         *(s.line(mirrors.active().mirrored(s.url)) for s in self.third_party)])
        self.root = Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16]
        self._stanzas: dict[tuple[str, str, str], deb822.Deb822] = {}
        # (name, version, arch) or a .deb's file name -> (mirror, path, size, sha256) apt downloads it from
        self._uris: dict[object, tuple[str, str, int, str]] = {}
        self._source_files: dict[ThirdPartySource, Path] | None = None  # _source_release_files, until an update

    # -- public API -----------------------------------------------------------

    def update(self, *, refresh: bool = True) -> ReleaseInfo:
        """``apt-get update`` (signature-checked) and the Release it got.

        Locking means asking the archive what is current, so this refreshes by
        default; ``refresh=False`` reuses lists already downloaded, if any.
        """
        self._setup()
        with self._locked():
            if refresh or not self._have_lists():
                self._update()
            return self.release()

    def release(self) -> ReleaseInfo:
        """The ReleaseInfo of the release itself, from the lists on disk (from the last ``update``)."""
        return self.releases()[0]

    def releases(self) -> list[ReleaseInfo]:
        """The ReleaseInfo of every archive, in the order of ``sources`` (the release first)."""
        found = self._release_files()
        return [self._release_info(mirror, suite, found[suite]) for mirror, suite in self.sources]

    def _release_info(self, mirror: str, suite: str, path: Path) -> ReleaseInfo:
        data = path.read_bytes()
        rel = _read_release(path)
        date = rel.get("Date", "")
        if not date:
            raise LockError(f"{mirror} {suite}: the Release file has no Date field")
        epoch = int(email.utils.parsedate_to_datetime(date).timestamp())
        self._check_release(rel, mirror, suite)
        return ReleaseInfo(
            mirror=mirror,
            suite=suite,
            codename=rel.get("Codename", suite),
            date=date,
            epoch=epoch,
            inrelease_sha256=hashlib.sha256(data).hexdigest(),
            components=self.components,
            architecture=self.architecture,
            version=rel.get("Version", ""),
            archive=rel.get("Suite", suite),
        )

    def bootstrap_set(self, variant: str, include: Sequence[str] = ()) -> list[AptPackage]:
        """The packages ``mmdebstrap --variant=VARIANT --include=...`` installs, sorted by name."""
        variant = {"minbase": "required", "debootstrap": "important", "-": "important"}.get(variant, variant)
        if variant not in VARIANTS:
            raise LockError(
                f"unknown Debian variant '{variant}'{did_you_mean(variant, VARIANTS)}",
                f"variants: {', '.join(VARIANTS)}",
            )
        names = self._check_names(include)
        self._ensure_lists()
        narrow = f"?narrow(?or(?archive(^{self.suite}$),?codename(^{self.suite}$)),?architecture({self.architecture}),"
        with self._locked():
            # Stage 1: what mmdebstrap downloads and extracts before anything is configured.
            if variant in ("extract", "custom"):
                stage1: list[AptPackage] = []
            elif variant == "apt":
                # mmdebstrap leaves apt's notion that apt itself is essential in place here only.
                stage1 = self._simulate(["dist-upgrade"], force_essential="apt")
            else:
                stage1 = self._simulate(["install", narrow + "?essential)"])
            # Stage 2: the variant's priority set and the includes, on top of stage 1 as installed.
            stage2_args = list(names)
            if variant == "buildd":
                stage2_args.append("build-essential")
            if variant in _PRIORITY_PATTERNS:
                stage2_args.append(narrow + _PRIORITY_PATTERNS[variant] + ")")
            stage2: list[AptPackage] = []
            if stage2_args:
                status = self.root / "var" / "lib" / "buildsys" / "stage1.status"
                self._write_status(stage1, status)
                stage2 = self._simulate(
                    ["install", *stage2_args],
                    status=status,
                    force_essential="apt" if variant == "apt" else None,
                    asked=names,
                )
            merged = _merge(stage1, stage2)
            if len(self.sources) == 1 or not merged:
                return merged
            # mmdebstrap narrows its selections to the release's own versions; an ordinary
            # installation then takes its updates. So: the same set, upgraded to the candidates
            # of all archives (what `apt-get dist-upgrade` on the result would install).
            status = self.root / "var" / "lib" / "buildsys" / "bootstrap.status"
            self._write_status(merged, status)
            upgrades = self._simulate(["dist-upgrade"], status=status,
                                      force_essential="apt" if variant == "apt" else None)
        return _merge(merged, upgrades)

    def resolve(self, packages: Sequence[str], status: Path | None = None) -> list[AptPackage]:
        """The closure of ``packages`` minus what ``status`` (a parent's dpkg status) has installed."""
        names = self._check_names(packages)
        if not names:
            return []
        self._ensure_lists()
        if status is not None and not Path(status).is_file():
            raise LockError(f"{status}: no such dpkg status file")
        with self._locked():
            return sorted(self._simulate(["install", *names], status=status, asked=names), key=_sort_key)

    def write_status(self, packages: Sequence[AptPackage], path: Path) -> None:
        """Write a dpkg status file listing ``packages`` as installed (for a parent with no image yet)."""
        self._ensure_lists()
        with self._locked():
            self._write_status(packages, path)

    # -- apt configuration ----------------------------------------------------

    @property
    def apt_config(self) -> Path:
        return self.root / "apt.conf"

    def _setup(self) -> None:
        """Create the private tree; rewritten each time, so it always matches this code."""
        root = self.root
        for sub in (
            "etc/apt/apt.conf.d", "etc/apt/sources.list.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d",
            "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg", "var/lib/buildsys",
            "var/log/apt", "tmp",
        ):  # fmt: skip
            (root / sub).mkdir(parents=True, exist_ok=True)
        empty_status = root / "var/lib/dpkg/status"
        if not empty_status.exists():
            empty_status.touch()
        (root / "var/lib/dpkg/arch").write_text(f"{self.architecture}\n")
        _write_if_changed(
            root / "etc/apt/sources.list",
            "".join(f"deb [signed-by={self.keyring}] {mirrors.active().mirrored(m)} {x} {' '.join(self.components)}\n"
                    for m, x in self.sources)
            + "".join(s.line(mirrors.active().mirrored(s.url)) for s in self.third_party),
        )
        lines = [
            f'Dir "{root}/";',
            f'Dir::State::status "{empty_status}";',
            f'APT::Architecture "{self.architecture}";',
            f'APT::Architectures "{self.architecture}";',
            'Acquire::Languages "none";',
            'Acquire::PDiffs "false";',
            'Acquire::Retries "3";',
            'APT::Install-Recommends "false";',
            'APT::Install-Suggests "false";',
            'Debug::NoLocking "true";',
            # apt reuses its binary caches across a changed ForceEssential (measured: a stale
            # cache hid apt from the apt variant), so the source cache is keyed by that value,
            # and the status cache is off: each resolution reads another status file anyway.
            'Dir::Cache::pkgcache "";',
            f'Dir::Cache::srcpkgcache "{root}/var/cache/apt/srcpkgcache-none.bin";',
            # As mmdebstrap does for every variant but apt: apt is not essential by fiat.
            'pkgCacheGen::ForceEssential ",";',
        ]
        if os.geteuid() == 0:
            # As root apt would drop to _apt, who may not reach a store under a private home.
            lines.append('APT::Sandbox::User "root";')
        _write_if_changed(self.apt_config, "\n".join(lines) + "\n")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APT_", "DEBIAN_", "LC_", "LANG"))}
        env.update(APT_CONFIG=str(self.apt_config), LC_ALL="C", TMPDIR=str(self.root / "tmp"))
        return env

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """apt's own locks are off (Debug::NoLocking); one buildsys at a time per tree."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                list(argv), env=self._env(), cwd=self.root, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as e:
            raise ToolMissing(argv[0], "apt") from e

    # -- apt-get update -------------------------------------------------------

    def _lists_dir(self) -> Path:
        return self.root / "var/lib/apt/lists"

    def _release_files(self) -> dict[str, Path]:
        """Each source's suite -> its (In)Release file in the lists, matched by its own Codename/Suite."""
        lists = self._lists_dir()
        by_name: dict[str, Path] = {}
        theirs = set(self._source_release_files().values()) if self.third_party else set()
        for path in sorted(lists.glob("*_Release")) + sorted(lists.glob("*_InRelease")):  # InRelease wins
            if path in theirs:  # a third-party Release may call itself "bookworm" too
                continue
            rel = _read_release(path)
            for name in (rel.get("Codename"), rel.get("Suite")):
                if name:
                    by_name[name] = path
        found = {}
        for mirror, suite in self.sources:
            hit = by_name.get(suite)
            if hit is None:
                raise LockError(
                    f"no package lists for {mirror} {suite} in {self.root}",
                    "run the lock again with network access (it runs `apt-get update`)",
                )
            found[suite] = hit
        return found

    def _source_release_files(self) -> dict[ThirdPartySource, Path]:
        """Each third-party source -> its (In)Release file in the lists, found through apt's own index targets.

        Their Codename and Suite fields are the vendor's (a flat repository often has none), so the
        file is the one beside the source's Packages: its list file name less the target's MetaKey.
        """
        if not self.third_party:
            return {}
        if self._source_files is not None:  # asked several times a lock; the lists change only in _update
            return self._source_files
        proc = self._run(["apt-get", "indextargets", "--format", "$(SOURCESENTRY)\t$(FILENAME)\t$(METAKEY)"])
        if proc.returncode != 0:
            raise AptFailed("apt-get indextargets", proc.stdout + proc.stderr)
        offset = len(self.sources)  # sources.list: Debian's archives first, one line each, then these
        found: dict[ThirdPartySource, Path] = {}
        for line in proc.stdout.splitlines():
            entry, filename, metakey = (line.split("\t") + ["", ""])[:3]
            number = entry.rsplit(":", 1)[-1]
            if not number.isdigit() or not (offset < int(number) <= offset + len(self.third_party)):
                continue
            src = self.third_party[int(number) - offset - 1]
            prefix = filename[: len(filename) - len(metakey.replace("/", "_"))]
            for name in ("InRelease", "Release"):
                if Path(prefix + name).is_file():
                    found.setdefault(src, Path(prefix + name))
                    break
        if len(found) == len(self.third_party):  # complete: kept until the next `apt-get update`
            self._source_files = found
        return found

    def source_releases(self) -> list[ReleaseInfo]:
        """The ReleaseInfo of every third-party source, in the order given, from the lists on disk."""
        found = self._source_release_files()
        out = []
        for src in self.third_party:
            if src not in found:
                raise LockError(f"no package lists for {src.url} {src.suite} in {self.root}",
                                "run the lock again with network access (it runs `apt-get update`)")
            data = found[src].read_bytes()
            rel = _read_release(found[src])
            date = rel.get("Date", "")
            if not date:
                raise LockError(f"{src.url} {src.suite}: the Release file has no Date field")
            out.append(ReleaseInfo(
                mirror=src.url, suite=src.suite, codename=rel.get("Codename", ""), date=date,
                epoch=int(email.utils.parsedate_to_datetime(date).timestamp()),
                inrelease_sha256=hashlib.sha256(data).hexdigest(), components=src.components,
                architecture=self.architecture, version=rel.get("Version", ""), archive=rel.get("Suite", ""),
            ))
        return out

    def _have_lists(self) -> bool:
        try:
            self._release_files()
            if self.third_party and len(self._source_release_files()) < len(self.third_party):
                return False
        except LockError:
            return False
        return bool(list(self._lists_dir().glob("*_Packages")))

    def _ensure_lists(self) -> None:
        self._setup()
        if not self._have_lists():
            with self._locked():
                if not self._have_lists():
                    self._update()

    def _update(self) -> None:
        self._uris.clear()
        self._source_files = None
        proc = self._run(["apt-get", "update", "-q"])
        out = proc.stdout + proc.stderr
        self._check_sources(out)
        if "does not have a Release file" in out or re.search(r"Release\s+404\s", out):
            mirror, suite = self.mirror, self.suite
            if m := re.search(r"repository '(\S+) (\S+) Release' does not have a Release file", out):
                mirror, suite = m.group(1), m.group(2)
            if suite != self.suite:
                raise LockError(
                    f"{mirror} has no archive '{suite}' (apt found no Release file)",
                    "this release may have no such archive: set updates = false or security = false in "
                    "[base] debian, or name the right mirror (security-mirror = ...)",
                )
            raise UnknownSuite(suite, mirror)
        if _SIGNATURE_RE.search(out):
            raise AptFailed(
                f"signature check of {', '.join(f'{m} {x}' for m, x in self.sources)}",
                out,
                f"apt could not verify the InRelease file against {self.keyring}; "
                "install or update debian-archive-keyring, and check the mirror is genuine",
            )
        if proc.returncode != 0 or re.search(r"^(E:|W: Failed to fetch)", out, re.M):
            raise AptFailed(
                f"`apt-get update` for {self.mirror} {self.suite}",
                out,
                "is the mirror reachable from here? (try: curl -I " + self.mirror + f"/dists/{self.suite}/InRelease)",
            )
        # A misspelt component is only a warning to apt; it is an error in a lock.
        for (mirror, suite), path in zip(self.sources, self._release_files().values(), strict=True):
            self._check_release(_read_release(path), mirror, suite)

    def _check_sources(self, out: str) -> None:
        """apt's complaints about a third-party source, as a ``SourceFailed`` naming it."""
        if not self.third_party:
            return
        for src in self.third_party:
            # apt names a source "URL SUITE" in some messages and by its index URLs in others. Its other
            # warnings (a Release whose Suite is not the one asked for, say) do not stop a lock.
            mine = [ln for ln in out.splitlines() if src.url in ln and (
                re.match(r"^(E:|Err:|W: Failed to fetch)", ln.strip()) or _SIGNATURE_RE.search(ln))]
            text = "\n".join(mine)
            if not mine:
                continue
            if _SIGNATURE_RE.search(text):
                raise SourceFailed(src, f"its InRelease is not signed by the key {src.keyring.name}", out)
            if "Hash Sum mismatch" in text or "File has unexpected size" in text:
                raise SourceFailed(src, "an index does not match the hashes its signed Release lists", out)
            if "does not have a Release file" in text or re.search(r"\b404\b", text):
                raise SourceFailed(src, "the repository has no Release file there (404)", out)
            raise SourceFailed(src, "`apt-get update` failed", out)
        for src, path in self._source_release_files().items():
            rel = _read_release(path)
            have = rel.get("Components", "").split()
            for comp in src.components:
                # Release names a security archive's components as "updates/main" (as for Debian's own).
                if have and comp not in have and f"updates/{comp}" not in have:
                    raise LockError(f"component '{comp}' is not in {src.url} {src.suite}{did_you_mean(comp, have)}",
                                    f"components there: {', '.join(have)}")

    def _check_release(self, rel: deb822.Release, mirror: str, suite: str) -> None:
        have = rel.get("Components", "").split()
        for comp in self.components:
            # Release names updates' components as "updates/main" on some suites.
            if have and comp not in have and f"updates/{comp}" not in have:
                raise LockError(
                    f"component '{comp}' is not in {mirror} {suite}{did_you_mean(comp, have)}",
                    f"components there: {', '.join(have)}",
                )
        arches = rel.get("Architectures", "").split()
        if arches and self.architecture not in arches:
            raise LockError(
                f"architecture '{self.architecture}' is not in {mirror} {suite}"
                f"{did_you_mean(self.architecture, arches)}",
                f"architectures there: {', '.join(arches)}",
            )

    # -- resolution -----------------------------------------------------------

    def _check_names(self, packages: Sequence[str]) -> list[str]:
        names = []
        for p in packages:
            if not _PKG_RE.fullmatch(p):
                raise LockError(
                    f"'{p}' is not a Debian package name",
                    "names are lowercase letters, digits and + - . (optionally name=version)",
                )
            names.append(p)
        return sorted(set(names))

    def _simulate(
        self,
        args: Sequence[str],
        *,
        status: Path | None = None,
        force_essential: str | None = None,
        asked: Sequence[str] = (),
    ) -> list[AptPackage]:
        """``apt-get -s``; the ``Inst`` lines are the packages to install."""
        argv = ["apt-get", "-s", "-qq", "-y"]
        if status is not None:
            argv.append(f"-oDir::State::status={Path(status).resolve()}")
        if force_essential is not None:
            argv.append(f"-opkgCacheGen::ForceEssential={force_essential}")
            argv.append(f"-oDir::Cache::srcpkgcache={self.root}/var/cache/apt/srcpkgcache-{force_essential}.bin")
        proc = self._run([*argv, *args])
        if proc.returncode != 0:
            self._raise_resolution(proc.stdout + proc.stderr, " ".join(args))
        planned: list[tuple[str, str, str]] = []
        removed: list[str] = []
        for line in proc.stdout.splitlines():
            if m := _INST_RE.match(line):
                planned.append((m.group(1), m.group(3), m.group(5)))
            elif m := _REMV_RE.match(line):
                removed.append(m.group(1))
        if removed:
            raise LockError(
                f"installing {', '.join(asked) or 'these packages'} would remove {', '.join(sorted(removed))} "
                "from the parent image",
                "a layer may only add packages; drop the conflicting package from this recipe",
            )
        return self._describe(planned)

    def _raise_resolution(self, out: str, what: str) -> None:
        if m := re.search(r"Unable to locate package (\S+)", out):
            raise UnknownPackage(m.group(1), self.mirror, self.suite)
        if m := re.search(r"Package '?([^' ]+)'? has no installation candidate", out):
            detail = "only referred to (a virtual or removed package), not provided"
            raise UnknownPackage(m.group(1), self.mirror, self.suite, detail)
        if m := re.search(r"Version '([^']+)' for '([^']+)' was not found", out):
            raise UnknownPackage(f"{m.group(2)}={m.group(1)}", self.mirror, self.suite, "no such version")
        if m := re.search(r"Release '([^']+)' for '([^']+)' was not found", out):
            raise UnknownPackage(f"{m.group(2)}/{m.group(1)}", self.mirror, self.suite, "no such release")
        raise AptFailed(
            f"resolving `{what}` against {self.mirror} {self.suite}",
            out,
            "apt found no consistent set; pin fewer packages or check they exist in this suite together",
        )

    def _describe(self, planned: Sequence[tuple[str, str, str]]) -> list[AptPackage]:
        """Look up each planned (name, version, arch) in the archive's Packages stanzas."""
        missing = [p for p in planned if p not in self._stanzas]
        if missing:
            proc = self._run(["apt-cache", "show", *sorted({f"{n}={v}" for n, v, _ in missing})])
            if proc.returncode != 0:
                raise AptFailed("apt-cache show", proc.stdout + proc.stderr)
            for stanza in deb822.Deb822.iter_paragraphs(proc.stdout.splitlines(keepends=True), use_apt_pkg=False):
                got = (stanza.get("Package", ""), stanza.get("Version", ""), stanza.get("Architecture", ""))
                self._stanzas.setdefault(got, stanza)
        out = []
        for key in planned:
            para = self._stanzas.get(key)
            if para is None or not para.get("SHA256") or not para.get("Filename"):
                raise LockError(f"apt planned {key[0]} {key[1]} ({key[2]}) but the archive has no SHA256 for it")
            out.append(
                AptPackage(
                    name=key[0],
                    version=key[1],
                    architecture=key[2],
                    sha256=para["SHA256"].lower(),
                    size=int(para["Size"]),
                    filename=para["Filename"],
                    priority=para.get("Priority", "optional"),
                    essential=para.get("Essential", "no") == "yes",
                    mirror=self.mirror,
                )
            )
        if len(self.sources) > 1 or self.third_party:
            out = self._locate(out)
        return out

    def _locate(self, packages: list[AptPackage]) -> list[AptPackage]:
        """Which archive serves each .deb, as apt itself would download it.

        With several archives (the suite, -updates, -security) a version may be in
        more than one, each with its own pool path; ``apt-get download --print-uris``
        names the URI apt takes, so mirror and path always belong together.
        """
        todo = [p for p in packages if (p.name, p.version, p.architecture) not in self._uris]
        if todo:
            proc = self._run(["apt-get", "download", "--print-uris", "-qq",
                              *sorted({f"{p.name}:{p.architecture}={p.version}" for p in todo})])
            if proc.returncode != 0:
                raise AptFailed("apt-get download --print-uris", proc.stdout + proc.stderr)
            for line in proc.stdout.splitlines():
                m = _URI_RE.match(line)
                if not m:
                    continue
                # The second field is apt's local name (an epoch in it, quoted); the URL's own is the pool's.
                # (as upstream's: a mirror apt read from is never recorded)
                url, size = mirrors.active().to_upstream(unquote(m.group(1))), int(m.group(3))
                sha = m.group(5).lower() if m.group(4) == "SHA256" else ""  # else: the stanza's, kept below
                deb = url.rsplit("/", 1)[-1]
                bases = [*(src for src, _ in self.sources), *(s.url for s in self.third_party)]
                mirror = max((src for src in bases if url.startswith(src + "/")), key=len, default="")
                if mirror:
                    # A flat repository's Filename is "./x.deb": the path is the file's, without "." steps.
                    path = "/".join(part for part in url[len(mirror) + 1:].split("/") if part not in ("", "."))
                    self._uris[deb] = (mirror, path, size, sha)
            for p in todo:
                hit = self._uris.get(p.deb_name)
                if hit is not None:
                    self._uris[(p.name, p.version, p.architecture)] = hit
        out = []
        for p in packages:
            hit = self._uris.get((p.name, p.version, p.architecture))
            if hit is None:
                where = [*(f"{m} {x}" for m, x in self.sources), *(f"{s.url} {s.suite}" for s in self.third_party)]
                raise LockError(f"apt planned {p.name} {p.version} ({p.architecture}) but names no URI for it in "
                                f"{', '.join(where)}")
            mirror, path, size, sha = hit
            out.append(dataclasses.replace(p, mirror=mirror, filename=path, size=size, sha256=sha or p.sha256))
        return out



    def _write_status(self, packages: Sequence[AptPackage], path: Path) -> None:
        self._describe([(p.name, p.version, p.architecture) for p in packages])
        chunks = []
        for p in sorted(packages, key=_sort_key):
            para = self._stanzas[(p.name, p.version, p.architecture)]
            fields = [("Package", p.name), ("Status", "install ok installed")]
            fields += [(k, v) for k, v in para.items() if k != "Package" and k not in _ARCHIVE_ONLY]
            chunks.append(str(deb822.Deb822(dict(fields))))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(c.rstrip("\n") + "\n" for c in chunks))
        os.replace(tmp, path)


def _sort_key(p: AptPackage) -> tuple[str, str, str]:
    return (p.name, p.architecture, p.version)


def _merge(*stages: Sequence[AptPackage]) -> list[AptPackage]:
    """Union of the stages; a later stage's version of a package wins (an upgrade)."""
    by_name: dict[tuple[str, str], AptPackage] = {}
    for stage in stages:
        for p in stage:
            by_name[(p.name, p.architecture)] = p
    return sorted(by_name.values(), key=_sort_key)


def _read_release(path: Path) -> deb822.Release:
    # deb822 skips the clearsign armour of an InRelease file; apt has checked the signature.
    return deb822.Release(path.read_text("utf-8", "replace").splitlines(keepends=True))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def archive_moved(resolver: AptResolver, archives: Sequence[LockedArchive]) -> tuple[LockedArchive, str] | None:
    """The first archive whose signed Release is not the one a chain was locked against, and its date now."""
    for locked, now in zip(archives, resolver.releases(), strict=True):
        if now.inrelease_sha256 != locked.inrelease_sha256:
            return locked, now.date
    return None


def link_debs(store: Store, recipe: str, debs: Sequence[LockedDeb], folder: Path) -> None:
    """Put the vendored .debs into ``folder`` under their own names (hardlinks, no copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        src = store.vendor_path(deb.sha256)
        if not src.is_file():
            raise NotVendored(recipe, f"{deb.name} {deb.version} ({deb.filename})")
        if src.stat().st_size != deb.size:
            raise NotVendored(recipe, f"{deb.name} {deb.version} ({deb.filename})",
                              f"damaged in the vendor store (size {src.stat().st_size}, locked {deb.size})")
        dst = folder / deb.filename
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def make_local_repo(folder: Path, suite: str, codename: str) -> None:
    """Index ``folder`` as a flat apt repository (``deb [trusted=yes] copy://folder ./``)."""
    if shutil.which("apt-ftparchive") is None:
        raise ToolMissing("apt-ftparchive", "apt-utils")
    with open(folder / "Packages", "wb") as out:
        _ftparchive(["packages", "."], folder, out)
    release = _ftparchive(["-o", f"APT::FTPArchive::Release::Suite={suite}",
                           "-o", f"APT::FTPArchive::Release::Codename={codename}", "release", "."], folder)
    (folder / "Release").write_bytes(release)


def _ftparchive(args: list[str], cwd: Path, stdout: IO[bytes] | None = None) -> bytes:
    proc = subprocess.run(["apt-ftparchive", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        output = ((proc.stdout or b"") + proc.stderr).decode(errors="replace")
        raise BuildError("bootstrap", f"apt-ftparchive {args[-2]}", output)
    return proc.stdout if stdout is None else b""
