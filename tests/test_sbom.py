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


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
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
    for d in debs:  # bookworm: what grype and trivy match Debian 12's advisories against
        purl = PackageURL("deb", "debian", d.name, d.version, {"arch": d.architecture, "distro": "debian-12"})
        c = by_purl[purl.to_string()]
        assert c["version"] == d.version and c["hashes"] == [{"alg": "SHA-256", "content": d.sha256}]
    assert {"name": "buildsys:suite", "value": "bookworm"} in bom["metadata"]["properties"]
    assert {"name": "buildsys:distro", "value": "debian-12"} in bom["metadata"]["properties"]
    # Licenses from the vendored files themselves: every one declared, most Debian ones SPDX expressions.
    declared = [lic for c in bom["components"] for lic in c.get("licenses", [])]
    assert declared and all((lic.get("license") or lic)["acknowledgement"] == "declared" for lic in declared)
    assert sum("expression" in lic for lic in declared) > len(debs) // 2
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
    published = json.loads(ok(bs(proj, store, "sbom", "app", "--repository", "localhost:5000/team/app")).stdout)
    assert published["metadata"]["component"]["purl"] == PackageURL(
        "oci", None, "app", image["manifest_digest"], {"repository_url": "localhost:5000/team/app"}).to_string()
    refused = bs(proj, store, "sbom", "app", "--repository", "localhost:5000/Team/app:v1")
    assert refused.exit_code == 1 and "is not HOST[:PORT]/REPO" in refused.output + refused.stderr


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
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
    assert "suite: bookworm" in doc["packages"][0]["comment"]
    # The same declared licenses: an SPDX expression as it is, other text as a LicenseRef the document defines.
    refs = {e["licenseId"]: e["name"] for e in doc.get("hasExtractedLicensingInfos", [])}
    for p in doc["packages"][1:]:
        (purl,) = (r["referenceLocator"] for r in p["externalRefs"])
        c = next(c for c in cdx["components"] if c["purl"] == purl)
        (lic,) = c.get("licenses") or [{"expression": "NOASSERTION"}]
        expected = lic.get("expression") or next(k for k, v in refs.items() if v == lic["license"]["name"])
        assert p["licenseDeclared"] == expected


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


# ---- purls scanners match, licenses from the packages' own files (no engine: locks and the store)

CHAIN = Path(__file__).parent / "fixtures" / "chain"
REPO = Path(__file__).resolve().parent.parent
SHA = "cd" * 32


def _chain(root: tuple, tools: tuple = (), app: tuple = ()) -> tuple:
    """The chain fixture's graph (root <- tools <- app) with these lock parts."""
    from buildsys.model.graph import build_graph
    from buildsys.model.lockfile import Lock
    from buildsys.model.recipe import load_recipes

    graph = build_graph(load_recipes(CHAIN))
    parts = {"root": root, "tools": tools, "app": app}
    return graph, {n: Lock(recipe=n, recipe_hash="0" * 64, source_date_epoch=1700000000).with_sections(*parts[n])
                   for n in graph.chain("app")}


