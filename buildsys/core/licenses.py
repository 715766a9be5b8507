"""The license a package declares about itself, from its own metadata, as SPDX where that is exact.

Three sources, each the package's own words (never a guess from its name or
its files): a Python distribution's core metadata (``License-Expression``,
metadata 2.4, or else its one ``License ::`` classifier), an R package's
DESCRIPTION ``License`` field (R's license specification) and a Debian
package's machine-readable ``debian/copyright`` (the License of its
``Files: *`` paragraph: the license of the package as a whole; the other
paragraphs name exceptions for some files of the *source*, many of which the
binary package does not ship, so they are not combined in).

Each reader returns the declared text as an SPDX license expression where
every part of it maps exactly (``GPL (>= 2)`` -> ``GPL-2.0-or-later``,
Debian's ``Expat`` -> ``MIT``), the text as written where it does not (the
SBOM then gives it as a license name, never a guessed identifier), and None
where the package declares nothing the formats above define.
"""

from __future__ import annotations

import functools
import re
from email.parser import HeaderParser
from typing import TYPE_CHECKING

from buildsys.core import dpkg

if TYPE_CHECKING:
    from license_expression import Licensing

# The classifiers whose license is one SPDX identifier exactly. Those that leave the version or the
# variant open ("BSD License", "Apache Software License", "GNU General Public License v2 (GPLv2)":
# only or or-later?) map to nothing.
CLASSIFIERS = {
    "OSI Approved :: MIT License": "MIT",
    "OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "OSI Approved :: ISC License (ISCL)": "ISC",
    "OSI Approved :: Mozilla Public License 1.1 (MPL 1.1)": "MPL-1.1",
    "OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "OSI Approved :: GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "OSI Approved :: GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "OSI Approved :: Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "OSI Approved :: Eclipse Public License 1.0 (EPL-1.0)": "EPL-1.0",
    "OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "OSI Approved :: European Union Public Licence 1.2 (EUPL 1.2)": "EUPL-1.2",
    "OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "OSI Approved :: Universal Permissive License (UPL)": "UPL-1.0",
    "OSI Approved :: Zero-Clause BSD (0BSD)": "0BSD",
    "OSI Approved :: PostgreSQL License": "PostgreSQL",
    "OSI Approved :: Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}

# R's license specifications (share/licenses/license.db) that are one SPDX identifier. "+ file LICENSE"
# is allowed after the licenses whose LICENSE file only fills in the template (year, holder).
CRAN = {
    "GPL-2": "GPL-2.0-only", "GPL-3": "GPL-3.0-only", "GPL (>= 2)": "GPL-2.0-or-later",
    "GPL (>= 2.0)": "GPL-2.0-or-later", "GPL (>= 3)": "GPL-3.0-or-later", "GPL (>= 3.0)": "GPL-3.0-or-later",
    "LGPL-2": "LGPL-2.0-only", "LGPL-2.1": "LGPL-2.1-only", "LGPL-3": "LGPL-3.0-only",
    "LGPL (>= 2)": "LGPL-2.0-or-later", "LGPL (>= 2.1)": "LGPL-2.1-or-later", "LGPL (>= 3)": "LGPL-3.0-or-later",
    "AGPL-3": "AGPL-3.0-only", "AGPL (>= 3)": "AGPL-3.0-or-later",
    "Apache License 2.0": "Apache-2.0", "Apache License (== 2.0)": "Apache-2.0", "Artistic-2.0": "Artistic-2.0",
    "BSL-1.0": "BSL-1.0", "CC0": "CC0-1.0", "MPL-2.0": "MPL-2.0", "EUPL-1.2": "EUPL-1.2",
    "MIT + file LICENSE": "MIT", "BSD_2_clause + file LICENSE": "BSD-2-Clause",
    "BSD_3_clause + file LICENSE": "BSD-3-Clause",
}

# Debian's short license names (copyright-format 1.0, "License specification"; matched case-insensitively)
# -> SPDX. "+" is "or any later version".
_DEBIAN_VERSIONED = {"gpl": "GPL", "lgpl": "LGPL", "agpl": "AGPL", "gfdl": "GFDL"}
DEBIAN = {
    "apache-2.0": "Apache-2.0", "artistic-2.0": "Artistic-2.0", "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause", "bsd-4-clause": "BSD-4-Clause", "cc0-1.0": "CC0-1.0", "expat": "MIT",
    "mit": "MIT", "isc": "ISC", "zlib": "Zlib", "mpl-1.1": "MPL-1.1", "mpl-2.0": "MPL-2.0", "bsl-1.0": "BSL-1.0",
    "openssl": "OpenSSL", "x11": "X11", "curl": "curl", "cc-by-4.0": "CC-BY-4.0", "cc-by-sa-4.0": "CC-BY-SA-4.0",
    "epl-1.0": "EPL-1.0", "epl-2.0": "EPL-2.0", "unicode-dfs-2016": "Unicode-DFS-2016",
}
_DEBIAN_GNU = re.compile(r"(gpl|lgpl|agpl|gfdl)-([0-9](?:\.[0-9])?)(\+?)")
_GNU_VERSIONS = {"GPL": ("1", "2", "3"), "LGPL": ("2", "2.1", "3"), "AGPL": ("3",), "GFDL": ("1.1", "1.2", "1.3")}
COPYRIGHT_FORMAT = re.compile(r"https?://(www\.)?debian\.org/doc/packaging-manuals/copyright-format/1\.0/?")


@functools.cache
def _licensing() -> Licensing:
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def spdx(expression: str) -> str | None:
    """``expression`` as a normalized SPDX license expression, or None if it is not one.

    Each license and exception must be an identifier of the SPDX list (any case; with ``+``): license-expression
    alone would also take its aliases, and make "GPL" GPL-1.0-or-later, which no package said.
    """
    from cyclonedx.spdx import fixup_id

    words = [w for w in re.split(r"[\s()]+", expression) if w and w.upper() not in ("AND", "OR", "WITH")]
    if not words or any(fixup_id(w[:-1] if w.endswith("+") else w) is None for w in words):
        return None
    try:
        info = _licensing().validate(expression)
    except Exception:  # license-expression raises on some odd keys ("MIT/X11") instead of reporting them
        return None
    return None if info.errors or not info.normalized_expression else str(info.normalized_expression)


def from_core_metadata(text: str) -> str | None:
    """A Python distribution's METADATA (or PKG-INFO): its License-Expression, else its one exact classifier."""
    headers = HeaderParser().parsestr(text)
    if expression := " ".join((headers.get("License-Expression") or "").split()):
        return spdx(expression) or expression
    found = {c.split("::", 1)[1].strip() for c in headers.get_all("Classifier") or []
             if c.split("::", 1)[0].strip() == "License" and "::" in c}
    mapped = {CLASSIFIERS.get(c) for c in found}
    # Two classifiers: both licenses, or a choice? The metadata does not say, so no guess.
    return mapped.pop() if len(mapped) == 1 and None not in mapped else None


def from_cran(field: str) -> str | None:
    """An R package's DESCRIPTION ``License`` (alternatives joined by ``|``) as SPDX where every part maps."""
    text = " ".join(field.split())
    if not text:
        return None
    parts = [CRAN.get(" ".join(p.split())) for p in text.split("|")]
    if all(parts):
        return spdx(" OR ".join(p for p in parts if p)) or text
    return text


def _debian_name(name: str) -> str | None:
    key = name.strip().lower()
    if key in DEBIAN:
        return DEBIAN[key]
    if (m := _DEBIAN_GNU.fullmatch(key)) is None:
        return None
    family, version, later = _DEBIAN_VERSIONED[m[1]], m[2], bool(m[3])
    version = {"2.0": "2", "3.0": "3", "1.0": "1"}.get(version, version)
    if version not in _GNU_VERSIONS[family]:
        return None
    spdx_version = version if "." in version else f"{version}.0"
    return f"{family}-{spdx_version}-{'or-later' if later else 'only'}"


def from_debian_license(short: str) -> str | None:
    """A copyright-format License line (``GPL-2+ or Artistic-2.0``) as SPDX where it maps exactly."""
    text = " ".join(short.split())
    if not text or "," in text or re.search(r"\bwith\b", text, re.I):  # precedence by commas, exceptions: as written
        return text or None
    words = re.split(r"\s+(or|and)\s+", text, flags=re.I)
    names, ops = words[::2], {w.lower() for w in words[1::2]}
    mapped = [_debian_name(n) for n in names]
    if len(ops) > 1 or not all(mapped):
        return text
    return spdx(f" {ops.pop().upper()} ".join(m for m in mapped if m) if ops else str(mapped[0])) or text


def from_debian_copyright(text: str) -> str | None:
    """The License of a machine-readable ``debian/copyright``'s ``Files: *`` paragraph (``*`` among its patterns:
    ``Files: * doc/local.mk``); None for a copyright file in free form (no ``Format:`` of copyright-format 1.0)
    or one without that paragraph (its paragraphs then each name some files, none the package as a whole)."""
    paragraphs = dpkg.paragraphs(text.encode())
    if not paragraphs or not COPYRIGHT_FORMAT.fullmatch(paragraphs[0].get("format", "").strip()):
        return None
    for p in paragraphs[1:]:
        if "*" in p.get("files", "").split() and (license_ := p.get("license", "").split("\n", 1)[0].strip()):
            return from_debian_license(license_)
    return None
