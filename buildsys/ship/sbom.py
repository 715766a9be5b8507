"""``sbom``: the chain's locked components as CycloneDX 1.6 or SPDX 2.3 JSON.

Everything comes from the locks of the chain (the image's bill of materials
is its locks: ``build`` refuses an image whose dpkg state differs from them):
a registry root's image (``pkg:oci/NAME@sha256:...?repository_url=``; what it
installed itself is not listed), every .deb of the root and the layers
(``pkg:deb/debian/NAME@VERSION?arch=amd64&distro=debian-12``, the release from
the chain's archive state; a third-party repository's under its own host,
``ecosystems.deb_origin``), every wheel that is installed (``pkg:pypi/NAME@VERSION``,
the SHA-256 of the selected file), CRAN source tarballs when a lock has them
(``pkg:cran/``) and each ``[[files]]`` download (``pkg:generic/NAME?checksum=sha256:...&download_url=``).

Given the store, each component's license is the one the package declares in its
own vendored file (``core.licenses``: a wheel's METADATA, an R package's
DESCRIPTION, a .deb's machine-readable copyright), read once per file and kept
under the store's cache by the file's SHA-256; an SPDX expression where it is one,
the declared text as a license name (CycloneDX) or a ``LicenseRef-`` (SPDX) where
not, and nothing (NOASSERTION) where the package declares none. The metadata
names what the chain stands on: the registry image (reference and digest) or the
suite and its release (``distro``), and the image's repository when given.

The formats come from libraries, not from a hand-written schema:
cyclonedx-python-lib builds and serializes the BOM and validates it against
the CycloneDX JSON schema it ships; the SPDX document is validated with
spdx-tools (parsed back, then its full validation). Both are deterministic:
no wall clock (the time is the leaf lock's source-date-epoch), serial number
and namespace derived from the recipe and its lock hash.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packageurl import PackageURL

from buildsys import __version__, ecosystems
from buildsys.build.records import LayerRecord
from buildsys.core import licenses
from buildsys.core.errors import BuildsysError
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store, atomic_write
from buildsys.ecosystems.base import Component
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock

FORMATS = ("cyclonedx", "spdx")


class SbomError(BuildsysError):
    """The document failed its schema: a buildsys bug, never a user's."""


@dataclass(frozen=True)
class Item(Component):
    """An ecosystem's component and the recipe whose layer installs it."""

    layer: str = ""


def items(graph: Graph, locks: Mapping[str, Lock], recipe: str) -> Iterator[Item]:
    """Every locked component of ``recipe``'s chain, bottom layer first, each ecosystem's sorted by name."""
    chain = graph.chain(recipe)
    for i, layer in enumerate(chain):
        for c in ecosystems.chain_components([locks[n] for n in chain[:i + 1]]):
            yield Item(c.kind, c.name, c.version, c.purl, c.sha256, c.url, layer=layer)


# Where an image is published, as its purl's repository_url: a registry host and a repository path (lowercase).
REPOSITORY = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+")
# Bumped whenever a reader of core.licenses changes what it returns: the cache then reads every file again.
LICENSE_READER = "2"


def declared_licenses(store: Store, found: Sequence[Item], progress: Progress = NO_PROGRESS) -> dict[str, str]:
    """sha256 -> the license each component's vendored file declares (where it declares one), read once per
    file: the answers are kept in the store's cache (``licenses/SHA256.json``), as reading a .deb's data is
    a good part of a second."""
    out: dict[str, str] = {}
    cache = store.cache / "licenses"
    todo = [it for it in found if it.kind != "image"]
    missing = 0
    for n, it in enumerate(todo, 1):
        entry = cache / f"{it.sha256}.json"
        try:
            kept = json.loads(entry.read_text())
            if kept.get("reader") == LICENSE_READER:
                if kept.get("license"):
                    out[it.sha256] = kept["license"]
                continue
        except (OSError, ValueError, AttributeError):
            pass
        path = store.vendor_path(it.sha256)
        if not path.is_file():  # not fetched: nothing to read, and nothing to remember
            missing += 1
            continue
        if n == 1 or n % 25 == 0:  # a line per file would flood a log: the first .debs read take the time
            progress(it.layer, "sbom", f"reading declared licenses ({n}/{len(todo)}: {it.name})")
        license_ = ecosystems.declared_license(it, path)
        with contextlib.suppress(OSError):  # a store whose cache cannot be written: read again next time
            atomic_write(entry, json.dumps({"reader": LICENSE_READER, "license": license_}).encode())
        if license_:
            out[it.sha256] = license_
    if missing:
        progress(found[-1].layer if found else "sbom", "warning",
                 f"{missing} component(s) not in the vendor store: no license read for them "
                 "(`buildsys fetch` puts them there)")
    return out


