"""Reading archives that came from elsewhere (``import``, ``fetch --from-bundle``), within bounds.

An archive is taken member by member only as its own listing (``export.json``,
``bundle.json``, and the OCI manifests it names) declares it: a member the
listing does not name, a member whose size is not the declared one, a second
member of one name, and any member that is not a plain file (links, devices,
FIFOs, GNU or PAX sparse files) is refused from its header, before a byte of it
is written. Bytes are streamed with a bound (the declared size plus one byte);
only JSON documents are held in memory, each under ``JSON_CAP``.

Why these bounds: a sparse member of a few KB on disk expands to gigabytes
when read (measured: 2.1 GB written to the store from a 317 KB archive); the
header's own size is the one number a crafted archive chooses freely, so the
listing's size is the one that counts.

``owned_open`` / ``sweep_partials``: a file written beside its final name under
a temporary name that says which host and process writes it, so that a later
run can remove what a killed run left (an export of hundreds of MB), and only
that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from buildsys.core.errors import BuildsysError
from buildsys.core.store import atomic_open, pid_alive

# JSON documents of an archive (export.json, bundle.json, OCI manifests and configs) are read whole,
# so each is capped: containerd caps manifests and configs at 4 MiB; 16 MiB holds a bundle.json of
# ~80 000 files (about 200 bytes an entry), well past any real stack.
JSON_CAP = 16 << 20
MANIFEST_CAP = 4 << 20
# Headers are all read (and held) before any byte is written: a listing of more members than this is
# refused. A real export has one member per blob (tens to hundreds); a bundle one per vendored file.
MEMBER_CAP = 50_000
CHUNK = 1 << 20

Refuse = Callable[[str, str], Exception]  # (member, why) -> the error to raise


@contextlib.contextmanager
def open_archive(path: Path, fail: Refuse) -> Iterator[tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]]:
    """Open ``path`` (an uncompressed tar on disk), read its headers only, yield it and name -> member.

    Directories are left out (nothing is made of them). Everything that is not a plain file, names
    that repeat, and members cut short by the end of the file are refused here, before any data is read.
    """
    size = path.stat().st_size
    try:
        tf = tarfile.open(path, "r:")  # noqa: SIM115 - closed below, after the caller's block
    except (tarfile.TarError, OSError) as e:
        raise fail("", f"not a tar archive ({e}): truncated or damaged") from e
    with tf:
        files: dict[str, tarfile.TarInfo] = {}
        end = 0
        try:
            for n, member in enumerate(tf, 1):
                if n > MEMBER_CAP:
                    raise fail(member.name, f"more than {MEMBER_CAP} members")
                name = member.name.removeprefix("./").rstrip("/")
                end = member.offset_data + _padded(member.size if not member.issparse() else 0)
                if member.isdir():
                    continue
                why = kind_problem(member)
                if why:
                    raise fail(member.name, why)
                if name in files:
                    raise fail(member.name, "a second member of this name")
                if member.offset_data + member.size > size:
                    raise fail(member.name, f"{member.size} bytes declared, the file ends before them: truncated")
                files[name] = member
        except (tarfile.TarError, EOFError, ValueError, OverflowError) as e:
            # tarfile raises ValueError on a malformed GNU sparse map (seen with a crafted PAX 1.0 header)
            raise fail("", f"not a complete archive ({type(e).__name__}: {e}): truncated or damaged") from e
        if end + 2 * tarfile.BLOCKSIZE > size:  # the two zero blocks that end a tar, cut away
            raise fail("", "it stops without the end-of-archive blocks: truncated")
        yield tf, files


def kind_problem(member: tarfile.TarInfo) -> str:
    """Why a member that is not a directory cannot be taken ("" when it is a plain file)."""
    if member.issparse() or any(k.startswith("GNU.sparse") for k in member.pax_headers):
        return "a sparse file (its holes would be written out in full; sparse members are refused)"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        what = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a device",
                tarfile.BLKTYPE: "a device", tarfile.FIFOTYPE: "a FIFO"}.get(member.type, "not a regular file")
        return f"{what} (links, devices and other special members are refused)"
    return ""


def read_json_member(tf: tarfile.TarFile, member: tarfile.TarInfo, cap: int, fail: Refuse) -> bytes:
    """A small member's bytes, refused when it is larger than ``cap`` (before any is read)."""
    if member.size > cap:
        raise fail(member.name, f"{member.size} bytes, over the {cap >> 20} MiB cap for this JSON document")
    src = tf.extractfile(member)
    assert src is not None
    data = src.read(cap + 1)
    if len(data) != member.size:
        raise fail(member.name, "shorter than its header says: truncated")
    return data


def copy_member(tf: tarfile.TarFile, member: tarfile.TarInfo, size: int, out: IO[bytes] | None,
                hashes: tuple[Any, ...], fail: Refuse) -> None:
    """Stream a member into ``out`` (None: only hash it), reading at most ``size`` + 1 bytes."""
    src = tf.extractfile(member)
    assert src is not None
    left = size + 1
    got = 0
    while left > 0 and (chunk := src.read(min(CHUNK, left))):
        left -= len(chunk)
        got += len(chunk)
        if got > size:
            raise fail(member.name, f"more than the {size} bytes its listing declares")
        for h in hashes:
            h.update(chunk)
        if out is not None:
            out.write(chunk)
    if got != size:
        raise fail(member.name, f"{got} bytes, its listing declares {size}: truncated")


def _padded(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


# ---------------------------------------------------------------- partial files and their owners


def owner() -> str:
    """This process, as partial files name it: host and PID (the PID alone is ambiguous on shared disks)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def partial_prefix(path: Path) -> str:
    return f".{path.name}.partial."


@contextlib.contextmanager
def owned_open(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically through ``.NAME.partial.HOST-PID.XXXX``; removed on any error.

    A kill -9 leaves the partial file; ``sweep_partials`` (called by the next writer of the same
    folder) removes it once its process is gone. A full disk is told as :class:`OutputFull`.
    """
    try:
        with atomic_open(path, "wb", prefix=f"{partial_prefix(path)}{owner()}.") as f:
            yield f
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputFull(path, e) from e
        raise


def sweep_partials(folder: Path) -> list[Path]:
    """Remove the partial files in ``folder`` that a process of this host left and that no longer runs."""
    removed = []
    host = socket.gethostname()
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if not (entry.name.startswith(".") and ".partial." in entry.name and entry.name.endswith(".tmp")):
                continue
            who = entry.name.rsplit(".partial.", 1)[1].rsplit(".", 2)[0]  # HOST-PID
            entry_host, _, pid = who.rpartition("-")
            if entry_host == host and pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (for "which disk is full")."""
    path = path.resolve()
    dev = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


class OutputFull(BuildsysError):
    """The disk of an output file (not the store) filled up while it was written; nothing was kept."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        folder = path.parent
        try:
            device = mount_point(folder)
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            where = f"the file system mounted at {device} ({free / 1e6:.0f} MB free now)"
        except OSError:
            device, where = folder, "its file system"
        self.device = device
        super().__init__(f"{path}: {error.strerror or 'no space left on the device'} in {folder}, on {where}; "
                         "the partial file was removed",
                         f"free space on {device}, or write the file to another disk (-o), and run the command "
                         "again")
