"""``fetch --bundle`` / ``fetch --from-bundle``: the vendor store on a machine with no network.

A bundle is a tar of ``bundle.json`` (version 1: each file's sha256, size,
kind, name and version) and ``sha256/<hex>`` per vendored file, written
deterministically under a temporary name. Reading one hashes every file as it
is copied into the store and keeps it only when its content is what its name
says; a file whose name is not a sha256 or whose content is not that hash is
refused, with the bundle named. Files already checked in the store are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys.core import names
from buildsys.core.errors import BuildsysError, NotVendored
from buildsys.core.progress import Progress
from buildsys.core.store import Artifact, Store, atomic_open
from buildsys.oci.image import archive_member, canonical_bytes
from buildsys.oci.layer.normalize import TarWriter

BUNDLE_VERSION = 1
_MEMBER_RE = re.compile(rf"sha256/({names.HEX64.pattern})")
_CHUNK = 1 << 20


class BundleError(BuildsysError):
    def __init__(self, path: Path, problem: str) -> None:
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
                 progress: Progress = lambda r, s, d: None) -> BundleResult:
    arts = sorted({a.sha256: a for a in artifacts}.values(), key=lambda a: a.sha256)
    missing = [a for a in arts if not store.has_artifact(a)]
    if missing:
        raise NotVendored("the bundle", f"{len(missing)} locked file(s) ({missing[0].filename}...)", hint=_AGAIN)
    index = {"version": BUNDLE_VERSION, "files": [
        {"sha256": a.sha256, "size": store.vendor_path(a.sha256).stat().st_size, "kind": a.kind, "name": a.name,
         "version": a.version, "filename": a.filename} for a in arts]}
    total = 0
    with atomic_open(out) as f:
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


def _checked(path: Path, art: Artifact):  # type: ignore[no-untyped-def]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            yield chunk
    if h.hexdigest() != art.sha256:
        raise NotVendored("the bundle", f"{art.filename}", f"damaged in the vendor store (not its sha256 {art.sha256})",
                          hint=_AGAIN)



def read_bundle(store: Store, bundle: Path, progress: Progress = lambda r, s, d: None) -> BundleResult:
    """Copy a bundle's files into the vendor store, each hash-checked before it is placed."""
    files = added = nbytes = 0
    listed: dict[str, int] | None = None
    try:
        with tarfile.open(bundle, "r|") as tf:
            for member in tf:
                name = member.name.removeprefix("./").rstrip("/")
                if member.isdir():
                    continue
                if name == "bundle.json" and member.isfile():
                    src = tf.extractfile(member)
                    assert src is not None
                    try:
                        meta = json.loads(src.read())
                        listed = {e["sha256"]: int(e["size"]) for e in meta["files"]}
                    except (ValueError, KeyError, TypeError) as e:
                        raise BundleError(bundle, f"bundle.json is not readable ({e})") from e
                    if meta.get("version") != BUNDLE_VERSION:
                        raise BundleError(bundle, f"bundle.json has version {meta.get('version')!r}, "
                                                  f"this buildsys reads {BUNDLE_VERSION}")
                    continue
                m = _MEMBER_RE.fullmatch(name)
                if not m or not member.isfile():
                    raise BundleError(bundle, f"'{member.name}' is not a vendored file (sha256/<hex>)")
                sha = m.group(1)
                files += 1
                if store.is_verified(sha):
                    continue
                src = tf.extractfile(member)
                assert src is not None
                progress("bundle", "check", sha[:12])
                h = hashlib.sha256()
                with atomic_open(store.vendor_path(sha)) as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                    if h.hexdigest() != sha:
                        raise BundleError(bundle, f"sha256/{sha} does not match its hash (it hashes to "
                                                  f"{h.hexdigest()}): tampered or damaged; it was not kept")
                store.mark_verified(sha)
                added += 1
                nbytes += member.size
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(bundle, f"not a complete bundle ({e}): truncated or damaged") from e
    if listed is None:
        raise BundleError(bundle, "bundle.json is missing: not a bundle of `buildsys fetch --bundle`")
    return BundleResult(files, added, nbytes)
