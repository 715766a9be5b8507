"""Debian-control-like files (DCF: R's PACKAGES and DESCRIPTION), parsed in linear time.

The parser before this one appended each continuation line to the field's
string (``value += " " + line``): with long continued fields that is quadratic
(issue 25: a crafted 4 MB PACKAGES took 3.5 minutes). Here each field's lines
are gathered in a list and joined once, so time and memory are proportional to
the text. The text itself is bounded by whoever reads it (``cran.read_index``
caps an index at ``INDEX_CAP``).
"""

from __future__ import annotations

import re

_FIELD = re.compile(r"[A-Za-z0-9/@._-]+")


class DcfError(ValueError):
    """A line that is neither ``Field: value``, a continuation of one, nor blank (names the line)."""


def parse_dcf(text: str) -> list[dict[str, str]]:
    """Stanzas separated by blank lines; continuation lines (leading space or tab) are joined with a space."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, list[str]] = {}
    last: list[str] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line[0] in " \t":
            value = line.strip()
            if not value:  # a blank line (spaces only, too) ends the stanza
                if current:
                    stanzas.append(_joined(current))
                current, last = {}, None
            elif last is None:
                raise DcfError(f"line {n}: a continuation line with no field before it")
            else:
                last.append(value)
            continue
        field, sep, value = line.partition(":")
        if not sep or not _FIELD.fullmatch(field):
            raise DcfError(f"line {n}: {line[:60]!r} is not 'Field: value'")
        last = current[field] = [value.strip()]
    if current:
        stanzas.append(_joined(current))
    return stanzas


def _joined(fields: dict[str, list[str]]) -> dict[str, str]:
    return {k: " ".join(v) for k, v in fields.items()}
