"""The three inputs an engine gives: a layer tar, an overlayfs upper directory, a whole filesystem.

Each becomes one ``LayerInput`` (entries, whiteouts, opaque directories), so the
normalizer has one path from here on (docs/reproducibility.md, "What a layer holds").
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import IO

from buildsys.oci.layer.entry import (
    CAPABILITY_XATTR,
    KINDS,
    OPAQUE_MARKER,
    PAX_XATTR,
    WHITEOUT_PREFIX,
    Item,
    LayerError,
    LayerInput,
    norm_path,
)
from buildsys.oci.layer.tree import ParentTree

_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# With these the upper dir is not a self-contained diff (data lives in lower dirs).
_UNSUPPORTED_XATTRS = (
    "trusted.overlay.redirect",
    "trusted.overlay.metacopy",
    "user.overlay.redirect",
    "user.overlay.metacopy",
)


def read_tar(src: IO[bytes]) -> LayerInput:
    """A layer tar (docker save, commit, a rootfs) as entries, whiteouts and opaque directories.

    ``src`` must stay open and seekable while the result is used: contents are read from it.
    """
    try:
        tf = tarfile.open(fileobj=src, mode="r:")  # noqa: SIM115 - closing it would close nothing we need
        members = tf.getmembers()
    except tarfile.TarError as e:
        raise LayerError(f"cannot read the layer tar: {e}", "is it an uncompressed tar?") from e
    layer = LayerInput()
    items = layer.items
    for m in members:
        path = norm_path(m.name)
        kind = KINDS.get(m.type)
        if not path or kind is None:
            continue  # the root entry, or a type a layer cannot hold
        parent, _, base = path.rpartition("/")
        if base == OPAQUE_MARKER:
            layer.opaque.append(parent)
            continue
        if base.startswith(WHITEOUT_PREFIX):
            layer.whiteouts.append(f"{parent}/{base[4:]}" if parent else base[4:])
            continue
        cap = m.pax_headers.get(PAX_XATTR + CAPABILITY_XATTR)
        it = Item(path, kind, m.mode, m.uid, m.gid, int(m.mtime // 1), m.size if kind == "file" else 0,
                   norm_path(m.linkname) if kind == "hardlink" else m.linkname if kind == "symlink" else "",
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


def read_filesystem(src: IO[bytes], parent: ParentTree) -> LayerInput:
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


def read_upper_dir(root: Path) -> LayerInput:
    """An overlayfs upper directory (docker's overlay2 ``diff``) as entries, whiteouts and opaque dirs."""
    layer = LayerInput()
    stack = [(os.fspath(root), "")]
    while stack:
        dirpath, rel = stack.pop()
        with os.scandir(dirpath) as scan:
            for e in scan:
                path = f"{rel}/{e.name}" if rel else e.name
                full = e.path
                st = e.stat(follow_symlinks=False)
                names, cap = _overlay_xattrs(full)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlayfs writes a whiteout as a 0/0 device
                    layer.whiteouts.append(path)
                    continue
                it = _upper_item(path, full, st, cap)
                if it is None:
                    continue  # sockets cannot be archived; docker skips them too
                layer.items[path] = it
                if it.kind == "dir":
                    if _is_opaque(full, names):
                        layer.opaque.append(path)
                    stack.append((full, path))
    return layer


def _overlay_xattrs(full: str) -> tuple[list[str], bytes | None]:
    """An upper-dir entry's xattr names and file capability.

    Refuses the overlay attributes that mean its data lives in the lower dirs.
    """
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        return [], None  # a file system without xattrs
    if not names:
        return names, None
    bad = [n for n in _UNSUPPORTED_XATTRS if n in names]
    if bad:
        raise LayerError(f"{full}: overlay attribute {bad[0]} means this directory is not a full "
                         "diff", "mount overlay with redirect_dir=off,metacopy=off (docker's default)")
    cap = os.getxattr(full, CAPABILITY_XATTR, follow_symlinks=False) if CAPABILITY_XATTR in names else None
    return names, cap


def _is_opaque(full: str, names: list[str]) -> bool:
    """Whether overlayfs marked this directory as hiding everything the lower dirs have in it."""
    return bool(names) and any(n in names and os.getxattr(full, n, follow_symlinks=False) == b"y"
                               for n in _OPAQUE_XATTRS)


def _upper_item(path: str, full: str, st: os.stat_result, cap: bytes | None) -> Item | None:
    """The entry an upper-dir file, directory, link, device or fifo gives; None for what a layer cannot hold."""
    fmt = stat.S_IFMT(st.st_mode)
    mtime = st.st_mtime_ns // 1_000_000_000
    if fmt == stat.S_IFREG:
        return Item(path, "file", st.st_mode, st.st_uid, st.st_gid, mtime, st.st_size, cap=cap,
                    src=full, link_key=(st.st_dev, st.st_ino) if st.st_nlink > 1 else None)
    if fmt == stat.S_IFDIR:
        return Item(path, "dir", st.st_mode, st.st_uid, st.st_gid, mtime, cap=cap)
    if fmt == stat.S_IFLNK:
        return Item(path, "symlink", st.st_mode, st.st_uid, st.st_gid, mtime, linkname=os.readlink(full), cap=cap)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        return Item(path, "char" if fmt == stat.S_IFCHR else "block", st.st_mode, st.st_uid, st.st_gid, mtime,
                    devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev))
    if fmt == stat.S_IFIFO:
        return Item(path, "fifo", st.st_mode, st.st_uid, st.st_gid, mtime)
    return None
