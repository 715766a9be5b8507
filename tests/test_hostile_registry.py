"""A registry that lies, against buildsys's one HTTP client: one test per class of attack.

Credentials go only where they belong (asserted on what the lying servers
received), reads are bounded (bytes the server got out before buildsys hung
up), a dripping server meets a deadline, malformed documents are named
errors before anything is written, and a full disk leaves no partial file.

"Another host" is played on loopback: 127.0.0.2 beside 127.0.0.1, with the
client's loopback rule injected (``only_127_0_0_1``) so that 127.0.0.2 counts
as a remote host for the clear-text rules, as a real one would.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from helpers import bs
from lyingregistry import (
    BASIC,
    OCI_INDEX,
    OCI_MANIFEST,
    PASSWORD,
    TOKEN,
    USER,
    Lies,
    config,
    digest,
    lying_registry,
    only_127_0_0_1,
)

from buildsys.core import net
from buildsys.core.store import Artifact, Store
from buildsys.fetch.vendor import DownloadFailed, SizeMismatch, StoreWriteFailed, fetch
from buildsys.oci.registry import BlobSizeMismatch, Registry, RegistryAuthError, RegistryError

LAYER = b"a layer, as tar bytes would be\n" * 40
CREDS = (USER, PASSWORD)


def registry(host: str, **kw: object) -> Registry:
    return Registry(host, credentials=CREDS, loopback=only_127_0_0_1, backoff=0.01, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- credentials


def test_a_plain_http_realm_on_another_host_never_sees_the_credentials() -> None:
    with lying_registry(Lies(token_endpoint=True), bind="127.0.0.2") as realm, \
            lying_registry(Lies(realm="")) as reg:
        reg.lies.realm = f"{realm.url}/token"
        with pytest.raises(RegistryError) as exc:
            registry(reg.host).ping()
        assert "plain http to 127.0.0.2" in exc.value.message and realm.url in exc.value.message
        assert realm.received == []  # not even an anonymous request: the URL was refused before it was sent
        assert all(a is None for a in reg.authorizations())


def test_a_realm_on_another_origin_gets_basic_only_as_the_token_flow_asks() -> None:
    """Loopback (or HTTPS) realm on another port: Basic to the realm, the token to the registry, nothing else."""
    with lying_registry(Lies(token_endpoint=True)) as realm, lying_registry(Lies(realm="")) as reg:
        reg.lies.realm = f"{realm.url}/token"
        registry(reg.host).ping()
        assert realm.authorizations() == [BASIC]
        assert reg.authorizations() == [None, f"Bearer {TOKEN}"]


def test_an_upload_location_on_another_origin_gets_no_authorization() -> None:
    with lying_registry() as other, lying_registry(Lies(basic=True)) as reg:
        reg.lies.location = f"{other.url}/upload/elsewhere"
        assert registry(reg.host).push_blob("team/app", digest(LAYER), len(LAYER), LAYER)
        assert [(r.method, r.headers.get("Authorization"), r.body_bytes) for r in other.received] == \
            [("PUT", None, len(LAYER))]  # the bytes went there, the credentials did not
        assert BASIC in reg.authorizations()


def test_an_upload_location_on_plain_http_to_another_host_is_refused() -> None:
    with lying_registry(bind="127.0.0.2") as other, lying_registry(Lies(basic=True)) as reg:
        reg.lies.location = f"{other.url}/upload/elsewhere"
        with pytest.raises(RegistryError, match="plain http to 127.0.0.2"):
            registry(reg.host).push_blob("team/app", digest(LAYER), len(LAYER), LAYER)
        assert other.received == []


def test_plain_http_to_a_remote_registry_never_carries_credentials() -> None:
    """``--insecure`` allows plain http to that registry; it does not put the login in clear text."""
    with lying_registry(Lies(basic=True), bind="127.0.0.2") as reg:
        with pytest.raises(RegistryAuthError, match="plain http to 127.0.0.2.*which is not this machine"):
            registry(reg.host, insecure=True).ping()
        assert reg.authorizations() == [None]
        with pytest.raises(RegistryError, match="TLS failed"):  # without --insecure: HTTPS, failed once
            registry(reg.host).ping()
        assert len(reg.received) == 1


def test_a_redirect_to_a_file_url_is_refused_once_not_retried() -> None:
    with lying_registry(Lies(blob_redirect="file:///etc/passwd")) as reg:
        reg.blobs[digest(LAYER)] = LAYER
        started = time.monotonic()
        with pytest.raises(RegistryError, match="refused: a file URL"):
            registry(reg.host).get_blob("x", digest(LAYER), io.BytesIO(), len(LAYER))
        assert [r.method for r in reg.received] == ["GET"] and time.monotonic() - started < 2


# ---------------------------------------------------------------- bounds


def test_an_endless_blob_is_read_to_its_size_plus_one_byte() -> None:
    with lying_registry(Lies(endless=True)) as reg:
        reg.blobs[digest(LAYER)] = LAYER
        out = io.BytesIO()
        with pytest.raises(BlobSizeMismatch) as exc:
            registry(reg.host).get_blob("x", digest(LAYER), out, len(LAYER))
        assert out.tell() <= len(LAYER) + 1
        assert f"not the {len(LAYER)} its manifest declares" in exc.value.message
        assert "sha256" not in exc.value.problem.split("came back")[1]  # a size problem, said as one


def test_a_short_blob_is_a_size_mismatch_not_a_sha256_one() -> None:
    with lying_registry(Lies(short_length=True)) as reg:
        reg.blobs[digest(LAYER)] = LAYER
        with pytest.raises(BlobSizeMismatch, match=f"came back with {len(LAYER) - 10} bytes, not the {len(LAYER)}"):
            registry(reg.host).get_blob("x", digest(LAYER), io.BytesIO(), len(LAYER))


def test_fetch_of_an_endless_registry_blob_writes_at_most_one_byte_more(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with lying_registry(Lies(endless=True)) as reg:
        reg.blobs[digest(LAYER)] = LAYER
        art = Artifact("image-layer", "layer", "1", "layer.tar", digest(LAYER)[7:], len(LAYER),
                       (f"oci-registry://{reg.host}/x/blobs/{digest(LAYER)}",), local=True)
        with pytest.raises(SizeMismatch, match=f"stopped reading at {len(LAYER) + 1}"):
            fetch(store, [art], progress=False)
        assert reg.sent_bytes < 64 << 20  # what the server got out before the hang-up (socket buffers)
    assert list(store.vendor.glob("*")) == [] if store.vendor.exists() else True


def test_fetch_of_a_blob_the_registry_lacks_says_what_the_registry_said(tmp_path: Path) -> None:
    """A registry's refusal reaches ``fetch`` as the registry said it, tried once (no transient retries)."""
    with lying_registry() as reg:
        art = Artifact("image-layer", "layer", "1", "layer.tar", digest(LAYER)[7:], len(LAYER),
                       (f"oci-registry://{reg.host}/x/blobs/{digest(LAYER)}",), local=True)
        with pytest.raises(DownloadFailed) as exc:
            fetch(Store(tmp_path / "store"), [art], progress=False)
    assert f"registry {reg.host}: " in exc.value.message and "attempt" not in exc.value.message, exc.value.message


