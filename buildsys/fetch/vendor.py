"""Fill the content-addressed vendor store (``vendor/sha256/<hex>``).

Downloads stream into ``<hex>.partial`` beside their final place, hashed as
they are written; only a file whose sha256 (and size) match the lock is
renamed into place, so a file in the store is always a verified one. A
leftover ``.partial`` is resumed with an HTTP Range request, never trusted:
the whole file is hashed again before it is placed.

This module speaks HTTP itself (urllib; ``file://`` for air-gapped copies and
tests) instead of calling ``pip download`` or ``apt-get download``, so the
host's pip and apt configuration cannot change what is fetched or from where.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from buildsys.core import mirrors, net
from buildsys.core.errors import FetchError, HashMismatch
from buildsys.core.store import Artifact, Store, sha256_file
from buildsys.core.urlpolicy import local_reason
from buildsys.ecosystems import downloader
from buildsys.ecosystems.base import Downloads, Ecosystem

CHUNK = 1 << 16
# Backoff before retry n (1-based): BACKOFF * 2**(n-1) seconds, capped.
BACKOFF = 0.5
BACKOFF_MAX = 8.0


@dataclass(frozen=True)
class FetchReport:
    downloaded: int  # artifacts placed in the store by this run
    skipped: int  # artifacts already there
    bytes: int  # bytes transferred by this run
    seconds: float
    # Files that were in the store with other content than their name says: removed and fetched again.
    repaired: tuple[str, ...] = ()

    def summary(self) -> str:
        return (
            f"fetched {self.downloaded} file(s), {self.bytes / 1e6:.1f} MB in {self.seconds:.1f}s; "
            f"{self.skipped} already in the store"
        )


class DownloadFailed(FetchError):
    """Every URL of an artifact failed; lists each URL and why."""

    def __init__(self, art: Artifact, attempts: Sequence[tuple[str, str]]) -> None:
        self.artifact = art
        self.attempts = tuple(attempts)
        tried = "\n".join(f"  {url}: {why}" for url, why in attempts) or "  (no URL in the lock)"
        super().__init__(
            f"could not fetch {art.name} {art.version} ({art.filename}); tried:\n{tried}",
            "check that the network and the mirror are reachable and run `buildsys fetch` again "
            "(it resumes); if the file is gone upstream, relock with `buildsys lock --upgrade`",
        )


class SizeMismatch(HashMismatch):
    """The server sent a file of another size than the lock pins: not called a sha256 mismatch.

    A ``HashMismatch`` still (the content is not the locked one), for code that handles both alike.
    """

    def __init__(self, art: Artifact, url: str, detail: str) -> None:
        self.artifact, self.url = art, url
        self.what, self.expected, self.actual = f"{art.name} {art.version}", art.sha256.lower(), detail
        FetchError.__init__(self, f"{art.name} {art.version} ({art.filename}): {url}: wrong size: {detail}; it "
                            "was not kept",
                            "the server (or something between) serves another file than the one locked; if the "
                            "upstream file really changed, relock with `buildsys lock --upgrade`")


class StoreWriteFailed(FetchError):
    """Writing a download failed (a full disk, permissions): names the file system that is full."""

    def __init__(self, partial: Path, detail: str) -> None:
        self.path = partial
        mount = _mount_point(partial.parent)
        super().__init__(f"cannot write {partial}: {detail} (the file system mounted at {mount}, which holds "
                         f"{partial.parent})",
                         f"free space on {mount} (or point --store elsewhere) and run `buildsys fetch` again; the "
                         "partial files of this run were removed")


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


class FetchFailures(FetchError):
    """Several artifacts failed; each error is in ``errors``."""

    def __init__(self, errors: Sequence[FetchError]) -> None:
        self.errors = tuple(errors)
        body = "\n".join(f"- {e.message}" for e in errors)
        super().__init__(f"{len(errors)} artifacts could not be fetched:\n{body}", errors[0].hint)


class _Transient(Exception):
    """Worth another try at the same URL (connection trouble, 5xx, timeouts)."""


class _Permanent(Exception):
    """This URL will not serve it (404, 403, a missing file); try the next one."""


class _Stopped(Exception):
    pass


class _LocalWriteError(Exception):
    """Writing the store failed (disk full, permissions): no use retrying."""


class _TooLong(Exception):
    """The body goes on past the locked size: the file is not the locked one."""


def fetch(
    store: Store,
    artifacts: Sequence[Artifact],
    *,
    jobs: int = 8,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> FetchReport:
    """Make every artifact present and verified in ``store``.

    With ``progress`` and a terminal on stderr, a live display shows the
    overall bytes and one line per active download; it vanishes when done.
    Nothing else is printed: the caller (the CLI) prints ``report.summary()``.

    A file already in the store is trusted only while it is unchanged since
    its hash was checked (``Store.is_verified``: size, mtime and inode as they
    were then); any other is rehashed, and one whose content is not what its
    name says is removed, fetched again and named in ``report.repaired``.
    Failures of some artifacts do not stop the others; they are raised at
    the end (one error as itself, several as ``FetchFailures``).
    """
    start = time.monotonic()
    unique: dict[str, Artifact] = {}
    for art in artifacts:
        unique.setdefault(art.sha256.lower(), art)
    present = [a for a in unique.values() if store.has_artifact(a)]
    unchecked = [a for a in present if not store.is_verified(a.sha256)]
    damaged = verify_store(store, unchecked, remove=True, jobs=jobs) if unchecked else []
    for art in unchecked:
        if art not in damaged:
            store.mark_verified(art.sha256)
    todo = [a for a in unique.values() if not store.has_artifact(a)]
    skipped = len(unique) - len(todo)
    store.vendor.mkdir(parents=True, exist_ok=True)

    live = progress and sys.stderr.isatty() and bool(todo)
    display = _RichDisplay(todo) if live else _NoDisplay()
    stop = threading.Event()
    purge = threading.Event()  # a full disk: every download stops and removes its partial file
    errors: list[FetchError] = []
    done_bytes = 0
    downloaded = 0
    downloads = _Downloads()
    with display, downloads, ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="fetch") as pool:
        futures: dict[Future[tuple[bool, int]], Artifact] = {
            pool.submit(_fetch_one, store, art, retries, timeout, display, stop, purge, downloads): art
            for art in todo
        }
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    try:
                        placed, nbytes = fut.result()
                    except _Stopped:  # stopped because another hit a full disk: that one says so
                        continue
                    except StoreWriteFailed as e:
                        purge.set()
                        stop.set()
                        errors.append(e)
                        continue
                    except FetchError as e:
                        errors.append(e)
                        continue
                    downloaded += placed
                    skipped += not placed
                    done_bytes += nbytes
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    report = FetchReport(downloaded, skipped, done_bytes, time.monotonic() - start,
                         repaired=tuple(f"{a.filename} ({a.sha256})" for a in damaged))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise FetchFailures(sorted(errors, key=lambda e: e.message))
    return report


def verify_store(store: Store, artifacts: Sequence[Artifact], *, remove: bool = True, jobs: int = 8) -> list[Artifact]:
    """Rehash every present artifact; return the corrupt ones (removed unless ``remove=False``).

    Missing artifacts are not reported here: ``Store.has_artifact`` says so.
    """
    unique: dict[str, Artifact] = {}
    for art in artifacts:
        unique.setdefault(art.sha256.lower(), art)
    present = [a for a in unique.values() if store.vendor_path(a.sha256).is_file()]

    def bad(art: Artifact) -> bool:
        path = store.vendor_path(art.sha256)
        if art.size is not None and path.stat().st_size != art.size:
            return True
        return sha256_file(path) != art.sha256.lower()

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # hashlib releases the GIL
        corrupt = [a for a, is_bad in zip(present, pool.map(bad, present), strict=True) if is_bad]
    if remove:
        for art in corrupt:
            with contextlib.suppress(FileNotFoundError):
                store.vendor_path(art.sha256).unlink()
    return corrupt


# -- one artifact ---------------------------------------------------------------


class _Downloads:
    """The ecosystems' downloads of one fetch run (``Ecosystem.downloads``: a registry's clients, one per
    repository), each made at its first URL, shared by the run's threads and closed when the run ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, Downloads] = {}

    def get(self, eco: Ecosystem) -> Downloads:
        with self._lock:
            d = self._open.get(eco.name)
            if d is None:
                d = self._open[eco.name] = eco.downloads()
            return d

    def __enter__(self) -> _Downloads:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for d in self._open.values():
                d.close()
            self._open.clear()


