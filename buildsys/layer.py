"""Normalize a filesystem diff into a canonical layer tar, and compare layers.

Two builds of the same locked inputs differ in mtimes, a few volatile files and
tar details (REPRODUCIBILITY.md); the canonical form removes exactly those
differences so that identical inputs give an identical diff_id. Both inputs (a
tar stream, an overlayfs upper directory) are turned into one list of entries
and written by one canonicalization, so the two paths cannot drift apart.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from buildsys.errors import BuildsysError

# Goes into every layer's cache key: bump it whenever the bytes written change.
NORMALIZER_VERSION = "1"

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


@dataclass
class _Item:
    """One entry on its way to the canonical tar, whatever its source."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    chunks: Callable[[], Iterator[bytes]] | None = None  # content of a regular file
    link_key: object = None  # items with the same key are one inode


def _canonical_items(items: dict[str, _Item], drop: Callable[[str], bool]) -> list[_Item]:
    """Drop, resolve hardlink groups, sort: the order-independent part."""
    groups: dict[object, list[_Item]] = defaultdict(list)
    for it in items.values():
        if it.link_key is not None:
            groups[it.link_key].append(it)
    out = {p: it for p, it in items.items() if not drop(p)}
    for members in groups.values():
        # The inode's data and metadata come from its non-link member, which may be dropped itself.
        src = next((m for m in members if m.kind != "hardlink"), None)
        kept = sorted((m.path for m in members if m.path in out), key=_sort_key)
        if src is None or not kept:
            continue  # a link to a file outside this layer stays as it is
        first = kept[0]
        out[first] = replace(src, path=first, link_key=None)
        for p in kept[1:]:
            out[p] = replace(src, path=p, kind="hardlink", linkname=first, size=0, chunks=None, link_key=None)
    return [out[p] for p in sorted(out, key=_sort_key)]


