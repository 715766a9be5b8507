"""The on-disk store: vendored artifacts, OCI images, build cache.

Everything written here is written atomically (a temporary name in the same
folder, then ``os.replace``), so an interrupted run never leaves a file that a
later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from buildsys.core import names


@dataclass(frozen=True)
class Artifact:
    """One locked download: a .deb, a wheel or a pinned file."""

    kind: str  # "deb" | "wheel" | "file"
    name: str  # package name, or the file's name for plain files
    version: str
    filename: str  # the artifact's own file name, e.g. apt_2.6.1_amd64.deb
    sha256: str  # lowercase hex, no prefix
    size: int | None
    urls: tuple[str, ...]  # tried in order
    # May its URLs point at this machine (file:, loopback)? Only [[files]] with local = true;
    # debs and wheels come from indexes, which fetch never needs to read from here.
    local: bool = False


class Store:
    """Paths of one store. ``vendor_root`` lets a throw-away store (``build --verify``)
    share the vendored, hash-checked inputs of the real one."""

    def __init__(self, root: Path, vendor_root: Path | None = None) -> None:
        self.root = root
        self.vendor_root = vendor_root or root / "vendor"

    @property
    def vendor(self) -> Path:
        return self.vendor_root / "sha256"

    @property
    def oci(self) -> Path:
        return self.root / "oci"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def tmp(self) -> Path:
        """Scratch space on the store's file system (so renames are atomic)."""
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def scratch(self, what: str) -> tempfile.TemporaryDirectory[str]:
        """A scratch folder named for this process, removed on exit (see ``sweep_scratch``)."""
        return tempfile.TemporaryDirectory(dir=self.tmp, prefix=f"{what}-{os.getpid()}-")

    def stale_scratch(self) -> list[Path]:
        """Scratch folders of buildsys processes that no longer run (killed, or out of disk)."""
        stale = []
        for entry in self.tmp.iterdir() if (self.root / "tmp").is_dir() else []:
            parts = entry.name.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and not pid_alive(int(parts[1])):
                stale.append(entry)
        return stale

    def sweep_scratch(self) -> int:
        """Remove the scratch folders of buildsys processes that no longer run; return how many."""
        stale = self.stale_scratch()
        for entry in stale:
            shutil.rmtree(entry, ignore_errors=True)
        return len(stale)

    def vendor_path(self, sha256: str) -> Path:
        # Locks are validated on read; this guard keeps any other caller from turning
        # a value that is not a digest into a path outside the store.
        if not names.HEX64.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.vendor / sha256

    def vendor_stream(self, src: IO[bytes], prefix: str, also: Sequence[Any] = (),
                      check: Callable[[], None] | None = None) -> tuple[str, int]:
        """Stream ``src`` into the vendor store under its sha256; return (hex digest, size).

        ``also``: more hashlib objects fed the same bytes; ``check`` runs after the last byte and
        before the file is placed (it raises to refuse it). Nothing is left behind on any error.
        """
        h, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=prefix)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    for other in also:
                        other.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            if check is not None:
                check()
            dest = self.vendor_path(h.hexdigest())
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return h.hexdigest(), size

    def has_artifact(self, art: Artifact) -> bool:
        path = self.vendor_path(art.sha256)
        return path.is_file() and (art.size is None or path.stat().st_size == art.size)

    # A file's sha256 was checked when it was placed; a stamp records the (size, mtime,
    # inode) it had then, so a later fetch rehashes only files that changed since.
    def _stamp_path(self, sha256: str) -> Path:
        return self.vendor_root / "verified" / self.vendor_path(sha256).name

    @staticmethod
    def _stamp_of(path: Path) -> bytes:
        st = path.stat()
        return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}\n".encode()

    def mark_verified(self, sha256: str) -> None:
        atomic_write(self._stamp_path(sha256), self._stamp_of(self.vendor_path(sha256)))

    def is_verified(self, sha256: str) -> bool:
        """The file is there and unchanged since its hash was last checked."""
        try:
            return self._stamp_path(sha256).read_bytes() == self._stamp_of(self.vendor_path(sha256))
        except FileNotFoundError:
            return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (one that is not ours to signal counts as alive):
    how the store's scratch, an export's partials and a build's containers tell what a dead run left."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", prefix: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it into place.

    On any exception the temporary file is removed and ``path`` is untouched. ``prefix`` names the
    temporary file (default ``.NAME.``); ``core.archive.owned_open`` puts its owner in it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600; the result keeps the mode of the file it replaces, else the umask's.
        try:
            perm = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            perm = 0o666 & ~_UMASK
        os.fchmod(fd, perm)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it; done once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)
