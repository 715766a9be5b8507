"""Normalize a filesystem diff into a canonical layer tar, and compare layers.

Two builds of the same locked inputs differ in mtimes, a few volatile files and
tar details (REPRODUCIBILITY.md); the canonical form removes exactly those
differences so that identical inputs give an identical diff_id.

A child layer is defined by meaning: what differs from the parent chain's
merged filesystem (``ParentTree``), whatever the engine's storage gave us. The
three inputs (an overlayfs upper directory, a diff tar, a whole filesystem from
``docker export``) become one ``_Input``, reduced by one ``_layer_diff`` and
written by one ``LayerPlan``, so the paths cannot drift apart
(docs/reproducibility.md, "What a layer holds").
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from buildsys.core.errors import BuildsysError

T = TypeVar("T")

# Goes into every layer's cache key: bump it whenever the bytes written change.
NORMALIZER_VERSION = "2"

# Files whose content differs between identical builds (measured, see
# REPRODUCIBILITY.md "What differed" and "More sources of difference").
# "x" drops the path x; "x/**" drops everything below x but keeps x itself;
# "!x" keeps x although a "/**" rule covers it (apt still expects these).
VOLATILE_PATHS: tuple[str, ...] = (
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/log/bootstrap.log",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/cache/ldconfig/aux-cache",
    "var/lib/apt/lists/**",
    "!var/lib/apt/lists/partial",
    "!var/lib/apt/lists/lock",
    "var/cache/apt/archives/**",
    "!var/cache/apt/archives/partial",
    "!var/cache/apt/archives/lock",
    "var/cache/man/**",
    "var/cache/fontconfig/**",
    "root/.wget-hsts",
    "root/.cache/pip/**",
    "root/.cache/uv/**",
)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Only file capabilities change what a program may do; SELinux labels,
# user.* and overlay bookkeeping are host state (REPRODUCIBILITY.md, xattrs).
KEPT_XATTRS = ("security.capability",)
_PAX_XATTR = "SCHILY.xattr."
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# With these the upper dir is not a self-contained diff (data lives in lower dirs).
_UNSUPPORTED_XATTRS = (
    "trusted.overlay.redirect",
    "trusted.overlay.metacopy",
    "user.overlay.redirect",
    "user.overlay.metacopy",
)
_CHUNK = 1 << 20
_TEXT_DIFF_LIMIT = 1 << 20
_DIFF_LINES = 20

_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_KINDS = {v: k for k, v in _TAR_TYPES.items()} | {
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.GNUTYPE_SPARSE: "file",
}


class LayerError(BuildsysError):
    """A layer cannot be normalized faithfully (bad input tar, unsupported overlay feature)."""


@dataclass(frozen=True)
class LayerInfo:
    digest: str  # "sha256:<hex>" of the uncompressed tar, which is also its diff_id
    size: int
    entries: int


@dataclass(frozen=True)
class LayerEntry:
    """One entry of a layer tar, as compared by ``diff_layers``."""

    path: str
    type: str  # file | dir | symlink | hardlink | char | block | fifo
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str = ""
    sha256: str | None = None  # of the content, regular files only
    xattrs: dict[str, bytes] = field(default_factory=dict)
    device: tuple[int, int] | None = None  # (major, minor) of char/block devices


@dataclass
class FileDifference:
    path: str
    what: list[str]  # e.g. ["content"], ["mode", "mtime"], ["only in A"]
    detail: str = ""


# ---------------------------------------------------------------- drop rules


def _compile_rules(rules: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...], frozenset[str]]:
    exact, below, keep = set(), [], set()
    for rule in rules:
        if rule.startswith("!"):
            keep.add(rule[1:])
        elif rule.endswith("/**"):
            below.append(rule[:-2])  # keeps the trailing "/"
        else:
            exact.add(rule)
    return frozenset(exact), tuple(below), frozenset(keep)


_EXACT, _BELOW, _KEEP = _compile_rules(VOLATILE_PATHS)


def is_volatile(path: str) -> bool:
    """True when ``path`` (relative, normalized) is dropped by ``VOLATILE_PATHS``."""
    if path in _KEEP:
        return False
    return path in _EXACT or path.startswith(_BELOW)


def _dropper(drop_prefixes: Sequence[str]) -> Callable[[str], bool]:
    prefixes = tuple(p for p in (_norm_path(d) for d in drop_prefixes) if p)
    below = tuple(p + "/" for p in prefixes)

    def dropped(path: str) -> bool:
        return is_volatile(path) or path in prefixes or path.startswith(below)

    return dropped


def _norm_path(name: str) -> str:
    """Relative path, no "./" or "/" prefix, no empty or "." parts; "" for the root."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer entry '{name}' leaves the root ('..')", "the input tar is malformed or hostile")
    return "/".join(parts)