class _HashingWriter:
    """Buffers small writes and hashes everything written, so no second read is needed."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.hash.update(data)
        if len(data) >= _CHUNK // 4:
            self.flush()
            self.raw.write(data)
            return
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self.raw.write(self._buf)
            self._buf = bytearray()


class TarWriter:
    """A minimal PAX tar writer that needs no ``tell`` (pipes, sockets) and counts and hashes its output.

    tarfile.TarFile copies every TarInfo and keeps them all; this writes the
    same bytes (tarfile's header encoder, its end-of-archive padding).
    """

    def __init__(self, dst: IO[bytes]) -> None:
        self._out = _HashingWriter(dst)

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

    def close(self) -> LayerInfo:
        """End the archive as tarfile does (two zero blocks, padded to a record) and flush."""
        self._out.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self._out.size % tarfile.RECORDSIZE:
            self._out.write(tarfile.NUL * (tarfile.RECORDSIZE - self._out.size % tarfile.RECORDSIZE))
        self._out.flush()
        return LayerInfo(digest="sha256:" + self._out.hash.hexdigest(), size=self._out.size, entries=0)


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


def _fixed_content(path: str, item: _Item, epoch: int) -> bytes | None:
    """The rewritten content of the few files that need one; None to copy as is."""
    if path == "etc/machine-id":
        return b""
    if path == "etc/shadow" or path.endswith(".pyc"):
        data = b"".join(item.chunks()) if item.chunks else b""
        return _fix_shadow(data, epoch) if path == "etc/shadow" else _fix_pyc(data, epoch)
    return None


def _write_canonical(items: dict[str, _Item], dst: IO[bytes], epoch: int, drop_prefixes: Sequence[str]) -> LayerInfo:
    entries = _canonical_items(items, _dropper(drop_prefixes))
    writer = TarWriter(dst)
    for it in entries:
        info = tarfile.TarInfo(it.path)
        info.type = _TAR_TYPES[it.kind]
        info.mode = it.mode & 0o7777
        info.uid, info.gid = it.uid, it.gid
        info.uname = info.gname = ""
        info.mtime = min(it.mtime, epoch)
        info.linkname = it.linkname
        if it.kind in ("char", "block"):
            info.devmajor, info.devminor = it.devmajor, it.devminor
        cap = it.xattrs.get("security.capability")
        if cap is not None:
            info.pax_headers = {_PAX_XATTR + "security.capability": cap.decode("utf-8", "surrogateescape")}
        chunks: Iterable[bytes] = ()
        if it.kind == "file":
            fixed = _fixed_content(it.path, it, epoch)
            if fixed is not None:
                info.size, chunks = len(fixed), (fixed,)
            else:
                info.size = it.size
                chunks = it.chunks() if it.chunks and it.size else ()
        writer.add(info, chunks)
    result = writer.close()
    return replace(result, entries=len(entries))


# ---------------------------------------------------------------- tar input


def _tar_chunks(src: IO[bytes], tf: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        if member.issparse():
            f = tf.extractfile(member)
            assert f is not None
            while chunk := f.read(_CHUNK):
                yield chunk
            return
        src.seek(member.offset_data)
        left = member.size
        while left:
            chunk = src.read(min(left, _CHUNK))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    return chunks


def _pax_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    # tarfile decodes pax values as UTF-8 with surrogateescape; this gives the bytes back.
    return {
        k[len(_PAX_XATTR):]: v.encode("utf-8", "surrogateescape")
        for k, v in member.pax_headers.items()
        if k.startswith(_PAX_XATTR)
    }


def normalize_tar(src: IO[bytes], dst: IO[bytes], epoch: int, drop_prefixes: Sequence[str] = ()) -> LayerInfo:
    """Write the canonical form of an uncompressed tar stream to ``dst``.

    A first pass indexes the headers, a second copies contents in sorted order,
    so only one file's content is in memory at a time. ``src`` should be
    seekable (a real file); anything else is first spooled to a temporary file.
    """
    if not _seekable(src):
        with tempfile.TemporaryFile(prefix="buildsys-layer-") as spool:
            shutil.copyfileobj(src, spool, _CHUNK)
            spool.seek(0)
            return normalize_tar(spool, dst, epoch, drop_prefixes)
    try:
        with tarfile.open(fileobj=src, mode="r:") as tf:  # closing it leaves src open
            return _write_canonical(_tar_items(src, tf), dst, epoch, drop_prefixes)
    except tarfile.TarError as e:
        raise LayerError(f"cannot read the layer tar: {e}", "is it an uncompressed tar?") from e


def _tar_items(src: IO[bytes], tf: tarfile.TarFile) -> dict[str, _Item]:
    items: dict[str, _Item] = {}
    for m in tf.getmembers():
        path = _norm_path(m.name)
        kind = _KINDS.get(m.type)
        if not path or kind is None:
            continue  # the root entry, or a type a layer cannot hold
        items[path] = _Item(
            path=path,
            kind=kind,
            mode=m.mode,
            uid=m.uid,
            gid=m.gid,
            mtime=int(m.mtime // 1),
            size=m.size if kind == "file" else 0,
            linkname=_norm_path(m.linkname) if kind == "hardlink" else m.linkname if kind == "symlink" else "",
            devmajor=m.devmajor,
            devminor=m.devminor,
            xattrs=_pax_xattrs(m),
            chunks=_tar_chunks(src, tf, m) if kind == "file" else None,
        )
    # A tar names a hardlink's target by path; follow chains to the entry holding the data.
    for it in items.values():
        if it.kind != "hardlink":
            continue
        target, seen = it.linkname, set()
        while target in items and items[target].kind == "hardlink" and target not in seen:
            seen.add(target)
            target = items[target].linkname
        if target in items:
            it.link_key = target
            items[target].link_key = target
    return items


def _seekable(f: IO[bytes]) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


# ---------------------------------------------------------------- overlay upper dir input


def _file_chunks(path: str) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk

    return chunks


def _read_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}  # a file system without xattrs
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def normalize_dir(root: Path, dst: IO[bytes], epoch: int, drop_prefixes: Sequence[str] = ()) -> LayerInfo:
    """Write the canonical layer of an overlayfs upper directory (docker's overlay2 ``diff``).

    Overlay whiteouts (0:0 character devices) and opaque directories become the
    ``.wh.`` entries that image layers use, as ``docker save`` writes them.
    """
    items: dict[str, _Item] = {}

    def add(it: _Item) -> None:
        items[it.path] = it

    def walk(dirpath: str, rel: str) -> None:
        with os.scandir(dirpath) as it:
            entries = list(it)
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            st = e.stat(follow_symlinks=False)
            fmt = stat.S_IFMT(st.st_mode)
            mtime = st.st_mtime_ns // 1_000_000_000
            xattrs = _read_xattrs(e.path)
            bad = [n for n in _UNSUPPORTED_XATTRS if n in xattrs]
            if bad:
                raise LayerError(f"{e.path}: overlay attribute {bad[0]} means this directory is not a full diff",
                                 "mount overlay with redirect_dir=off,metacopy=off (docker's default)")
            kept = {k: v for k, v in xattrs.items() if k in KEPT_XATTRS}
            base = _Item(path, "file", st.st_mode, st.st_uid, st.st_gid, mtime, xattrs=kept)
            if fmt == stat.S_IFCHR and st.st_rdev == 0:
                wh = f"{rel}/{WHITEOUT_PREFIX}{e.name}" if rel else WHITEOUT_PREFIX + e.name
                add(replace(base, path=wh, mode=0o600, xattrs={}))  # as docker's overlay2 driver writes it
            elif fmt == stat.S_IFDIR:
                add(replace(base, kind="dir"))
                if any(xattrs.get(n) == b"y" for n in _OPAQUE_XATTRS):
                    add(replace(base, path=f"{path}/{OPAQUE_MARKER}", mode=st.st_mode & 0o777, xattrs={}))
                walk(e.path, path)
            elif fmt == stat.S_IFREG:
                key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
                add(replace(base, size=st.st_size, chunks=_file_chunks(e.path), link_key=key))
            elif fmt == stat.S_IFLNK:
                add(replace(base, kind="symlink", linkname=os.readlink(e.path)))
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                kind = "char" if fmt == stat.S_IFCHR else "block"
                add(replace(base, kind=kind, devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev)))
            elif fmt == stat.S_IFIFO:
                add(replace(base, kind="fifo"))
            # sockets cannot be archived; docker skips them too

    walk(os.fspath(root), "")
    return _write_canonical(items, dst, epoch, drop_prefixes)


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