def _fetch_one(
    store: Store, art: Artifact, retries: int, timeout: float, display: _Display, stop: threading.Event,
    purge: threading.Event, downloads: _Downloads,
) -> tuple[bool, int]:
    """Download, verify and place one artifact; return (placed by us, bytes transferred)."""
    policy = net.Policy(local_ok=art.local)
    with contextlib.closing(net.Client(policy, attempts=1, read_timeout=timeout)) as client:
        return _fetch_with(client, downloads, store, art, retries, display, stop, purge)


def _fetch_with(
    http: net.Client, downloads: _Downloads, store: Store, art: Artifact, retries: int, display: _Display,
    stop: threading.Event, purge: threading.Event,
) -> tuple[bool, int]:
    """Try each URL of ``art`` in turn under the lock of its partial file; place the first verified download."""
    hexdigest = art.sha256.lower()
    final = store.vendor_path(hexdigest)
    partial = final.with_name(f"{hexdigest}.partial")
    with _locked_partial(partial) as fd:
        if store.has_artifact(art):  # another process placed it while we waited
            partial.unlink(missing_ok=True)
            return False, 0
        attempts: list[tuple[str, str]] = []
        transferred = 0
        task = display.start(art)
        placed = False
        try:
            for url in candidates(art):
                verified, nbytes = _try_url(url, fd, partial, art, http, downloads, retries,
                                            lambda n: display.advance(task, n), stop, attempts)
                transferred += nbytes
                if verified:
                    os.replace(partial, final)
                    store.mark_verified(hexdigest)
                    placed = True
                    return True, transferred
            raise DownloadFailed(art, attempts)
        finally:
            display.finish(task)
            # Keep a partial download for the next run to resume (a network failure), but not an
            # empty file, and nothing once a disk was full: that space is what the user needs back.
            if not placed and partial.exists() and (purge.is_set() or os.fstat(fd).st_size == 0):
                partial.unlink(missing_ok=True)


