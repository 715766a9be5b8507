"""``attest`` and ``attestations`` against Debian's docker-registry on loopback.

The project is this repository's own stack (``recipes/`` and the committed ``locks/``): the
provenance is made of real locks. The images are tiny OCI images, one per layer of the jupyter
chain (base, python, jupyter), put in a store's layout and cache under the keys the builder
computes for the current locks (so ``attest jupyter`` finds "the image of jupyter's current locks"
without mmdebstrap or docker), and pushed with ``push_image``.

Docker-registry 2.8 has no referrers API (a plain-text 404): the fallback tag is what it exercises.
A forwarding proxy in front of it plays the registries (or the proxies) that answer the referrers
endpoint with an HTML page, or with JSON that is not an index.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import io
import json
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result
from conftest import STACK

from buildsys.build.builder import Builder
from buildsys.build.cache import BUILDER_VERSION, Cache
from buildsys.build.records import LayerRecord
from buildsys.cli import cli
from buildsys.core.store import Store
from buildsys.lock import fresh_locks
from buildsys.model.graph import build_graph
from buildsys.model.lockfile import lock_path
from buildsys.model.recipe import load_recipes
from buildsys.oci.image import OciLayout
from buildsys.oci.layer.normalize import NORMALIZER_VERSION, normalize_tar
from buildsys.oci.registry import Registry, RegistryDataError
from buildsys.ship import attest, dsse, provenance, referrers, signing
from buildsys.ship import keys as keyfiles
from buildsys.ship.publish import push_image, stored_as_is

CHAIN = ("base", "python", "jupyter")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TIMINGS: dict[str, float] = {}


def bs(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-C", str(STACK), "--store", str(store), *args],
                              env={"BUILDSYS_KEY_PASSWORD": None, "COSIGN_PASSWORD": None})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + result.stderr
    return result


def _layer(layout: OciLayout, folder: Path, name: str) -> tuple[str, int]:
    src = io.BytesIO()
    with tarfile.open(fileobj=src, mode="w") as tf:
        content = f"the {name} layer\n".encode()
        info = tarfile.TarInfo(f"{name}.txt")
        info.size = len(content)
        tf.addfile(info, io.BytesIO(content))
    src.seek(0)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.tar", "wb") as f:
        layer = normalize_tar(src, f, 0)
    layout.add_blob_file(folder / f"{name}.tar", layer.digest)
    return layer.digest, layer.size


class Stack:
    """A store whose cache holds an image of each recipe of the jupyter chain for the current locks."""

    def __init__(self, root: Path) -> None:
        self.store = root / "store"
        graph = build_graph(load_recipes(STACK))
        graph.select(["jupyter"])
        self.graph, self.locks = graph, fresh_locks(STACK, graph, ["jupyter"])
        store = Store(self.store)
        layout = OciLayout(store.oci)
        builder, cache = Builder(store, graph, self.locks), Cache(store)
        records: list[LayerRecord] = []
        layers: list[tuple[str, int]] = []
        for name in CHAIN:
            layers.append(_layer(layout, root / "layers", name))
            config = {"architecture": "amd64", "os": "linux", "config": {"Labels": {"recipe": name}},
                      "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]}}
            image = layout.write_image(config, list(layers))
            record = LayerRecord(name, image.config_digest, image.manifest_digest, tuple(d for d, _ in layers),
                                 tuple(layers))
            cache.put(builder.cache_key(graph.recipes[name], records[-1] if records else None), record)
            records.append(record)
        assert builder.stored_chain("jupyter") == records
        self.records = records
        self.layout = layout

    @property
    def digest(self) -> str:
        return self.records[-1].manifest_digest

    def push(self, host: str, repo: str) -> None:
        reg = Registry(host)
        for record in self.records:
            push_image(reg, repo, self.layout, record.manifest_digest)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return Stack(tmp_path_factory.mktemp("attest-stack"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    keyfiles.generate_keypair(folder / "signer", b"")
    keyfiles.generate_keypair(folder / "other", b"")
    return {"key": folder / "signer.key", "pub": folder / "signer.pub", "other.key": folder / "other.key",
            "other.pub": folder / "other.pub"}


def signer(keys: dict[str, Path]) -> keyfiles.KeySigner:
    return keyfiles.KeySigner(keyfiles.load_private_key(keys["key"], None))


def index_of(host: str, repo: str, digest: str) -> dict:
    data, media, _ = Registry(host).get_manifest(repo, referrers.referrers_tag(digest))
    assert media == OCI_INDEX
    return dict(json.loads(data))


# ---------------------------------------------------------------- a proxy that answers the referrers endpoint


class _Proxy(http.server.ThreadingHTTPServer):
    upstream = ""
    referrers_answer: tuple[int, str, bytes] | None = None  # (status, content type, body); None: forward
    referrers_asked = 0
    # api=True: a registry with the referrers API (what distribution 3 does): a manifest PUT with a
    # subject is answered with OCI-Subject and listed under /referrers/<subject digest>.
    api = False
    listed: dict[str, list[dict]]


class _Forward(http.server.BaseHTTPRequestHandler):
    def _go(self) -> None:
        assert isinstance(self.server, _Proxy)
        if "/referrers/" in self.path and self.server.referrers_answer is not None:
            self.server.referrers_asked += 1
            status, kind, body = self.server.referrers_answer
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if "/referrers/" in self.path and self.server.api:
            self.server.referrers_asked += 1
            subject = self.path.rsplit("/", 1)[1]
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.server.listed.get(subject, [])}
            body = json.dumps(index).encode()
            self.send_response(200)
            self.send_header("Content-Type", OCI_INDEX)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        resp = requests.request(self.command, self.server.upstream + self.path, data=sent, headers=headers,
                                allow_redirects=False, timeout=30)
        self.send_response(resp.status_code)
        if self.server.api and self.command == "PUT" and "/manifests/" in self.path and resp.status_code == 201:
            doc = json.loads(sent or b"{}")
            if isinstance(doc.get("subject"), dict):
                self.server.listed.setdefault(doc["subject"]["digest"], []).append(
                    {"mediaType": doc["mediaType"], "digest": resp.headers["Docker-Content-Digest"],
                     "size": len(sent or b""), "artifactType": doc.get("artifactType"),
                     "annotations": doc.get("annotations", {})})
                self.send_header("OCI-Subject", doc["subject"]["digest"])
        for k, v in resp.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.content)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _go

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def proxy(upstream: str, answer: tuple[int, str, bytes] | None, api: bool = False) -> Iterator[_Proxy]:
    server = _Proxy(("127.0.0.1", 0), _Forward)
    server.upstream, server.referrers_answer, server.api, server.listed = f"http://{upstream}", answer, api, {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def host_of(server: _Proxy) -> str:
    return f"127.0.0.1:{server.server_address[1]}"


# ---------------------------------------------------------------- DSSE


def test_pae_is_the_dsse_spec_encoding() -> None:
    # The example of github.com/secure-systems-lab/dsse protocol.md
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert dsse.pae("t", b"") == b"DSSEv1 1 t 0 "
    assert dsse.pae("\u00e9", b"x") == b"DSSEv1 2 \xc3\xa9 1 x"  # lengths are of bytes


def test_envelope_signature_verifies_with_openssl_over_pae(keys, tmp_path: Path) -> None:
    env = json.loads(dsse.envelope(b'{"hello":"world"}', signer(keys)))
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(env["payload"]) == b'{"hello":"world"}'
    (tmp_path / "signed").write_bytes(dsse.pae(env["payloadType"], b'{"hello":"world"}'))
    (tmp_path / "sig").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
    out = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(keys["pub"]), "-signature",
                          str(tmp_path / "sig"), str(tmp_path / "signed")], capture_output=True, text=True)
    assert out.returncode == 0 and "Verified OK" in out.stdout, out.stdout + out.stderr
    # the same key and payload give the same envelope (RFC 6979): attesting twice stores nothing new
    assert dsse.envelope(b'{"hello":"world"}', signer(keys)) == dsse.envelope(b'{"hello":"world"}', signer(keys))


# ---------------------------------------------------------------- what the statements hold


def test_provenance_names_the_chain_locks_by_their_files_sha256(stack: Stack) -> None:
    name = "127.0.0.1:5000/team/jupyter"
    data = provenance.provenance_statement(name, stack.graph, stack.locks, "jupyter", stack.records)
    doc = json.loads(data)
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # canonical
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["subject"] == [{"name": name, "digest": {"sha256": stack.digest.split(":")[1]}}]
    build = doc["predicate"]["buildDefinition"]
    external = build["externalParameters"]
    assert external["recipe"] == "jupyter"
    assert external["recipeHash"] == stack.graph.recipes["jupyter"].recipe_hash
    for entry, recipe in zip(external["chain"], CHAIN, strict=True):
        file_sha = hashlib.sha256(lock_path(STACK, recipe).read_bytes()).hexdigest()
        assert entry == {"recipe": recipe, "lockHash": f"sha256:{file_sha}",
                         "recipeHash": stack.graph.recipes[recipe].recipe_hash}
    assert external["lockHash"] == external["chain"][-1]["lockHash"]
    assert build["internalParameters"] == {"normalizerVersion": NORMALIZER_VERSION,
                                           "builderVersion": BUILDER_VERSION,
                                           "sourceDateEpoch": stack.locks["jupyter"].source_date_epoch}
    deps = build["resolvedDependencies"]
    parents = [d for d in deps if d["annotations"]["kind"] == "parent-image"]
    assert [p["digest"]["sha256"] for p in parents] == [r.manifest_digest.split(":")[1] for r in stack.records[:2]]
    debs = [d for d in deps if d["annotations"]["kind"] == "deb"]
    assert debs and all(d["uri"].startswith("pkg:deb/debian/") and len(d["digest"]["sha256"]) == 64 for d in debs)
    assert {d["annotations"]["layer"] for d in deps if d["annotations"]["kind"] != "parent-image"} == set(CHAIN)
    assert doc["predicate"]["runDetails"]["builder"]["id"].startswith("https://buildsys.invalid/builder/buildsys@")
    # no wall clock anywhere: the same inputs, the same bytes
    assert "startedOn" not in data.decode() and "finishedOn" not in data.decode()
    assert provenance.provenance_statement(name, stack.graph, stack.locks, "jupyter", stack.records) == data
    with_zstd = json.loads(provenance.provenance_statement(name, stack.graph, stack.locks, "jupyter",
                                                           stack.records, compression="zstd"))
    assert with_zstd["predicate"]["buildDefinition"]["internalParameters"]["compression"] == "zstd"


# ---------------------------------------------------------------- attest, list, verify


def test_attest_list_and_verify(registry, stack: Stack, keys) -> None:
    repo = "attest/round-trip"
    stack.push(registry.host, repo)
    started = time.monotonic()
    out = json.loads(ok(bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo}", "--key",
                           str(keys["key"]), "--json")).stdout)
    TIMINGS["attest (CLI, in-process)"] = time.monotonic() - started
    assert out["manifest_digest"] == stack.digest and out["storage"] == "fallback-tag"
    assert out["index_tag"] == f"{registry.host}/{repo}:sha256-{stack.digest.split(':')[1]}"
    assert [a["predicate_type"] for a in out["attestations"]] == [provenance.SLSA_PROVENANCE,
                                                                  provenance.CYCLONEDX_BOM]
    assert all(a["added"] for a in out["attestations"])

    # the registry has no referrers API: a plain-text 404, the fallback's signal
    assert referrers.referrers_api(Registry(registry.host), repo, stack.digest) is None
    index = index_of(registry.host, repo, stack.digest)
    assert [(d["digest"], d["artifactType"], d["annotations"]["in-toto.io/predicate-type"])
            for d in index["manifests"]] == [(a["manifest_digest"], "application/vnd.in-toto+json",
                                              a["predicate_type"]) for a in out["attestations"]]
    # each is an OCI 1.1 artifact manifest whose subject is the image
    data, media, _ = Registry(registry.host).get_manifest(repo, out["attestations"][0]["manifest_digest"])
    manifest = json.loads(data)
    assert media == OCI_MANIFEST and manifest["artifactType"] == "application/vnd.in-toto+json"
    assert manifest["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                  "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()}
    assert manifest["subject"] == {"mediaType": OCI_MANIFEST, "digest": stack.digest,
                                   "size": len(stack.layout.read_blob(stack.digest))}
    assert [la["mediaType"] for la in manifest["layers"]] == ["application/vnd.dsse.envelope.v1+json"]
    # cosign's signature tag is untouched
    assert not Registry(registry.host).has_manifest(repo, signing.signature_tag(stack.digest))

    started = time.monotonic()
    listed = json.loads(ok(bs(stack.store, "attestations", f"{registry.host}/{repo}@{stack.digest}", "--key",
                              str(keys["pub"]), "--json")).stdout)
    TIMINGS["attestations --key (CLI, in-process)"] = time.monotonic() - started
    assert listed["source"] == "fallback-tag"
    assert [(a["predicate_type"], a["verified"]) for a in listed["attestations"]] == \
        [(provenance.SLSA_PROVENANCE, True), (provenance.CYCLONEDX_BOM, True)]
    text = ok(bs(stack.store, "attestations", f"{registry.host}/{repo}@{stack.digest}")).stdout
    assert "2 attestation(s), from the fallback-tag" in text and text.count("unverified (no --key)") == 2

    # the statement the registry serves is the one made from the locks
    reg = Registry(registry.host)
    found = attest.list_attestations(reg, f"{registry.host}/{repo}@{stack.digest}",
                                     keyfiles.KeyVerifier(keyfiles.load_public_key(keys["pub"])))
    prov = next(a for a in found.attestations if a.predicate_type == provenance.SLSA_PROVENANCE)
    assert prov.statement == json.loads(provenance.provenance_statement(  # pushed as stored: "none"
        f"{registry.host}/{repo}", stack.graph, stack.locks, "jupyter", stack.records, compression="none"))
    bom = next(a for a in found.attestations if a.predicate_type == provenance.CYCLONEDX_BOM)
    assert bom.statement["predicate"]["metadata"]["component"]["version"] == stack.digest

    # a second attest adds nothing: the same envelopes (RFC 6979), each listed once
    again = json.loads(ok(bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo}", "--key",
                             str(keys["key"]), "--json")).stdout)
    assert [a["manifest_digest"] for a in again["attestations"]] == \
        [a["manifest_digest"] for a in out["attestations"]]
    assert not any(a["added"] for a in again["attestations"])
    assert len(index_of(registry.host, repo, stack.digest)["manifests"]) == 2


def test_wrong_key_is_refused(registry, stack: Stack, keys) -> None:
    repo = "attest/wrong-key"
    stack.push(registry.host, repo)
    ok(bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo}", "--key", str(keys["key"])))
    result = bs(stack.store, "attestations", f"{registry.host}/{repo}@{stack.digest}", "--key",
                str(keys["other.pub"]))
    assert result.exit_code == 5, result.output
    other = keyfiles.key_fingerprint(keyfiles.load_public_key(keys["other.pub"]))
    assert f"none of its 2 attestation(s) is signed by the key {other}" in result.output
    # a second party's attestation beside ours: each key verifies its own, the other is listed as not its
    ok(bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo}", "--key", str(keys["other.key"])))
    ref = f"{registry.host}/{repo}@{stack.digest}"
    for pub, mine in (("pub", 0), ("other.pub", 2)):
        listed = json.loads(ok(bs(stack.store, "attestations", ref, "--key", str(keys[pub]), "--json")).stdout)
        assert [a["verified"] for a in listed["attestations"]] == [i in (mine, mine + 1) for i in range(4)]
    text = ok(bs(stack.store, "attestations", ref, "--key", str(keys["pub"]))).stdout
    assert text.count("NOT signed by key") == 2 and text.count("verified (key") == 2


def test_no_attestation_for_a_digest_that_was_not_pushed(registry, stack: Stack, keys) -> None:
    repo = "attest/not-pushed"
    result = bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo}", "--key", str(keys["key"]))
    assert result.exit_code == 1, result.output
    assert (f"{registry.host}/{repo}: the image of jupyter's current locks ({stack.digest}, as built or as this "
            "store compressed it): not in the registry; no attestation") in result.output
    reg = Registry(registry.host)
    assert not reg.has_manifest(repo, referrers.referrers_tag(stack.digest))  # nothing written
    # and one with no attestations, listed with a key, proves nothing (exit 5); without one, says so
    stack.push(registry.host, repo)
    other = stack.records[0].manifest_digest
    result = bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo}@{other}", "--key", str(keys["key"]))
    assert result.exit_code == 2 and f"names {other}, but the image of jupyter's current locks was published as " \
        f"{stack.digest}" in result.output, result.output
    assert "no attestations" in ok(bs(stack.store, "attestations", f"{registry.host}/{repo}@{stack.digest}")).stdout
    result = bs(stack.store, "attestations", f"{registry.host}/{repo}@{stack.digest}", "--key", str(keys["pub"]))
    assert result.exit_code == 5 and "no attestations" in result.output


def test_fallback_index_is_created_then_updated_keeping_others(registry, stack: Stack, keys) -> None:
    repo = "attest/index"
    stack.push(registry.host, repo)
    reg = Registry(registry.host)
    # another tool's referrer (not in-toto) already listed: kept, and skipped when listing
    reg.push_blob(repo, "sha256:" + hashlib.sha256(b"{}").hexdigest(), 2, b"{}")
    thing = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.thing",
                        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                   "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
                        "layers": []}).encode()
    foreign = {"mediaType": OCI_MANIFEST, "digest": reg.put_manifest(repo, "thing", thing, OCI_MANIFEST),
               "size": len(thing), "artifactType": "application/vnd.example.thing"}
    tag = referrers.referrers_tag(stack.digest)
    assert tag != signing.signature_tag(stack.digest)
    name = f"{registry.host}/{repo}"
    subject = {"mediaType": OCI_MANIFEST, "digest": stack.digest, "size": len(stack.layout.read_blob(stack.digest))}
    prov = provenance.provenance_statement(name, stack.graph, stack.locks, "jupyter", stack.records)
    one, where = attest.attach(reg, repo, subject, dsse.envelope(prov, signer(keys)), provenance.SLSA_PROVENANCE)
    assert where == "fallback-tag" and one.added
    assert [d["digest"] for d in index_of(registry.host, repo, stack.digest)["manifests"]] == [one.manifest_digest]
    index = index_of(registry.host, repo, stack.digest)
    index["manifests"].append(foreign)
    reg.put_manifest(repo, tag, json.dumps(index).encode(), OCI_INDEX)
    bom = provenance.sbom_statement(name, stack.graph, stack.locks, "jupyter", stack.records)
    two, _ = attest.attach(reg, repo, subject, dsse.envelope(bom, signer(keys)), provenance.CYCLONEDX_BOM)
    assert [d["digest"] for d in index_of(registry.host, repo, stack.digest)["manifests"]] == \
        [one.manifest_digest, foreign["digest"], two.manifest_digest]
    listed = attest.list_attestations(reg, f"{name}@{stack.digest}")
    assert [a.manifest_digest for a in listed.attestations] == [one.manifest_digest, two.manifest_digest]
    # an index tag that is not an index is not overwritten
    other_repo = "attest/index-clobber"
    stack.push(registry.host, other_repo)
    reg.put_manifest(other_repo, tag, stack.layout.read_blob(stack.digest), OCI_MANIFEST)
    with pytest.raises(RegistryDataError, match="not an OCI index"):
        attest.attach(reg, other_repo, subject, dsse.envelope(prov, signer(keys)), provenance.SLSA_PROVENANCE)
    assert reg.get_manifest(other_repo, tag)[2] == stack.digest


@pytest.mark.parametrize("answer", [
    (200, "text/html; charset=utf-8", b"<!doctype html><html><body>Registry UI</body></html>"),
    (200, "text/plain", b"not here"),
    (404, "application/json", b'{"errors":[{"code":"NAME_UNKNOWN","message":"no such thing"}]}'),
    (405, "text/plain", b"method not allowed"),
], ids=["html", "text", "json-404", "405"])
def test_referrers_endpoint_html_or_404_means_the_fallback(registry, stack: Stack, keys, answer) -> None:
    repo = f"attest/proxied-{answer[0]}-{answer[1].split('/')[1].split(';')[0]}"
    stack.push(registry.host, repo)
    with proxy(registry.host, answer) as server:
        host = host_of(server)
        ok(bs(stack.store, "attest", "jupyter", "--to", f"{host}/{repo}", "--key", str(keys["key"])))
        listed = json.loads(ok(bs(stack.store, "attestations", f"{host}/{repo}@{stack.digest}", "--key",
                                  str(keys["pub"]), "--json")).stdout)
        assert server.referrers_asked >= 3  # once per attestation pushed, once to list
    assert listed["source"] == "fallback-tag" and len(listed["attestations"]) == 2
    assert len(index_of(registry.host, repo, stack.digest)["manifests"]) == 2


def test_referrers_answer_that_is_json_but_not_an_index_is_named(registry, stack: Stack) -> None:
    repo = "attest/bad-referrers"
    stack.push(registry.host, repo)
    with proxy(registry.host, (200, "application/vnd.oci.image.index.v1+json", b'{"manifests": 7}')) as server:
        result = bs(stack.store, "attestations", f"{host_of(server)}/{repo}@{stack.digest}")
    assert result.exit_code == 1
    assert f"referrers of {repo}@{stack.digest}: manifests: missing or not a list" in result.output
    with proxy(registry.host, (200, "application/json", b'{"manifests": [')) as server:
        result = bs(stack.store, "attestations", f"{host_of(server)}/{repo}@{stack.digest}")
    assert result.exit_code == 1 and "says it is JSON and is not" in result.output


def test_referrers_api_index_is_used_when_the_registry_has_one(registry, stack: Stack, keys) -> None:
    """A registry with the API lists what it holds; nothing is read from (or written to) the tag."""
    repo = "attest/api"
    stack.push(registry.host, repo)
    ok(bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo}", "--key", str(keys["key"])))
    index = index_of(registry.host, repo, stack.digest)
    only_bom = {**index, "manifests": index["manifests"][1:]}
    with proxy(registry.host, (200, OCI_INDEX, json.dumps(only_bom).encode())) as server:
        listed = json.loads(ok(bs(stack.store, "attestations", f"{host_of(server)}/{repo}@{stack.digest}",
                                  "--json")).stdout)
    assert listed["source"] == "referrers-api"
    assert [a["predicate_type"] for a in listed["attestations"]] == [provenance.CYCLONEDX_BOM]


def test_an_attestation_about_another_image_is_refused(registry, stack: Stack, keys, tmp_path: Path) -> None:
    """A signed statement for image A attached to image B (manifest subject B): refused, even with the key."""
    repo = "attest/copied"
    stack.push(registry.host, repo)
    reg = Registry(registry.host)
    other = stack.records[1]  # python's image, also pushed
    b_subject = {"mediaType": OCI_MANIFEST, "digest": other.manifest_digest,
                 "size": len(stack.layout.read_blob(other.manifest_digest))}
    prov = provenance.provenance_statement(f"{registry.host}/{repo}", stack.graph, stack.locks, "jupyter",
                                           stack.records)  # about jupyter's image
    attest.attach(reg, repo, b_subject, dsse.envelope(prov, signer(keys)), provenance.SLSA_PROVENANCE)
    result = bs(stack.store, "attestations", f"{registry.host}/{repo}@{other.manifest_digest}", "--key",
                str(keys["pub"]))
    assert result.exit_code == 5, result.output
    assert f"is about another image, {registry.host}/{repo}@{stack.digest}" in result.output
    # an index entry whose manifest's subject is another image: refused too
    repo2 = "attest/copied-index"
    stack.push(registry.host, repo2)
    ok(bs(stack.store, "attest", "jupyter", "--to", f"{registry.host}/{repo2}", "--key", str(keys["key"])))
    entries = index_of(registry.host, repo2, stack.digest)["manifests"]
    moved = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    reg.put_manifest(repo2, referrers.referrers_tag(other.manifest_digest), json.dumps(moved).encode(), OCI_INDEX)
    result = bs(stack.store, "attestations", f"{registry.host}/{repo2}@{other.manifest_digest}")
    assert result.exit_code == 5, result.output
    assert "is about another image" in result.output and stack.digest in result.output


def test_timings_are_reported(registry, stack: Stack, keys) -> None:
    """Milliseconds of attest and list as functions (no CLI start), printed for the report."""
    repo = "attest/timing"
    stack.push(registry.host, repo)
    reg = Registry(registry.host)
    shipped = stored_as_is(stack.layout, stack.digest)
    started = time.monotonic()
    attest.attest_records(reg, repo, stack.graph, stack.locks, "jupyter", stack.records, shipped, signer(keys))
    first = time.monotonic() - started
    started = time.monotonic()
    attest.attest_records(reg, repo, stack.graph, stack.locks, "jupyter", stack.records, shipped, signer(keys))
    second = time.monotonic() - started
    verifier = keyfiles.KeyVerifier(keyfiles.load_public_key(keys["pub"]))
    started = time.monotonic()
    listed = attest.list_attestations(reg, f"{registry.host}/{repo}@{stack.digest}", verifier)
    listing = time.monotonic() - started
    assert len(listed.attestations) == 2 and all(a.verified for a in listed.attestations)
    started = time.monotonic()
    provenance.sbom_statement(f"{registry.host}/{repo}", stack.graph, stack.locks, "jupyter", stack.records)
    sbom_only = time.monotonic() - started
    TIMINGS.update({"attest_records (first)": first, "attest_records (again)": second,
                    "list_attestations --key": listing, "of which the SBOM statement": sbom_only})
    print("\n" + "\n".join(f"{k}: {v * 1000:.0f} ms" for k, v in TIMINGS.items()))


def test_provenance_of_a_registry_root_names_its_locked_reference_and_digest(registry, tmp_path: Path) -> None:
    from regimage import push_tiny_image

    from buildsys.model.lockfile import load_lock

    image = push_tiny_image(registry.host, "attest/base-image")
    ref = f"{registry.host}/attest/base-image:1.0"
    proj = tmp_path / "proj"
    (proj / "recipes").mkdir(parents=True)
    (proj / "recipes" / "root.toml").write_text(f'description = "a registry root"\n[base]\nimage = "{ref}"\n')
    store = tmp_path / "store"
    result = CliRunner().invoke(cli, ["-C", str(proj), "--store", str(store), "lock", "root"])
    assert result.exit_code == 0, result.output
    graph = build_graph(load_recipes(proj))
    locks = {"root": load_lock(proj, "root")}
    record = LayerRecord("root", "sha256:" + "1" * 64, "sha256:" + "2" * 64, (), ())
    doc = json.loads(provenance.provenance_statement("h/r", graph, locks, "root", [record]))
    deps = doc["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps == [{"name": ref, "uri": f"oci://{ref}",
                     "digest": {"sha256": image.amd64_manifest.split(":")[1]},
                     "mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "annotations": {"kind": "base-image", "platform": "linux/amd64"}}]
    chain = doc["predicate"]["buildDefinition"]["externalParameters"]["chain"]
    assert chain == [{"recipe": "root", "recipeHash": graph.recipes["root"].recipe_hash,
                      "lockHash": "sha256:" + hashlib.sha256((proj / "locks" / "root.lock").read_bytes()).hexdigest()}]


def test_a_changed_payload_a_mislabelled_or_a_broken_envelope_is_refused(registry, stack: Stack, keys) -> None:
    """The statement swapped after signing (no key accepts it), an annotation that is not the signed
    predicate, an envelope that is not JSON: each refused, named."""
    repo = "attest/tampered"
    stack.push(registry.host, repo)
    reg = Registry(registry.host)
    other = stack.records[1]
    subject = {"mediaType": OCI_MANIFEST, "digest": other.manifest_digest,
               "size": len(stack.layout.read_blob(other.manifest_digest))}
    name = f"{registry.host}/{repo}"
    signed = json.loads(dsse.envelope(
        provenance.provenance_statement(name, stack.graph, stack.locks, "jupyter", stack.records), signer(keys)))
    swapped = provenance.provenance_statement(name, stack.graph, stack.locks, "python", stack.records[:2])
    forged = json.dumps({**signed, "payload": base64.b64encode(swapped).decode()}).encode()
    attest.attach(reg, repo, subject, forged, provenance.SLSA_PROVENANCE)
    ref = f"{name}@{other.manifest_digest}"
    # about this image, so listed without a key (unverified) ...
    listed = json.loads(ok(bs(stack.store, "attestations", ref, "--json")).stdout)
    assert [a["verified"] for a in listed["attestations"]] == [False]
    # ... and refused with the key that signed the original statement
    result = bs(stack.store, "attestations", ref, "--key", str(keys["pub"]))
    assert result.exit_code == 5, result.output
    assert "verifies over its payload with this key" in result.output
    # an annotation that says another predicate than the signed statement, and an envelope that is not JSON
    repo2 = "attest/mislabelled"
    stack.push(registry.host, repo2)
    ref2 = f"{registry.host}/{repo2}@{stack.digest}"
    subject2 = {"mediaType": OCI_MANIFEST, "digest": stack.digest, "size": len(stack.layout.read_blob(stack.digest))}
    prov = provenance.provenance_statement(f"{registry.host}/{repo2}", stack.graph, stack.locks, "jupyter",
                                           stack.records)
    attest.attach(reg, repo2, subject2, dsse.envelope(prov, signer(keys)), provenance.CYCLONEDX_BOM)
    result = bs(stack.store, "attestations", ref2, "--key", str(keys["pub"]))
    assert result.exit_code == 5, result.output
    assert f"its manifest says '{provenance.CYCLONEDX_BOM}', its signed statement '{provenance.SLSA_PROVENANCE}'" \
        in result.output
    repo3 = "attest/garbage"
    stack.push(registry.host, repo3)
    attest.attach(reg, repo3, subject2, b"<html>not an envelope</html>", provenance.SLSA_PROVENANCE)
    result = bs(stack.store, "attestations", f"{registry.host}/{repo3}@{stack.digest}")
    assert result.exit_code == 5 and "the envelope is not JSON" in result.output, result.output


def test_a_registry_with_the_referrers_api_lists_them_and_no_tag_is_written(registry, stack: Stack, keys) -> None:
    """OCI-Subject in the PUT's answer: the registry indexes them; the sha256-<hex> tag stays absent."""
    repo = "attest/with-api"
    stack.push(registry.host, repo)
    with proxy(registry.host, None, api=True) as server:
        host = host_of(server)
        out = json.loads(ok(bs(stack.store, "attest", "jupyter", "--to", f"{host}/{repo}", "--key", str(keys["key"]),
                               "--json")).stdout)
        assert out["storage"] == "referrers-api" and out["index_tag"] is None
        listed = json.loads(ok(bs(stack.store, "attestations", f"{host}/{repo}@{stack.digest}", "--key",
                                  str(keys["pub"]), "--json")).stdout)
    assert listed["source"] == "referrers-api"
    assert [(a["predicate_type"], a["verified"]) for a in listed["attestations"]] == \
        [(provenance.SLSA_PROVENANCE, True), (provenance.CYCLONEDX_BOM, True)]
    assert not Registry(registry.host).has_manifest(repo, referrers.referrers_tag(stack.digest))
