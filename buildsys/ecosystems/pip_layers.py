"""A big ``[pip]`` set as several layers: which distributions get a layer of their own, and which files are theirs.

The split is a pure function of the recipe and the lock (docs/recipes.md,
"Split layers"):

- ``[[pip.layers]]`` (``name``, ``packages``: names or ``fnmatch`` patterns of
  distributions) lists the groups, bottom first; a distribution matched by two
  groups is the first one's; a group that matches no locked distribution is an
  error, named;
- without it, a pip set whose selected files weigh ``SPLIT_THRESHOLD`` or more
  is split by the default rule: the ``nvidia-*`` distributions (CUDA's
  libraries, which change least) at the bottom, then ``frameworks``: every other
  distribution whose file weighs ``LARGE_FILE`` or more (torch, triton,
  tensorflow, jaxlib), each rule giving a layer only when it matches something;
- ``split = false`` keeps one layer.

Everything a group does not own (other distributions, apt, files, run steps)
is the recipe's top layer. A distribution's files are the ones its
``*.dist-info/RECORD`` lists, as pip installed them (scripts in ``bin``, the
``.pyc`` pip compiled), plus its ``.dist-info`` folder.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buildsys.core.errors import BuildError
from buildsys.ecosystems.pypi import canonical_name
from buildsys.oci.layer.entry import Item, dirname, read_content

SPLIT_THRESHOLD = 1 << 30  # 1 GiB of selected wheel files: the default rule splits
LARGE_FILE = 64 << 20  # a distribution this large (its file) is a framework of its own layer
CUDA_PATTERN = "nvidia-*"
LAYER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
PIP_PATTERN = re.compile(r"[A-Za-z0-9*?\[][A-Za-z0-9._*?\[\]!-]*")


@dataclass(frozen=True)
class LayerSpec:
    """One ``[[pip.layers]]`` table: its name and the distribution names or patterns it takes."""

    name: str
    packages: tuple[str, ...]

    def takes(self, canonical: str) -> bool:
        return any(fnmatch.fnmatchcase(canonical, canonical_name(p)) for p in self.packages)


@dataclass(frozen=True)
class PipGroup:
    """A group of locked distributions that is a layer of its own."""

    name: str
    distributions: tuple[str, ...]  # canonical names, sorted

    def describe(self) -> str:
        shown = ", ".join(self.distributions[:3]) + (", ..." if len(self.distributions) > 3 else "")
        return f"pip {len(self.distributions)}: {shown}"


def parse_layers(value: Any, fail: Callable[[tuple[str | int, ...], str, str | None], Exception],
                 key: tuple[str | int, ...]) -> tuple[LayerSpec, ...]:
    """``[[pip.layers]]`` as specs; ``fail(keypath, problem, hint)`` makes the recipe error."""
    specs: list[LayerSpec] = []
    for i, table in enumerate(value):
        at = (*key, i)
        name = table.get("name")
        if not isinstance(name, str) or not LAYER_NAME.fullmatch(name):
            raise fail((*at, "name") if name is not None else at,
                       "a split layer needs a name: lowercase letters, digits and dashes",
                       'e.g. name = "cuda"')
        if any(s.name == name for s in specs):
            raise fail((*at, "name"), f"two [[pip.layers]] are named '{name}'", "give each its own name")
        packages = table.get("packages")
        if not packages:
            raise fail((*at, "packages") if packages is not None else at,
                       "a split layer takes at least one distribution", 'e.g. packages = ["nvidia-*"]')
        for j, p in enumerate(packages):
            if not (isinstance(p, str) and PIP_PATTERN.fullmatch(p)):
                raise fail((*at, "packages", j), f"{p!r} is not a distribution name or pattern",
                           'names as [pip] packages writes them, or fnmatch patterns: "nvidia-*", "torch"')
        specs.append(LayerSpec(name, tuple(packages)))
    return tuple(specs)


def pip_groups(recipe: str, specs: Sequence[LayerSpec], split: bool, sizes: Mapping[str, int],
               where: str = "") -> tuple[PipGroup, ...]:
    """The groups of ``sizes`` (canonical name -> the selected file's bytes, the lock's [[pip]]), bottom first;
    ``where`` (the recipe file) names the table a group that matches nothing comes from."""
    if not split or not sizes:
        return ()
    left = sorted(sizes)
    groups: list[PipGroup] = []
    if specs:
        for i, spec in enumerate(specs, 1):
            taken = tuple(n for n in left if spec.takes(n))
            if not taken:
                raise BuildError(recipe, f"split layer '{spec.name}'",
                                 f"{where + ': ' if where else ''}[[pip.layers]] {i} ('{spec.name}': "
                                 f"{', '.join(spec.packages)}) matches none of the {len(sizes)} locked "
                                 f"distributions", hint=f"name distributions the lock has (the [[pip]] names of "
                                 f"locks/{recipe}.lock), or remove that [[pip.layers]] table; then `buildsys "
                                 f"lock {recipe}`")
            groups.append(PipGroup(spec.name, taken))
            left = [n for n in left if n not in taken]
        return tuple(groups)
    if sum(sizes.values()) < SPLIT_THRESHOLD:
        return ()
    cuda = tuple(n for n in left if fnmatch.fnmatchcase(n, CUDA_PATTERN))
    if cuda:
        groups.append(PipGroup("cuda", cuda))
    frameworks = tuple(n for n in left if n not in cuda and sizes[n] >= LARGE_FILE)
    if frameworks:
        groups.append(PipGroup("frameworks", frameworks))
    return tuple(groups)


def owners(entries: Iterable[Item], groups: Sequence[PipGroup]) -> dict[str, int]:
    """Path -> index in ``groups`` of every file a group's distributions installed, from their RECORDs."""
    group_of = {name: i for i, g in enumerate(groups) for name in g.distributions}
    out: dict[str, int] = {}
    info_dirs: dict[str, int] = {}
    for it in entries:
        folder, _, base = it.path.rpartition("/")
        if base != "RECORD" or not folder.endswith(".dist-info") or it.kind != "file":
            continue
        dist = canonical_name(folder.rpartition("/")[2].removesuffix(".dist-info").partition("-")[0])
        if dist not in group_of:
            continue
        i = group_of[dist]
        info_dirs[folder] = i
        site = dirname(folder)
        for row in csv.reader(io.StringIO(read_content(it).decode("utf-8", "surrogateescape"))):
            if not row or not row[0]:
                continue
            path = posixpath.normpath(posixpath.join("/" + site, row[0])).lstrip("/")
            out.setdefault(path, i)
    if info_dirs:
        for it in entries:
            d = dirname(it.path)
            while d:
                if d in info_dirs:
                    out.setdefault(it.path, info_dirs[d])
                    break
                d = dirname(d)
    return out