def candidates(art: Artifact) -> list[str]:
    """Where ``art`` is read from, in order: for each of its URLs (the recorded one, then an archive
    snapshot's), the configured mirror of it first, then the URL itself (docs/locks.md, "Mirrors")."""
    active = mirrors.active()
    return list(dict.fromkeys(u for url in art.urls for u in active.candidates(url)))


def _try_url(
    url: str, fd: int, partial: Path, art: Artifact, http: net.Client, downloads: _Downloads, retries: int,
    advance: Callable[[int], None], stop: threading.Event, attempts: list[tuple[str, str]],
) -> tuple[bool, int]:
    """Download ``art`` from one URL, retrying transient failures; return (verified, bytes transferred).

    Not verified means this URL gave up (why is appended to ``attempts``): the caller tries the next.
    A file that is not the locked one, or a store that cannot be written, raises: no other URL helps.
    """
    attempt = 0
    transferred = 0
    while True:
        if stop.is_set():
            raise _Stopped()
        resumed = os.fstat(fd).st_size > 0
        try:
            transferred += _download(url, fd, art, http, downloads, advance, stop)
        except _Transient as e:
            attempt += 1
            attempts.append((url, f"{e} (attempt {attempt} of {retries + 1})"))
            if attempt > retries:
                return False, transferred
            time.sleep(min(BACKOFF * 2 ** (attempt - 1), BACKOFF_MAX))
            continue
        except _Permanent as e:
            attempts.append((url, str(e)))
            return False, transferred
        except _TooLong as e:
            if resumed:  # the leftover part may be what is wrong: once more from nothing
                _restart(fd)
                continue
            partial.unlink(missing_ok=True)
            raise SizeMismatch(art, url, str(e)) from e
        except _LocalWriteError as e:
            partial.unlink(missing_ok=True)
            raise StoreWriteFailed(partial, str(e)) from e
        actual = _check(fd, art)
        if actual is None:
            return True, transferred
        if resumed:
            # The leftover part may be what is wrong: once more from nothing.
            _restart(fd)
            continue
        partial.unlink(missing_ok=True)
        raise _not_locked(art, url, fd, actual)


