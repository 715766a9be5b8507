"""The canonical layer by meaning: what differs from the parent chain, whatever the engine's storage.

One change to a small parent filesystem is given in the three forms engines
produce: an overlay upper directory (overlay2), a diff tar as ``docker
commit``/``save`` write it, and the whole filesystem as ``docker export``
writes it. All three must give the same bytes.
"""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from buildsys.oci.layer.entry import Item
from buildsys.oci.layer.inputs import read_filesystem, read_tar
from buildsys.oci.layer.normalize import _header, normalize_dir, normalize_tar, plan_layer
from buildsys.oci.layer.tree import ParentTree

EPOCH = 1_700_000_000
OLD = EPOCH - 1000
NEW = EPOCH + 5000
D, F, L = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE


def entry(name: str, data: bytes | None = None, *, kind: bytes = F, mode: int = 0o644, mtime: int = OLD,
          linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, mtime, linkname
    if kind == D:
        ti.mode = mode if mode != 0o644 else 0o755
    if data is not None:
        ti.size = len(data)
    return ti, data


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


PARENT = [
    entry("etc", kind=D), entry("etc/group-", b"root:x:0:\n"), entry("etc/same", b"unchanged"),
    entry("etc/gone", b"removed by the layer"),
    entry("tmp", kind=D, mode=0o1777),
    entry("usr", kind=D), entry("usr/lib", kind=D), entry("usr/lib/old", b"o"),
    entry("usr/sbin", kind=D), entry("usr/sbin/tool", b"t", mode=0o755),
    entry("opt", kind=D), entry("opt/app", kind=D), entry("opt/app/a", b"a"), entry("opt/app/b", b"b"),
    entry("srv", kind=D), entry("srv/x", b"x"), entry("srv/y", b"y"),
    entry("bin", kind=L, linkname="usr/bin"),
]


@pytest.fixture()
def parent(tmp_path: Path) -> ParentTree:
    with open(write_tar(tmp_path / "parent-in.tar", PARENT), "rb") as src, open(tmp_path / "parent.tar", "wb") as dst:
        normalize_tar(src, dst, EPOCH)
    return ParentTree.from_layers([tmp_path / "parent.tar"])


# The change, as a program sees it: etc/group- rewritten with the same size and mtime (useradd's
# backup), etc/gone removed, usr/lib/new added, opt/app emptied and refilled, srv/x removed,
# etc/new.d a new directory; tmp and usr/sbin touched with nothing changed.
def upper_dir(root: Path) -> Path:
    for d in ("etc/new.d", "tmp", "usr/lib", "usr/sbin", "opt/app", "srv"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    (root / "etc/group-").write_bytes(b"root:x:1:\n")
    os.utime(root / "etc/group-", (OLD, OLD))
    (root / "etc/same").write_bytes(b"unchanged")  # a copy-up without a change
    os.utime(root / "etc/same", (OLD, OLD))
    (root / "etc/new.d/conf").write_bytes(b"new")
    (root / "usr/lib/new").write_bytes(b"n")
    (root / "opt/app/c").write_bytes(b"c")
    os.mknod(root / "etc/gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.mknod(root / "srv/x", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.setxattr(root / "opt/app", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "etc/new.d", "trusted.overlay.opaque", b"y")  # overlay marks new dirs opaque too
    for p in (root / "etc", root / "tmp", root / "usr/sbin", root / "opt/app", root / "srv", root / "etc/new.d",
              root / "usr/lib"):
        os.utime(p, (NEW, NEW))
    for p in (root / "usr", root / "opt"):  # copied up for what is below: their own mtime is kept
        os.utime(p, (OLD, OLD))
    return root


def commit_tar(path: Path) -> Path:
    """The same change as docker's vfs diff writes it: changed paths, their parents, whiteouts, no opaque."""
    return write_tar(path, [
        entry("etc", kind=D, mtime=NEW), entry("etc/.wh.gone", b""), entry("etc/group-", b"root:x:1:\n"),
        entry("etc/new.d", kind=D, mtime=NEW), entry("etc/new.d/conf", b"new", mtime=NEW),
        entry("opt", kind=D), entry("opt/app", kind=D, mtime=NEW), entry("opt/app/.wh.a", b""),
        entry("opt/app/.wh.b", b""), entry("opt/app/c", b"c", mtime=NEW),
        entry("srv", kind=D, mtime=NEW), entry("srv/.wh.x", b""),
        entry("usr", kind=D), entry("usr/lib", kind=D, mtime=NEW), entry("usr/lib/new", b"n", mtime=NEW),
    ])


def export_tar(path: Path) -> Path:
    """The container's whole filesystem, as ``docker export`` writes it (init-layer files included)."""
    return write_tar(path, [
        entry(".dockerenv", b""), entry("etc", kind=D, mtime=NEW), entry("etc/hostname", b""),
        entry("etc/group-", b"root:x:1:\n"), entry("etc/same", b"unchanged"),
        entry("etc/new.d", kind=D, mtime=NEW), entry("etc/new.d/conf", b"new", mtime=NEW),
        entry("tmp", kind=D, mode=0o1777, mtime=NEW),
        entry("usr", kind=D), entry("usr/lib", kind=D, mtime=NEW), entry("usr/lib/old", b"o"),
        entry("usr/lib/new", b"n", mtime=NEW), entry("usr/sbin", kind=D, mtime=NEW),
        entry("usr/sbin/tool", b"t", mode=0o755),
        entry("opt", kind=D), entry("opt/app", kind=D, mtime=NEW), entry("opt/app/c", b"c", mtime=NEW),
        entry("srv", kind=D, mtime=NEW), entry("srv/y", b"y"), entry("bin", kind=L, linkname="usr/bin"),
        entry("proc", kind=D), entry("sys", kind=D),
    ])


EXPECTED = [
    "etc", "etc/.wh.gone", "etc/group-", "etc/new.d", "etc/new.d/conf",
    "opt", "opt/app", "opt/app/.wh..wh..opq", "opt/app/c",
    "srv", "srv/.wh.x",
    "usr", "usr/lib", "usr/lib/new",
]


def names(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return tf.getnames()


def test_upper_dir_commit_and_export_give_one_layer(tmp_path: Path, parent: ParentTree) -> None:
    try:
        root = upper_dir(tmp_path / "upper")
    except (PermissionError, OSError):
        pytest.skip("whiteouts and trusted.* xattrs need root")
    with open(tmp_path / "from-upper.tar", "wb") as f:
        a = normalize_dir(root, f, EPOCH, parent=parent)
    with open(commit_tar(tmp_path / "commit.tar"), "rb") as src, open(tmp_path / "from-commit.tar", "wb") as f:
        b = normalize_tar(src, f, EPOCH, parent=parent)
    with open(export_tar(tmp_path / "export.tar"), "rb") as src, open(tmp_path / "from-export.tar", "wb") as f:
        c = plan_layer(read_filesystem(src, parent), EPOCH, parent=parent).write(f)
    assert names(tmp_path / "from-upper.tar") == EXPECTED
    assert names(tmp_path / "from-export.tar") == EXPECTED
    # docker's vfs diff compares size and mtime only: it misses etc/group- (same size and mtime,
    # other content). That is why buildsys reads `docker export` where it cannot read the upper dir.
    assert names(tmp_path / "from-commit.tar") == EXPECTED
    assert a == b == c


def test_unchanged_and_touched_entries_are_left_out(tmp_path: Path, parent: ParentTree) -> None:
    root = tmp_path / "upper"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "etc").mkdir()
    (root / "etc/same").write_bytes(b"unchanged")
    os.utime(root / "etc/same", (OLD, OLD))
    with open(tmp_path / "out.tar", "wb") as f:
        info = normalize_dir(root, f, EPOCH, parent=parent)
    assert names(tmp_path / "out.tar") == [] and info.entries == 0
    os.chmod(root / "usr/sbin", 0o700)  # a real change of a directory's metadata
    with open(tmp_path / "out2.tar", "wb") as f:
        normalize_dir(root, f, EPOCH, parent=parent)
    assert names(tmp_path / "out2.tar") == ["usr", "usr/sbin"]


def test_opaque_marker_only_for_a_directory_that_existed_and_was_emptied(tmp_path: Path,
                                                                           parent: ParentTree) -> None:
    partial = write_tar(tmp_path / "partial.tar", [entry("opt", kind=D), entry("opt/app", kind=D),
                                                   entry("opt/app/.wh..wh..opq", b""), entry("opt/app/b", b"b")])
    with open(partial, "rb") as src, open(tmp_path / "out.tar", "wb") as f:
        normalize_tar(src, f, EPOCH, parent=parent)
    assert names(tmp_path / "out.tar") == ["opt", "opt/app", "opt/app/.wh.a"]  # b is unchanged: left out


def test_a_canonical_layer_normalizes_to_itself(tmp_path: Path, parent: ParentTree) -> None:
    try:
        root = upper_dir(tmp_path / "upper")
    except (PermissionError, OSError):
        pytest.skip("whiteouts and trusted.* xattrs need root")
    with open(tmp_path / "once.tar", "wb") as f:
        once = normalize_dir(root, f, EPOCH, parent=parent)
    with open(tmp_path / "once.tar", "rb") as src, open(tmp_path / "twice.tar", "wb") as f:
        twice = normalize_tar(src, f, EPOCH, parent=parent)
    assert once == twice


def test_parent_tree_applies_whiteouts_and_opaque_dirs_of_each_layer(tmp_path: Path, parent: ParentTree) -> None:
    child = write_tar(tmp_path / "child.tar", [entry("opt", kind=D), entry("opt/app", kind=D),
                                               entry("opt/app/.wh..wh..opq", b""), entry("opt/app/z", b"z"),
                                               entry("etc", kind=D), entry("etc/.wh.gone", b""),
                                               entry("bin", kind=D)])
    tree = ParentTree.from_layers([tmp_path / "parent.tar", child])
    assert {"opt/app/z"} == tree.children("opt/app")
    assert "etc/gone" not in tree.entries and "etc/same" in tree.entries
    assert tree.entries["bin"].kind == "dir"


def test_fast_header_is_byte_for_byte_tarfile(tmp_path: Path) -> None:
    rnd = random.Random(7)
    kinds = [("file", tarfile.REGTYPE), ("dir", tarfile.DIRTYPE), ("symlink", tarfile.SYMTYPE),
             ("hardlink", tarfile.LNKTYPE), ("char", tarfile.CHRTYPE), ("block", tarfile.BLKTYPE),
             ("fifo", tarfile.FIFOTYPE)]
    names_ = ["a", "usr/lib/python3/dist-packages/x.py", "x" * 100, "y" * 101, "caf\u00e9", "bad\udcff",
              "d/" + "z" * 98]
    for _ in range(500):
        kind, typ = rnd.choice(kinds)
        name = rnd.choice(names_)
        link = rnd.choice(["", "target", "t" * 100, "t" * 101, "\u00e9"]) if kind in ("symlink", "hardlink") else ""
        it = Item(name, kind, rnd.choice([0o644, 0o4755, 0o1777, 0o100600]), rnd.choice([0, 1000, 8**7 + 1]),
                   rnd.choice([0, 50, 8**8]), 0, rnd.choice([0, 1, 512, 8**11 + 3]) if kind == "file" else 0,
                   link, rnd.choice([0, 1, 259]), rnd.choice([0, 3, 1 << 20]),
                   cap=rnd.choice([None, None, b"\x01\x00\x00\x02\xff"]))
        mtime = rnd.choice([0, OLD, 8**11 + 5])
        ti = tarfile.TarInfo(it.path)
        ti.type, ti.mode, ti.uid, ti.gid, ti.size, ti.mtime = typ, it.mode, it.uid, it.gid, it.size, mtime
        ti.linkname, ti.uname, ti.gname = link, "", ""
        if kind in ("char", "block"):
            ti.devmajor, ti.devminor = it.devmajor, it.devminor
        if it.cap is not None:
            ti.pax_headers = {"SCHILY.xattr.security.capability": it.cap.decode("utf-8", "surrogateescape")}
        assert _header(it, mtime) == ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), (name, kind)


def test_read_tar_keeps_hardlink_groups(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "in.tar", [entry("a", b"data"), entry("b", kind=tarfile.LNKTYPE, linkname="a")])
    with open(src, "rb") as f:
        layer = read_tar(f)
        assert layer.items["b"].kind == "file" and layer.items["b"].link_key == layer.items["a"].link_key == "a"


def test_parent_index_is_kept_and_a_damaged_one_read_again(tmp_path: Path, parent: ParentTree) -> None:
    index = tmp_path / "index"
    first = ParentTree.from_layers([tmp_path / "parent.tar"], index_dir=index)
    (kept,) = index.iterdir()
    again = ParentTree.from_layers([tmp_path / "parent.tar"], index_dir=index)
    kept.write_text("{not json")
    repaired = ParentTree.from_layers([tmp_path / "parent.tar"], index_dir=index)
    for tree in (first, again, repaired):
        assert sorted(tree.entries) == sorted(parent.entries)
        assert all((it.kind, it.mode, it.size, it.offset, it.mtime) == (parent.entries[p].kind, parent.entries[p].mode,
                   parent.entries[p].size, parent.entries[p].offset, parent.entries[p].mtime)
                   for p, it in tree.entries.items())
