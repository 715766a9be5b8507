"""From a Dockerfile to recipes: a root for its ``FROM`` and one layer for everything the stage adds.

Why a root plus one layer, not a recipe per ``RUN``: a recipe is a locked layer,
and a Dockerfile's ``RUN`` blocks are usually split for docker's cache, not
because they mean separate layers; one layer holds the stage's ``[apt]``,
``[pip]``, ``[cran]``, ``run`` steps and ``[image]`` config, and a team splits
it later where it wants a shared layer. The root stays bare (``[base]`` only)
so the same two-recipe shape works for a Debian root and a registry image (a
registry root may not hold ``[pip]``).

Only the final stage becomes recipes (with the stages it is ``FROM``); a
stage used only by ``COPY --from`` is reported, as is every line that is not
translated, with its line number: the build context is not copied into
images (``COPY . .``), downloads at build time (``curl | sh``, ``ADD https://``,
``git clone``) are not run, since builds have no network. Other commands are
kept as ``run`` steps with a warning to check that they need no network.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from buildsys.core import names
from buildsys.core.errors import UsageError
from buildsys.core.store import atomic_write
from buildsys.model.recipe import DERIVED_LABELS, RESERVED_LABELS, parse_recipe
from buildsys.onramp.dockerfile import DockerfileError, Instruction

# Debian's images by suite name or release number (docker.io/library/debian:12-slim is bookworm).
_DEBIAN_RELEASES = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
_DEBIAN_SUITES = frozenset({"bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing", "oldstable",
                            "unstable"})
_DEFAULT_CRAN = "https://packagemanager.posit.co/cran/2025-06-02"
# Commands that download at build time; a build has no network, so they cannot be kept as run steps.
_NETWORK = frozenset({"curl", "wget", "git", "npm", "yarn", "conda", "mamba", "micromamba", "gem", "cargo", "go",
                      "add-apt-repository", "apt-key", "installGithub.r", "gdebi", "snap", "uv", "poetry", "pipx"})
_SHELL_SPLIT = ("&&", ";", "\n")
_APT_OPTIONS_WITH_VALUE = frozenset({"-o", "-t", "-c", "--option", "--target-release", "--config-file"})
_PIP_FLAGS = frozenset({"--no-cache-dir", "-U", "--upgrade", "-q", "--quiet", "-qq", "-v", "--verbose",
                        "--break-system-packages", "--no-compile", "--disable-pip-version-check", "--no-input",
                        "--no-warn-script-location", "--ignore-installed", "-I", "--compile", "--user",
                        "--progress-bar=off", "--root-user-action=ignore", "--prefer-binary", "--only-binary=:all:",
                        "--force-reinstall", "--exists-action=i", "--require-hashes",
                        "--upgrade-strategy=only-if-needed", "--upgrade-strategy=eager"})
_PIP_WITH_VALUE = frozenset({"--progress-bar", "--root-user-action", "--upgrade-strategy", "--exists-action",
                             "--timeout", "--retries", "--only-binary", "--no-binary", "--trusted-host"})
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Note:
    """One line of the Dockerfile and what became of it."""

    line: int
    kind: str  # "dropped" (nothing to do in buildsys) | "kept" (a run step to check) | "not translated"
    text: str

    def __str__(self) -> str:
        return f"{self.line}: {self.kind}: {self.text}"


@dataclass
class _Layer:
    """What the translated stage adds, gathered instruction by instruction."""

    apt: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)
    pip_index: str | None = None
    requirements: str | None = None
    cran: list[str] = field(default_factory=list)
    cran_repo: str | None = None
    run: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    expose: list[int] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults, substituted in later lines
    # path in the image -> (line, context path, the COPY's own words)
    copies: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    used_copies: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Translation:
    """The recipes made of one Dockerfile (name -> TOML text, the root first) and what each line became."""

    recipes: dict[str, str]
    notes: tuple[Note, ...]


def translate(dockerfile: Path, instructions: Sequence[Instruction], project: Path, name: str) -> Translation:
    """The recipes ``name-base`` (the root) and ``name`` (the layer) for the final stage of ``instructions``.

    ``project`` is where they will be written: a requirements file named by the
    Dockerfile is given to the recipe relative to it.
    """
    if not names.RECIPE_NAME.fullmatch(name) or not names.RECIPE_NAME.fullmatch(f"{name}-base"):
        raise UsageError(f"'{name}' is not a recipe name ({names.RECIPE_NAME.pattern})", "pass --name NAME")
    stages = _stages(dockerfile, instructions)
    notes: list[Note] = []
    chain = _final_chain(stages, notes)
    first = chain[0][0]
    root, root_notes = _root(dockerfile, first)
    notes += root_notes
    layer = _Layer()
    for stage in chain:
        for ins in stage[1:]:
            notes += _translate_one(dockerfile, ins, layer, project)
    reported = set()
    for line, _src, words in sorted(layer.copies.values()):
        if line not in layer.used_copies and line not in reported:
            reported.add(line)
            notes.append(Note(line, "not translated", f"COPY {words}: the build context is not copied into "
                                                      "images; `buildsys run` mounts your project folder instead, "
                                                      "or pin a downloadable file with [[files]]"))
    notes += _missing_runtimes(first, root, layer)
    recipes = {f"{name}-base": root, name: _layer_toml(name, dockerfile, first, layer)}
    return Translation(recipes, tuple(sorted(notes, key=lambda n: n.line)))


def write_recipes(project: Path, translation: Translation) -> list[Path]:
    """Write the recipes into ``project/recipes/``: refused if any exists; each checked by the recipe parser first."""
    folder = project / "recipes"
    targets = [folder / f"{n}.toml" for n in translation.recipes]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise UsageError(f"refusing to overwrite existing recipes: {', '.join(existing)}",
                         "pass another --name, or -o another project folder")
    for target, text in zip(targets, translation.recipes.values(), strict=True):
        parse_recipe(target, text)  # a translation the parser refuses is a bug here: then nothing is written
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for target, text in zip(targets, translation.recipes.values(), strict=True):
            atomic_write(target, text.encode())
            written.append(target)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return targets


def _missing_runtimes(first: Instruction, root: str, layer: _Layer) -> list[Note]:
    """A Debian root has no Python or R: [pip] and [cran] need them in [apt], as the lock will say otherwise."""
    if "debian = " not in root:
        return []
    notes = []
    if (layer.pip or layer.requirements) and "python3" not in layer.apt:
        notes.append(Note(first.line, "not translated", 'a Debian root has no Python: add "python3" (and '
                                                        '"python3-pip") to [apt] packages for [pip]'))
    if layer.cran and not {"r-base-core", "r-base"} & set(layer.apt):
        notes.append(Note(first.line, "not translated", 'a Debian root has no R: add "r-base-core" (and '
                                                        '"r-base-dev" to compile) to [apt] packages for [cran]'))
    return notes


# --- stages and the root -------------------------------------------------------------------------------------------


def _stages(dockerfile: Path, instructions: Sequence[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stages.append([ins])
        elif not stages:
            if ins.keyword != "ARG":
                raise DockerfileError(dockerfile, f"{ins.keyword} before the first FROM", line=ins.line)
        else:
            stages[-1].append(ins)
    if not stages:
        raise DockerfileError(dockerfile, "has no FROM instruction", hint="a Dockerfile starts FROM an image")
    return stages


def _stage_name(ins: Instruction) -> str | None:
    words = ins.args.split()
    return words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None


def _final_chain(stages: list[list[Instruction]], notes: list[Note]) -> list[list[Instruction]]:
    """The final stage and the stages it is FROM, the first one first; the others reported."""
    named = {_stage_name(s[0]): s for s in stages if _stage_name(s[0])}
    chain = [stages[-1]]
    while (base := (chain[0][0].args.split() or [""])[0].lower()) in named and named[base] not in chain:
        chain.insert(0, named[base])
    for s in stages:
        if s not in chain:
            notes.append(Note(s[0].line, "not translated", f"stage {s[0].args!r}: only the final stage "
                                                           "becomes recipes; what COPY --from takes from this one "
                                                           "is not carried over"))
    return chain


def _image_ref(ref: str) -> str:
    """``nvidia/cuda:TAG`` -> ``docker.io/nvidia/cuda:TAG``, ``python:3.11`` -> ``docker.io/library/python:3.11``."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        full = ref
    else:
        full = "docker.io/" + (ref if "/" in ref else f"library/{ref}")
    last = full.rsplit("/", 1)[-1]
    return full if ":" in last or "@" in last else f"{full}:latest"


