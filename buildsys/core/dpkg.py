"""What a dpkg status file (``/var/lib/dpkg/status``) says is installed.

Read in three places: a bootstrapped Debian root, the layer below an apt layer
(what the build expects to find), and a registry image's database (what apt
resolves against). They must agree with the build's own check, which keeps
the ``ii`` lines of ``dpkg-query -W -f '${db:Status-Abbrev}'``: so only
``Status: install ok installed`` counts. ``half-installed``, ``unpacked``,
``config-files`` (removed, conffiles left) and ``deinstall`` are not installed
packages, and a parser that took every status containing "installed" counted
the first as one.

A small hand parser rather than python-debian's deb822: its import alone is a
good share of a no-op build, and the format read here is dpkg's own output.
"""

from __future__ import annotations

INSTALLED = ("install", "ok", "installed")  # want, error flag, state


def paragraphs(status: bytes) -> list[dict[str, str]]:
    """The paragraphs of a deb822 file; field names lowercased, continuation lines joined with newlines."""
    out: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last = ""
    for line in status.decode("utf-8", "replace").splitlines():
        if not line.strip():
            if fields:
                out.append(fields)
            fields, last = {}, ""
        elif line[0] in " \t":
            if last:  # a continuation (Description, Conffiles); one before any field has nothing to continue
                fields[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            fields[last] = value.strip()
    if fields:
        out.append(fields)
    return out


def installed(status: bytes) -> dict[str, str]:
    """``name -> version`` of the packages a dpkg status file has installed."""
    return {p["package"]: p["version"] for p in paragraphs(status)
            if tuple(p.get("status", "").split()) == INSTALLED and p.get("package") and p.get("version")}