def _not_locked(art: Artifact, url: str, fd: int, actual: str) -> HashMismatch:
    """The error for a complete download that is another file: a wrong size is said as such."""
    if art.size is not None and os.fstat(fd).st_size != art.size:
        return SizeMismatch(art, url, f"it has {os.fstat(fd).st_size} bytes, the lock pins {art.size}")
    return HashMismatch(f"{art.name} {art.version}", url, art.sha256.lower(), actual)


@contextlib.contextmanager
def _locked_partial(partial: Path) -> Iterator[int]:
    """Open ``<hex>.partial`` under an exclusive lock, so two fetches never write one file.

    The path may be renamed into place (or removed) by the holder of the lock
    while we wait for it; then our descriptor names the wrong file, and we
    open the path again.
    """
    while True:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(partial).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)


def _check(fd: int, art: Artifact) -> str | None:
    """None when the finished partial is the locked file; else what it is instead."""
    os.fsync(fd)
    size = os.fstat(fd).st_size
    actual = _hash_fd(fd)
    if actual != art.sha256.lower():
        return actual if art.size is None or size == art.size else f"{actual} ({size} bytes, expected {art.size})"
    if art.size is not None and size != art.size:  # same hash, other size: a lock with a wrong size
        return f"{actual} ({size} bytes, expected {art.size})"
    return None


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _download(
    url: str, fd: int, art: Artifact, http: net.Client, downloads: _Downloads, advance: Callable[[int], None],
    stop: threading.Event,
) -> int:
    """Complete the partial file at ``fd`` from ``url``; return the bytes transferred.

    Through ``net.Client`` (policy on every hop, deadline); reading stops one
    byte past the locked size, so an endless body costs one byte more than
    the file, never the disk.
    """
    scheme = urlsplit(url).scheme
    if not art.local and not mirrors.active().is_mirror(url) and (reason := local_reason(url, resolve=True)):
        raise _Permanent(f"refused: {reason}; only a [[files]] entry with local = true may read from this machine")
    if scheme == "file":
        return _copy_file(url, fd, advance)
    if (eco := downloader(url)) is not None:  # a registry base's blobs
        return _ecosystem_download(downloads.get(eco), url, fd, art, advance)
    if scheme not in ("http", "https"):
        raise _Permanent(f"unsupported URL scheme '{scheme}'")
    return _http_get(url, fd, art, http, advance, stop)


def _http_get(
    url: str, fd: int, art: Artifact, client: net.Client, advance: Callable[[int], None], stop: threading.Event
) -> int:
    """One GET of ``url``, asking with Range for what the partial file lacks."""
    have = _resume_from(fd, art)
    if have is None:
        return 0  # complete already (interrupted before the rename); hashed by _check
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with client.send("GET", url, headers=headers, retry=False, mirror=False) as resp:
            have = _accept(resp, fd, have, advance)
            os.lseek(fd, have, os.SEEK_SET)
            written = _stream(resp, fd, have, art, advance, stop)
            declared = resp.declared_length
            if declared is not None and written < declared:
                raise _Transient(f"connection closed {declared - written} bytes short")
            return written
    except net.TooLarge as e:
        raise _TooLong(f"the server sends more than the {art.size} bytes the lock pins (stopped reading at "
                       f"{art.size + 1 if art.size is not None else '?'})") from e
    except net.NetError as e:
        raise (_Transient if e.transient else _Permanent)(e.problem) from e


def _resume_from(fd: int, art: Artifact) -> int | None:
    """Where to go on writing the partial file; None when it holds the locked size already.

    A partial file longer than the locked size cannot be the start of the locked file: it is emptied.
    """
    have = os.fstat(fd).st_size
    if art.size is not None and have >= art.size:
        if have == art.size:
            return None
        return _restart(fd)
    return have


