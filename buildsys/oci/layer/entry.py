"""What every part of a layer's life shares: one entry of a layer whatever its source, paths, tar kinds.

The normalizer (``normalize``), the parent chain (``tree``), the engines' inputs
(``inputs``) and the file-level comparison (``diff``) all speak of the same
entries; they are defined once here.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from typing import IO, Any

from buildsys.core.errors import BuildsysError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
PAX_XATTR = "SCHILY.xattr."
# The one xattr a layer keeps: file capabilities change what a program may do; SELinux labels,
# user.* and overlay bookkeeping are host state (docs/reproducibility.md, xattrs).
CAPABILITY_XATTR = "security.capability"
CHUNK = 1 << 20

TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
KINDS = {v: k for k, v in TAR_TYPES.items()} | {
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.GNUTYPE_SPARSE: "file",
}


class LayerError(BuildsysError):
    """A layer cannot be normalized faithfully (bad input tar, unsupported overlay feature)."""


def norm_path(name: str) -> str:
    """Relative path, no "./" or "/" prefix, no empty or "." parts; "" for the root."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer entry '{name}' leaves the root ('..')", "the input tar is malformed or hostile")
    return "/".join(parts)


def sort_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


class Item:
    """One entry of a layer (input, parent chain or output), whatever its source.

    A plain slotted class: tens of thousands are made per layer, and a
    dataclass ``replace`` per entry was a measurable share of the old normalizer.
    """

    __slots__ = ("path", "kind", "mode", "uid", "gid", "mtime", "size", "linkname", "devmajor", "devminor",
                 "cap", "src", "offset", "data", "link_key")

    def __init__(self, path: str, kind: str, mode: int, uid: int, gid: int, mtime: int, size: int = 0,
                 linkname: str = "", devmajor: int = 0, devminor: int = 0, cap: bytes | None = None,
                 src: str | IO[bytes] | None = None, offset: int = 0, data: bytes | None = None,
                 link_key: object = None) -> None:
        self.path, self.kind, self.mode, self.uid, self.gid, self.mtime = path, kind, mode & 0o7777, uid, gid, mtime
        self.size, self.linkname, self.devmajor, self.devminor, self.cap = size, linkname, devmajor, devminor, cap
        self.src = src  # a file name (upper dir, parent blob) or an open seekable file (tar input)
        self.offset = offset  # where the content starts in ``src``
        self.data = data  # the content itself, when it is not read from ``src``
        self.link_key = link_key  # items with the same key are one inode

    def copy(self, **changes: Any) -> Item:
        new = Item.__new__(Item)
        for name in Item.__slots__:
            setattr(new, name, changes.get(name, getattr(self, name)))
        return new


@dataclass
class LayerInput:
    """A layer as an engine stored it: its entries, the paths it removes, the directories it makes opaque."""

    items: dict[str, Item] = field(default_factory=dict)
    whiteouts: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    # A whole filesystem (``docker export``), not a diff: what it lacks of the parent is removed.
    full: bool = False


def dirname(path: str) -> str:
    return path.rpartition("/")[0]


def read_content(it: Item) -> bytes:
    if it.data is not None:
        return it.data
    if isinstance(it.src, str):
        with open(it.src, "rb") as f:
            f.seek(it.offset)
            return f.read(it.size)
    assert it.src is not None
    it.src.seek(it.offset)
    return it.src.read(it.size)
