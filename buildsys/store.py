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
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


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

    def sweep_scratch(self) -> int:
        """Remove scratch folders of buildsys processes that no longer run (killed, or out of disk)."""
        removed = 0
        for entry in self.tmp.iterdir() if (self.root / "tmp").is_dir() else []:
            parts = entry.name.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and not _alive(int(parts[1])):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def vendor_path(self, sha256: str) -> Path:
        return self.vendor / sha256

    def has_artifact(self, art: Artifact) -> bool:
        path = self.vendor_path(art.sha256)
        return path.is_file() and (art.size is None or path.stat().st_size == art.size)


def _alive(pid: int) -> bool:
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
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it into place.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)
