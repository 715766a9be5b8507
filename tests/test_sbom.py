"""``sbom``: the chain's locks as CycloneDX 1.6 and SPDX 2.3, checked by the formats' own libraries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from helpers import bs, ok
from packageurl import PackageURL

from buildsys.ecosystems.apt_sections import AptSection
from buildsys.ecosystems.debian_root import DebianBaseLock
from buildsys.ecosystems.pip import PipSection
from buildsys.model.lockfile import lock_path, read_lock

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


def test_cyclonedx_lists_every_deb_wheel_and_file_with_purl_and_sha256(shipped) -> None:
    proj, store = shipped
    text = ok(bs(proj, store, "sbom", "app")).stdout
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    by_purl = {c["purl"]: c for c in bom["components"]}
    root, tools = read_lock(lock_path(proj, "root")), read_lock(lock_path(proj, "tools"))
    root_base, pips = root.get(DebianBaseLock), tools.section(PipSection).packages
    assert root_base is not None
    debs = [*root_base.packages, *tools.section(AptSection).debs]
    assert len(bom["components"]) == len(debs) + len(pips)
    for d in debs:
        c = by_purl[PackageURL("deb", "debian", d.name, d.version, {"arch": d.architecture}).to_string()]
        assert c["version"] == d.version and c["hashes"] == [{"alg": "SHA-256", "content": d.sha256}]
    jq = next(c for c in bom["components"] if c["name"] == "jq")
    assert {"name": "buildsys:layer", "value": "tools"} in jq["properties"]
    for p in pips:
        selected = next(f for f in p.files if f.name == p.selected)
        c = by_purl[f"pkg:pypi/{p.name.lower()}@{p.version}"]
        assert c["hashes"][0]["content"] == selected.sha256
    subject = bom["metadata"]["component"]
    image = json.loads(ok(bs(proj, store, "build", "--json", "app")).stdout)[0]
    assert subject["name"] == "app" and subject["version"] == image["manifest_digest"]
    assert subject["purl"] == PackageURL("oci", None, "app", image["manifest_digest"]).to_string()
    # deterministic: no clock, no random serial
    assert ok(bs(proj, store, "sbom", "app")).stdout == text


def test_spdx_is_valid_and_holds_the_same_components(shipped, tmp_path: Path) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    proj, store = shipped
    out = tmp_path / "app.spdx.json"
    ok(bs(proj, store, "sbom", "app", "--format", "spdx", "-o", str(out)))
    assert validate_full_spdx_document(parse_file(str(out))) == []
    doc = json.loads(out.read_text())
    cdx = json.loads(ok(bs(proj, store, "sbom", "app")).stdout)
    purls = {r["referenceLocator"] for p in doc["packages"][1:] for r in p["externalRefs"]}
    assert purls == {c["purl"] for c in cdx["components"]}
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["packages"][0]["name"] == "app"


def test_files_are_generic_purls_and_an_unbuilt_chain_still_has_an_sbom(tmp_path: Path) -> None:
    """[[files]] come out as pkg:generic with the checksum; the SBOM needs the locks, not a build."""
    from buildsys.ecosystems.files import FilesSection, LockedFile
    from buildsys.model.graph import build_graph
    from buildsys.model.lockfile import Lock
    from buildsys.model.recipe import load_recipes
    from buildsys.ship.sbom import cyclonedx_json, items

    proj = Path(__file__).parent / "fixtures" / "chain"
    graph = build_graph(load_recipes(proj))
    sha = "ab" * 32
    files = (LockedFile(url="https://example.org/tool.tar.gz", name="tool.tar.gz", sha256=sha, size=3),)
    locks = {n: Lock(recipe=n, recipe_hash="0" * 64, source_date_epoch=1700000000).with_sections(
                     FilesSection(files if n == "app" else ())) for n in graph.chain("app")}
    (item,) = list(items(graph, locks, "app"))
    assert item.purl == ("pkg:generic/tool.tar.gz?checksum=sha256:" + sha +
                         "&download_url=https://example.org/tool.tar.gz")
    bom = json.loads(cyclonedx_json(graph, locks, "app"))
    assert bom["components"][0]["type"] == "file" and bom["components"][0]["hashes"][0]["content"] == sha
    assert bom["metadata"]["timestamp"].startswith("2023-11-14T22:13:20")
