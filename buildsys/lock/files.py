"""Lock ``[[files]]``: download each URL once, pin its sha256 and size.

The downloaded file goes straight into the vendor store (it is content
addressed, so a later ``fetch`` has nothing to do for it).
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

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
    if url.startswith("file://"):
        src = Path(url.removeprefix("file://"))
        if not src.is_file():
            raise FetchError(f"{what}: {src} does not exist")
        stream: Any = src.open("rb")
        modified: int | None = int(src.stat().st_mtime)
    else:
        try:
            resp = requests.get(url, stream=True, timeout=60)
        except requests.RequestException as e:
            raise FetchError(f"{what}: cannot download {url}: {e}", hint="check the URL and the network") from e
        if resp.status_code != 200:
            raise FetchError(f"{what}: {url} answered HTTP {resp.status_code}", hint="check the URL")
        stream = resp.raw
        stream.decode_content = True
        lm = resp.headers.get("Last-Modified")
        modified = int(email.utils.parsedate_to_datetime(lm).timestamp()) if lm else None
    h = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=store.tmp, prefix="file-")
    try:
        with os.fdopen(fd, "wb") as out, stream:
            while chunk := stream.read(1 << 20):
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
