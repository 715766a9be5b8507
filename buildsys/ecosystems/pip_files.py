"""The project's own Python requirement files as ``[pip]`` requests: ``requirements.txt`` and ``pyproject.toml``.

``[pip] requirements = "requirements.txt"`` and ``[pip] pyproject = "pyproject.toml"``
(with ``extras = [...]``) name files of the project, relative to its root. They
are read when the recipe is parsed, so a bad line is a bad recipe (exit 2,
``file:line``), and their content is part of the recipe hash: an edit to the
file makes the lock stale as an edit to the recipe does.

A requirements file is what pip reads, less what cannot be locked: an
editable install, a path or URL, a VCS link, another index (``--extra-index-url``,
``--find-links``), an ``--index-url`` other than the recipe's, a constraints file (``-c``).
A nested ``-r FILE`` is read too (relative to the file naming it, inside the project), and is an input.
When its requirements carry ``--hash`` (pip's hash-checking mode), every one
must be ``==``-pinned with hashes, as pip itself requires: the file is then the
pin. The lock takes exactly its versions, selects only files whose sha256 it
lists, and is refused if pip-compile needs any distribution the file lacks.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from buildsys.core.errors import RecipeError
from buildsys.model.recipe import KeyPath, RecipeValidator, project_file

_HASH = re.compile(r"--hash[=\s]+([A-Za-z0-9]+):([0-9a-fA-F]+)")
_INDEX = re.compile(r"(?:-i|--index-url)(?:\s+|=)(\S+)$")
# Options that change nothing buildsys locks; any other option line is refused, naming it.
_HARMLESS = frozenset({"--require-hashes", "--prefer-binary", "--no-cache-dir"})


@dataclass(frozen=True)
class Pinned:
    """One requirement of a hashed requirements file: its exact version and the sha256 of its acceptable files."""

    name: str  # canonical
    version: str
    sha256: frozenset[str]
    line: int
    path: str = ""  # the file it is in, relative to the project root (a nested -r file's own)


@dataclass(frozen=True)
class RequirementsFile:
    path: str  # as the recipe names it, relative to the project root
    sha256: str  # of the file's bytes: part of the recipe hash
    requirements: tuple[tuple[str, str], ...]  # (PEP 508 text, "FILE:LINE" where it is written)
    pinned: tuple[Pinned, ...] = ()  # every requirement, when the files carry --hash lines
    included: tuple[tuple[str, str], ...] = ()  # files its -r lines read (path, sha256): in the recipe hash too


def _logical_lines(text: str) -> list[tuple[str, int]]:
    """Lines with ``\\`` continuations joined and comments removed, each with the line it starts on."""
    out: list[tuple[str, int]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((" ".join(buf.split()), start))
        buf = ""
    if buf.strip():
        out.append((" ".join(buf.split()), start))
    return out


def read_requirements(v: RecipeValidator, key: KeyPath, value: str, index_url: str) -> RequirementsFile:
    """Read ``[pip] requirements`` and the files its ``-r`` lines name (relative to the file, inside the project,
    as pip reads them); every line it cannot take is a ``RecipeError`` naming the file and line."""
    path, raw = project_file(v, key, value)
    root = v.path.parent.parent
    reqs: list[tuple[str, str]] = []
    hashed: list[tuple[Requirement, list[str], Path, int]] = []
    read: dict[Path, str] = {}
    _read_file(root, path, raw, index_url, reqs, hashed, read)
    pinned = _pinned(root, hashed) if any(h for _, h, _, _ in hashed) else ()
    included = tuple((p.relative_to(root.resolve()).as_posix(), sha) for p, sha in read.items()
                     if p != path.resolve())
    return RequirementsFile(value, hashlib.sha256(raw).hexdigest(), tuple(reqs), pinned, included)


def _read_file(root: Path, path: Path, raw: bytes, index_url: str, reqs: list[tuple[str, str]],
               hashed: list[tuple[Requirement, list[str], Path, int]], read: dict[Path, str]) -> None:
    read[path.resolve()] = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(path, f"not UTF-8 text ({e.reason})", hint="save the file as UTF-8") from e
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    for line, n in _logical_lines(text):
        word = line.split()[0].split("=")[0]
        if word in ("-r", "--requirement") or (word.startswith("-r") and not word.startswith("--")):
            nested = _nested(root, path, line, n)
            if nested.resolve() not in read:  # each file once, as a cycle of -r lines would read it again
                _read_file(root, nested, nested.read_bytes(), index_url, reqs, hashed, read)
            continue
        if line.startswith("-"):
            _option(path, line, n, index_url)
            continue
        hashes = _HASH.findall(line)
        spec = _HASH.sub("", line).strip()
        if any(algo.lower() != "sha256" for algo, _ in hashes):
            raise RecipeError(path, f"{spec}: only --hash=sha256:... is locked", line=n,
                              hint="regenerate the hashes with `pip-compile --generate-hashes`")
        req = _requirement(path, spec, n)
        reqs.append((spec, f"{rel}:{n}"))
        hashed.append((req, [h.lower() for _, h in hashes], path, n))


def _nested(root: Path, path: Path, line: str, n: int) -> Path:
    """The file of a ``-r FILE`` line: relative to the file that names it, inside the project, present."""
    words = line.replace("=", " ", 1).split() if line.startswith("--requirement=") else line.split()
    name = words[1] if len(words) > 1 else line[2:].strip()
    target = (path.parent / name).resolve()
    if not target.is_relative_to(root.resolve()) or re.match(r"[a-z][a-z0-9+.-]*://", name):
        raise RecipeError(path, f"{line}: the file is not inside the project {root}", line=n,
                          hint="keep the requirement files in the project, where git keeps them")
    if not target.is_file():
        raise RecipeError(path, f"{line}: {target} does not exist", line=n, hint="fix the path (relative to "
                                                                                 f"{path.parent})")
    return target


def _option(path: Path, line: str, n: int, index_url: str) -> None:
    word = line.split()[0].split("=")[0]
    if word in ("-i", "--index-url"):
        m = _INDEX.search(line)
        url = m[1] if m else ""
        if url.rstrip("/") != index_url.rstrip("/"):
            raise RecipeError(path, f"{line}: the file's index is not the recipe's ({index_url})", line=n,
                              hint=f'set [pip] index-url = "{url}" in the recipe, or remove the line')
        return
    if word in _HARMLESS:
        return
    why = {"-e": "an editable install of local code", "--editable": "an editable install of local code",
           "-c": "a constraints file", "--constraint": "a constraints file",
           "--extra-index-url": "a second index", "-f": "a folder or page of archives",
           "--find-links": "a folder or page of archives"}.get(word, "an option buildsys does not lock")
    hint = ("install the project's own code at run time (`buildsys run` mounts it); lock only its dependencies"
            if word in ("-e", "--editable") else
            "publish the packages on the recipe's index (one [pip] index-url per recipe)"
            if word in ("--extra-index-url", "-f", "--find-links") else "remove the line")
    raise RecipeError(path, f"{line}: {why} cannot be locked", line=n, hint=hint)


def _requirement(path: Path, spec: str, n: int) -> Requirement:
    if spec.startswith((".", "/", "~")) or re.match(r"[a-z][a-z0-9+.-]*://|git\+", spec):
        raise RecipeError(path, f"{spec}: a path, URL or VCS link cannot be locked", line=n,
                          hint="name a distribution of the index (e.g. mypkg==1.2); install your own code at "
                               "run time")
    try:
        req = Requirement(spec)
    except InvalidRequirement as e:
        raise RecipeError(path, f"not a requirement: {e}", line=n,
                          hint='write a project name with an optional version, e.g. "numpy>=2,<3"') from e
    if req.url:
        raise RecipeError(path, f"{spec}: a direct URL requirement cannot be locked", line=n,
                          hint="publish the package on an index and set [pip] index-url")
    return req


def _pinned(root: Path, hashed: list[tuple[Requirement, list[str], Path, int]]) -> tuple[Pinned, ...]:
    """pip's hash-checking mode: once one line has --hash, every requirement is ==-pinned with hashes."""
    out = []
    for req, hashes, path, n in hashed:
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version or not hashes:
            raise RecipeError(path, f"{req}: in a file with --hash lines, every requirement is pinned with == and "
                                    "its hashes (as pip's hash-checking mode requires)", line=n,
                              hint="regenerate the file with `pip-compile --generate-hashes`, or drop every --hash")
        out.append(Pinned(str(canonicalize_name(req.name)), specs[0].version, frozenset(hashes), n,
                          path.resolve().relative_to(root.resolve()).as_posix()))
    return tuple(out)


