"""What differs between two layers, file by file: ``buildsys diff`` and verify's mismatch report."""

from __future__ import annotations

import difflib
import hashlib
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from buildsys.oci.layer.entry import CHUNK, KINDS, PAX_XATTR, LayerError, norm_path, sort_key

_TEXT_DIFF_LIMIT = 1 << 20
_DIFF_LINES = 20


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
    layer: str = ""  # of two whole images: the layer(s) holding the path, "pytorch/cuda" (``verify.diff_images``)


def _pax_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    # tarfile decodes pax values as UTF-8 with surrogateescape; this gives the bytes back.
    return {
        k[len(PAX_XATTR):]: v.encode("utf-8", "surrogateescape")
        for k, v in member.pax_headers.items()
        if k.startswith(PAX_XATTR)
    }


def _entry(member: tarfile.TarInfo, path: str, digest: str | None) -> LayerEntry:
    kind = KINDS.get(member.type, f"type {member.type!r}")
    return LayerEntry(
        path=path,
        type=kind,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        size=member.size if kind == "file" else 0,
        mtime=int(member.mtime // 1),
        linkname=norm_path(member.linkname) if kind == "hardlink" else member.linkname,
        sha256=digest,
        xattrs=_pax_xattrs(member),
        device=(member.devmajor, member.devminor) if kind in ("char", "block") else None,
    )


def _scan(tf: tarfile.TarFile) -> tuple[dict[str, LayerEntry], dict[str, tarfile.TarInfo]]:
    entries: dict[str, LayerEntry] = {}
    members: dict[str, tarfile.TarInfo] = {}
    for m in tf:
        path = norm_path(m.name)
        if not path:
            continue
        digest = None
        if m.isfile():
            h = hashlib.sha256()
            f = tf.extractfile(m)
            assert f is not None
            while chunk := f.read(CHUNK):
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
    for path in sorted(a.keys() | b.keys(), key=sort_key):
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