def test_fetch_of_an_image_asks_the_token_service_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One registry client per registry and repository for a fetch run: one token for all its blobs."""
    layers = [LAYER + bytes([i]) for i in range(3)]
    docker = tmp_path / "docker"
    docker.mkdir()
    with lying_registry(Lies(realm="")) as reg:
        reg.lies.realm = f"{reg.url}/token"
        (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": BASIC.split()[1]}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        manifest = reg.put_image("x", "1", config([digest(la) for la in layers]), layers)
        cfg = config([digest(la) for la in layers])
        blobs = [("manifests", manifest, reg.manifests[manifest][0]), ("blobs", digest(cfg), cfg),
                 *(("blobs", digest(la), la) for la in layers)]
        arts = [Artifact("image", "x", f"blob {i}", f"{i}.blob", d[7:], len(data),
                         (f"oci-registry://{reg.host}/x/{kind}/{d}",), local=True)
                for i, (kind, d, data) in enumerate(blobs)]
        report = fetch(Store(tmp_path / "store"), arts, progress=False)
        tokens = [r for r in reg.received if r.path.startswith("/token")]
        assert report.downloaded == len(arts) == 5
        assert len(tokens) == 1, [r.path for r in reg.received]
        assert all(r.headers.get("Authorization") == BASIC for r in tokens)


def test_a_huge_manifest_is_refused_at_four_mib() -> None:
    with lying_registry(Lies(endless=True)) as reg:
        reg.manifests["1"] = (b'{"schemaVersion": 2, "layers": [' + b" " * 5000, OCI_MANIFEST)  # 5 MB
        with pytest.raises(RegistryError) as exc:
            registry(reg.host).get_manifest("x", "1")
        assert f"larger than {net.MAX_DOCUMENT} bytes" in exc.value.message
        assert "declares 5032000 bytes, refused before reading" in exc.value.message  # on its Content-Length


def test_a_dripping_registry_runs_out_of_time_and_says_where() -> None:
    with lying_registry(Lies(drip=0.2)) as reg:
        reg.put_image("x", "1", config([digest(LAYER)]), [LAYER])
        started = time.monotonic()
        with pytest.raises(RegistryError) as exc:
            registry(reg.host, deadline=2.0, timeout=1.0).get_manifest("x", "1")
        took = time.monotonic() - started
        assert "ran out of time" in exc.value.message and f"{reg.url}/v2/x/manifests/1" in exc.value.message
        assert 2.0 <= took < 4.0, took


def test_a_registry_that_drips_its_headers_runs_out_of_time_and_says_where() -> None:
    """The deadline covers the status line and headers too: a byte of them every 0.1 s (each read well
    within the 1 s read timeout) would take ~15 s per answer; the 1 s deadline cuts it at once, unretried."""
    with lying_registry(Lies(drip_headers=0.1)) as reg:
        reg.put_image("x", "1", config([digest(LAYER)]), [LAYER])
        started = time.monotonic()
        with pytest.raises(RegistryError) as exc:
            registry(reg.host, deadline=1.0, timeout=1.0).get_manifest("x", "1")
        took = time.monotonic() - started
        assert "ran out of time: no complete status line and headers" in exc.value.message, exc.value.message
        assert f"{reg.url}/v2/x/manifests/1" in exc.value.message and "the deadline is 1 s" in exc.value.message
        assert 1.0 <= took < 1.5, took
        assert len(reg.received) == 1  # not tried again: a server that drips once drips again


# ---------------------------------------------------------------- malformed documents, through `lock`


ROOT = '[base]\nimage = "{ref}"\n'


def _lock(tmp_path: Path, host: str) -> tuple[int, str, Path]:
    proj = tmp_path / "proj"
    (proj / "recipes").mkdir(parents=True, exist_ok=True)
    (proj / "recipes" / "root.toml").write_text(ROOT.format(ref=f"{host}/test/x:1"))
    result = bs(proj, tmp_path / "store", "lock")
    return result.exit_code, result.output + (result.stderr or ""), proj / "locks" / "root.lock"


GOOD_CFG = config([digest(LAYER)])


def _manifest(**change: object) -> dict[str, object]:
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(LAYER), "size": len(LAYER)}
    layer.update(change)
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(GOOD_CFG),
                       "size": len(GOOD_CFG)},
            "layers": [{k: v for k, v in layer.items() if v is not None}]}


@pytest.mark.parametrize(("case", "cfg", "manifest", "named"), [
    ("config not JSON", b"{not json", None, "(the whole document): not JSON"),
    ("config a JSON list", b"[1, 2]", None, "a JSON list, not an object"),
    ("layer without digest", GOOD_CFG, _manifest(digest=None), "layers[0].digest: must be a string"),
    ("size not an integer", GOOD_CFG, _manifest(size="12"), "layers[0].size: '12' is not a whole number"),
    ("negative size", GOOD_CFG, _manifest(size=-5), "layers[0].size: -5 is not a whole number"),
    ("digest with ../", GOOD_CFG, _manifest(digest="sha256:../../etc/passwd"),
     "layers[0].digest: 'sha256:../../etc/passwd' is not"),
])
def test_malformed_registry_documents_are_named_errors_and_no_lock(tmp_path: Path, case: str, cfg: bytes,
                                                                   manifest: dict[str, object] | None,
                                                                   named: str) -> None:
    with lying_registry() as reg:
        if manifest is not None:
            reg.put_image("x", "1", cfg, [LAYER], manifest=manifest)
        else:
            reg.put_image("x", "1", cfg, [LAYER])
        code, out, lock = _lock(tmp_path, reg.host)
    assert code == 1, (case, out)
    assert f"registry {reg.host}" in out and named in out, (case, out)
    assert "Traceback" not in out and not lock.exists()


def test_an_index_entry_that_is_no_image_says_why_not_that_it_is_missing(tmp_path: Path) -> None:
    """The old message: "the index has no linux/amd64 entry (it has: linux/amd64)"."""
    with lying_registry() as reg:
        inner = reg.put_image("x", "inner", GOOD_CFG, [LAYER])
        nested = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_INDEX, "digest": inner, "size": 10,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": inner, "size": 10,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}}]}).encode()
        reg.manifests["1"] = (nested, OCI_INDEX)
        code, out, lock = _lock(tmp_path, reg.host)
    assert code == 1 and not lock.exists(), out
    assert f"linux/amd64 (a {OCI_INDEX}, not an image manifest buildsys reads)" in out, out


def test_an_index_entry_with_a_bad_digest_is_named(tmp_path: Path) -> None:
    with lying_registry() as reg:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": "sha256:../x", "size": 10,
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
        reg.manifests["1"] = (index, OCI_INDEX)
        code, out, lock = _lock(tmp_path, reg.host)
    assert code == 1 and "manifests[0].digest" in out and not lock.exists(), out


# ---------------------------------------------------------------- litter


def test_a_full_disk_during_fetch_leaves_no_partial_and_names_the_device(tmp_path: Path, small_disk: Path) -> None:
    big = bytes(range(256)) * (600 << 10)  # 150 MiB: more than the 100 MB disk holds
    with lying_registry() as reg:
        reg.blobs[digest(big)] = big
        store = Store(small_disk)
        art = Artifact("image-layer", "layer", "1", "layer.tar", digest(big)[7:], len(big),
                       (f"oci-registry://{reg.host}/x/blobs/{digest(big)}",), local=True)
        with pytest.raises(StoreWriteFailed) as exc:
            fetch(store, [art], progress=False)
    assert f"mounted at {small_disk}" in exc.value.message and "No space left" in exc.value.message
    assert not list(store.vendor.glob("*.partial"))


def test_a_garbled_last_modified_is_no_date_not_a_traceback() -> None:
    """[[files]] takes a download's epoch from Last-Modified; a server's garbage there is ignored."""
    from buildsys.ecosystems.files import _last_modified

    assert _last_modified("Wed, 21 Oct 2015 07:28:00 GMT") == 1445412480
    for garbage in ("garbage", "Wed, 99 Foo 2015 99:99:99 GMT", "", None):
        assert _last_modified(garbage) is None
