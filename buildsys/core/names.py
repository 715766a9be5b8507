"""One regular expression per kind of name that buildsys checks.

Recipes, locks, archives and registry answers are all input, and the same
name (a recipe, a Debian package, a digest) is checked in several of them; a
rule written once cannot drift between its readers. Every pattern here is
unanchored and meant for ``fullmatch`` (``match`` with ``$`` would let a
trailing newline through); build a larger pattern from ``.pattern``.
"""

from __future__ import annotations

import re

# A recipe is recipes/<name>.toml; the name is also a tag, a folder and a lock file name.
RECIPE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
# An environment variable name as POSIX shells accept it.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# sha256 as 64 lowercase hex digits (store paths, lock values), and as an OCI digest.
HEX64 = re.compile(r"[0-9a-f]{64}")
DIGEST = re.compile(rf"sha256:{HEX64.pattern}")

# Debian policy 5.6.1: lowercase letters, digits, + - and .; at least two characters; starts
# alphanumeric. (`[a-z0-9][a-z0-9+.-]*` allowed one character: apt has no such package.)
DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# An architecture (amd64, arm64, i386, all); in a recipe it may qualify a name: `libc6:i386`.
DEB_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*")
DEB_NAME_ARCH = re.compile(rf"{DEB_NAME.pattern}(:{DEB_ARCH.pattern})?")
# Debian policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit.
DEB_VERSION = re.compile(r"([0-9]+:)?[0-9][A-Za-z0-9.+~:-]*")
# A suite, codename or archive component (bookworm, bookworm-updates, main, non-free-firmware).
SUITE = re.compile(r"[a-z0-9][a-z0-9.-]*")

# PEP 508 names: letters, digits, . _ -, starting and ending alphanumeric.
PIP_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")

# R (Writing R Extensions 1.1.1): a letter, then letters, digits and dots, not ending in a dot,
# at least two characters; versions are at least two numbers joined by . or -.
R_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]")
R_VERSION = re.compile(r"[0-9]+([.-][0-9]+)+")

# OCI platform OS/ARCH[/VARIANT] (linux/amd64, linux/arm64/v8).
PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")
# OCI distribution spec: repository path components and tags.
IMAGE_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
