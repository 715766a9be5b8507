"""Why locking ``[pip]`` failed, in the recipe's words and pip's own."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from buildsys.core.errors import LockError
from buildsys.ecosystems.pip_tools import MIN_PYTHON, relevant_lines


class PythonMissing(LockError):
    def __init__(self, recipe: str, image: str) -> None:
        self.recipe, self.image = recipe, image
        super().__init__(
            f"{recipe}: [pip] needs python3 in the image, and the image of the parent chain has no python3 ({image})",
            'add python3 to [apt] packages of this recipe or an ancestor (packages = ["python3"])',
        )


class PythonTooOld(LockError):
    def __init__(self, recipe: str, version: str) -> None:
        self.recipe, self.version = recipe, version
        need = ".".join(map(str, MIN_PYTHON))
        super().__init__(
            f"{recipe}: the image's Python is {version}; locking [pip] needs Python {need} or newer in the image",
            "build on a newer Debian suite (bookworm has 3.11, trixie 3.13)",
        )


class NoDistribution(LockError):
    """pip found no release of a requirement on the index (unknown name, or no version matches)."""

    def __init__(self, recipe: str, requirement: str, index: str, versions: str, python: str, detail: str) -> None:
        self.recipe, self.requirement, self.index, self.versions = recipe, requirement, index, versions
        name = requirement_name(requirement)
        listed = [v.strip() for v in versions.split(",") if v.strip() and v.strip() != "none"]
        if "require a different python version" in detail:
            what = f"no release of '{name}' on {index} that satisfies {requirement} supports Python {python}"
            hint = "pin a release that supports this Python, or build on a Debian suite with another Python"
        elif not listed:
            what = f"no distribution named '{name}' on {index}"
            hint = f"check the name in [pip] packages (is it on {index}?) and that the index is reachable"
        else:
            what = f"no version of '{name}' on {index} satisfies {requirement} (Python {python})"
            shown = ", ".join(listed[-10:]) + (f" (and {len(listed) - 10} older)" if len(listed) > 10 else "")
            hint = f"versions there: {shown}; loosen the requirement in [pip] packages"
        super().__init__(f"{recipe}: pip: {what}" + _quote(detail), hint)


class ConflictingPins(LockError):
    def __init__(self, recipe: str, causes: Sequence[str], ancestors: Mapping[str, str], detail: str) -> None:
        self.recipe, self.causes, self.ancestors = recipe, tuple(causes), dict(ancestors)
        lines = [*causes, *(f"{n}=={v} (pinned by an ancestor layer)" for n, v in sorted(ancestors.items()))]
        body = "".join(f"\n  {ln}" for ln in lines)
        hint = "change [pip] packages so the requirements agree"
        if ancestors:
            hint += ("; an ancestor's pin stays as its lock has it (a layer cannot reinstall what its parents "
                     "installed): loosen this recipe's requirement, or relock the ancestor with "
                     f"`buildsys lock --upgrade-package {sorted(ancestors)[0]} <ancestor>`")
        super().__init__(f"{recipe}: pip: the requirements conflict:{body}" + _quote(detail), hint)


class ConstraintConflict(LockError):
    def __init__(self, recipe: str, package: str, ancestor: str, resolved: str) -> None:
        self.recipe, self.package, self.ancestor_version, self.resolved = recipe, package, ancestor, resolved
        super().__init__(
            f"{recipe}: pip resolved {package}=={resolved}, but an ancestor layer pins {package}=={ancestor}",
            f"make [pip] packages accept {package}=={ancestor}, or relock the ancestor",
        )


class NoWheel(LockError):
    """A pin has no wheel that the image's interpreter accepts, and the recipe does not build it from source."""

    def __init__(self, recipe: str, missing: Sequence[tuple[str, str, Sequence[str]]], python: str,
                 tags: Sequence[str]) -> None:
        self.recipe, self.missing, self.python, self.tags = recipe, tuple(missing), python, tuple(tags)
        lines = []
        for name, version, files in missing:
            shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
            lines.append(f"\n  {name}=={version}: " + (f"published files: {shown}" if files else "no files"))
        accepted = ", ".join(tags[:3]) + (f", ... {tags[-1]} ({len(tags)} tags)" if len(tags) > 3 else "")
        super().__init__(
            f"{recipe}: pip: no wheel for the image's Python {python} (accepted tags: {accepted}):" + "".join(lines),
            "pin a version that publishes a wheel for this Python and platform (e.g. 'name<X' in [pip] packages), "
            "install it from Debian ([apt] python3-<name>) in this recipe or an ancestor, or build it from its "
            f"source distribution in the layer: [pip] from-source = {json.dumps([m[0] for m in missing])} "
            "(a C extension also needs [apt] build-essential and python3-dev)",
        )


def _quote(detail: str) -> str:
    """pip's own words: its ERROR and WARNING lines and the final exception, not the traceback."""
    lines = [s for s in relevant_lines(detail) if s.startswith(("ERROR", "WARNING", "Ignored", "pip._internal.exc"))]
    return ("\n  --- pip said ---\n" + "\n".join(f"  | {ln}" for ln in lines[-8:])) if lines else ""


def requirement_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return m[1] if m else requirement