def _sort_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- the shared model


class _Item:
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

    def copy(self, **changes: Any) -> _Item:
        new = _Item.__new__(_Item)
        for name in _Item.__slots__:
            setattr(new, name, changes.get(name, getattr(self, name)))
        return new


@dataclass
class _Input:
    """A layer as an engine stored it: its entries, the paths it removes, the directories it makes opaque."""

    items: dict[str, _Item] = field(default_factory=dict)
    whiteouts: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    # A whole filesystem (``docker export``), not a diff: what it lacks of the parent is removed.
    full: bool = False


def _dirname(path: str) -> str:
    return path.rpartition("/")[0]


def _read_content(it: _Item) -> bytes:
    if it.data is not None:
        return it.data
    if isinstance(it.src, str):
        with open(it.src, "rb") as f:
            f.seek(it.offset)
            return f.read(it.size)
    assert it.src is not None
    it.src.seek(it.offset)
    return it.src.read(it.size)


# ---------------------------------------------------------------- the parent chain


class ParentTree:
    """The merged filesystem of a chain of canonical layer tars, as docker would apply them.

    Entries keep where their content lies (blob file, offset), so comparing a
    file with its parent's version reads both only when size, mtime and owner
    are equal, which is rare.
    """

    def __init__(self) -> None:
        self.entries: dict[str, _Item] = {}
        self._kids: dict[str, set[str]] = defaultdict(set)

    @classmethod
    def from_layers(cls, layers: Iterable[Path], index_dir: Path | None = None) -> ParentTree:
        """Apply canonical layer tars in order. With ``index_dir``, each blob's headers are
        read once and kept there by the blob's name (its digest: blobs never change)."""
        tree = cls()
        for path in layers:
            tree._apply(path, _layer_index(path, index_dir))
        return tree

    def children(self, path: str) -> set[str]:
        return self._kids.get(path, set())

    def read(self, path: str) -> bytes | None:
        """The content of the regular file at ``path`` (symlinks followed, as in the image); None if none."""
        path = _norm_path(path)
        for _ in range(16):  # a loop of symlinks is as good as no file
            it = self.entries.get(path)
            if it is None or it.kind not in ("file", "symlink"):
                return None
            if it.kind == "file":
                return _read_content(it)
            target = it.linkname if it.linkname.startswith("/") else f"{_dirname(path)}/{it.linkname}"
            try:
                path = _norm_path(posixpath.normpath("/" + target))
            except LayerError:
                return None
        return None

    def _remove(self, path: str) -> None:
        if self.entries.pop(path, None) is None:
            return
        self._kids[_dirname(path)].discard(path)
        for kid in list(self._kids.pop(path, ())):
            self._remove(kid)

    def _apply(self, blob: Path, index: list[list[Any]]) -> None:
        adds: list[_Item] = []
        src = os.fspath(blob)
        # Whiteouts act on the layers below only, whatever their place in this tar.
        for row in index:
            path = row[0]
            parent, _, base = path.rpartition("/")
            if base == OPAQUE_MARKER:
                for kid in list(self.children(parent)):
                    self._remove(kid)
            elif base.startswith(WHITEOUT_PREFIX):
                self._remove(f"{parent}/{base[4:]}" if parent else base[4:])
            else:
                _, kind, mode, uid, gid, mtime, size, link, major, minor, cap, offset = row
                adds.append(_Item(path, kind, mode, uid, gid, mtime, size, link, major, minor,
                                  bytes.fromhex(cap) if cap is not None else None, src, offset))
        here: dict[str, _Item] = {}
        for it in adds:
            old = self.entries.get(it.path)
            if old is not None and not (old.kind == "dir" and it.kind == "dir"):
                self._remove(it.path)
            if it.kind == "hardlink":  # compared as the file it names (same layer, written first)
                target = here.get(it.linkname)
                if target is None:
                    continue
                it = target.copy(path=it.path)
            here[it.path] = it
            self.entries[it.path] = it
            self._kids[_dirname(it.path)].add(it.path)


_INDEX_VERSION = 1


