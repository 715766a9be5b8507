"""The merged filesystem of a parent chain, as docker would apply its layers (``ParentTree``).

A child layer is what differs from this tree; its headers are indexed once per
blob in the store's cache (blobs never change), so a chain's tree costs one
read of small JSON files, not of the layers.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from buildsys.oci.layer.entry import (
    CAPABILITY_XATTR,
    KINDS,
    OPAQUE_MARKER,
    PAX_XATTR,
    WHITEOUT_PREFIX,
    Item,
    LayerError,
    dirname,
    norm_path,
    read_content,
)


class ParentTree:
    """The merged filesystem of a chain of canonical layer tars, as docker would apply them.

    Entries keep where their content lies (blob file, offset), so comparing a
    file with its parent's version reads both only when size, mtime and owner
    are equal, which is rare.
    """

    def __init__(self) -> None:
        self.entries: dict[str, Item] = {}
        self._kids: dict[str, set[str]] = defaultdict(set)

    @classmethod
    def from_layers(cls, layers: Iterable[Path], index_dir: Path | None = None) -> ParentTree:
        """Apply canonical layer tars in order. With ``index_dir``, each blob's headers are
        read once and kept there by the blob's name (its digest: blobs never change)."""
        tree = cls()
        for path in layers:
            tree._apply(path, _layer_index(path, index_dir))
        return tree

    def children(self, path: str) -> set[str]:
        return self._kids.get(path, set())

    def read(self, path: str) -> bytes | None:
        """The content of the regular file at ``path`` (symlinks followed, as in the image); None if none."""
        path = norm_path(path)
        for _ in range(16):  # a loop of symlinks is as good as no file
            it = self.entries.get(path)
            if it is None or it.kind not in ("file", "symlink"):
                return None
            if it.kind == "file":
                return read_content(it)
            target = it.linkname if it.linkname.startswith("/") else f"{dirname(path)}/{it.linkname}"
            try:
                path = norm_path(posixpath.normpath("/" + target))
            except LayerError:
                return None
        return None

    def _remove(self, path: str) -> None:
        if self.entries.pop(path, None) is None:
            return
        self._kids[dirname(path)].discard(path)
        for kid in list(self._kids.pop(path, ())):
            self._remove(kid)

    def _apply(self, blob: Path, index: list[list[Any]]) -> None:
        adds: list[Item] = []
        src = os.fspath(blob)
        # Whiteouts act on the layers below only, whatever their place in this tar.
        for row in index:
            path = row[0]
            parent, _, base = path.rpartition("/")
            if base == OPAQUE_MARKER:
                for kid in list(self.children(parent)):
                    self._remove(kid)
            elif base.startswith(WHITEOUT_PREFIX):
                self._remove(f"{parent}/{base[4:]}" if parent else base[4:])
            else:
                _, kind, mode, uid, gid, mtime, size, link, major, minor, cap, offset = row
                adds.append(Item(path, kind, mode, uid, gid, mtime, size, link, major, minor,
                                  bytes.fromhex(cap) if cap is not None else None, src, offset))
        here: dict[str, Item] = {}
        for it in adds:
            old = self.entries.get(it.path)
            if old is not None and not (old.kind == "dir" and it.kind == "dir"):
                self._remove(it.path)
            if it.kind == "hardlink":  # compared as the file it names (same layer, written first)
                target = here.get(it.linkname)
                if target is None:
                    continue
                it = target.copy(path=it.path)
            here[it.path] = it
            self.entries[it.path] = it
            self._kids[dirname(it.path)].add(it.path)


_INDEX_VERSION = 1


def _layer_index(blob: Path, index_dir: Path | None) -> list[list[Any]]:
    """A layer tar's entries as rows: path, kind, mode, uid, gid, mtime, size, link, major, minor, cap, offset."""
    cached = index_dir / f"{blob.name}.json" if index_dir is not None else None
    if cached is not None:
        try:
            data = json.loads(cached.read_bytes())
            if data.get("version") == _INDEX_VERSION and data.get("size") == blob.stat().st_size:
                return list(data["entries"])
        except (OSError, ValueError, AttributeError):
            pass  # absent or damaged: read the blob again
    try:
        with tarfile.open(blob, mode="r:") as tf:
            members = tf.getmembers()
    except tarfile.TarError as e:
        raise LayerError(f"{blob}: cannot read a parent layer: {e}",
                         "the store's copy is damaged: rebuild the image (`buildsys build --no-cache`)") from e
    rows: list[list[Any]] = []
    for m in members:
        path = norm_path(m.name)
        kind = KINDS.get(m.type)
        if not path or kind is None:
            continue
        cap = m.pax_headers.get(PAX_XATTR + CAPABILITY_XATTR)
        rows.append([path, kind, m.mode & 0o7777, m.uid, m.gid, int(m.mtime), m.size if kind == "file" else 0,
                     norm_path(m.linkname) if kind == "hardlink" else m.linkname, m.devmajor, m.devminor,
                     cap.encode("utf-8", "surrogateescape").hex() if cap is not None else None, m.offset_data])
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"version": _INDEX_VERSION, "size": blob.stat().st_size, "entries": rows},
                                  separators=(",", ":")))
        os.replace(tmp, cached)
    return rows
