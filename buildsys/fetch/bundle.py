"""``fetch --bundle`` / ``fetch --from-bundle``: the vendor store on a machine with no network.

A bundle is a tar of ``bundle.json`` (version 1: each file's sha256, size,
kind, name and version) and ``sha256/<hex>`` per vendored file, written
deterministically under a temporary name. Reading one hashes every file as it
is copied into the store and keeps it only when its content is what its name
says; a file whose name is not a sha256 or whose content is not that hash is
refused, with the bundle named. Files already checked in the store are kept.
Only members ``bundle.json`` lists are taken, at their listed sizes (see
``buildsys.core.archive``); the bundle is written and swept as exports are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys.core import names
from buildsys.core.archive import JSON_CAP, copy_member, open_archive, owned_open, read_json_member, sweep_partials
from buildsys.core.errors import BuildsysError, NotVendored
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Artifact, Store
from buildsys.oci.image import archive_member, canonical_bytes
from buildsys.oci.layer.normalize import TarWriter

BUNDLE_VERSION = 1
_MEMBER_RE = re.compile(rf"sha256/({names.HEX64.pattern})")
_CHUNK = 1 << 20



class BundleError(BuildsysError):
    """A bundle that is damaged, tampered with or holds what it does not list (exit 1); ``member`` is the
    member at fault, when one is. Files checked before it stay in the vendor store (each matched its hash)."""

    def __init__(self, path: Path, problem: str, member: str = "") -> None:
        self.path, self.problem, self.member = path, problem, member
        super().__init__(f"{path}: {problem}",
                         "copy the bundle again (compare its sha256 on both machines), or make it again with "
                         "`buildsys fetch --bundle FILE`")


@dataclass(frozen=True)
class BundleResult:
    files: int
    added: int
    bytes: int


_AGAIN = "run the same `buildsys fetch RECIPE... --bundle FILE` again: fetch replaces what is missing or damaged"


def write_bundle(store: Store, artifacts: Sequence[Artifact], out: Path,
                 progress: Progress = NO_PROGRESS) -> BundleResult:
    arts = sorted({a.sha256: a for a in artifacts}.values(), key=lambda a: a.sha256)
    missing = [a for a in arts if not store.has_artifact(a)]
    if missing:
        raise NotVendored("the bundle", f"{len(missing)} locked file(s) ({missing[0].filename}...)", hint=_AGAIN)
    index = {"version": BUNDLE_VERSION, "files": [
        {"sha256": a.sha256, "size": store.vendor_path(a.sha256).stat().st_size, "kind": a.kind, "name": a.name,
         "version": a.version, "filename": a.filename} for a in arts]}
    total = 0
    for gone in sweep_partials(out.parent):  # a bundle killed before its rename
        progress("bundle", "cleanup", f"removed {gone.name}, left by an interrupted run")
    with owned_open(out) as f:
        writer = TarWriter(f)
        data = canonical_bytes(index)
        writer.add(archive_member("bundle.json", len(data)), (data,))
        writer.add(archive_member("sha256", directory=True))
        for a in arts:
            path = store.vendor_path(a.sha256)
            size = path.stat().st_size
            progress("bundle", "add", a.filename)
            writer.add(archive_member(f"sha256/{a.sha256}", size), _checked(path, a))
            total += size
        writer.close()
    return BundleResult(len(arts), len(arts), total)


def _checked(path: Path, art: Artifact) -> Iterator[bytes]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            yield chunk
    if h.hexdigest() != art.sha256:
        raise NotVendored("the bundle", f"{art.filename}", f"damaged in the vendor store (not its sha256 {art.sha256})",
                          hint=_AGAIN)



def read_bundle(store: Store, bundle: Path, progress: Progress = NO_PROGRESS) -> BundleResult:
    """Copy a bundle's files into the vendor store, each hash-checked before it is placed.

    Only what ``bundle.json`` lists is taken, at its listed size: any other member, a member of
    another size, a link or a sparse file is refused from the headers, before a byte is written.
    """
    def fail(member: str, why: str) -> BundleError:
        return BundleError(bundle, f"'{member}': {why}" if member else why, member)

    files = added = nbytes = 0
    if n := store.sweep_scratch():  # what a killed read (or build) left in the store's scratch space
        progress("bundle", "cleanup", f"removed {n} scratch folder(s) left by an interrupted run")
    with open_archive(bundle, fail) as (tf, members):
        if "bundle.json" not in members:
            raise BundleError(bundle, "bundle.json is missing: not a bundle of `buildsys fetch --bundle`")
        listed = _listing(bundle, read_json_member(tf, members["bundle.json"], JSON_CAP, fail))
        for name, member in sorted(members.items()):
            m = _MEMBER_RE.fullmatch(name)
            if name == "bundle.json":
                continue
            if not m or m.group(1) not in listed:
                raise fail(member.name, "not a vendored file that bundle.json lists (sha256/<hex>); a bundle "
                                        "holds nothing else")
            if member.size != listed[m.group(1)]:
                raise fail(member.name, f"{member.size} bytes, bundle.json declares {listed[m.group(1)]}")
        # Every member is declared and of its declared size: only now is anything written.
        with store.scratch("bundle") as tmp:
            for name, member in sorted(members.items(), key=lambda kv: kv[1].offset):
                m = _MEMBER_RE.fullmatch(name)
                if not m:
                    continue
                sha = m.group(1)
                files += 1
                if store.is_verified(sha):
                    continue
                progress("bundle", "check", sha[:12])
                h = hashlib.sha256()
                part = Path(tmp) / sha
                with open(part, "wb") as out:
                    copy_member(tf, member, listed[sha], out, (h,), fail)
                if h.hexdigest() != sha:
                    raise BundleError(bundle, f"sha256/{sha} does not match its hash (it hashes to "
                                              f"{h.hexdigest()}): tampered or damaged; it was not kept", name)
                dest = store.vendor_path(sha)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, dest)
                store.mark_verified(sha)
                added += 1
                nbytes += member.size
    return BundleResult(files, added, nbytes)


def _listing(bundle: Path, data: bytes) -> dict[str, int]:
    """bundle.json: sha256 -> size of every file it lists."""
    try:
        meta = json.loads(data)
        version = meta.get("version")
        entries = [(e["sha256"], e["size"]) for e in meta["files"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BundleError(bundle, f"bundle.json is not readable ({type(e).__name__}: {e})", "bundle.json") from e
    if version != BUNDLE_VERSION:
        raise BundleError(bundle, f"bundle.json has version {version!r}, this buildsys reads {BUNDLE_VERSION}",
                          "bundle.json")
    listed: dict[str, int] = {}
    for sha, size in entries:
        if not isinstance(sha, str) or not names.HEX64.fullmatch(sha) or type(size) is not int or size < 0 \
                or listed.get(sha, size) != size:
            raise BundleError(bundle, f"bundle.json lists {sha!r} with size {size!r}: not a sha256 and a size",
                              "bundle.json")
        listed[sha] = size
    return listed
