"""One error hierarchy; each class carries its facts and its exit code.

The CLI maps ``exit_code`` to the process status in one place
(``buildsys.cli``); nothing else calls ``sys.exit``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

# Exit codes of the CLI contract (docs/design.md, "Exit codes").
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_REPRODUCIBLE = 3
EXIT_ENGINE = 4
EXIT_UNTRUSTED = 5  # verify-signature found no signature the key accepts for the image


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class BuildsysError(Exception):
    """Base of every error a user may see; the message says what to do next."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message}\n  {self.hint}" if self.hint else self.message


class UsageError(BuildsysError):
    exit_code = EXIT_USAGE


class RecipeError(BuildsysError):
    """A recipe file is malformed: names the file, the key path and the line."""

    exit_code = EXIT_USAGE

    def __init__(
        self,
        path: Path | str,
        problem: str,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.line = line
        self.problem = problem
        where = str(self.path) + (f":{line}" if line else "")
        what = f"{key}: {problem}" if key else problem
        super().__init__(f"{where}: {what}", hint)


class GraphError(BuildsysError):
    """The recipes do not form a valid DAG (missing parent, cycle, roots)."""

    exit_code = EXIT_USAGE


class UnknownRecipe(UsageError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        self.name = name
        super().__init__(
            f"no recipe named '{name}'{did_you_mean(name, known)}",
            f"recipes here: {', '.join(known) or '(none)'}",
        )


class FormatVersionError(BuildsysError):
    """A file written by a newer (or older) buildsys than this one reads."""

    exit_code = EXIT_USAGE

    def __init__(self, path: Path | str, found: object, supported: int = 1) -> None:
        super().__init__(
            f"{path}: format version {found!r} is not supported (this buildsys reads version {supported})",
            "upgrade buildsys, or regenerate the file with this version",
        )


class LockFileError(BuildsysError):
    """A lock holds a value that is not of its shape (a path for a digest, a URL that is none...)."""

    exit_code = EXIT_USAGE

    def __init__(self, path: Path | str, entry: str, key: str, problem: str, hint: str) -> None:
        self.path, self.entry, self.key, self.problem = Path(path), entry, key, problem
        where = f"{entry}: {key}" if key else entry
        super().__init__(f"{path}: {where}: {problem}", hint)


class LockError(BuildsysError):
    """Resolution failed while locking (unknown package, conflicting pins)."""


class MissingLock(BuildsysError):
    exit_code = EXIT_NOT_REPRODUCIBLE

    def __init__(self, recipe: str, path: Path) -> None:
        self.recipe = recipe
        super().__init__(f"{path}: no lock for recipe '{recipe}'", f"run `buildsys lock {recipe}`")


class StaleLock(BuildsysError):
    exit_code = EXIT_NOT_REPRODUCIBLE

    def __init__(self, recipe: str, path: Path, reason: str) -> None:
        self.recipe = recipe
        self.reason = reason
        super().__init__(f"{path}: lock is stale: {reason}", f"run `buildsys lock {recipe}`")


class LocksOutOfDate(BuildsysError):
    """``lock --check`` found missing or stale locks."""

    exit_code = EXIT_NOT_REPRODUCIBLE

    def __init__(self, bad: list[str], total: int, verb: str = "are missing or stale",
                 command: str | None = None) -> None:
        self.recipes = bad
        super().__init__(f"{len(bad)} of {total} locks {verb}: {', '.join(bad)}",
                         f"run `{command or 'buildsys lock ' + ' '.join(bad)}`")


class FetchError(BuildsysError):
    """A download failed after retries."""


class HashMismatch(FetchError):
    def __init__(self, what: str, url: str, expected: str, actual: str, algorithm: str = "sha256") -> None:
        self.what, self.url, self.expected, self.actual = what, url, expected, actual
        super().__init__(
            f"{what}: {algorithm} mismatch for {url}\n  expected {expected}\n  actual   {actual}",
            "the file was not kept; if the upstream file really changed, relock with `buildsys lock --upgrade`",
        )


class NotVendored(BuildsysError):
    """A locked artifact is missing from (or corrupt in) the vendor store."""

    def __init__(self, recipe: str, what: str, detail: str = "missing from the vendor store",
                 hint: str | None = None) -> None:
        self.recipe = recipe
        super().__init__(f"{recipe}: {what} is {detail}", hint or f"run `buildsys fetch {recipe}`")


class ToolMissing(BuildsysError):
    def __init__(self, tool: str, package: str) -> None:
        super().__init__(
            f"'{tool}' is not installed; buildsys needs it here",
            f"install it: `apt-get install {package}` (or run `make install`)",
        )


class BuildError(BuildsysError):
    """A build step failed; carries the step and the tail of its output."""

    def __init__(self, recipe: str, step: str, output: str = "", hint: str | None = None) -> None:
        self.recipe, self.step, self.output = recipe, step, output
        tail = "\n".join(output.rstrip().splitlines()[-25:])
        msg = f"{recipe}: build step failed: {step}"
        if tail:
            msg += "\n  --- last lines of its output ---\n" + "\n".join(f"  | {ln}" for ln in tail.splitlines())
        super().__init__(msg, hint)


class TestFailed(BuildsysError):
    pass


class ImagesDiffer(BuildsysError):
    """``buildsys diff`` found differences (exit 1, like diff(1))."""


class NotReproducible(BuildsysError):
    exit_code = EXIT_NOT_REPRODUCIBLE


class EngineUnavailable(BuildsysError):
    exit_code = EXIT_ENGINE

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the docker engine is unreachable: {detail}",
            "start one: `sudo dockerd &` (or `make dockerd` in the buildsys checkout), "
            "or point DOCKER_HOST at a running engine",
        )


class ImageNotBuilt(BuildsysError):
    """The store holds no image of the recipe's current locks (never built, or built from older locks)."""

    def __init__(self, recipe: str) -> None:
        self.recipe = recipe
        super().__init__(f"{recipe}: not built for its current locks (the store has no image of them)",
                         f"build it first: `buildsys fetch {recipe} && buildsys build {recipe}` (or `buildsys "
                         f"import` an archive of it)")


class NotVerified(BuildsysError):
    """``publish`` of a chain that no ``build --verify`` has proven reproducible."""

    exit_code = EXIT_NOT_REPRODUCIBLE

    def __init__(self, recipe: str, manifest_digest: str) -> None:
        self.recipe = recipe
        super().__init__(f"{recipe}: image {manifest_digest} was never verified (no `build --verify` of its "
                         "chain found it reproducible in this store)",
                         f"run `buildsys build --verify {recipe}`, or publish with --force to skip this check")