def _layer_index(blob: Path, index_dir: Path | None) -> list[list[Any]]:
    """A layer tar's entries as rows: path, kind, mode, uid, gid, mtime, size, link, major, minor, cap, offset."""
    cached = index_dir / f"{blob.name}.json" if index_dir is not None else None
    if cached is not None:
        try:
            data = json.loads(cached.read_bytes())
            if data.get("version") == _INDEX_VERSION and data.get("size") == blob.stat().st_size:
                return list(data["entries"])
        except (OSError, ValueError, AttributeError):
            pass  # absent or damaged: read the blob again
    try:
        with tarfile.open(blob, mode="r:") as tf:
            members = tf.getmembers()
    except tarfile.TarError as e:
        raise LayerError(f"{blob}: cannot read a parent layer: {e}",
                         "the store's copy is damaged: rebuild the image (`buildsys build --no-cache`)") from e
    rows: list[list[Any]] = []
    for m in members:
        path = _norm_path(m.name)
        kind = _KINDS.get(m.type)
        if not path or kind is None:
            continue
        cap = m.pax_headers.get(_PAX_XATTR + "security.capability")
        rows.append([path, kind, m.mode & 0o7777, m.uid, m.gid, int(m.mtime), m.size if kind == "file" else 0,
                     _norm_path(m.linkname) if kind == "hardlink" else m.linkname, m.devmajor, m.devminor,
                     cap.encode("utf-8", "surrogateescape").hex() if cap is not None else None, m.offset_data])
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"version": _INDEX_VERSION, "size": blob.stat().st_size, "entries": rows},
                                  separators=(",", ":")))
        os.replace(tmp, cached)
    return rows


# ---------------------------------------------------------------- the canonical layer, by meaning


def _chunks(it: _Item) -> Iterator[bytes]:
    if it.data is not None:
        yield it.data
        return
    f: Any = open(it.src, "rb") if isinstance(it.src, str) else it.src  # noqa: SIM115 - closed below
    try:
        f.seek(it.offset)
        left = it.size
        while left > 0 and (chunk := f.read(min(left, _CHUNK))):
            left -= len(chunk)
            yield chunk
    finally:
        if isinstance(it.src, str):
            f.close()


def _same_content(it: _Item, prev: _Item, epoch: int) -> bool:
    fixed = _fixed_content(it, epoch)
    if fixed is not None:
        return fixed == _read_content(prev)
    a, b = _chunks(it), _chunks(prev)
    pending = b""
    for chunk in a:  # chunk by chunk: a large file is never held whole
        while len(pending) < len(chunk):
            more = next(b, b"")
            if not more:
                return False
            pending += more
        if pending[: len(chunk)] != chunk:
            return False
        pending = pending[len(chunk):]
    return not pending and next(b, b"") == b""


def _differs(it: _Item, prev: _Item, epoch: int) -> bool:
    """Whether an entry of the new layer changes what the parent chain shows at its path.

    Directories compare by mode, owner and capabilities only: their mtime moves
    whenever something inside was created and removed again, which changes
    nothing a program sees (docker's vfs diff ignores it as well).
    """
    if (it.kind != prev.kind or it.mode != prev.mode or it.uid != prev.uid or it.gid != prev.gid
            or it.cap != prev.cap):
        return True
    if it.kind == "dir":
        return False
    if it.mtime != prev.mtime or it.linkname != prev.linkname:
        return True
    if it.kind in ("char", "block"):
        return (it.devmajor, it.devminor) != (prev.devmajor, prev.devminor)
    if it.kind == "file":
        return it.size != prev.size or not _same_content(it, prev, epoch)
    return False


def _whiteout(path: str, name: str, epoch: int) -> _Item:
    # Fixed metadata: engines write these with their own (clock, mode); only the name means anything.
    return _Item(f"{path}/{name}" if path else name, "file", 0o600, 0, 0, epoch)


def _layer_diff(layer: _Input, parent: ParentTree, drop: Callable[[str], bool], epoch: int) -> dict[str, _Item]:
    """The canonical layer's entries: see docs/reproducibility.md, "What a layer holds"."""
    items = {p: it for p, it in layer.items.items() if not drop(p)}
    below = parent.entries
    out = {p: it for p, it in items.items() if (prev := below.get(p)) is None or _differs(it, prev, epoch)}

    removed: set[str] = {p for p in layer.whiteouts if p in below and p not in items}
    if layer.full:  # the topmost parent paths that the filesystem no longer has
        have = layer.items
        removed.update(p for p in below if p not in have and ((d := _dirname(p)) == "" or d in have))
    for d in layer.opaque:  # everything below d that the layer does not hold again is gone
        stack = [d] if d in items else []
        while stack:
            for q in parent.children(stack.pop()):
                if q not in items:
                    removed.add(q)
                elif items[q].kind == "dir" and below[q].kind == "dir":
                    stack.append(q)

    by_dir: dict[str, list[str]] = defaultdict(list)
    for q in removed:
        by_dir[_dirname(q)].append(q)
    for d, gone in sorted(by_dir.items()):
        if d and len(gone) == len(parent.children(d)):  # a directory that existed below, replaced
            out[f"{d}/{OPAQUE_MARKER}"] = _whiteout(d, OPAQUE_MARKER, epoch)
        else:
            for q in gone:
                dname, _, base = q.rpartition("/")
                out[f"{dname}/{WHITEOUT_PREFIX}{base}" if dname else WHITEOUT_PREFIX + base] = \
                    _whiteout(dname, WHITEOUT_PREFIX + base, epoch)

    # Every entry's directories come along, with their metadata in the new tree: docker
    # creates a missing parent directory as 0755 root, which would change what it shows.
    for p in list(out):
        a = _dirname(p)
        while a and a not in out:
            it = items.get(a) or below.get(a)
            if it is None or it.kind != "dir":
                break
            out[a] = it
            a = _dirname(a)
    return out


