"""One reading of a dpkg status file: only ``install ok installed`` is installed."""

from __future__ import annotations

from buildsys.core import dpkg

# Crafted from real bookworm entries: every state dpkg leaves behind after an
# interrupted or partial run, continuation lines, and a last paragraph with no blank line after it.
STATUS = b"""\
Package: bash
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Version: 5.2.15-2+b7
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.
 .
 Status: install ok installed
Conffiles:
 /etc/bash.bashrc 89269e1298235f1b12b4c16e4065ad0d
 /etc/skel/.bashrc 7ff3d5fdc9b2f8c0e6a5b4d8a9a5c2b0

Package: broken
Status: install reinstreq half-installed
Architecture: amd64
Version: 1.0-1

Package: left-config
Status: deinstall ok config-files
Architecture: all
Version: 2.0-1

Package: going
Status: deinstall ok installed
Architecture: all
Version: 3.0-1

Package: unpacked-only
Status: install ok unpacked
Architecture: amd64
Version: 4.0-1

Package: libc6
Status: install ok installed
Multi-Arch: same
Architecture: amd64
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries.
"""


def test_only_install_ok_installed_counts() -> None:
    assert dpkg.installed(STATUS) == {"bash": "5.2.15-2+b7", "libc6": "2.36-9+deb12u10"}


def test_continuation_lines_belong_to_their_field() -> None:
    """A Description line that reads like a field ("Status: ...") is text, not a field."""
    bash = dpkg.paragraphs(STATUS)[0]
    assert bash["status"] == "install ok installed"
    assert bash["conffiles"].splitlines()[1].startswith("/etc/bash.bashrc ")
    assert bash["description"].endswith("Status: install ok installed")


def test_field_names_are_case_insensitive_and_blank_lines_may_hold_spaces() -> None:
    text = b"package: a1\nSTATUS: install ok installed\nversion: 1\n \t\nPackage: b1\nStatus: install ok installed\n"
    assert dpkg.installed(text) == {"a1": "1"}  # b1 has no version: not a usable entry


def test_empty_or_missing_database() -> None:
    assert dpkg.installed(b"") == {}
    assert dpkg.paragraphs(b"\n\n\n") == []
