"""``sbom``: the chain's locked components as CycloneDX 1.6 or SPDX 2.3 JSON.

Everything comes from the locks of the chain (the image's bill of materials
is its locks: ``build`` refuses an image whose dpkg state differs from them):
a registry root's image (``pkg:oci/NAME@sha256:...?repository_url=``; what it
installed itself is not listed), every .deb of the root and the layers (``pkg:deb/debian/NAME@VERSION?arch=``),
every wheel that is installed (``pkg:pypi/NAME@VERSION``, the SHA-256 of the
selected file), CRAN source tarballs when a lock has them (``pkg:cran/``) and
each ``[[files]]`` download (``pkg:generic/NAME?checksum=sha256:...&download_url=``).

The formats come from libraries, not from a hand-written schema:
cyclonedx-python-lib builds and serializes the BOM and validates it against
the CycloneDX JSON schema it ships; the SPDX document is validated with
spdx-tools (parsed back, then its full validation). Both are deterministic:
no wall clock (the time is the leaf lock's source-date-epoch), serial number
and namespace derived from the recipe and its lock hash.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from packageurl import PackageURL

from buildsys import __version__, ecosystems
from buildsys.build.records import LayerRecord
from buildsys.core.errors import BuildsysError
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
    for layer in graph.chain(recipe):
        for c in ecosystems.components(locks[layer]):
            yield Item(c.kind, c.name, c.version, c.purl, c.sha256, c.url, layer=layer)


def _when(locks: Mapping[str, Lock], recipe: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(locks[recipe].source_date_epoch, datetime.UTC)


def _image_purl(recipe: str, record: LayerRecord | None) -> str | None:
    if record is None:
        return None
    return PackageURL("oci", None, recipe, record.manifest_digest).to_string()


def cyclonedx_json(graph: Graph, locks: Mapping[str, Lock], recipe: str, record: LayerRecord | None = None,
                   ) -> bytes:
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    lock = locks[recipe]
    image_purl = _image_purl(recipe, record)
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
    meta = BomMetaData(component=subject, timestamp=_when(locks, recipe), tools=tools)
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"buildsys:{recipe}:{lock.lock_hash}")
    components = []
    for it in items(graph, locks, recipe):
        refs = [ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(it.url))] if it.url else []
        components.append(Component(
            type=ComponentType.FILE if it.kind == "file" else ComponentType.LIBRARY, name=it.name,
            version=it.version or None, bom_ref=f"{it.layer}:{it.purl}", purl=PackageURL.from_string(it.purl),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=it.sha256)], external_references=refs,
            properties=[Property(name="buildsys:layer", value=it.layer),
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


def spdx_json(graph: Graph, locks: Mapping[str, Lock], recipe: str, record: LayerRecord | None = None) -> bytes:
    """SPDX 2.3 JSON: the image as the described package, each component a package it CONTAINS."""
    lock = locks[recipe]
    when = _when(locks, recipe).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_purl = _image_purl(recipe, record)
    root: dict[str, Any] = {
        "SPDXID": "SPDXRef-image", "name": recipe, "versionInfo": record.manifest_digest if record else lock.lock_hash,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
        "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
    }
    if image_purl:
        root["externalRefs"] = [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                 "referenceLocator": image_purl}]
    packages = [root]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": "SPDXRef-image"}]
    for i, it in enumerate(items(graph, locks, recipe), 1):
        spdx_id = f"SPDXRef-{i}-{it.kind}"
        pkg: dict[str, Any] = {
            "SPDXID": spdx_id, "name": it.name, "downloadLocation": it.url or "NOASSERTION",
            "filesAnalyzed": False, "checksums": [{"algorithm": "SHA256", "checksumValue": it.sha256}],
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": it.purl}],
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "FILE" if it.kind == "file" else "LIBRARY",
            "comment": f"installed by the layer of recipe {it.layer}",
        }
        if it.version:
            pkg["versionInfo"] = it.version
        packages.append(pkg)
        relationships.append({"spdxElementId": "SPDXRef-image", "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    doc = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"buildsys-{recipe}",
        "documentNamespace": f"https://buildsys.invalid/spdx/{recipe}/{lock.lock_hash}",
        "creationInfo": {"created": when, "creators": [f"Tool: buildsys-{__version__}"]},
        "packages": packages, "relationships": relationships,
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
         record: LayerRecord | None = None) -> bytes:
    if fmt == "spdx":
        return spdx_json(graph, locks, recipe, record)
    return cyclonedx_json(graph, locks, recipe, record)
