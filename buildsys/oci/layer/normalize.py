"""Normalize a filesystem diff into a canonical layer tar.

Two builds of the same locked inputs differ in mtimes, a few volatile files and
tar details (docs/reproducibility.md); the canonical form removes exactly those
differences so that identical inputs give an identical diff_id.

A child layer is defined by meaning: what differs from the parent chain's
merged filesystem (``ParentTree``), whatever the engine's storage gave us. The
three inputs (``inputs``: an overlayfs upper directory, a diff tar, a whole
filesystem from ``docker export``) become one ``LayerInput``, reduced by one
``_layer_diff`` and written by one ``LayerPlan``, so the paths cannot drift
apart (docs/reproducibility.md, "What a layer holds").
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from buildsys.oci.layer.entry import (
    CAPABILITY_XATTR,
    CHUNK,
    OPAQUE_MARKER,
    PAX_XATTR,
    TAR_TYPES,
    WHITEOUT_PREFIX,
    Item,
    LayerError,
    LayerInput,
    dirname,
    norm_path,
    read_content,
    sort_key,
)
from buildsys.oci.layer.inputs import read_tar, read_upper_dir
from buildsys.oci.layer.tree import ParentTree

T = TypeVar("T")

# Goes into every layer's cache key: bump it whenever the bytes written change.
NORMALIZER_VERSION = "2"

# Files whose content differs between identical builds (measured, see
# docs/reproducibility.md, "What differed between identical builds").
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

@dataclass(frozen=True)
class LayerInfo:
    digest: str  # "sha256:<hex>" of the uncompressed tar, which is also its diff_id
    size: int
    entries: int


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
    prefixes = tuple(p for p in (norm_path(d) for d in drop_prefixes) if p)
    below = tuple(p + "/" for p in prefixes)

    def dropped(path: str) -> bool:
        return is_volatile(path) or path in prefixes or path.startswith(below)

    return dropped


# ---------------------------------------------------------------- the canonical layer, by meaning


def _chunks(it: Item) -> Iterator[bytes]:
    if it.data is not None:
        yield it.data
        return
    f: Any = open(it.src, "rb") if isinstance(it.src, str) else it.src  # noqa: SIM115 - closed below
    try:
        f.seek(it.offset)
        left = it.size
        while left > 0 and (chunk := f.read(min(left, CHUNK))):
            left -= len(chunk)
            yield chunk
    finally:
        if isinstance(it.src, str):
            f.close()


def _same_content(it: Item, prev: Item, epoch: int) -> bool:
    fixed = _fixed_content(it, epoch)
    if fixed is not None:
        return fixed == read_content(prev)
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


def _differs(it: Item, prev: Item, epoch: int) -> bool:
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


def _whiteout(path: str, name: str, epoch: int) -> Item:
    # Fixed metadata: engines write these with their own (clock, mode); only the name means anything.
    return Item(f"{path}/{name}" if path else name, "file", 0o600, 0, 0, epoch)


def _layer_diff(layer: LayerInput, parent: ParentTree, drop: Callable[[str], bool], epoch: int) -> dict[str, Item]:
    """The canonical layer's entries: see docs/reproducibility.md, "What a layer holds"."""
    items = {p: it for p, it in layer.items.items() if not drop(p)}
    below = parent.entries
    out = {p: it for p, it in items.items() if (prev := below.get(p)) is None or _differs(it, prev, epoch)}
    out.update(_whiteouts(_removed(layer, items, parent), parent, epoch))
    _add_parent_dirs(out, items, below)
    return out


def _removed(layer: LayerInput, items: dict[str, Item], parent: ParentTree) -> set[str]:
    """The parent chain's paths this layer takes away: whited out, gone from a full filesystem, under an opaque dir."""
    below = parent.entries
    removed: set[str] = {p for p in layer.whiteouts if p in below and p not in items}
    if layer.full:  # the topmost parent paths that the filesystem no longer has
        have = layer.items
        removed.update(p for p in below if p not in have and ((d := dirname(p)) == "" or d in have))
    for d in layer.opaque:  # everything below d that the layer does not hold again is gone
        stack = [d] if d in items else []
        while stack:
            for q in parent.children(stack.pop()):
                if q not in items:
                    removed.add(q)
                elif items[q].kind == "dir" and below[q].kind == "dir":
                    stack.append(q)
    return removed