def _root(dockerfile: Path, ins: Instruction) -> tuple[str, list[Note]]:
    words = ins.args.split()
    ref = words[0] if words else ""
    if "$" in ref:
        raise DockerfileError(dockerfile, f"FROM {ref}: an ARG-driven base cannot be translated", line=ins.line,
                              hint="write the image the build really uses, e.g. FROM python:3.11-slim")
    if not ref:
        raise DockerfileError(dockerfile, "FROM names no image", line=ins.line, hint="e.g. FROM debian:bookworm")
    if ref.lower() == "scratch":
        raise DockerfileError(dockerfile, "FROM scratch has no base to translate", line=ins.line,
                              hint="start from a Debian suite (FROM debian:bookworm) or a registry image")
    notes = []
    if ins.flag("platform"):
        notes.append(Note(ins.line, "dropped", f"--platform={ins.flag('platform')}: the lock takes linux/amd64 "
                                               "unless [base] platform says otherwise"))
    repo, _, tag = ref.partition(":")
    suite = None
    if repo in ("debian", "docker.io/library/debian", "library/debian") and "@" not in ref:
        head = re.sub(r"-slim$|-\d{8}$|-\d{8}-slim$", "", tag or "latest")
        suite = _DEBIAN_RELEASES.get(head.split(".")[0], head) if head not in _DEBIAN_SUITES else head
    header = f'description = "The base of {dockerfile.name}: FROM {ref} (line {ins.line})"\n\n[base]\n'
    if suite in _DEBIAN_SUITES:
        notes.append(Note(ins.line, "kept", f"FROM {ref}: a Debian root, bootstrapped from Debian's archive "
                                            f"(suite {suite}, variant minbase) with today's updates and security "
                                            "fixes, not Docker Hub's image"))
        return header + f'debian = {{ suite = {_q(suite)}, variant = "minbase" }}\n', notes
    image = _image_ref(ref)
    if image.endswith(":latest") and ":latest" not in ref:
        notes.append(Note(ins.line, "kept", f"FROM {ref}: no tag, so :latest; the lock pins its digest"))
    return header + f"image = {_q(image)}\n", notes


