"""Lock ``[[files]]``: download each URL once, pin its sha256 and size.

The downloaded file goes straight into the vendor store (it is content
addressed, so a later ``fetch`` has nothing to do for it).
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

from buildsys.errors import FetchError, HashMismatch
from buildsys.lockfile import LockedFile
from buildsys.recipe import Recipe
from buildsys.store import Store


@dataclass(frozen=True)
class FilesLock:
    locked: tuple[LockedFile, ...]
    epochs: tuple[int, ...]  # Last-Modified of each file, where the server gave one


def lock_files(recipe: Recipe, store: Store) -> FilesLock:
    locked, epochs = [], []
    for i, spec in enumerate(recipe.files):
        sha, size, modified = _download(store, spec.url, f"{recipe.path}: files[{i}] ({spec.name})")
        if spec.sha256 and spec.sha256 != sha:
            raise HashMismatch(f"{recipe.path}: files[{i}] ({spec.name})", spec.url, spec.sha256, sha)
        locked.append(LockedFile(url=spec.url, name=spec.name, sha256=sha, size=size))
        if modified is not None:
            epochs.append(modified)
    return FilesLock(tuple(locked), tuple(epochs))


def _download(store: Store, url: str, what: str) -> tuple[str, int, int | None]:
    """Stream ``url`` into the vendor store; return its sha256, size and Last-Modified time."""
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url), timeout=60)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{what}: {url} answered HTTP {e.code}", hint="check the URL") from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{what}: cannot download {url}: {getattr(e, 'reason', e)}",
                         hint="check the URL and the network") from e
    lm = resp.headers.get("Last-Modified")
    modified = int(email.utils.parsedate_to_datetime(lm).timestamp()) if lm else None
    h = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=store.tmp, prefix="file-")
    try:
        with os.fdopen(fd, "wb") as out, resp:
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        dest = store.vendor_path(h.hexdigest())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return h.hexdigest(), size, modified