def _whiteouts(removed: set[str], parent: ParentTree, epoch: int) -> dict[str, Item]:
    """The whiteout entries for ``removed``: one opaque marker where a whole directory's contents went."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for q in removed:
        by_dir[dirname(q)].append(q)
    out: dict[str, Item] = {}
    for d, gone in sorted(by_dir.items()):
        if d and len(gone) == len(parent.children(d)):  # a directory that existed below, replaced
            out[f"{d}/{OPAQUE_MARKER}"] = _whiteout(d, OPAQUE_MARKER, epoch)
        else:
            for q in gone:
                dname, _, base = q.rpartition("/")
                out[f"{dname}/{WHITEOUT_PREFIX}{base}" if dname else WHITEOUT_PREFIX + base] = \
                    _whiteout(dname, WHITEOUT_PREFIX + base, epoch)
    return out


def _add_parent_dirs(out: dict[str, Item], items: dict[str, Item], below: dict[str, Item]) -> None:
    """Every entry's directories come along, with their metadata in the new tree.

    Docker creates a missing parent directory as 0755 root, which would change what it shows.
    """
    for p in list(out):
        a = dirname(p)
        while a and a not in out:
            it = items.get(a) or below.get(a)
            if it is None or it.kind != "dir":
                break
            out[a] = it
            a = dirname(a)


def _resolve_links(out: dict[str, Item]) -> list[Item]:
    """Sort; within each inode, the first path holds the data and the others link to it."""
    groups: dict[object, list[str]] = defaultdict(list)
    for p, it in out.items():
        if it.link_key is not None and it.kind == "file":
            groups[it.link_key].append(p)
    for members in groups.values():
        if len(members) == 1:
            continue
        members.sort(key=sort_key)
        first = members[0]
        for p in members[1:]:
            out[p] = out[p].copy(kind="hardlink", linkname=first, size=0, data=None, src=None)
    return [out[p] for p in sorted(out, key=sort_key)]


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


def _fixed_content(it: Item, epoch: int) -> bytes | None:
    """The rewritten content of the few files that need one; None to copy as is (same size for .pyc)."""
    path = it.path
    if path == "etc/machine-id":
        return b""
    if path == "etc/shadow":
        return _fix_shadow(read_content(it), epoch)
    if path.endswith(".pyc"):
        return _fix_pyc(read_content(it), epoch)
    return None


_TYPEFLAGS = {k: v for k, v in TAR_TYPES.items()}
_NUL = b"\0"
_MAX7 = 8**7
_MAX11 = 8**11


def _header(it: Item, mtime: int) -> bytes:
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
        info.pax_headers = {PAX_XATTR + CAPABILITY_XATTR: it.cap.decode("utf-8", "surrogateescape")}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class Sink(Protocol):
    """Where ``LayerPlan.write`` sends the layer: a file, a ``docker load`` stream, a compressor (only ``write``)."""

    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


class LayerPlan:
    """A canonical layer decided but not yet written: its headers, sources and exact size.

    Knowing the size before the first byte lets the layer be streamed into a
    ``docker load`` archive (whose tar header needs it) while it is written to
    the store and hashed: one pass over the bytes for all three.
    """

    def __init__(self, entries: list[Item], epoch: int) -> None:
        self.epoch = epoch
        self.parts: list[tuple[bytes, Item | None]] = []
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

    def write(self, *sinks: Sink) -> LayerInfo:
        """Write the tar to every sink, hashing it once; the content of each file is read once."""
        out = _Tee(sinks)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for head, it in self.parts:
            out.write(head)
            if it is None:
                continue
            if it.data is not None or it.path.endswith(".pyc"):
                data = it.data if it.data is not None else _fix_pyc(read_content(it), self.epoch)
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

    def _copy(self, it: Item, out: _Tee, buf: bytearray, view: memoryview) -> None:
        opened = isinstance(it.src, str)
        f: Any = open(it.src, "rb", buffering=0) if isinstance(it.src, str) else it.src  # noqa: SIM115
        try:
            if not opened:
                f.seek(it.offset)
            left = it.size
            while left:
                n = f.readinto(view[: min(left, CHUNK)])
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
    def _check(it: Item, got: int) -> None:
        if got != it.size:
            raise LayerError(f"{it.path}: expected {it.size} bytes of content, found {'other' if got < 0 else got}",
                             "the file changed while it was read, or the input is truncated; run the build again")


_FIXED_PATHS = frozenset(("etc/machine-id", "etc/shadow"))


class _Tee:
    """Buffers small writes, hashes everything once and writes it to every sink."""

    def __init__(self, sinks: Sequence[Sink], hashed: bool = True) -> None:
        self.sinks = sinks
        self.hashed = hashed
        self.hash = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if len(data) >= CHUNK // 4:  # large: straight through, no copy
            self.flush()
            self._emit(data)
            return
        self._buf += data
        if len(self._buf) >= CHUNK:
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


def canonical_entries(layer: LayerInput, epoch: int, drop_prefixes: Sequence[str] = (),
                 parent: ParentTree | None = None) -> list[Item]:
    """The canonical layer's entries, sorted, hard links resolved: what a ``LayerPlan`` writes (or several,
    when ``split.split_entries`` divides them)."""
    return _resolve_links(_layer_diff(layer, parent or ParentTree(), _dropper(drop_prefixes), epoch))


def plan_layer(layer: LayerInput, epoch: int, drop_prefixes: Sequence[str] = (),
               parent: ParentTree | None = None) -> LayerPlan:
    return LayerPlan(canonical_entries(layer, epoch, drop_prefixes, parent), epoch)


def normalize_tar(src: IO[bytes], dst: IO[bytes], epoch: int, drop_prefixes: Sequence[str] = (),
                  parent: ParentTree | None = None) -> LayerInfo:
    """Write the canonical form of an uncompressed tar stream to ``dst``.

    Headers are read first, contents then copied in sorted order; ``src``
    should be seekable (a real file); anything else is first spooled to a
    temporary file.
    """
    if not _seekable(src):
        with tempfile.TemporaryFile(prefix="buildsys-layer-") as spool:
            shutil.copyfileobj(src, spool, CHUNK)
            spool.seek(0)
            return normalize_tar(spool, dst, epoch, drop_prefixes, parent)
    return plan_layer(read_tar(src), epoch, drop_prefixes, parent).write(dst)


def _seekable(f: IO[bytes]) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def normalize_dir(root: Path, dst: IO[bytes], epoch: int, drop_prefixes: Sequence[str] = (),
                  parent: ParentTree | None = None) -> LayerInfo:
    """Write the canonical layer of an overlayfs upper directory (docker's overlay2 ``diff``)."""
    return plan_layer(read_upper_dir(root), epoch, drop_prefixes, parent).write(dst)