def license_ref(text: str) -> str:
    """An SPDX ``LicenseRef-`` for declared text that is no SPDX expression: readable, and unique by its hash."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:40] or "license"
    return f"LicenseRef-{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _facts(graph: Graph, locks: Mapping[str, Lock], recipe: str) -> dict[str, str]:
    return ecosystems.base_facts([locks[n] for n in graph.chain(recipe)])


def _when(locks: Mapping[str, Lock], recipe: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(locks[recipe].source_date_epoch, datetime.UTC)


def _image_purl(recipe: str, record: LayerRecord | None, repository: str | None) -> str | None:
    """The image's purl; with ``repository`` (``HOST/REPO`` where it is published) its ``repository_url``."""
    if record is None:
        return None
    if repository:
        return PackageURL("oci", None, repository.rsplit("/", 1)[-1].lower(), record.manifest_digest,
                          {"repository_url": repository}).to_string()
    return PackageURL("oci", None, recipe, record.manifest_digest).to_string()


def cyclonedx_json(graph: Graph, locks: Mapping[str, Lock], recipe: str, record: LayerRecord | None = None,
                   store: Store | None = None, repository: str | None = None, progress: Progress = NO_PROGRESS,
                   ) -> bytes:
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import DisjunctiveLicense, LicenseAcknowledgement, LicenseExpression
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    lock = locks[recipe]
    image_purl = _image_purl(recipe, record, repository)
    facts = _facts(graph, locks, recipe)
    subject = Component(
        type=ComponentType.CONTAINER, name=recipe, bom_ref=f"image:{recipe}",
        version=record.manifest_digest if record else lock.lock_hash,
        purl=PackageURL.from_string(image_purl) if image_purl else None,
        description=graph.recipes[recipe].description or None,
        properties=[Property(name="buildsys:lock-hash", value=lock.lock_hash),
                    Property(name="buildsys:chain", value=" ".join(graph.chain(recipe))),
                    *([Property(name="buildsys:image-id", value=record.config_digest)] if record else [])])
    tools = ToolRepository(components=[Component(type=ComponentType.APPLICATION, name="buildsys",
                                                 version=__version__)])
    meta = BomMetaData(component=subject, timestamp=_when(locks, recipe), tools=tools,
                       properties=[Property(name=f"buildsys:{k}", value=v) for k, v in sorted(facts.items())])
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"buildsys:{recipe}:{lock.lock_hash}")
    found = list(items(graph, locks, recipe))
    declared = declared_licenses(store, found, progress) if store is not None else {}
    components = []
    for it in found:
        refs = [ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(it.url))] if it.url else []
        text = declared.get(it.sha256)
        expression = licenses.spdx(text) if text else None
        lic = ([LicenseExpression(expression, acknowledgement=LicenseAcknowledgement.DECLARED)] if expression else
               [DisjunctiveLicense(name=text, acknowledgement=LicenseAcknowledgement.DECLARED)] if text else [])
        components.append(Component(
            type=ComponentType.FILE if it.kind == "file" else ComponentType.LIBRARY, name=it.name,
            version=it.version or None, bom_ref=f"{it.layer}:{it.purl}", purl=PackageURL.from_string(it.purl),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=it.sha256)], external_references=refs,
            licenses=lic, properties=[Property(name="buildsys:layer", value=it.layer),
                                      Property(name="buildsys:kind", value=it.kind)]))
    bom = Bom(components=components, serial_number=serial, metadata=meta)
    bom.register_dependency(subject, components)
    text = JsonV1Dot6(bom).output_as_string(indent=None)
    # Re-serialize canonically: the library's key order is stable today, ours is by construction.
    doc = json.loads(text)
    data = json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"
    # The schema's iri-reference check costs ~0.1 s per URL (a lark grammar: 40 s for the jupyter
    # chain). XsUri checked each URL when it was built; the schema checks all the rest.
    for c in doc.get("components", []):
        c.pop("externalReferences", None)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc))
    if error is not None:
        raise SbomError(f"{recipe}: the CycloneDX document fails its schema: {error}",
                        "this is a buildsys bug; please report it with the lock files")
    return data


