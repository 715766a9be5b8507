"""Layer-locking logic that needs no network: parents that must agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.core.errors import LockError
from buildsys.ecosystems.apt_layer import chain_debs
from buildsys.ecosystems.apt_sections import AptSection, LockedDeb
from buildsys.ecosystems.cran import CranSection, LockedCran
from buildsys.ecosystems.pip import PipSection, chain_pips
from buildsys.ecosystems.pip_resolve import LockedPip
from buildsys.lock.parents import check_parents_agree
from buildsys.model.graph import build_graph
from buildsys.model.lockfile import Lock, LockSection
from buildsys.model.recipe import load_recipes

DIAMOND = Path(__file__).parent / "fixtures" / "diamond"


def deb(name: str, version: str) -> LockedDeb:
    return LockedDeb(name=name, version=version, architecture="amd64", sha256="0" * 64, size=1,
                     path=f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb", mirror="http://deb.debian.org/debian")


def layer(recipe: str, recipe_hash: str, *parts: LockSection) -> Lock:
    return Lock(recipe=recipe, recipe_hash=recipe_hash, source_date_epoch=1).with_sections(*parts)


def locks(left: Lock, right: Lock) -> dict[str, Lock]:
    return {"base": layer("base", "sha256:b", AptSection((deb("libc6", "2.36"),))),
            "left": left, "right": right}


def test_parents_that_agree_pass() -> None:
    graph = build_graph(load_recipes(DIAMOND))
    left = layer("left", "sha256:l", AptSection((deb("jq", "1.6"),)), PipSection((LockedPip("six", "1.17.0", ()),)))
    right = layer("right", "sha256:r", AptSection((deb("jq", "1.6"),)), PipSection((LockedPip("six", "1.17.0", ()),)))
    check_parents_agree(graph.recipes["top"], graph, locks(left, right))


def cran(name: str, version: str) -> LockedCran:
    return LockedCran(name=name, version=version, sha256="0" * 64, size=1,
                      url=f"https://cran.example/src/contrib/{name}_{version}.tar.gz")


@pytest.mark.parametrize("kind", ["apt", "pip", "CRAN"])
def test_parents_that_disagree_name_the_package_both_versions_and_what_to_relock(kind: str) -> None:
    graph = build_graph(load_recipes(DIAMOND))
    if kind == "apt":
        left = layer("left", "sha256:l", AptSection((deb("jq", "1.6"),)))
        right = layer("right", "sha256:r", AptSection((deb("jq", "1.7"),)))
        pkg, a, b = "jq", "1.6", "1.7"
    elif kind == "CRAN":  # two snapshot dates: both layers would install into the one site library
        left = layer("left", "sha256:l", CranSection((cran("jsonlite", "1.8.8"),)))
        right = layer("right", "sha256:r", CranSection((cran("jsonlite", "1.9.0"),)))
        pkg, a, b = "jsonlite", "1.8.8", "1.9.0"
    else:
        left = layer("left", "sha256:l", PipSection((LockedPip("six", "1.16.0", ()),)))
        right = layer("right", "sha256:r", PipSection((LockedPip("six", "1.17.0", ()),)))
        pkg, a, b = "six", "1.16.0", "1.17.0"
    with pytest.raises(LockError) as e:
        check_parents_agree(graph.recipes["top"], graph, locks(left, right))
    msg = str(e.value)
    assert f"{kind} package '{pkg}'" in msg and a in msg and b in msg
    assert "top.toml" in msg and "buildsys lock --upgrade left right" in msg


def test_chain_helpers_merge_layers_in_order() -> None:
    a = layer("a", "h", AptSection((deb("x", "1"),)), PipSection((LockedPip("p", "1", ()),)))
    b = layer("b", "h", AptSection((deb("y", "2"),)), PipSection((LockedPip("q", "3", ()),)))
    assert {n: d.version for n, d in chain_debs([a, b]).items()} == {"x": "1", "y": "2"}
    assert chain_pips([a, b]) == {"p": "1", "q": "3"}


def test_a_part_that_holds_nothing_is_no_part_of_the_lock(tmp_path: Path) -> None:
    """Empty parts are falsy; ``with_sections`` and ``read_lock`` keep none, so both give the same lock."""
    from buildsys.ecosystems.files import FilesSection
    from buildsys.model.lockfile import dumps, read_lock

    assert not AptSection() and not PipSection() and not CranSection() and not FilesSection()
    assert AptSection(in_image=("jq",)) and PipSection(python="3.11.2") and CranSection(r_version="4.2.2")
    full = layer("x", "sha256:" + "b" * 64, AptSection((deb("jq", "1.6"),)), PipSection(python="3.11.2"))
    emptied = full.with_sections(AptSection(), PipSection())
    assert emptied.sections == {} and dumps(emptied) == dumps(layer("x", "sha256:" + "b" * 64))
    path = tmp_path / "x.lock"
    path.write_bytes(dumps(emptied) + b"apt-in-image = []\n")
    assert read_lock(path).sections == {}
