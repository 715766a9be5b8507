"""The layer normalizer on synthetic tars and directories: every canonical rule, one test each."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from buildsys.oci.layer.diff import diff_layers, read_entries
from buildsys.oci.layer.entry import LayerError
from buildsys.oci.layer.normalize import NORMALIZER_VERSION, is_volatile, normalize_dir, normalize_tar
from buildsys.oci.layer.tree import ParentTree

EPOCH = 1_700_000_000
OLD = EPOCH - 1000
NEW = EPOCH + 5000
# A v2 vfs_cap_data (cap_net_raw, effective): not valid UTF-8, so it exercises hdrcharset=BINARY.
CAP = bytes.fromhex("01000002") + (1 << 13).to_bytes(4, "little") + bytes(12)


def member(name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE, mtime: int = OLD, mode: int = 0o644,
           linkname: str = "", uid: int = 0, gid: int = 0, pax: dict[str, str] | None = None) -> tuple:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime, ti.mode, ti.uid, ti.gid, ti.linkname = mtime, mode, uid, gid, linkname
    ti.uname, ti.gname = "someone", "somegroup"
    if pax:
        ti.pax_headers = pax
    if data is not None:
        ti.size = len(data)
    return ti, data


def make_tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def normalize(path: Path, out: Path, drop: tuple[str, ...] = ()):
    with open(path, "rb") as src, open(out, "wb") as dst:
        return normalize_tar(src, dst, EPOCH, drop)


def members_of(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return tf.getmembers()


def content(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def tree() -> list[tuple]:
    return [
        member("./", kind=tarfile.DIRTYPE, mode=0o755),
        member("./etc", kind=tarfile.DIRTYPE, mode=0o755),
        member("./etc/hostname", b"box\n"),
        member("./usr", kind=tarfile.DIRTYPE, mode=0o755, mtime=NEW),
        member("./usr/bin", kind=tarfile.DIRTYPE, mode=0o755),
        member("./usr/bin/tool", b"#!/bin/sh\n", mode=0o4755, mtime=NEW, uid=1000, gid=50),
        member("./usr/bin/sh", kind=tarfile.SYMTYPE, linkname="../../bin/dash"),
        member("./usr-local", b"x"),  # sorts between "usr" and "usr/..." bytewise
        member("./dev", kind=tarfile.DIRTYPE, mode=0o755),
        member("./dev/null", kind=tarfile.CHRTYPE, mode=0o666),
        member("./run/fifo", kind=tarfile.FIFOTYPE),
        member("./" + "long/" * 30 + "name.txt", b"deep"),
    ]


def test_output_is_sorted_and_independent_of_input_order(tmp_path: Path) -> None:
    entries = tree()
    a = normalize(make_tar(tmp_path / "a.tar", entries), tmp_path / "a.out")
    b = normalize(make_tar(tmp_path / "b.tar", entries[::-1]), tmp_path / "b.out")
    assert a == b
    names = [m.name for m in members_of(tmp_path / "a.out")]
    assert names == sorted(names, key=lambda n: n.encode())
    assert names[:2] == ["dev", "dev/null"] and "usr-local" in names
    assert not any(n.startswith(("./", "/")) or n in (".", "") for n in names)
    data = (tmp_path / "a.out").read_bytes()
    assert a.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert a.size == len(data) and a.entries == len(names) == len(entries) - 1


def test_metadata_is_canonical(tmp_path: Path) -> None:
    src = make_tar(tmp_path / "in.tar", tree() + [member("stamped", b"", pax={"atime": "1.5", "ctime": "2.5"})])
    normalize(src, tmp_path / "out.tar")
    by_name = {m.name: m for m in members_of(tmp_path / "out.tar")}
    assert by_name["etc/hostname"].mtime == OLD  # older than the epoch: kept
    assert by_name["usr/bin/tool"].mtime == EPOCH  # newer: clamped
    assert by_name["usr"].mtime == EPOCH
    tool = by_name["usr/bin/tool"]
    assert (tool.uid, tool.gid, tool.mode) == (1000, 50, 0o4755)
    assert all(m.uname == "" and m.gname == "" for m in by_name.values())
    assert by_name["usr/bin/sh"].linkname == "../../bin/dash"
    assert by_name["dev/null"].ischr() and by_name["run/fifo"].isfifo()
    raw = (tmp_path / "out.tar").read_bytes()
    assert b"atime" not in raw and b"ctime" not in raw
    # pax headers only where needed: here, for the one long name
    assert raw.count(b"PaxHeader") == 1


def test_volatile_files_and_drop_prefixes_are_dropped(tmp_path: Path) -> None:
    d = tarfile.DIRTYPE
    entries = [
        member("var/log/dpkg.log", b"2025-01-01 install"),
        member("var/log/apt/term.log", b"log"),
        member("var/cache/ldconfig/aux-cache", b"\x01"),
        member("var/lib/apt/lists", kind=d),
        member("var/lib/apt/lists/lock", b""),
        member("var/lib/apt/lists/partial", kind=d),
        member("var/lib/apt/lists/partial/x", b"x"),
        member("var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", b"r"),
        member("var/cache/man", kind=d),
        member("var/cache/man/index.db", b"db"),
        member("root/.cache/pip/http/a", b"a"),
        member("buildsys", kind=d),
        member("buildsys/vendor/a.deb", b"deb"),
        member("buildsys-notes", b"kept: only the prefix path and below are dropped"),
        member("etc/os-release", b"debian"),
    ]
    normalize(make_tar(tmp_path / "in.tar", entries), tmp_path / "out.tar", drop=("/buildsys/",))
    names = [m.name for m in members_of(tmp_path / "out.tar")]
    assert names == [
        "buildsys-notes",
        "etc/os-release",
        "var/cache/man",
        "var/lib/apt/lists",
        "var/lib/apt/lists/lock",
        "var/lib/apt/lists/partial",
    ]
    assert is_volatile("var/cache/apt/archives/x.deb") and not is_volatile("var/cache/apt/archives/partial")


def test_hardlinks_follow_their_target_whatever_the_input_order(tmp_path: Path) -> None:
    lnk = tarfile.LNKTYPE
    one = [member("z/data", b"shared"), member("a/alias", kind=lnk, linkname="z/data"),
           member("m/third", kind=lnk, linkname="./z/data")]
    two = [member("m/third", b"shared"), member("z/data", kind=lnk, linkname="m/third"),
           member("a/alias", kind=lnk, linkname="z/data")]  # a chain: alias -> data -> third
    a = normalize(make_tar(tmp_path / "one.tar", one), tmp_path / "one.out")
    b = normalize(make_tar(tmp_path / "two.tar", two), tmp_path / "two.out")
    assert a == b
    out = members_of(tmp_path / "one.out")
    assert [(m.name, m.type, m.linkname) for m in out] == [
        ("a/alias", tarfile.REGTYPE, ""),
        ("m/third", lnk, "a/alias"),
        ("z/data", lnk, "a/alias"),
    ]
    assert content(tmp_path / "one.out", "z/data") == b"shared"


def test_hardlink_to_a_dropped_file_becomes_the_file(tmp_path: Path) -> None:
    entries = [member("buildsys/tool", b"bin", mode=0o755), member("usr/bin/tool", kind=tarfile.LNKTYPE,
                                                                   linkname="buildsys/tool")]
    normalize(make_tar(tmp_path / "in.tar", entries), tmp_path / "out.tar", drop=("buildsys",))
    (m,) = members_of(tmp_path / "out.tar")
    assert (m.name, m.isfile(), m.mode) == ("usr/bin/tool", True, 0o755)
    assert content(tmp_path / "out.tar", "usr/bin/tool") == b"bin"


def test_only_security_capability_xattr_is_kept(tmp_path: Path) -> None:
    pax = {
        "SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0",
        "SCHILY.xattr.user.origin": "host",
    }
    src = make_tar(tmp_path / "in.tar", [member("usr/bin/ping", b"elf", mode=0o755, pax=pax),
                                         member("etc/x", b"", pax={"SCHILY.xattr.user.a": "b"})])
    normalize(src, tmp_path / "out.tar")
    entries = read_entries(tmp_path / "out.tar")
    assert entries["usr/bin/ping"].xattrs == {"security.capability": CAP}
    assert entries["etc/x"].xattrs == {}


def test_content_fixes(tmp_path: Path) -> None:
    day = EPOCH // 86400
    shadow = b"root:*:30000:0:99999:7:::\nuser:!:100:0:99999:7:::\n"

    def pyc(flags: int, mtime: int) -> bytes:
        header = flags.to_bytes(4, "little") + mtime.to_bytes(4, "little") + (42).to_bytes(4, "little")
        return b"\xa7\r\r\n" + header + b"code"

    entries = [
        member("etc/machine-id", b"0123456789abcdef\n"),
        member("etc/shadow", shadow, mode=0o640, gid=42),
        member("lib/new.pyc", pyc(0, NEW)),
        member("lib/old.pyc", pyc(0, OLD)),
        member("lib/hashed.pyc", pyc(3, NEW)),  # checked-hash pyc: bytes 8-15 are a hash, untouched
    ]
    normalize(make_tar(tmp_path / "in.tar", entries), tmp_path / "out.tar")
    out = tmp_path / "out.tar"
    assert content(out, "etc/machine-id") == b""
    assert content(out, "etc/shadow") == f"root:*:{day}:0:99999:7:::\nuser:!:100:0:99999:7:::\n".encode()
    assert content(out, "lib/new.pyc") == pyc(0, EPOCH)
    assert content(out, "lib/old.pyc") == pyc(0, OLD)
    assert content(out, "lib/hashed.pyc") == pyc(3, NEW)


def test_unseekable_input_gives_the_same_layer(tmp_path: Path) -> None:
    src = make_tar(tmp_path / "in.tar", tree())

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            chunk = self.inner.read(min(len(b), 777))
            b[: len(chunk)] = chunk
            return len(chunk)

    expected = normalize(src, tmp_path / "a.out")
    got = normalize_tar(Pipe(src.read_bytes()), io.BytesIO(), EPOCH)  # type: ignore[arg-type]
    assert got == expected


def test_paths_leaving_the_root_are_refused(tmp_path: Path) -> None:
    src = make_tar(tmp_path / "in.tar", [member("../etc/passwd", b"x")])
    with pytest.raises(LayerError, match=r"\.\."):
        normalize(src, tmp_path / "out.tar")


def build_dir(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_bytes(b"box\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/alias")
    (root / "usr/bin/sh").symlink_to("../../bin/dash")
    os.mkfifo(root / "usr/fifo")
    for p in [root, *root.rglob("*")]:
        os.utime(p, (NEW, NEW), follow_symlinks=False)
    os.utime(root / "etc/hostname", (OLD, OLD))


def test_dir_and_tar_of_the_same_tree_give_the_same_layer(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    build_dir(root)
    with tarfile.open(tmp_path / "in.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        tf.add(root, arcname=".")
    with open(tmp_path / "dir.out", "wb") as f:
        from_dir = normalize_dir(root, f, EPOCH)
    from_tar = normalize(tmp_path / "in.tar", tmp_path / "tar.out")
    assert from_dir == from_tar
    out = {m.name: m for m in members_of(tmp_path / "dir.out")}
    assert out["usr/bin/tool"].islnk() and out["usr/bin/tool"].linkname == "usr/bin/alias"
    assert out["etc/hostname"].mtime == OLD and out["usr"].mtime == EPOCH


def test_dir_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    parent_tar = normalize(make_tar(tmp_path / "p.tar", [
        member("etc", kind=tarfile.DIRTYPE, mode=0o755), member("etc/gone", b"old"),
        member("etc/opaque", kind=tarfile.DIRTYPE, mode=0o755), member("etc/opaque/old.conf", b"o"),
    ]), tmp_path / "parent.tar")
    assert parent_tar.entries == 4
    root = tmp_path / "upper"
    (root / "etc/opaque").mkdir(parents=True)
    (root / "etc/opaque/new.conf").write_bytes(b"x")
    try:
        os.mknod(root / "etc/gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    except PermissionError:
        pytest.skip("creating a character device needs root")
    try:
        os.setxattr(root / "etc/opaque", "trusted.overlay.opaque", b"y")
    except OSError:
        pytest.skip("trusted.* xattrs need root and a file system that has them")
    with open(tmp_path / "out.tar", "wb") as f:
        normalize_dir(root, f, EPOCH, parent=ParentTree.from_layers([tmp_path / "parent.tar"]))
    out = {m.name: m for m in members_of(tmp_path / "out.tar")}
    assert sorted(out) == ["etc", "etc/.wh.gone", "etc/opaque", "etc/opaque/.wh..wh..opq", "etc/opaque/new.conf"]
    wh = out["etc/.wh.gone"]
    assert wh.isfile() and wh.size == 0 and wh.mode == 0o600 and wh.mtime == EPOCH
    assert out["etc/opaque/.wh..wh..opq"].isfile()
    assert read_entries(tmp_path / "out.tar")["etc/opaque"].xattrs == {}  # the overlay attribute is not carried
    # Without a parent, nothing was there to remove or hide.
    with open(tmp_path / "alone.tar", "wb") as f:
        normalize_dir(root, f, EPOCH)
    assert [m.name for m in members_of(tmp_path / "alone.tar")] == ["etc", "etc/opaque", "etc/opaque/new.conf"]


def test_dir_keeps_file_capabilities_only(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    root.mkdir()
    (root / "ping").write_bytes(b"elf")
    try:
        os.setxattr(root / "ping", "security.capability", CAP)
        os.setxattr(root / "ping", "user.note", b"host")
    except OSError:
        pytest.skip("setting security.capability needs root and xattr support")
    with open(tmp_path / "out.tar", "wb") as f:
        normalize_dir(root, f, EPOCH)
    assert read_entries(tmp_path / "out.tar")["ping"].xattrs == {"security.capability": CAP}


def test_diff_layers_names_file_and_field(tmp_path: Path) -> None:
    base = [member("etc/app.conf", b"a=1\nb=2\nc=3\n"), member("bin/run", b"x", mode=0o755),
            member("only-a", b""), member("blob", b"\xff\x00")]
    changed = [member("etc/app.conf", b"a=1\nb=3\nc=3\n"), member("bin/run", b"x", mode=0o700),
               member("only-b", b""), member("blob", b"\xff\x01")]
    normalize(make_tar(tmp_path / "a.tar", base), tmp_path / "a.out")
    normalize(make_tar(tmp_path / "b.tar", changed), tmp_path / "b.out")
    diffs = {d.path: d for d in diff_layers(tmp_path / "a.out", tmp_path / "b.out")}
    assert sorted(diffs) == ["bin/run", "blob", "etc/app.conf", "only-a", "only-b"]
    assert diffs["bin/run"].what == ["mode"] and "0755 -> 0700" in diffs["bin/run"].detail
    assert diffs["etc/app.conf"].what == ["content"]
    assert "-b=2" in diffs["etc/app.conf"].detail and "+b=3" in diffs["etc/app.conf"].detail
    assert diffs["blob"].what == ["content"] and "sha256" in diffs["blob"].detail and "@@" not in diffs["blob"].detail
    assert diffs["only-a"].what == ["only in A"] and diffs["only-b"].what == ["only in B"]
    assert diff_layers(tmp_path / "a.out", tmp_path / "a.out") == []


def test_known_digest_freezes_the_layer_format(tmp_path: Path) -> None:
    # If this fails, the bytes of every layer changed: bump NORMALIZER_VERSION, then update the digest.
    info = normalize(make_tar(tmp_path / "in.tar", tree()), tmp_path / "out.tar")
    # Version 2 changed what a child layer holds (by meaning, see test_layer_meaning.py);
    # a layer without a parent kept its bytes.
    assert NORMALIZER_VERSION == "2"
    assert info.digest == "sha256:67958f5eb200ed645b2df96d941fcca5f82b657a9073d7ceb7ee5389df5a207f"
