"""Which repositories of a registry may already hold an image's blobs: where this store published before.

A cross-repository mount (``Registry.mount_blob``) needs a repository to mount
from, and the distribution API has no question "which repository holds blob
X?" (the catalog, where a registry enables it at all, lists repositories, not
their blobs). docker answers it from its own memory: it records, per layer,
the repositories it pushed the layer to or pulled it from, and tries a mount
from a few of them before it uploads. buildsys does the same with the store:
each publish records its repository under the registry's host
(``STORE/published/HOST.json``), and the next publish to another repository of
that host asks the most recent ones first. A wrong guess costs one ``POST``
(and the ``DELETE`` of the upload it opened); a right one saves the upload.

The record is a hint, not a contract: a missing or damaged one is an empty
one (and is rewritten by the next publish), as a cache miss slows a publish,
never stops it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from buildsys.core.store import Store, atomic_write

VERSION = 1
TRIED = 3  # repositories asked per blob, most recent first (docker tries up to 3 mount candidates too)
KEPT = 20  # repositories remembered per host


def _path(store: Store, host: str) -> Path:
    return store.root / "published" / (re.sub(r"[^A-Za-z0-9._-]", "_", host.lower()) + ".json")


def _read(path: Path) -> list[str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    repos = doc.get("repositories") if isinstance(doc, dict) and doc.get("version") == VERSION else None
    return [r for r in repos if isinstance(r, str)] if isinstance(repos, list) else []


def mount_sources(store: Store, host: str, repository: str) -> list[str]:
    """The repositories of ``host`` this store published to most recently, ``repository`` left out."""
    return [r for r in _read(_path(store, host)) if r != repository][:TRIED]


def record_published(store: Store, host: str, repository: str) -> None:
    """Remember that ``repository`` on ``host`` now holds an image of this store (first, as the most recent)."""
    path = _path(store, host)
    repos = [repository, *(r for r in _read(path) if r != repository)][:KEPT]
    atomic_write(path, json.dumps({"version": VERSION, "repositories": repos}, indent=1).encode() + b"\n")