def _accept(resp: net.Response, fd: int, have: int, advance: Callable[[int], None]) -> int:
    """Judge the answer's status and range; return the offset its body starts at (0: from the start)."""
    if resp.status_code == 416 and have:
        _restart(fd)
        raise _Transient("range not satisfiable; starting over")
    if resp.status_code >= 500 or resp.status_code in (408, 429):
        raise _Transient(f"HTTP {resp.status_code} {resp.reason}")
    if resp.status_code >= 400:
        raise _Permanent(f"HTTP {resp.status_code} {resp.reason}")
    if have and resp.status_code == 206:
        content_range = resp.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {have}-"):
            _restart(fd)
            raise _Transient(f"server answered the range request with {content_range!r}")
        advance(have)
        return have
    if have:
        return _restart(fd)  # the server ignored Range: start over
    return 0


def _stream(resp: net.Response, fd: int, have: int, art: Artifact, advance: Callable[[int], None],
            stop: threading.Event) -> int:
    def write(chunk: bytes) -> None:
        if stop.is_set():
            raise _Stopped()
        try:
            os.write(fd, chunk)
        except OSError as e:
            raise _LocalWriteError(str(e)) from e
        advance(len(chunk))

    # Read at most one byte past the locked size: enough to know the file is wrong.
    return resp.stream(write, None if art.size is None else art.size - have, art.filename)


def _ecosystem_download(downloads: Downloads, url: str, fd: int, art: Artifact, advance: Callable[[int], None]) -> int:
    """A file an ecosystem downloads itself (a registry base's blob, through the run's client of its repository:
    auth, its own retries); resumed by Range."""
    have = _resume_from(fd, art)
    if have is None:
        return 0
    try:
        written = downloads.download(url, fd, have, art.size)
    except net.TooLarge as e:
        raise _TooLong(f"the registry sends more than the {art.size} bytes the lock pins (stopped reading at "
                       f"{(art.size or 0) + 1})") from e
    except net.NetError as e:
        raise (_Transient if e.transient else _Permanent)(e.problem) from e
    except OSError as e:  # writing the partial file
        raise _LocalWriteError(str(e)) from e
    advance(written)
    return written


def _copy_file(url: str, fd: int, advance: Callable[[int], None]) -> int:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _Permanent(f"file URL with a remote host '{parts.netloc}'")
    path = Path(unquote(parts.path))
    _restart(fd)
    try:
        src = open(path, "rb")  # noqa: SIM115 -- closed below; open errors and write errors differ
    except FileNotFoundError as e:
        raise _Permanent("no such file") from e
    except IsADirectoryError as e:
        raise _Permanent("is a folder") from e
    except PermissionError as e:
        raise _Permanent(f"cannot read: {e.strerror}") from e
    with src, os.fdopen(os.dup(fd), "wb") as dst:
        try:
            shutil.copyfileobj(src, dst, CHUNK)
            dst.flush()
        except OSError as e:
            raise _LocalWriteError(str(e)) from e
        size = dst.tell()
    advance(size)
    return size


def _restart(fd: int) -> int:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return 0


# -- progress -------------------------------------------------------------------


class _Display:
    def __enter__(self) -> _Display:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, art: Artifact) -> int:
        return 0

    def advance(self, task: int, n: int) -> None:
        return None

    def finish(self, task: int) -> None:
        return None


class _NoDisplay(_Display):
    pass


class _RichDisplay(_Display):
    """Overall bytes plus one line per active download, on stderr."""

    def __init__(self, todo: Sequence[Artifact]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", table_column=None),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        sizes = [a.size for a in todo]
        total = sum(s for s in sizes if s) if all(s is not None for s in sizes) else None
        self.overall = self.progress.add_task(f"fetching {len(todo)} file(s)", total=total)

    def __enter__(self) -> _Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, art: Artifact) -> int:
        return int(self.progress.add_task(f"  {art.filename}", total=art.size))

    def advance(self, task: int, n: int) -> None:
        self.progress.advance(task, n)  # type: ignore[arg-type]
        self.progress.advance(self.overall, n)

    def finish(self, task: int) -> None:
        self.progress.remove_task(task)  # type: ignore[arg-type]