def read_pyproject(v: RecipeValidator, key: KeyPath, value: str, extras: tuple[str, ...]) -> RequirementsFile:
    """``[project] dependencies`` of a pyproject.toml and the optional-dependencies groups ``extras`` names."""
    path, raw = project_file(v, key, value)
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RecipeError(path, f"not a readable pyproject.toml: {e}") from e
    project = data.get("project")
    if not isinstance(project, dict):
        raise RecipeError(path, "has no [project] table (PEP 621)",
                          hint="declare the dependencies in [project] dependencies, or use [pip] requirements")
    if "dependencies" in project.get("dynamic", []):
        raise RecipeError(path, "[project] dependencies is dynamic: its build backend computes it",
                          hint="list them in [project] dependencies, or use a requirements file")
    groups = project.get("optional-dependencies", {})
    specs: list[str] = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in groups:
            raise v.fail((*key[:-1], "extras"), f"'{extra}' is no group of [project.optional-dependencies] in {path}",
                         hint=f"groups there: {', '.join(sorted(groups)) or '(none)'}")
        specs += groups[extra]
    own = canonicalize_name(str(project.get("name", "")))
    reqs: list[tuple[str, str]] = []
    for spec in specs:
        n = _line_of(text, spec)
        req = _requirement(path, spec, n)
        if canonicalize_name(req.name) == own:
            raise RecipeError(path, f"{spec}: the project requires itself (an extra of its own)", line=n,
                              hint="name the groups in [pip] extras instead")
        if spec not in [r for r, _ in reqs]:
            reqs.append((spec, f"{value}:{n}"))
    return RequirementsFile(value, hashlib.sha256(raw).hexdigest(), tuple(reqs))


def _line_of(text: str, spec: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if f'"{spec}"' in line or f"'{spec}'" in line:
            return n
    return 0
