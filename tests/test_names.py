"""The one rule per kind of name, and that recipes, locks and the registry client use it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buildsys.core import names
from buildsys.core.errors import LockFileError, RecipeError, UsageError
from buildsys.ecosystems.apt_sections import AptRecipe
from buildsys.model.lockfile import validate_lock
from buildsys.model.recipe import parse_recipe
from buildsys.oci.registry import Reference

HEX = "ab" * 32


@pytest.mark.parametrize(("pattern", "good", "bad"), [
    (names.RECIPE_NAME, ["jupyter", "r-base", "py3.11", "0ad", "a_b"], ["", "Base", "-x", ".x", "a b", "a/b"]),
    (names.ENV_NAME, ["PATH", "_X", "a1"], ["1A", "A-B", ""]),
    (names.HEX64, [HEX], [HEX.upper(), HEX[:-1], "sha256:" + HEX]),
    (names.DIGEST, ["sha256:" + HEX], [HEX, "sha512:" + HEX, "sha256:" + HEX + "0"]),
    # Debian policy 5.6.1: lowercase, digits, + - .; two characters at least; alphanumeric first.
    (names.DEB_NAME, ["gcc", "g++", "libstdc++6", "r-base-core", "python3.11", "7z", "xz-utils"],
     ["a", "Git", "-x", "+x", ".x", "a_b", "git:amd64", "git=1.0"]),
    (names.DEB_NAME_ARCH, ["git", "libc6:i386", "r-base:amd64"], ["git:", "git:-x", "x:amd64", "git:AMD64"]),
    (names.DEB_ARCH, ["amd64", "arm64", "all", "kfreebsd-i386"], ["", "-x", "AMD64"]),
    (names.DEB_VERSION, ["2.6.1", "1:2.39.2-1.1", "1.0~rc1+dfsg-2"], ["", "a1.0", "1.0 2"]),
    (names.SUITE, ["bookworm", "bookworm-updates", "non-free-firmware"], ["", "-x", "Bookworm", "a/b"]),
    (names.PIP_NAME, ["numpy", "jupyter_server", "zope.interface", "x"], ["", "-x", "x-", "a b"]),
    (names.R_NAME, ["jsonlite", "data.table", "R6"], ["R", "1x", "x.", "a_b", ""]),
    (names.R_VERSION, ["1.8.9", "1.0-2"], ["1", "1.0a", ""]),
    (names.PLATFORM, ["linux/amd64", "linux/arm64/v8"], ["linux", "Linux/amd64", "linux/amd64/v8/x"]),
    (names.IMAGE_REPOSITORY, ["library/debian", "team/my_image", "a__b", "a--b"], ["Team/x", "a._b", "/x", "x/"]),
    (names.IMAGE_TAG, ["bookworm", "2025-06", "_x", "a" * 128], ["-x", ".x", "a" * 129, ""]),
])
def test_each_rule_takes_what_it_should(pattern: re.Pattern[str], good: list[str], bad: list[str]) -> None:
    assert [g for g in good if not pattern.fullmatch(g)] == []
    assert [b for b in bad if pattern.fullmatch(b)] == []


def test_no_rule_is_anchored() -> None:
    """Anchors inside a composed pattern would break it; `fullmatch` is how every rule is applied."""
    for key, value in vars(names).items():
        if isinstance(value, re.Pattern):
            assert "^" not in value.pattern and "$" not in value.pattern, key


def test_a_trailing_newline_is_not_a_name() -> None:
    assert not names.RECIPE_NAME.fullmatch("jupyter\n")
    assert not names.DIGEST.fullmatch(f"sha256:{HEX}\n")


def _recipe(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipes" / "x.toml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text)
    return p


def test_recipe_takes_an_arch_qualifier_and_rejects_a_one_letter_apt_name(tmp_path: Path) -> None:
    ok = parse_recipe(_recipe(tmp_path, 'parents = ["base"]\n[apt]\npackages = ["libc6:i386", "g++"]\n'))
    assert ok.section(AptRecipe).packages == ("libc6:i386", "g++")
    with pytest.raises(RecipeError, match="'a' is not a Debian package name"):
        parse_recipe(_recipe(tmp_path, 'parents = ["base"]\n[apt]\npackages = ["a"]\n'))


def test_lock_and_recipe_agree_on_debian_names() -> None:
    """A name a recipe may ask for (without its arch) is a name a lock may hold, and the reverse."""
    for name in ["gcc", "g++", "libstdc++6", "a", "Git", "a_b"]:
        lock = {"version": 1, "recipe": "x", "recipe-hash": "sha256:" + HEX, "source-date-epoch": 0,
                "apt-in-image": [name]}
        try:
            validate_lock(Path("locks/x.lock"), lock)
            in_lock = True
        except LockFileError:
            in_lock = False
        assert in_lock == bool(names.DEB_NAME_ARCH.fullmatch(name)), name


def test_registry_reference_uses_the_same_rules() -> None:
    ref = Reference.parse(f"127.0.0.1:5000/team/jupyter:2025-06@sha256:{HEX}")
    assert (ref.repository, ref.tag, ref.digest) == ("team/jupyter", "2025-06", f"sha256:{HEX}")
    for bad in ["127.0.0.1:5000/Team/x", "127.0.0.1:5000/x:-tag", f"127.0.0.1:5000/x@sha256:{HEX}\n"]:
        with pytest.raises(UsageError):
            Reference.parse(bad)