def _deb(name: str, mirror: str, version: str = "1.0-1", sha: str = SHA):
    from buildsys.ecosystems.apt_sections import LockedDeb

    return LockedDeb(name=name, version=version, architecture="amd64", sha256=sha, size=1,
                     path=f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb", mirror=mirror)


def _archive(mirror: str, suite: str, codename: str | None = None):
    from buildsys.ecosystems.apt_sections import LockedArchive

    return LockedArchive(mirror=mirror, suite=suite, codename=codename or suite,
                         release_date="Sat, 11 Jul 2026 10:16:37 UTC", inrelease_sha256=SHA)


def _both_valid(graph, locks, recipe: str = "app", **kw) -> tuple[dict, dict]:
    """Both documents, each checked by its own format's validator (cyclonedx-python-lib, spdx-tools)."""
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    from buildsys.ship.sbom import cyclonedx_json, spdx_json

    cdx = cyclonedx_json(graph, locks, recipe, **kw)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(cdx.decode()) is None
    spdx = json.loads(spdx_json(graph, locks, recipe, **kw))
    assert validate_full_spdx_document(JsonLikeDictParser().parse(spdx)) == []
    return json.loads(cdx), spdx


def _purls(bom: dict) -> dict[str, PackageURL]:
    return {c["name"]: PackageURL.from_string(c["purl"]) for c in bom["components"]}


@pytest.mark.parametrize(("codename", "distro"), [("bookworm", "debian-12"), ("trixie", "debian-13"),
                                                   ("bullseye", "debian-11"), ("forky", None)])
def test_a_debian_roots_debs_name_its_release_and_a_vendor_source_its_own(codename: str, distro: str | None) -> None:
    """Root and layer .debs from Debian's archives: distro=debian-N from the root's suite (a release the
    table does not know: no qualifier, never a guess); a [[apt-sources]] .deb (CRAN's): its repository's."""
    import dataclasses

    from buildsys.ecosystems.apt_sections import AptSection, LockedSource

    base = read_lock(REPO / "locks" / "base.lock").get(DebianBaseLock)
    assert base is not None
    libc6 = next(d for d in base.packages if d.name == "libc6")
    security = next(d for d in base.packages if "debian-security" in d.mirror)
    archives = tuple(dataclasses.replace(a, suite=a.suite.replace("bookworm", codename),
                                         codename=a.codename.replace("bookworm", codename)) for a in base.archives)
    root = dataclasses.replace(base, suite=codename, codename=codename, archives=archives, packages=(libc6, security))
    cran = "https://cloud.r-project.org/bin/linux/debian"
    source = LockedSource(url=cran, suite="bookworm-cran40", components=("main",), key_sha256=SHA, key_size=1,
                          key_url="https://example.org/key.asc", key_path=None, release_date="x", inrelease_sha256=SHA)
    tools = AptSection(debs=(_deb("jq", "http://deb.debian.org/debian"), _deb("r-base-core", cran, "4.5.2-1")),
                       sources=(source,))
    graph, locks = _chain((root,), (tools,))
    bom, spdx = _both_valid(graph, locks)
    purls = _purls(bom)
    for name in ("libc6", security.name, "jq"):
        p = purls[name]
        assert (p.type, p.namespace, p.qualifiers.get("arch")) == ("deb", "debian", "amd64"), p
        assert p.qualifiers.get("distro") == distro
    assert purls["libc6"].version == libc6.version  # 2.36-9+deb12u14, its '+' escaped in the string and back
    theirs = purls["r-base-core"]
    assert theirs.namespace == "cloud.r-project.org" and "distro" not in theirs.qualifiers
    assert theirs.qualifiers["repository_url"] == "cloud.r-project.org/bin/linux/debian"
    facts = {p["name"]: p["value"] for p in bom["metadata"]["properties"]}
    assert facts == {"buildsys:suite": codename, **({"buildsys:distro": distro} if distro else {})}
    assert f"suite: {codename}" in spdx["packages"][0]["comment"]


def test_a_registry_images_debs_are_ubuntus_and_nvidias_and_the_metadata_names_the_image() -> None:
    """On nvidia/cuda (Ubuntu 22.04): Ubuntu's archives give distro=ubuntu-22.04 (-security on its own host
    too); NVIDIA's flat repository, which the image's own sources name, is NVIDIA's host's."""
    from buildsys.build.records import LayerRecord
    from buildsys.ecosystems.apt_sections import AptSection
    from buildsys.ecosystems.registry_image import ImageBaseLock, LockedLayer

    ubuntu, security = "http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu"
    nvidia = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64"
    reference, digest = "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04", "sha256:" + "ab" * 32
    image = ImageBaseLock(reference=reference, platform="linux/amd64", manifest_digest=digest,
                          manifest_media_type="application/vnd.oci.image.manifest.v1+json", manifest_size=1,
                          config_digest="sha256:" + SHA, config_size=1,
                          layers=(LockedLayer("sha256:" + SHA, 1, "application/vnd.oci.image.layer.v1.tar+gzip"),))
    tools = AptSection(archives=(_archive(ubuntu, "jammy"), _archive(ubuntu, "jammy-updates"),
                                 _archive(security, "jammy-security"), _archive(nvidia, "./", "")),
                       debs=(_deb("libc6", ubuntu, "2.35-0ubuntu3.8"), _deb("openssl", security, "3.0.2-0ubuntu1.19"),
                             _deb("cuda-cudart-12-4", nvidia, "12.4.127-1")))
    graph, locks = _chain((image,), (tools,))
    record = LayerRecord("app", "sha256:" + "01" * 32, "sha256:" + "02" * 32, (), ())
    bom, spdx = _both_valid(graph, locks, record=record, repository="registry.example.org:5000/team/app")
    purls = _purls(bom)
    for name in ("libc6", "openssl"):
        assert (purls[name].namespace, purls[name].qualifiers["distro"]) == ("ubuntu", "ubuntu-22.04")
    assert str(purls["openssl"]) == "pkg:deb/ubuntu/openssl@3.0.2-0ubuntu1.19?arch=amd64&distro=ubuntu-22.04"
    cuda = purls["cuda-cudart-12-4"]
    assert cuda.namespace == "developer.download.nvidia.com" and "distro" not in cuda.qualifiers
    base = purls[reference]
    assert (base.type, base.version, base.qualifiers["repository_url"]) == ("oci", digest, "docker.io/nvidia/cuda")
    subject = PackageURL.from_string(bom["metadata"]["component"]["purl"])
    assert (subject.name, subject.version) == ("app", "sha256:" + "02" * 32)
    assert subject.qualifiers == {"repository_url": "registry.example.org:5000/team/app"}
    facts = {p["name"]: p["value"] for p in bom["metadata"]["properties"]}
    assert facts == {"buildsys:base-image": reference, "buildsys:base-image-digest": digest,
                     "buildsys:suite": "jammy", "buildsys:distro": "ubuntu-22.04"}
    image_id = next(p["SPDXID"] for p in spdx["packages"] if p["name"] == reference)
    assert {"spdxElementId": "SPDXRef-image", "relationshipType": "DESCENDANT_OF",
            "relatedSpdxElement": image_id} in spdx["relationships"]
    # An image of a release the table does not know: whose archive it is, by its host, and no distro.
    odd = AptSection(archives=(_archive("http://mirror.example.org/x", "nova"),),
                     debs=(_deb("libc6", "http://mirror.example.org/x"),))
    graph, locks = _chain((image,), (odd,))
    libc6 = _purls(_both_valid(graph, locks)[0])["libc6"]
    assert libc6.namespace == "mirror.example.org" and "distro" not in libc6.qualifiers


def _vendor(store, data: bytes) -> str:
    import hashlib
    import io

    sha, _ = store.vendor_stream(io.BytesIO(data), "test-")
    assert sha == hashlib.sha256(data).hexdigest()
    return sha


# Real wheels from PyPI (simple API): (name, version, file, sha256, what their METADATA says)
WHEELS = (
    ("typing-extensions", "4.15.0", "typing_extensions-4.15.0-py3-none-any.whl",
     "f0fa19c6845758ab08074a0cfa8b7aecb71c999ca73d62883bc25cc018c4e548", "PSF-2.0"),  # License-Expression
    ("six", "1.17.0", "six-1.17.0-py2.py3-none-any.whl",
     "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274", "MIT"),  # its one classifier
    ("packaging", "25.0", "packaging-25.0-py3-none-any.whl",  # "Apache Software License" and "BSD License"
     "29572ef2b1f17581046b3a2227d5c611fb25ec70ca1ba8554b24b0e69331a484", None),
)
CRAN_SOURCES = ("r-cran-digest", "r-cran-mime")


@pytest.mark.network
@pytest.mark.slow
def test_licenses_come_from_each_packages_own_metadata(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A wheel's License-Expression or its one exact classifier, a .deb's machine-readable copyright (Files: *),
    an R tarball's DESCRIPTION; NOASSERTION where the package says nothing exact or nothing machine-readable.
    Read once per file: the second SBOM takes them from the store's cache."""
    import time

    import requests
    from cranrepo import DownloadFailed, build

    from buildsys.core.store import Store
    from buildsys.ecosystems.cran_index import CranSection, LockedCran
    from buildsys.ecosystems.debian_root import DEBIAN_ROOT
    from buildsys.ecosystems.pip import PIP
    from buildsys.ecosystems.pip_resolve import LockedPip, LockedWheelFile
    from buildsys.fetch.vendor import fetch

    store = Store(tmp_path / "store")
    wheels = []
    simple = {"Accept": "application/vnd.pypi.simple.v1+json"}
    for name, version, filename, sha, _ in WHEELS:
        files = requests.get(f"https://pypi.org/simple/{name}/", headers=simple, timeout=60).json()["files"]
        url = next(f["url"] for f in files if f["filename"] == filename)
        wheels.append(LockedPip(name, version, (LockedWheelFile(filename, sha, url),), selected=filename))
    pip = PipSection(packages=tuple(wheels))
    base = read_lock(REPO / "locks" / "base.lock").get(DebianBaseLock)
    assert base is not None  # tini: Files: * Expat; sed: Files: * doc/local.mk GPL-3+; base-files: free form
    wanted = ("tini", "sed", "base-files")
    root = base.__class__(**{**base.__dict__, "packages": tuple(d for d in base.packages if d.name in wanted)})
    try:
        tarballs = build(Path(request.config.cache.mkdir("cran-origs")), CRAN_SOURCES)
    except DownloadFailed as e:
        pytest.fail(f"the CRAN tarballs: {e}")
    cran = CranSection(packages=tuple(
        LockedCran(name, version, _vendor(store, data), len(data), f"http://cran.invalid/src/contrib/{name}_{version}.tar.gz")
        for name, (version, data, _) in sorted(tarballs.items())))
    graph, locks = _chain((root,), (pip,), (cran,))
    report = fetch(store, [*DEBIAN_ROOT.artifacts(locks["root"]), *PIP.artifacts(locks["tools"])], progress=False)
    assert report.downloaded == 6, report
    started = time.monotonic()
    bom, spdx = _both_valid(graph, locks, store=store)
    first = time.monotonic() - started
    declared = {c["name"]: c.get("licenses") for c in bom["components"]}
    assert declared["typing-extensions"] == [{"acknowledgement": "declared", "expression": "PSF-2.0"}]
    assert declared["six"] == [{"acknowledgement": "declared", "expression": "MIT"}]
    assert declared["tini"] == [{"acknowledgement": "declared", "expression": "MIT"}]  # Debian's "Expat"
    assert declared["digest"] == [{"acknowledgement": "declared", "expression": "GPL-2.0-or-later"}]
    assert tarballs["mime"][2]["License"] == "GPL"  # no version: the text, as a name
    assert declared["mime"] == [{"license": {"acknowledgement": "declared", "name": "GPL"}}]
    assert declared["sed"] == [{"acknowledgement": "declared", "expression": "GPL-3.0-or-later"}]
    assert declared["packaging"] is None and declared["base-files"] is None
    by_name = {p["name"]: p for p in spdx["packages"]}
    assert by_name["six"]["licenseDeclared"] == "MIT" and by_name["base-files"]["licenseDeclared"] == "NOASSERTION"
    ref = by_name["mime"]["licenseDeclared"]
    assert ref.startswith("LicenseRef-GPL-") and {"licenseId": ref, "name": "GPL", "extractedText": "GPL"}.items() \
        <= next(e for e in spdx["hasExtractedLicensingInfos"] if e["licenseId"] == ref).items()
    assert sorted(p.name for p in (store.cache / "licenses").iterdir()) == \
        sorted(f"{c['hashes'][0]['content']}.json" for c in bom["components"])
    started = time.monotonic()
    assert _both_valid(graph, locks, store=store)[0] == bom  # from the cache, the same
    said: list[tuple[str, str, str]] = []
    bare = _both_valid(graph, locks, store=Store(tmp_path / "empty"), progress=lambda *e: said.append(e))[0]
    assert not any(c.get("licenses") for c in bare["components"])  # nothing vendored: nothing declared
    assert ("app", "warning", f"{len(bom['components'])} component(s) not in the vendor store: no license read "
            "for them (`buildsys fetch` puts them there)") in said
    print(f"licenses: {first:.2f}s read, {time.monotonic() - started:.2f}s cached")


def test_the_readers_map_only_what_is_exact() -> None:
    """Debian's copyright: the Files: * paragraph's License, its short names as SPDX where each is one;
    core metadata: License-Expression first, one exact classifier else; R's license specifications."""
    from buildsys.core.licenses import from_core_metadata, from_cran, from_debian_copyright

    copyright_ = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: x\n\n"
                  "Files: debian/*\nCopyright: 2024 Someone\nLicense: GPL-3+\n\n"
                  "Files: *\nCopyright: 2020 Upstream\nLicense: GPL-2+ or Artistic-2.0\n\n"
                  "License: GPL-2+\n On Debian systems, see /usr/share/common-licenses/GPL-2.\n")
    assert from_debian_copyright(copyright_) == "GPL-2.0-or-later OR Artistic-2.0"
    assert from_debian_copyright(copyright_.replace("Artistic-2.0", "Artistic")) == "GPL-2+ or Artistic"
    assert from_debian_copyright(copyright_.replace("Files: *", "Files: src/*")) is None  # no whole-package one
    assert from_debian_copyright(copyright_.replace("Files: *", "Files: * doc/local.mk")) == \
        "GPL-2.0-or-later OR Artistic-2.0"  # sed's: '*' among the patterns
    assert from_debian_copyright("This package was debianized by someone.\nLicense: GPL\n") is None  # free form
    assert from_core_metadata("Metadata-Version: 2.4\nLicense-Expression: mit OR apache-2.0\n") == "MIT OR Apache-2.0"
    assert from_core_metadata("Metadata-Version: 2.4\nLicense-Expression: Proprietary\n") == "Proprietary"
    assert from_core_metadata("Metadata-Version: 2.1\nLicense: MIT\n") is None  # free text: not declared as SPDX
    assert from_core_metadata("Metadata-Version: 2.1\nClassifier: License :: OSI Approved :: BSD License\n") is None
    assert from_cran("GPL-2 | GPL-3") == "GPL-2.0-only OR GPL-3.0-only"
    assert from_cran("MIT + file LICENSE") == "MIT" and from_cran("GPL-2 + file LICENSE") == "GPL-2 + file LICENSE"


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
def test_a_debs_copyright_is_read_whatever_dpkg_deb_compressed_its_data_with(tmp_path: Path,
                                                                             compression: str) -> None:
    """Ubuntu's .debs are zstd, Debian's xz; dpkg-deb itself builds each kind here."""
    import dataclasses
    import subprocess

    from buildsys.ecosystems.base import Component
    from buildsys.ecosystems.deb_origin import deb_license

    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: demo\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: x <x@example.org>\nDescription: demo\n")
    (root / "usr/share/doc/demo").mkdir(parents=True)
    (root / "usr/share/doc/demo/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: 2026 x\nLicense: BSD-3-clause\n")
    deb = tmp_path / "demo.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    component = Component("deb", "demo", "1.0", "pkg:deb/debian/demo@1.0", "00" * 32, "")
    assert deb_license(component, deb) == "BSD-3-Clause"
    assert deb_license(dataclasses.replace(component, name="other"), deb) is None  # no such doc folder
    (tmp_path / "junk.deb").write_bytes(b"!<arch>\nnot a header at all" + b" " * 80)
    assert deb_license(component, tmp_path / "junk.deb") is None