def _resolve_links(out: dict[str, _Item]) -> list[_Item]:
    """Sort; within each inode, the first path holds the data and the others link to it."""
    groups: dict[object, list[str]] = defaultdict(list)
    for p, it in out.items():
        if it.link_key is not None and it.kind == "file":
            groups[it.link_key].append(p)
    for members in groups.values():
        if len(members) == 1:
            continue
        members.sort(key=_sort_key)
        first = members[0]
        for p in members[1:]:
            out[p] = out[p].copy(kind="hardlink", linkname=first, size=0, data=None, src=None)
    return [out[p] for p in sorted(out, key=_sort_key)]


# ---------------------------------------------------------------- writing


def _fix_shadow(data: bytes, epoch: int) -> bytes:
    """useradd writes today's day number into field 3 unless SOURCE_DATE_EPOCH is set."""
    day = epoch // 86400
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        fields = line.split(b":")
        if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) > day:
            fields[2] = str(day).encode()
            lines[i] = b":".join(fields)
    return b"\n".join(lines)


def _fix_pyc(data: bytes, epoch: int) -> bytes:
    """Timestamp pycs (PEP 552 flags 0) record the source mtime, which pip sets to the wall clock."""
    if len(data) >= 16 and int.from_bytes(data[4:8], "little") == 0 and int.from_bytes(data[8:12], "little") > epoch:
        return data[:8] + (epoch & 0xFFFFFFFF).to_bytes(4, "little") + data[12:]
    return data


def _fixed_content(it: _Item, epoch: int) -> bytes | None:
    """The rewritten content of the few files that need one; None to copy as is (same size for .pyc)."""
    path = it.path
    if path == "etc/machine-id":
        return b""
    if path == "etc/shadow":
        return _fix_shadow(_read_content(it), epoch)
    if path.endswith(".pyc"):
        return _fix_pyc(_read_content(it), epoch)
    return None


_TYPEFLAGS = {k: v for k, v in _TAR_TYPES.items()}
_NUL = b"\0"
_MAX7 = 8**7
_MAX11 = 8**11


