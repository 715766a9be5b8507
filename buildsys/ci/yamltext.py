"""A small, safe subset of YAML, written without a YAML library.

Mappings and sequences in block style; every string a double-quoted scalar
written by ``json.dumps`` (a JSON string is a YAML double-quoted scalar, in
YAML 1.1 and 1.2, and ASCII-only here); a key bare only when no YAML reader
could take it for anything but that string (not ``on``, ``yes``, ``null``...:
YAML 1.1 readers such as PyYAML turn a bare ``on`` into true). So what the
file says is exactly the data, whichever YAML reader a CI system uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# YAML 1.1 booleans and nulls, in any case: never bare.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}

Yaml = Mapping[str, Any] | Sequence[Any] | str | int | bool | None


def dump(data: Mapping[str, Any], comments: Sequence[str] = ()) -> str:
    """``data`` as YAML text, after the ``comments`` lines (each starting with '#')."""
    lines = list(comments)
    _mapping(data, 0, lines)
    return "\n".join(lines) + "\n"


def _key(k: str) -> str:
    if _BARE_KEY.fullmatch(k) and k.lower() not in _RESERVED:
        return k
    return _scalar(k)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)
    raise TypeError(f"no YAML for {type(v).__name__}")


def _mapping(data: Mapping[str, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            lines.append(f"{pad}{_key(k)}:")
            _mapping(v, indent + 2, lines)
        elif isinstance(v, list | tuple) and v:
            lines.append(f"{pad}{_key(k)}:")
            _sequence(v, indent + 2, lines)
        else:
            lines.append(f"{pad}{_key(k)}: {_empty(v) if isinstance(v, Mapping | list | tuple) else _scalar(v)}")


def _sequence(items: Sequence[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for v in items:
        if isinstance(v, Mapping) and v:
            first = len(lines)
            _mapping(v, indent + 2, lines)
            lines[first] = f"{pad}- {lines[first][indent + 2:]}"
        elif isinstance(v, list | tuple) and v:
            raise TypeError("a sequence directly in a sequence is not written")
        else:
            lines.append(f"{pad}- {_empty(v) if isinstance(v, Mapping | list | tuple) else _scalar(v)}")


def _empty(v: Mapping[str, Any] | Sequence[Any]) -> str:
    return "{}" if isinstance(v, Mapping) else "[]"
