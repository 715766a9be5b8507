"""One layer's entries as several stacked layers: the split of a recipe's layer (docs/recipes.md, "Split layers").

A child layer's canonical entries (``normalize.canonical_entries``) are divided
between ``groups`` lower layers and one top layer by owner: ``owner`` maps a
path to the index of the group that holds it (a pip distribution's files, say);
every path no group owns goes to the top layer. Stacked bottom first, the layers
show exactly the filesystem the single layer would have shown:

- each path is in exactly one layer, except directories, which come along with
  every layer that holds something below them (with the same metadata, so the
  upper copy changes nothing); a directory with nothing of any layer below it
  is in the top one;
- a hard link is in its target's layer (a tar hard link names a path of its own
  archive);
- an opaque directory marker is in the bottom layer: higher up it would hide the
  lower layers' files in that directory; a whiteout is in the top layer (the
  path it removes is in no layer of the split, since the image no longer has it).

Each layer keeps the single layer's sorted order. A group that owns nothing
still gives a layer (an empty tar): the number of layers is a function of the
lock, not of what the build happened to write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from buildsys.oci.layer.entry import OPAQUE_MARKER, WHITEOUT_PREFIX, Item, dirname


def split_entries(entries: Sequence[Item], groups: int, owner: Callable[[str], int | None]) -> list[list[Item]]:
    """``entries`` (sorted, as ``canonical_entries`` gives them) as ``groups + 1`` lists, bottom first; the last is
    everything no group owns."""
    top = groups
    where: dict[str, int] = {}
    below_dirs: dict[str, set[int]] = {}  # directory -> the layers that hold something below it
    for it in entries:
        if it.kind == "dir":
            continue
        base = it.path.rpartition("/")[2]
        if base == OPAQUE_MARKER:
            layer = 0
        elif base.startswith(WHITEOUT_PREFIX):
            layer = top
        elif it.kind == "hardlink":
            layer = where.get(it.linkname, top)
        else:
            found = owner(it.path)
            if found is not None and not 0 <= found < groups:  # pragma: no cover - an owner's bug
                raise ValueError(f"owner gave {found} for {it.path}: not one of {groups} groups")
            layer = top if found is None else found
        where[it.path] = layer
        d = dirname(it.path)
        while d:
            seen = below_dirs.setdefault(d, set())
            if layer in seen:
                break
            seen.add(layer)
            d = dirname(d)
    out: list[list[Item]] = [[] for _ in range(groups + 1)]
    for it in entries:
        if it.kind == "dir":
            for layer in sorted(below_dirs.get(it.path) or {top}):
                out[layer].append(it)
        else:
            out[where[it.path]].append(it)
    return out
