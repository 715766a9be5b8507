"""Dockerfile syntax: instructions with their line numbers, arguments and flags.

Only the syntax: line continuations (the escape character, ``\\`` or what an
``# escape=`` directive sets), comments, parser directives, JSON (exec) form
against shell form, ``--flag=value`` options (``COPY --from=build``). What an
instruction means is ``onramp.translate``'s business. Heredocs (``RUN <<EOF``)
are refused: their body is not a line of its own, and what they run is not
something this reader can take apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from buildsys.core.errors import RecipeError

_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_FLAG = re.compile(r"--([a-z][a-z-]*)(?:=(\S*))?")
_HEREDOC = re.compile(r"<<-?\s*['\"]?[A-Za-z_][A-Za-z0-9_]*['\"]?")
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"")  # quoted text: a "<<" in it is no heredoc
INSTRUCTIONS = frozenset({"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                          "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"})
# Instructions whose flags come before the arguments (``COPY --from=x``, ``RUN --mount=...``, ``FROM --platform``).
_WITH_FLAGS = frozenset({"FROM", "RUN", "ADD", "COPY", "HEALTHCHECK"})


class DockerfileError(RecipeError):
    """A Dockerfile this reader cannot take: names the file and the line (exit 2, nothing written)."""


@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts (1-based)
    keyword: str  # upper case: RUN, FROM, ...
    args: str  # the rest of the instruction, continuation lines joined, flags removed
    flags: tuple[tuple[str, str], ...] = ()  # ("from", "build"), ("platform", "linux/amd64")
    exec_form: tuple[str, ...] | None = None  # a JSON array argument (CMD ["a", "b"]), else None

    def flag(self, name: str) -> str | None:
        return next((value for key, value in self.flags if key == name), None)


def read_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of the Dockerfile at ``path``; a missing or unreadable file is a ``DockerfileError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DockerfileError(path, "no such file", hint="give the path of a Dockerfile: "
                                                         "`buildsys init --from path/to/Dockerfile`") from e
    except UnicodeDecodeError as e:
        raise DockerfileError(path, f"not UTF-8 text ({e.reason})") from e
    except OSError as e:
        raise DockerfileError(path, f"cannot be read: {e.strerror or e}") from e
    return parse_dockerfile(text, path)


def parse_dockerfile(text: str, path: Path) -> list[Instruction]:
    """Split ``text`` into instructions (``path`` names it in errors)."""
    lines = text.splitlines()
    escape = "\\"
    start = 0
    # Parser directives: comments of the form "# key=value" at the very top, before anything else.
    while start < len(lines) and (m := _DIRECTIVE.fullmatch(lines[start].strip())):
        if m[1].lower() == "escape":
            if m[2] not in ("\\", "`"):
                raise DockerfileError(path, f"escape directive: {m[2]!r} is neither \\ nor `", line=start + 1)
            escape = m[2]
        start += 1
    out: list[Instruction] = []
    i = start
    while i < len(lines):
        raw = lines[i].strip()
        if not raw or raw.startswith("#"):
            i += 1
            continue
        first = i
        parts = []
        while True:
            body = lines[i].rstrip()
            if body.endswith(escape) and not body.endswith(escape * 2):
                parts.append(body[:-1])
                i += 1
                # Comment and empty lines inside a continued instruction are dropped, as docker does.
                while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                    i += 1
                if i == len(lines):
                    break
                continue
            parts.append(body)
            i += 1
            break
        out.append(_instruction(" ".join(p.strip() for p in parts), first + 1, path))
    return out


def _instruction(text: str, line: int, path: Path) -> Instruction:
    keyword, _, rest = text.partition(" ")
    keyword = keyword.upper()
    rest = rest.strip()
    if keyword not in INSTRUCTIONS:
        raise DockerfileError(path, f"unknown instruction {keyword!r}", line=line,
                              hint=f"instructions are {', '.join(sorted(INSTRUCTIONS))}")
    flags: list[tuple[str, str]] = []
    if keyword in _WITH_FLAGS:
        while (m := _FLAG.match(rest)) and (rest[m.end():m.end() + 1] in ("", " ")):
            flags.append((m[1], m[2] or ""))
            rest = rest[m.end():].lstrip()
    heredoc = _HEREDOC.search(_QUOTED.sub("", rest)) if keyword in ("RUN", "COPY", "ADD") else None
    if heredoc:
        raise DockerfileError(path, f"{keyword} with a heredoc ({heredoc[0]} ...) is not read here",
                              line=line, hint="write the heredoc's body to a script file of the project and "
                                              "translate that, or write the recipe's run steps by hand")
    exec_form = None
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None  # docker takes a malformed array as shell form
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            exec_form = tuple(value)
    return Instruction(line, keyword, rest, tuple(flags), exec_form)
