"""``[cran] renv = "renv.lock"``: renv's exact versions as a layer's R packages.

renv.lock (JSON) holds ``R.Version`` and ``Packages``: ``{NAME: {Package, Version,
Source, Repository}}``, the whole closure renv saw. It is read when the recipe
is parsed (a bad entry is a bad recipe, ``file:line``), and its bytes are part
of the recipe hash. At lock time each version is taken as is: from the top
level of ``[cran] repo`` while current there, else from its
``src/contrib/Archive/NAME/``, pinned by sha256 like any [cran] package. Only
CRAN-like sources (``"Source": "Repository"``) can be fetched; GitHub, Bioconductor
or local packages are refused with their line. The R version is checked
against the image's R (major.minor) when the lock reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from buildsys.core import names
from buildsys.core.errors import RecipeError
from buildsys.model.recipe import KeyPath, RecipeValidator, project_file


@dataclass(frozen=True)
class RenvLock:
    path: str  # as the recipe names it, relative to the project root
    sha256: str
    r_version: str
    r_line: int
    versions: tuple[tuple[str, str, int], ...]  # (name, version, line), sorted by name
    repository: str | None = None  # R.Repositories' CRAN entry (the first one without one named CRAN)


def _line(text: str, pattern: str) -> int:
    m = re.search(pattern, text)
    return text.count("\n", 0, m.start()) + 1 if m else 0


def read_renv(v: RecipeValidator, key: KeyPath, value: str) -> RenvLock:
    path, raw = project_file(v, key, value)
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise RecipeError(path, f"not a renv.lock (JSON): {e}", line=getattr(e, "lineno", None)) from e
    r = data.get("R") if isinstance(data, dict) else None
    version = r.get("Version") if isinstance(r, dict) else None
    if not isinstance(version, str) or not names.R_VERSION.fullmatch(version):
        raise RecipeError(path, "has no R.Version", line=_line(text, r'"R"\s*:') or None,
                          hint="write it with renv::snapshot()")
    packages = data.get("Packages")
    if not isinstance(packages, dict):
        raise RecipeError(path, "has no Packages table", hint="write it with renv::snapshot()")
    out = []
    for name, entry in sorted(packages.items()):
        line = _line(text, rf'"{re.escape(name)}"\s*:\s*\{{')
        if not isinstance(entry, dict) or not names.R_NAME.fullmatch(name) or \
                not names.R_VERSION.fullmatch(str(entry.get("Version", ""))):
            raise RecipeError(path, f"Packages.{name}: not an R package name with a Version", line=line or None)
        source = entry.get("Source", "Repository")
        if source != "Repository":
            where = entry.get("RemoteUrl") or entry.get("RemoteRepo") or entry.get("RemoteType") or source
            raise RecipeError(path, f"{name} {entry['Version']} comes from {source} ({where}), which [cran] cannot "
                                    "fetch", line=line or None,
                              hint="install it from a CRAN-like repository, or build it in a run step from a "
                                   "[[files]] tarball")
        out.append((name, str(entry["Version"]), line))
    if not out:
        raise RecipeError(path, "lists no packages")
    listed = r.get("Repositories") if isinstance(r, dict) else None
    repos = [x for x in listed or [] if isinstance(x, dict) and isinstance(x.get("URL"), str)]
    cran = next((x["URL"] for x in repos if x.get("Name") == "CRAN"), repos[0]["URL"] if repos else None)
    return RenvLock(value, hashlib.sha256(raw).hexdigest(), version, _line(text, r'"Version"\s*:'), tuple(out),
                    cran)


def same_minor(a: str, b: str) -> bool:
    """Whether two R versions share major.minor (packages are built per R minor release)."""
    return a.split(".")[:2] == b.split(".")[:2]