def _header(it: _Item, mtime: int) -> bytes:
    """The PAX-format header of one entry, byte for byte what ``TarInfo.tobuf(PAX_FORMAT)`` writes.

    The common case (ASCII names up to 100 bytes, no xattr, small numbers) is
    built here directly, at a fraction of tarfile's cost; anything else goes
    to tarfile (tests/test_layer.py checks both agree).
    """
    name = it.path + "/" if it.kind == "dir" else it.path
    link = it.linkname
    size = it.size
    if (it.cap is None and len(name) <= 100 and len(link) <= 100 and name.isascii() and link.isascii()
            and it.uid < _MAX7 and it.gid < _MAX7 and 0 <= size < _MAX11 and 0 <= mtime < _MAX11):
        dev = (b"%07o\0%07o\0" % (it.devmajor, it.devminor)) if it.kind in ("char", "block") else _NUL * 16
        buf = b"".join((
            name.encode().ljust(100, _NUL),
            b"%07o\0%07o\0%07o\0%011o\0%011o\0        " % (it.mode, it.uid, it.gid, size, mtime),
            _TYPEFLAGS[it.kind],
            link.encode().ljust(100, _NUL),
            b"ustar\x0000",
            _NUL * 64,
            dev,
            _NUL * 167,
        ))
        return b"%s%06o\0%s" % (buf[:148], sum(buf), buf[155:])
    info = tarfile.TarInfo(it.path)
    info.type = _TYPEFLAGS[it.kind]
    info.mode, info.uid, info.gid, info.size, info.mtime = it.mode, it.uid, it.gid, size, mtime
    info.uname = info.gname = ""
    info.linkname = link
    if it.kind in ("char", "block"):
        info.devmajor, info.devminor = it.devmajor, it.devminor
    if it.cap is not None:
        info.pax_headers = {_PAX_XATTR + "security.capability": it.cap.decode("utf-8", "surrogateescape")}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class LayerPlan:
    """A canonical layer decided but not yet written: its headers, sources and exact size.

    Knowing the size before the first byte lets the layer be streamed into a
    ``docker load`` archive (whose tar header needs it) while it is written to
    the store and hashed: one pass over the bytes for all three.
    """

    def __init__(self, entries: list[_Item], epoch: int) -> None:
        self.epoch = epoch
        self.parts: list[tuple[bytes, _Item | None]] = []
        size = 0
        for it in entries:
            if it.kind == "file" and it.path in _FIXED_PATHS:
                it = it.copy(data=_fixed_content(it, epoch))
                it.size = len(it.data or b"")
            head = _header(it, min(it.mtime, epoch))
            size += len(head)
            if it.kind == "file" and it.size:
                self.parts.append((head, it))
                size += -(-it.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            else:
                self.parts.append((head, None))
        size += 2 * tarfile.BLOCKSIZE
        self.size = -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
        self.entries = len(entries)

    def write(self, *sinks: IO[bytes]) -> LayerInfo:
        """Write the tar to every sink, hashing it once; the content of each file is read once."""
        out = _Tee(sinks)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        for head, it in self.parts:
            out.write(head)
            if it is None:
                continue
            if it.data is not None or it.path.endswith(".pyc"):
                data = it.data if it.data is not None else _fix_pyc(_read_content(it), self.epoch)
                self._check(it, len(data))
                out.write(data)
            else:
                self._copy(it, out, buf, view)
            if it.size % tarfile.BLOCKSIZE:
                out.write(_NUL * (tarfile.BLOCKSIZE - it.size % tarfile.BLOCKSIZE))
        out.write(_NUL * (self.size - out.size))
        out.flush()
        if out.size != self.size:  # pragma: no cover - a bug, not an input
            raise LayerError(f"wrote {out.size} bytes where {self.size} were planned")
        return LayerInfo(digest="sha256:" + out.hash.hexdigest(), size=out.size, entries=self.entries)

    def _copy(self, it: _Item, out: _Tee, buf: bytearray, view: memoryview) -> None:
        opened = isinstance(it.src, str)
        f: Any = open(it.src, "rb", buffering=0) if isinstance(it.src, str) else it.src  # noqa: SIM115
        try:
            if not opened:
                f.seek(it.offset)
            left = it.size
            while left:
                n = f.readinto(view[: min(left, _CHUNK)])
                if not n:
                    break
                out.write_view(view[:n])
                left -= n
            if left or (opened and f.read(1)):
                self._check(it, -1)
        finally:
            if opened:
                f.close()

    @staticmethod
    def _check(it: _Item, got: int) -> None:
        if got != it.size:
            raise LayerError(f"{it.path}: expected {it.size} bytes of content, found {'other' if got < 0 else got}",
                             "the file changed while it was read, or the input is truncated; run the build again")


_FIXED_PATHS = frozenset(("etc/machine-id", "etc/shadow"))


class _Tee:
    """Buffers small writes, hashes everything once and writes it to every sink."""

    def __init__(self, sinks: Sequence[IO[bytes]], hashed: bool = True) -> None:
        self.sinks = sinks
        self.hashed = hashed
        self.hash = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if len(data) >= _CHUNK // 4:  # large: straight through, no copy
            self.flush()
            self._emit(data)
            return
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self.flush()

    write_view = write

    def flush(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = bytearray()

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        if self.hashed:
            self.hash.update(data)
        for s in self.sinks:
            s.write(data)


class TarWriter:
    """A minimal PAX tar writer that needs no ``tell`` (pipes, sockets) and counts and hashes its output.

    Used for the docker-archive wrapper; layers themselves are written by ``LayerPlan``.
    """

    def __init__(self, dst: IO[bytes], hashed: bool = True) -> None:
        self._out = _Tee([dst], hashed)

    def add(self, info: tarfile.TarInfo, chunks: Iterable[bytes] = ()) -> None:
        """Write one header and exactly ``info.size`` bytes of data taken from ``chunks``."""
        self._out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        written = 0
        for chunk in chunks:
            written += len(chunk)
            if written > info.size:
                break
            self._out.write(chunk)
        if written != info.size:
            raise LayerError(f"{info.name}: expected {info.size} bytes of content, got {written}",
                             "the file changed or the input is truncated; run the build again")
        if info.size % tarfile.BLOCKSIZE:
            self._out.write(tarfile.NUL * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE))

    def add_stream(self, name: str, size: int, write: Callable[[IO[bytes]], T]) -> T:
        """Write a header for ``size`` bytes, then let ``write`` produce them into this archive."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uname, info.gname = size, 0o644, "", ""
        self._out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._out.flush()
        before = self._out.size
        result = write(self._out)  # type: ignore[arg-type]
        self._out.flush()
        if self._out.size - before != size:
            raise LayerError(f"{name}: expected {size} bytes, got {self._out.size - before}")
        if size % tarfile.BLOCKSIZE:
            self._out.write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))
        return result

    def close(self) -> LayerInfo:
        """End the archive as tarfile does (two zero blocks, padded to a record) and flush."""
        self._out.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self._out.size % tarfile.RECORDSIZE:
            self._out.write(tarfile.NUL * (tarfile.RECORDSIZE - self._out.size % tarfile.RECORDSIZE))
        self._out.flush()
        return LayerInfo(digest="sha256:" + self._out.hash.hexdigest(), size=self._out.size, entries=0)


def plan_layer(layer: _Input, epoch: int, drop_prefixes: Sequence[str] = (),
               parent: ParentTree | None = None) -> LayerPlan:
    out = _layer_diff(layer, parent or ParentTree(), _dropper(drop_prefixes), epoch)
    return LayerPlan(_resolve_links(out), epoch)


# ---------------------------------------------------------------- tar input


def _pax_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    # tarfile decodes pax values as UTF-8 with surrogateescape; this gives the bytes back.
    return {
        k[len(_PAX_XATTR):]: v.encode("utf-8", "surrogateescape")
        for k, v in member.pax_headers.items()
        if k.startswith(_PAX_XATTR)
    }


def read_tar(src: IO[bytes]) -> _Input:
    """A layer tar (docker save, commit, a rootfs) as entries, whiteouts and opaque directories.

    ``src`` must stay open and seekable while the result is used: contents are read from it.
    """
    try:
        tf = tarfile.open(fileobj=src, mode="r:")  # noqa: SIM115 - closing it would close nothing we need
        members = tf.getmembers()
    except tarfile.TarError as e:
        raise LayerError(f"cannot read the layer tar: {e}", "is it an uncompressed tar?") from e
    layer = _Input()
    items = layer.items
    for m in members:
        path = _norm_path(m.name)
        kind = _KINDS.get(m.type)
        if not path or kind is None:
            continue  # the root entry, or a type a layer cannot hold
        parent, _, base = path.rpartition("/")
        if base == OPAQUE_MARKER:
            layer.opaque.append(parent)
            continue
        if base.startswith(WHITEOUT_PREFIX):
            layer.whiteouts.append(f"{parent}/{base[4:]}" if parent else base[4:])
            continue
        cap = m.pax_headers.get(_PAX_XATTR + "security.capability")
        it = _Item(path, kind, m.mode, m.uid, m.gid, int(m.mtime // 1), m.size if kind == "file" else 0,
                   _norm_path(m.linkname) if kind == "hardlink" else m.linkname if kind == "symlink" else "",
                   m.devmajor, m.devminor, cap.encode("utf-8", "surrogateescape") if cap is not None else None,
                   src, m.offset_data)
        if kind == "file" and m.issparse():
            f = tf.extractfile(m)
            assert f is not None
            it.data = f.read()
        items[path] = it
    # A tar names a hardlink's target by path: each link becomes a copy of the file it names,
    # in one inode group, so both inputs give the same items.
    targets: dict[str, str] = {}
    for it in items.values():
        if it.kind != "hardlink":
            continue
        target, seen = it.linkname, set()
        while target in items and items[target].kind == "hardlink" and target not in seen:
            seen.add(target)
            target = items[target].linkname
        if target in items and items[target].kind == "file":
            targets[it.path] = target
    for path, target in targets.items():
        t = items[target]
        t.link_key = target
        items[path] = t.copy(path=path)
    return layer


# What docker's init layer adds to every container's filesystem where the image lacks it
# (daemon/initlayer): a ``docker export`` shows them, a layer never holds them.
_ENGINE_PATHS = frozenset((".dockerenv", "dev/pts", "dev/shm", "dev/console", "proc", "sys", "etc/resolv.conf",
                           "etc/hosts", "etc/hostname", "etc/mtab"))


def read_filesystem(src: IO[bytes], parent: ParentTree) -> _Input:
    """A container's whole filesystem as ``docker export`` writes it, to be compared with ``parent``.

    The engine's own files are taken as the parent has them (or left out):
    a build step cannot change them, they are bind mounts while it runs.
    """
    layer = read_tar(src)
    layer.full = True
    for path in _ENGINE_PATHS:
        layer.items.pop(path, None)
        if path in parent.entries:
            layer.items[path] = parent.entries[path]
    return layer


def normalize_tar(src: IO[bytes], dst: IO[bytes], epoch: int, drop_prefixes: Sequence[str] = (),
                  parent: ParentTree | None = None) -> LayerInfo:
    """Write the canonical form of an uncompressed tar stream to ``dst``.

    Headers are read first, contents then copied in sorted order; ``src``
    should be seekable (a real file); anything else is first spooled to a
    temporary file.
    """
    if not _seekable(src):
        with tempfile.TemporaryFile(prefix="buildsys-layer-") as spool:
            shutil.copyfileobj(src, spool, _CHUNK)
            spool.seek(0)
            return normalize_tar(spool, dst, epoch, drop_prefixes, parent)
    return plan_layer(read_tar(src), epoch, drop_prefixes, parent).write(dst)


def _seekable(f: IO[bytes]) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


# ---------------------------------------------------------------- overlay upper dir input


def read_upper_dir(root: Path) -> _Input:
    """An overlayfs upper directory (docker's overlay2 ``diff``) as entries, whiteouts and opaque dirs."""
    layer = _Input()
    items = layer.items
    stack = [(os.fspath(root), "")]
    S_IFMT, S_IFDIR, S_IFREG, S_IFLNK = stat.S_IFMT, stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK  # noqa: N806
    listxattr, getxattr = os.listxattr, os.getxattr
    while stack:
        dirpath, rel = stack.pop()
        with os.scandir(dirpath) as scan:
            for e in scan:
                path = f"{rel}/{e.name}" if rel else e.name
                full = e.path
                st = e.stat(follow_symlinks=False)
                fmt = S_IFMT(st.st_mode)
                try:
                    names = listxattr(full, follow_symlinks=False)
                except OSError:
                    names = []  # a file system without xattrs
                cap = None
                if names:
                    bad = [n for n in _UNSUPPORTED_XATTRS if n in names]
                    if bad:
                        raise LayerError(f"{full}: overlay attribute {bad[0]} means this directory is not a full "
                                         "diff", "mount overlay with redirect_dir=off,metacopy=off (docker's default)")
                    if "security.capability" in names:
                        cap = getxattr(full, "security.capability", follow_symlinks=False)
                mtime = st.st_mtime_ns // 1_000_000_000
                if fmt == S_IFREG:
                    items[path] = _Item(path, "file", st.st_mode, st.st_uid, st.st_gid, mtime, st.st_size, cap=cap,
                                        src=full, link_key=(st.st_dev, st.st_ino) if st.st_nlink > 1 else None)
                elif fmt == S_IFDIR:
                    items[path] = _Item(path, "dir", st.st_mode, st.st_uid, st.st_gid, mtime, cap=cap)
                    if names and any(n in names and getxattr(full, n, follow_symlinks=False) == b"y"
                                     for n in _OPAQUE_XATTRS):
                        layer.opaque.append(path)
                    stack.append((full, path))
                elif fmt == S_IFLNK:
                    items[path] = _Item(path, "symlink", st.st_mode, st.st_uid, st.st_gid, mtime,
                                        linkname=os.readlink(full), cap=cap)
                elif fmt == stat.S_IFCHR and st.st_rdev == 0:
                    layer.whiteouts.append(path)
                elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                    items[path] = _Item(path, "char" if fmt == stat.S_IFCHR else "block", st.st_mode, st.st_uid,
                                        st.st_gid, mtime, devmajor=os.major(st.st_rdev),
                                        devminor=os.minor(st.st_rdev))
                elif fmt == stat.S_IFIFO:
                    items[path] = _Item(path, "fifo", st.st_mode, st.st_uid, st.st_gid, mtime)
                # sockets cannot be archived; docker skips them too
    return layer


def normalize_dir(root: Path, dst: IO[bytes], epoch: int, drop_prefixes: Sequence[str] = (),
                  parent: ParentTree | None = None) -> LayerInfo:
    """Write the canonical layer of an overlayfs upper directory (docker's overlay2 ``diff``)."""
    return plan_layer(read_upper_dir(root), epoch, drop_prefixes, parent).write(dst)


# ---------------------------------------------------------------- reading and comparing layers


def _entry(member: tarfile.TarInfo, path: str, digest: str | None) -> LayerEntry:
    kind = _KINDS.get(member.type, f"type {member.type!r}")
    return LayerEntry(
        path=path,
        type=kind,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        size=member.size if kind == "file" else 0,
        mtime=int(member.mtime // 1),
        linkname=_norm_path(member.linkname) if kind == "hardlink" else member.linkname,
        sha256=digest,
        xattrs=_pax_xattrs(member),
        device=(member.devmajor, member.devminor) if kind in ("char", "block") else None,
    )


def _scan(tf: tarfile.TarFile) -> tuple[dict[str, LayerEntry], dict[str, tarfile.TarInfo]]:
    entries: dict[str, LayerEntry] = {}
    members: dict[str, tarfile.TarInfo] = {}
    for m in tf:
        path = _norm_path(m.name)
        if not path:
            continue
        digest = None
        if m.isfile():
            h = hashlib.sha256()
            f = tf.extractfile(m)
            assert f is not None
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            digest = h.hexdigest()
        entries[path] = _entry(m, path, digest)
        members[path] = m
    return entries, members


def read_entries(path: Path) -> dict[str, LayerEntry]:
    """The entries of a layer tar by normalized path, with content hashes."""
    try:
        with tarfile.open(path, mode="r:") as tf:
            return _scan(tf)[0]
    except tarfile.TarError as e:
        raise LayerError(f"{path}: cannot read the layer tar: {e}",
                         "the store's copy is damaged: rebuild the image (`buildsys build --no-cache`)") from e


def _fields_differing(a: LayerEntry, b: LayerEntry) -> tuple[list[str], list[str]]:
    if a.type != b.type:
        return ["type"], [f"type: {a.type} -> {b.type}"]
    what, detail = [], []
    checks = (
        ("link target", a.linkname, b.linkname, a.linkname, b.linkname),
        ("content", a.sha256, b.sha256, f"{a.size} bytes sha256 {str(a.sha256)[:12]}",
         f"{b.size} bytes sha256 {str(b.sha256)[:12]}"),
        ("mode", a.mode, b.mode, f"{a.mode:04o}", f"{b.mode:04o}"),
        ("owner", (a.uid, a.gid), (b.uid, b.gid), f"{a.uid}:{a.gid}", f"{b.uid}:{b.gid}"),
        ("mtime", a.mtime, b.mtime, a.mtime, b.mtime),
        ("xattrs", a.xattrs, b.xattrs, sorted(a.xattrs), sorted(b.xattrs)),
        ("device", a.device, b.device, a.device, b.device),
    )
    for name, va, vb, sa, sb in checks:
        if va != vb:
            what.append(name)
            detail.append(f"{name}: {sa} -> {sb}")
    return what, detail


def diff_entries(
    a: dict[str, LayerEntry],
    b: dict[str, LayerEntry],
    read_a: Callable[[str], bytes] | None = None,
    read_b: Callable[[str], bytes] | None = None,
) -> list[FileDifference]:
    """Per-file differences, sorted by path; with readers, text files get a unified diff."""
    out = []
    for path in sorted(a.keys() | b.keys(), key=_sort_key):
        ea, eb = a.get(path), b.get(path)
        if eb is None:
            out.append(FileDifference(path, ["only in A"]))
            continue
        if ea is None:
            out.append(FileDifference(path, ["only in B"]))
            continue
        what, detail = _fields_differing(ea, eb)
        if not what:
            continue
        if "content" in what and read_a and read_b and max(ea.size, eb.size) < _TEXT_DIFF_LIMIT:
            text = _text_diff(path, read_a(path), read_b(path))
            if text:
                detail.append(text)
        out.append(FileDifference(path, what, "\n".join(detail)))
    return out


def _text_diff(path: str, a: bytes, b: bytes) -> str:
    try:
        la, lb = a.decode("utf-8").splitlines(), b.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return ""
    lines = list(difflib.unified_diff(la, lb, f"A/{path}", f"B/{path}", lineterm="", n=2))
    if len(lines) > _DIFF_LINES:
        lines = lines[:_DIFF_LINES] + [f"... ({len(lines) - _DIFF_LINES} more diff lines)"]
    return "\n".join(lines)


def diff_layers(a: Path, b: Path) -> list[FileDifference]:
    """What differs between two layer tars, file by file: the report of a failed verify."""
    try:
        with tarfile.open(a, mode="r:") as ta, tarfile.open(b, mode="r:") as tb:
            ea, ma = _scan(ta)
            eb, mb = _scan(tb)

            def reader(tf: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> Callable[[str], bytes]:
                def read(path: str) -> bytes:
                    f = tf.extractfile(members[path])
                    return f.read() if f else b""

                return read

            return diff_entries(ea, eb, reader(ta, ma), reader(tb, mb))
    except tarfile.TarError as e:
        raise LayerError(f"cannot read a layer tar: {e}") from e