# --- one instruction -----------------------------------------------------------------------------------------------


def _translate_one(dockerfile: Path, ins: Instruction, layer: _Layer, project: Path) -> list[Note]:
    k = ins.keyword
    if k == "FROM":
        return []
    if k == "ARG":
        return _arg(ins, layer)
    if k == "RUN":
        return _run(dockerfile, ins, layer, project)
    if k == "ENV":
        return _env(ins, layer)
    if k in ("COPY", "ADD"):
        return _copy(ins, layer)
    return _config(ins, layer)


def _arg(ins: Instruction, layer: _Layer) -> list[Note]:
    name, eq, default = ins.args.partition("=")
    if eq:
        layer.args[name.strip()] = _unquote(default.strip())
        return [Note(ins.line, "dropped", f"ARG {name.strip()}: its default {default.strip()!r} is written where "
                                          "it is used; build arguments do not exist in recipes")]
    return [Note(ins.line, "not translated", f"ARG {ins.args}: no default, so what it stands for is unknown")]


def _expand(text: str, known: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with the variables ``known`` has written in; the names it does not know."""
    unknown: list[str] = []

    def sub(m: re.Match[str]) -> str:
        var = m[1] or m[2]
        if var in known:
            return known[var]
        unknown.append(var)
        return m[0]

    return _VAR.sub(sub, text), unknown


def _env(ins: Instruction, layer: _Layer) -> list[Note]:
    try:
        words = shlex.split(ins.args)
    except ValueError as e:
        return [Note(ins.line, "not translated", f"ENV {ins.args}: {e}")]
    pairs = [w.partition("=")[::2] for w in words] if words and "=" in words[0] else \
        [(words[0], " ".join(words[1:]))] if words else []
    notes = []
    for key, raw in pairs:
        value, unknown = _expand(raw, {**layer.args, **layer.env})
        if unknown:
            notes.append(Note(ins.line, "not translated", f"ENV {key}={raw}: ${unknown[0]} comes from the base "
                                                          "image; write the whole value in [image] env"))
        elif not names.ENV_NAME.fullmatch(key):
            notes.append(Note(ins.line, "not translated", f"ENV {key}: not a variable name"))
        else:
            layer.env[key] = value
    return notes


def _copy(ins: Instruction, layer: _Layer) -> list[Note]:
    k = ins.keyword
    if ins.flag("from") is not None:
        return [Note(ins.line, "not translated", f"COPY --from={ins.flag('from')} {ins.args}: files of another "
                                                 "stage or image are not carried over")]
    words = list(ins.exec_form) if ins.exec_form else ins.args.split()
    if len(words) < 2:
        return [Note(ins.line, "not translated", f"{k} {ins.args}: no source and destination")]
    *sources, dest = words
    if k == "ADD" and any(re.match(r"[a-z]+://|git@", s) for s in sources):
        return [Note(ins.line, "not translated", f"ADD {' '.join(sources)}: a download at build time; pin it with "
                                                 '[[files]] url = "..." (its sha256 is locked)')]
    base = layer.workdir or "/"
    target = posixpath.normpath(posixpath.join(base, dest))
    for src in sources:
        into = target if len(sources) == 1 and not dest.endswith("/") and dest != "." else \
            posixpath.join(target, posixpath.basename(src.rstrip("/")))
        layer.copies[into] = (ins.line, src, ins.args)
    return []


def _config(ins: Instruction, layer: _Layer) -> list[Note]:
    k, args = ins.keyword, _expand(ins.args, {**layer.args, **layer.env})[0]
    if k == "EXPOSE":
        ports = []
        for word in args.split():
            port = word.split("/")[0]
            if not port.isdigit() or not 0 < int(port) < 65536:
                return [Note(ins.line, "not translated", f"EXPOSE {word}: not a port number")]
            ports.append(int(port))
        layer.expose += [p for p in ports if p not in layer.expose]
    elif k in ("CMD", "ENTRYPOINT"):
        value = list(ins.exec_form) if ins.exec_form is not None else ["/bin/sh", "-c", args]
        if k == "CMD":
            layer.cmd = value
        else:
            layer.entrypoint = value
    elif k == "USER":
        layer.user = args.strip()
    elif k == "WORKDIR":
        layer.workdir = posixpath.normpath(posixpath.join(layer.workdir or "/", args.strip()))
    elif k in ("LABEL", "MAINTAINER"):
        return _label(ins, args, layer)
    else:
        return [Note(ins.line, "not translated", f"{k} {ins.args}: recipes have no {k}"
                     + (" (mount a folder at run time: `buildsys run -v HOST:CONTAINER`)" if k == "VOLUME" else ""))]
    return []


def _label(ins: Instruction, args: str, layer: _Layer) -> list[Note]:
    if ins.keyword == "MAINTAINER":
        layer.labels["org.opencontainers.image.authors"] = args.strip()
        return []
    try:
        words = shlex.split(args)
    except ValueError as e:
        return [Note(ins.line, "not translated", f"LABEL {args}: {e}")]
    notes = []
    for word in words:
        key, _, value = word.partition("=")
        if key.lower().startswith(RESERVED_LABELS) or key.lower() in DERIVED_LABELS:
            notes.append(Note(ins.line, "dropped", f"LABEL {key}: buildsys sets it itself"))
        else:
            layer.labels[key] = value
    return notes


# --- RUN -----------------------------------------------------------------------------------------------------------


def split_commands(script: str) -> Iterator[str]:
    """The commands of a shell line at its top level: split at ``&&``, ``;`` and newlines outside quotes."""
    out, quote, i = "", "", 0
    while i < len(script):
        c = script[i]
        if quote:
            out += c
            if c == "\\" and quote == '"' and i + 1 < len(script):
                out += script[i + 1]
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote, out = c, out + c
        elif c == "\\" and i + 1 < len(script):
            out += script[i:i + 2]
            i += 1
        elif script.startswith("&&", i) or (c in ";\n" and not script.startswith(";;", i)):
            if out.strip():
                yield out.strip()
            out = ""
            i += 1 if c == "&" else 0
        else:
            out += c
        i += 1
    if out.strip():
        yield out.strip()


def _run(dockerfile: Path, ins: Instruction, layer: _Layer, project: Path) -> list[Note]:
    script = _expand(shlex.join(ins.exec_form) if ins.exec_form is not None else ins.args, layer.args)[0]
    notes: list[Note] = []
    kept: list[str] = []
    apt_before = len(layer.apt)
    for command in split_commands(script):
        outcome = _command(dockerfile, ins.line, command, layer, project, notes)
        if outcome:
            kept.append(command)
    if len(layer.apt) > apt_before and any(n.kind == "not translated" and "downloads" in n.text for n in notes):
        notes.append(Note(ins.line, "kept", f"apt packages {', '.join(layer.apt[apt_before:])} come from the "
                                            "image's own apt sources; if the download above added one, declare "
                                            "it as [[apt.sources]] (docs/recipes.md)"))
    if kept:
        step = " && ".join(kept)
        if layer.workdir and layer.workdir != "/":  # docker runs RUN in the WORKDIR it creates
            step = f"mkdir -p {shlex.quote(layer.workdir)} && cd {shlex.quote(layer.workdir)} && {step}"
        layer.run.append(step)
        notes.append(Note(ins.line, "kept", f"run step {step[:120]!r}: builds have no network; "
                                            "check that it needs none"))
        if layer.user and layer.user.split(":")[0] not in ("root", "0"):
            notes.append(Note(ins.line, "kept", f"the Dockerfile ran it as USER {layer.user}; run steps run as "
                                                "root: chown what it makes, or run it with su"))
    return notes


def _words(command: str) -> list[str] | None:
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] in ("sudo", "exec")):
        words.pop(0)
    return words


def _command(dockerfile: Path, line: int, command: str, layer: _Layer, project: Path, notes: list[Note]) -> bool:
    """Take one command into ``layer``; True when it is to be kept as a run step."""
    command = re.sub(r"\s*\|\|\s*(true|:)\s*$", "", command)  # "|| true": the command's own outcome is what counts
    words = _words(command)
    if not words or any(w in ("|", "||") for w in words) or "|" in command.replace("||", ""):
        network = re.search(r"\b(curl|wget)\b", command)
        if network:
            notes.append(Note(line, "not translated", f"{command[:120]!r}: downloads at build time ({network[1]}), "
                                                      "which builds cannot (no network); pin the file with "
                                                      '[[files]] url = "..." and run it from a run step'))
            return False
        return True
    prog = posixpath.basename(words[0])
    if prog in ("apt-get", "apt"):
        return _apt(line, words[1:], layer, notes, command)
    if prog in ("rm",) and any(w.startswith("/var/lib/apt/lists") for w in words):
        notes.append(Note(line, "dropped", f"{command!r}: buildsys drops apt's lists and caches from layers"))
        return False
    if _pip_args(words) is not None:
        return _pip(dockerfile, line, _pip_args(words) or [], layer, project, notes, command)
    if prog in ("R", "Rscript") or prog == "install2.r":
        return _r(line, prog, words[1:], layer, notes, command)
    if prog in _NETWORK or (prog == "pip" and words[1:2] == ["download"]):
        notes.append(Note(line, "not translated", f"{command[:120]!r}: {prog} downloads at build time, which "
                                                  "builds cannot (no network)"))
        return False
    return True


def _apt(line: int, args: list[str], layer: _Layer, notes: list[Note], command: str) -> bool:
    rest, i = [], 0
    while i < len(args):
        if args[i] in _APT_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if not args[i].startswith("-"):
            rest.append(args[i])
        i += 1
    sub = rest[0] if rest else ""
    if sub in ("update", "clean", "autoclean", "autoremove"):
        why = ("the lock pins apt's archive state" if sub == "update" else "buildsys drops apt's caches from layers")
        notes.append(Note(line, "dropped", f"{command!r}: {why}"))
        return False
    if sub in ("upgrade", "dist-upgrade", "full-upgrade"):
        notes.append(Note(line, "dropped", f"{command!r}: the root's lock takes the suite's updates and security "
                                           "fixes (`buildsys lock --upgrade` moves them)"))
        return False
    if sub != "install":
        return True
    for pkg in rest[1:]:
        if "/" in pkg and (pkg.startswith((".", "/")) or pkg.endswith(".deb")):
            notes.append(Note(line, "not translated", f"apt-get install {pkg}: a local .deb; pin it with "
                                                      '[[files]] url = "..." and install it from a run step'))
            continue
        name = re.split(r"[=/]", pkg, maxsplit=1)[0]
        if name != pkg:
            notes.append(Note(line, "dropped", f"apt package {pkg}: the version is what the lock pins, not the "
                                               f"Dockerfile's ({pkg[len(name):]})"))
        if name not in layer.apt:
            layer.apt.append(name)
    return False


def _pip_args(words: list[str]) -> list[str] | None:
    """The words after ``install`` of a pip install (pip, pip3, python3 -m pip, ...), else None."""
    prog = posixpath.basename(words[0])
    if re.fullmatch(r"pip(3(\.\d+)?)?", prog):
        rest = words[1:]
    elif re.fullmatch(r"python(3(\.\d+)?)?", prog) and words[1:3] == ["-m", "pip"]:
        rest = words[3:]
    else:
        return None
    return rest[1:] if rest[:1] == ["install"] else None


def _pip(dockerfile: Path, line: int, args: list[str], layer: _Layer, project: Path, notes: list[Note],
         command: str) -> bool:
    i = 0
    while i < len(args):
        a = args[i]
        value = args[i + 1] if i + 1 < len(args) else ""
        if a in ("-r", "--requirement") or a.startswith(("--requirement=", "-r")) and len(a) > 2:
            path = a.split("=", 1)[1] if a.startswith("--requirement=") else a[2:] if a.startswith("-r") and \
                len(a) > 2 else value
            i += 1 if a.startswith("--requirement=") or (a.startswith("-r") and len(a) > 2) else 2
            _requirements(dockerfile, line, path, layer, project, notes)
            continue
        if a in ("-i", "--index-url") or a.startswith("--index-url="):
            layer.pip_index = a.split("=", 1)[1] if "=" in a else value
            i += 1 if "=" in a else 2
            continue
        if a in ("-e", "--editable", "-c", "--constraint", "--extra-index-url", "-f", "--find-links") or \
                a.startswith(("--extra-index-url=", "--find-links=", "--constraint=", "--editable=")):
            what = a.split("=", 1)[0]
            shown = a if "=" in a else f"{a} {value}"
            notes.append(Note(line, "not translated", f"pip install {shown}: {what} has no [pip] key: "
                                                      + ("install the project's own code at run time"
                                                         if what in ("-e", "--editable") else
                                                         "one index-url per recipe, its pins locked")))
            i += 1 if "=" in a else 2
            continue
        if a in _PIP_WITH_VALUE:
            i += 2
            continue
        if a.startswith("-"):
            if a not in _PIP_FLAGS and a.split("=")[0] not in _PIP_WITH_VALUE:
                notes.append(Note(line, "dropped", f"pip install {a}: no [pip] equivalent"))
            i += 1
            continue
        _pip_spec(line, a, layer, notes)
        i += 1
    return False


def _pip_spec(line: int, spec: str, layer: _Layer, notes: list[Note]) -> None:
    try:
        req = Requirement(spec)
    except InvalidRequirement:
        notes.append(Note(line, "not translated", f"pip install {spec}: a path, URL or archive, not a "
                                                  "requirement on an index; publish it on an index, or install "
                                                  "the project's code at run time"))
        return
    if req.url:
        notes.append(Note(line, "not translated", f"pip install {spec}: a direct URL cannot be locked"))
    elif req.name.lower() == "pip":
        notes.append(Note(line, "dropped", "pip install pip: the lock pins the pip that installs [pip]"))
    elif spec not in layer.pip:
        layer.pip.append(spec)


def _requirements(dockerfile: Path, line: int, path: str, layer: _Layer, project: Path, notes: list[Note]) -> None:
    """``-r FILE``: the file in the image is a COPY of one in the build context (the Dockerfile's folder)."""
    in_image = posixpath.normpath(posixpath.join(layer.workdir or "/", path))
    copied = layer.copies.get(in_image)
    if copied is None:
        notes.append(Note(line, "not translated", f"pip install -r {path}: no COPY put it in the image from the "
                                                  "build context, so its content is unknown"))
        return
    layer.used_copies.add(copied[0])
    source = (dockerfile.parent / copied[1]).resolve()
    rel = os.path.relpath(source, project.resolve())
    if not source.is_file() or rel.startswith(".."):
        where = "is not a file" if not source.is_file() else f"is outside the project {project}"
        notes.append(Note(line, "not translated", f"pip install -r {path}: {source} {where}; copy it into the "
                                                  "project and set [pip] requirements"))
        return
    if layer.requirements is not None:
        notes.append(Note(line, "not translated", f"pip install -r {path}: [pip] takes one requirements file "
                                                  f"({layer.requirements} already); merge them"))
        return
    layer.requirements = Path(rel).as_posix()


_INSTALL_PACKAGES = re.compile(r"install\.packages\(\s*(c\((?P<list>[^)]*)\)|(?P<one>['\"][^'\"]+['\"]))"
                               r"(?P<rest>[^)]*)\)")
_QUOTED_NAME = re.compile(r"['\"]([^'\"]+)['\"]")
_REPOS = re.compile(r"repos\s*=\s*(?:c\(\s*(?:[A-Za-z]+\s*=\s*)?)?['\"]([^'\"]+)['\"]")


def _r(line: int, prog: str, args: list[str], layer: _Layer, notes: list[Note], command: str) -> bool:
    if prog == "install2.r":
        i = 0
        while i < len(args):
            if args[i] in ("-r", "--repos"):
                layer.cran_repo = layer.cran_repo or args[i + 1] if i + 1 < len(args) else layer.cran_repo
                i += 2
                continue
            if args[i] in ("-n", "--ncpus", "-l", "--libloc", "-t", "--type"):
                i += 2
                continue
            if not args[i].startswith("-"):
                _cran(line, args[i], layer, notes)
            i += 1
        return False
    code = " ".join(a for j, a in enumerate(args) if j > 0 and args[j - 1] == "-e")
    if not code:
        return True
    found = False
    for m in _INSTALL_PACKAGES.finditer(code):
        found = True
        for pkg in _QUOTED_NAME.findall(m["list"] or m["one"]):
            _cran(line, pkg, layer, notes)
        if (repo := _REPOS.search(m["rest"])) and not layer.cran_repo:
            layer.cran_repo = repo[1]
    for other in re.findall(r"\b(?:remotes|devtools|BiocManager|pak)::\w+\([^)]*\)", code):
        notes.append(Note(line, "not translated", f"{other}: installs from GitHub or Bioconductor at build time; "
                                                  "[cran] takes packages of a CRAN-like repository"))
    rest = _INSTALL_PACKAGES.sub("", code)
    rest = re.sub(r"\b(?:remotes|devtools|BiocManager|pak)::\w+\([^)]*\)", "", rest)
    if found and re.sub(r"[;\s]|(library|require)\([^)]*\)", "", rest):
        notes.append(Note(line, "not translated", f"R code beside install.packages(): {rest.strip()[:120]!r}"))
    return not found and "::" not in code


def _cran(line: int, pkg: str, layer: _Layer, notes: list[Note]) -> None:
    if not names.R_NAME.fullmatch(pkg):
        notes.append(Note(line, "not translated", f"R package {pkg!r}: not a CRAN package name"))
    elif pkg not in layer.cran:
        layer.cran.append(pkg)


# --- writing -------------------------------------------------------------------------------------------------------


def _q(s: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(s, ensure_ascii=False)


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_q(s) for s in items) + "]"


def _layer_toml(name: str, dockerfile: Path, first: Instruction, layer: _Layer) -> str:
    out = [f'description = "What {dockerfile.name} adds to {first.args.split()[0]}"',
           f"parents = [{_q(name + '-base')}]"]
    if layer.run:
        out.append("# Kept from RUN lines: they run after the installs, with no network.")
        out.append("run = [\n" + "".join(f"    {_q(r)},\n" for r in layer.run) + "]")
    out += _installs(layer)
    image = _image(layer)
    if image:
        out += ["", "[image]", *image]
    return "\n".join(out) + "\n"


def _installs(layer: _Layer) -> list[str]:
    out = []
    if layer.apt:
        out += ["", "[apt]", f"packages = {_list(layer.apt)}"]
    if layer.pip or layer.requirements:
        out += ["", "[pip]"]
        if layer.pip:
            out.append(f"packages = {_list(layer.pip)}")
        if layer.requirements:
            out.append(f"requirements = {_q(layer.requirements)}")
        if layer.pip_index:
            out.append(f"index-url = {_q(layer.pip_index)}")
    if layer.cran:
        out += ["", "[cran]", f"packages = {_list(layer.cran)}"]
        if not layer.cran_repo or "cloud.r-project.org" in layer.cran_repo or "cran.r-project.org" in layer.cran_repo:
            out.append("# A dated snapshot, so that a relock takes the same versions; move the date on purpose.")
        out.append(f"repo = {_q(_dated(layer.cran_repo))}")
    return out


def _image(layer: _Layer) -> list[str]:
    image = []
    if layer.env:
        image.append("env = { " + ", ".join(f"{_key(k)} = {_q(v)}" for k, v in layer.env.items()) + " }")
    for key in ("user", "workdir"):
        if getattr(layer, key):
            image.append(f"{key} = {_q(getattr(layer, key))}")
    if layer.expose:
        image.append(f"expose = [{', '.join(str(p) for p in layer.expose)}]")
    if layer.entrypoint is not None:
        image.append(f"entrypoint = {_list(layer.entrypoint)}")
    if layer.cmd is not None:
        image.append(f"cmd = {_list(layer.cmd)}")
    if layer.labels:
        image.append("labels = { " + ", ".join(f"{_key(k)} = {_q(v)}" for k, v in layer.labels.items()) + " }")
    return image


def _dated(repo: str | None) -> str:
    if not repo or re.search(r"//(cloud|cran)\.r-project\.org", repo):
        return _DEFAULT_CRAN
    return repo


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _q(k)