def spdx_json(graph: Graph, locks: Mapping[str, Lock], recipe: str, record: LayerRecord | None = None,
              store: Store | None = None, repository: str | None = None, progress: Progress = NO_PROGRESS) -> bytes:
    """SPDX 2.3 JSON: the image as the described package, each component a package it CONTAINS; a registry
    root's image is also the one it is a DESCENDANT_OF."""
    lock = locks[recipe]
    when = _when(locks, recipe).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_purl = _image_purl(recipe, record, repository)
    facts = _facts(graph, locks, recipe)
    root: dict[str, Any] = {
        "SPDXID": "SPDXRef-image", "name": recipe, "versionInfo": record.manifest_digest if record else lock.lock_hash,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
        "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
    }
    if facts:
        root["comment"] = "; ".join(f"{k}: {v}" for k, v in sorted(facts.items()))
    if image_purl:
        root["externalRefs"] = [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                 "referenceLocator": image_purl}]
    packages = [root]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": "SPDXRef-image"}]
    found = list(items(graph, locks, recipe))
    declared = declared_licenses(store, found, progress) if store is not None else {}
    extracted: dict[str, dict[str, Any]] = {}
    for i, it in enumerate(found, 1):
        spdx_id = f"SPDXRef-{i}-{it.kind}"
        text = declared.get(it.sha256)
        expression = (licenses.spdx(text) or license_ref(text)) if text else "NOASSERTION"
        if text and expression.startswith("LicenseRef-"):
            extracted[expression] = {"licenseId": expression, "name": text, "extractedText": text,
                                     "comment": "the license as the package declares it in its own metadata; "
                                                "it is no SPDX license expression"}
        pkg: dict[str, Any] = {
            "SPDXID": spdx_id, "name": it.name, "downloadLocation": it.url or "NOASSERTION",
            "filesAnalyzed": False, "checksums": [{"algorithm": "SHA256", "checksumValue": it.sha256}],
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": it.purl}],
            "licenseConcluded": "NOASSERTION", "licenseDeclared": expression, "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "FILE" if it.kind == "file" else "LIBRARY",
            "comment": f"installed by the layer of recipe {it.layer}",
        }
        if it.version:
            pkg["versionInfo"] = it.version
        packages.append(pkg)
        relationships.append({"spdxElementId": "SPDXRef-image", "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
        if it.kind == "image":  # the registry image the chain stands on
            relationships.append({"spdxElementId": "SPDXRef-image", "relationshipType": "DESCENDANT_OF",
                                  "relatedSpdxElement": spdx_id})
    doc = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"buildsys-{recipe}",
        "documentNamespace": f"https://buildsys.invalid/spdx/{recipe}/{lock.lock_hash}",
        "creationInfo": {"created": when, "creators": [f"Tool: buildsys-{__version__}"]},
        "packages": packages, "relationships": relationships,
        **({"hasExtractedLicensingInfos": [extracted[k] for k in sorted(extracted)]} if extracted else {}),
    }
    data = json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"
    _validate_spdx(recipe, data)
    return data


def _validate_spdx(recipe: str, data: bytes) -> None:
    import os
    import tempfile

    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    fd, path = tempfile.mkstemp(suffix=".spdx.json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            document = parse_file(path)
        except Exception as e:  # spdx-tools raises its SPDXParsingError, with the messages
            raise SbomError(f"{recipe}: the SPDX document does not parse: {e}",
                            "this is a buildsys bug; please report it with the lock files") from e
    finally:
        os.unlink(path)
    messages = validate_full_spdx_document(document)
    if messages:
        raise SbomError(f"{recipe}: the SPDX document fails validation: "
                        + "; ".join(m.validation_message for m in messages[:5]),
                        "this is a buildsys bug; please report it with the lock files")


def sbom(graph: Graph, locks: Mapping[str, Lock], recipe: str, fmt: str = "cyclonedx",
         record: LayerRecord | None = None, store: Store | None = None, repository: str | None = None,
         progress: Progress = NO_PROGRESS) -> bytes:
    """The SBOM of ``recipe`` in ``fmt``; ``store``: where the vendored files' licenses are read (none without
    it); ``repository``: ``HOST/REPO`` the image is published to, for its purl's ``repository_url``."""
    if repository is not None and not REPOSITORY.fullmatch(repository):
        raise BuildsysError(f"{recipe}: the repository {repository!r} is not HOST[:PORT]/REPO",
                            "name where the image is published without tag or digest, e.g. "
                            "registry.example.org:5000/team/app")
    if fmt == "spdx":
        return spdx_json(graph, locks, recipe, record, store, repository, progress)
    return cyclonedx_json(graph, locks, recipe, record, store, repository, progress)
