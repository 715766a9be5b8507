"""``publish`` against Debian's docker-registry on loopback, pulled back by a second dockerd.

The chain (root, tools, app) is built and verified once per session (``shipped``);
the registries and the second engine are real processes started by conftest.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import requests
from helpers import bs, copy_project, ok
from shipenv import failing_registry, free_port

from buildsys.oci.image import OciLayout
from buildsys.oci.registry import Reference, Registry

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


def built_app(store: Path) -> tuple[str, str]:
    """(manifest digest, image id) of app as the store has it."""
    layout = OciLayout(store / "oci")
    digest = layout.resolve("app")
    assert digest is not None
    manifest, _ = layout.read_image(digest)
    return digest, manifest["config"]["digest"]


def docker_config(folder: Path, host: str, user: str, password: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return folder


def tags(host: str, repo: str, auth: tuple[str, str] | None = None) -> list[str]:
    resp = requests.get(f"http://{host}/v2/{repo}/tags/list", auth=auth, timeout=10)
    if resp.status_code == 404:
        return []
    resp.raise_for_status()
    return list(resp.json().get("tags") or [])


def test_publish_pushes_the_exact_bytes_and_a_fresh_engine_pulls_the_same_image(shipped, registry,
                                                                               second_engine) -> None:
    proj, store = shipped
    digest, image_id = built_app(store)
    # The session's other tests published app to other repositories of this registry: the store remembers
    # them and would mount their blobs (test_a_publish_to_another_repository_mounts_...). Forgetting that
    # hint makes this the first publish of the image, which sends every blob.
    (store / "published" / f"{registry.host.replace(':', '_')}.json").unlink(missing_ok=True)
    result = ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/team/app:v1", "--compression", "none",
                   "--json"))
    out = json.loads(result.stdout)
    assert out["manifest_digest"] == digest and out["image_id"] == image_id and out["verified"]
    assert out["reference"] == f"{registry.host}/team/app@{digest}"
    assert out["blobs_sent"] == 4  # config + 3 layers
    # The registry serves our digest under the tag, and the bytes are the store's.
    reg = Registry(registry.host)
    data, media, served = reg.get_manifest("team/app", "v1")
    assert served == digest and data == (store / "oci" / "blobs" / "sha256" / digest[7:]).read_bytes()
    assert media == "application/vnd.oci.image.manifest.v1+json"
    # An engine that never saw the image pulls it by digest: docker's image ID is the config digest.
    ref = f"{registry.host}/team/app@{digest}"
    second_engine.docker("pull", ref)
    assert second_engine.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image_id
    run = second_engine.docker("run", "--rm", "--network", "none", ref, "sh", "-c", "jq --version; id -u")
    assert run.stdout.split() == ["jq-1.6", "1000"]
    second_engine.docker("rmi", ref)


def test_publish_again_sends_nothing_and_the_plain_output_ends_with_the_digest(shipped, registry) -> None:
    proj, store = shipped
    digest, _ = built_app(store)
    result = ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/team/app:v1", "--compression", "none"))
    assert result.stdout.strip().splitlines()[-1] == digest
    assert "0 blob(s) sent" in result.stdout and "4 already there" in result.stdout


def test_the_pull_api_checks_what_it_reads(shipped, registry) -> None:
    proj, store = shipped
    ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/team/app", "--compression", "none"))
    digest, image_id = built_app(store)
    reg = Registry(registry.host)
    data, _, served = reg.get_manifest("team/app", digest)
    manifest = json.loads(data)
    assert served == digest
    assert reg.get_blob_bytes("team/app", image_id) == (store / "oci" / "blobs" / "sha256" / image_id[7:]).read_bytes()
    assert reg.has_blob("team/app", manifest["layers"][-1]["digest"])
    assert not reg.has_manifest("team/app", "no-such-tag")


def test_a_blob_missing_in_the_registry_is_uploaded_again(shipped, registry) -> None:
    proj, store = shipped
    ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/repair/app:v1", "--compression", "none"))
    digest, _ = built_app(store)
    manifest, _ = OciLayout(store / "oci").read_image(digest)
    top = manifest["layers"][-1]["digest"][7:]
    blob = registry.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / top[:2] / top
    shutil.rmtree(blob)
    assert not Registry(registry.host).has_blob("repair/app", "sha256:" + top)
    out = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/repair/app:v1",
                           "--compression", "none", "--json")).stdout)
    assert out["blobs_sent"] == 1 and out["manifest_digest"] == digest
    assert Registry(registry.host).has_blob("repair/app", "sha256:" + top)


def test_a_publish_to_another_repository_mounts_the_blobs_the_store_published_there(shipped, registry) -> None:
    proj, store = shipped
    ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/mount-a/app:v1"))
    result = ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/mount-b/app:v1", "--json"))
    out = json.loads(result.stdout)
    assert (out["blobs_sent"], out["blobs_present"], out["bytes_sent"]) == (0, 4, 0)  # mounted, not sent
    record = json.loads((store / "published" / f"{registry.host.replace(':', '_')}.json").read_text())
    assert record["repositories"][:2] == ["mount-b/app", "mount-a/app"]
    # publish compresses (gzip) by default: the tag names the compressed form of the image the store built.
    assert out["built_manifest_digest"] == built_app(store)[0] and out["compression"].startswith("gzip")
    assert Registry(registry.host).get_manifest("mount-b/app", "v1")[2] == out["manifest_digest"]


def test_an_unverified_chain_is_refused_unless_forced(shipped, registry) -> None:
    proj, store = shipped
    verified = store / "verified"
    aside = store / "verified-aside"
    verified.rename(aside)
    try:
        refused = bs(proj, store, "publish", "app", "--to", f"{registry.host}/unverified/app:v1")
        assert refused.exit_code == 3, refused.output
        assert "never verified" in refused.stderr and "build --verify app" in refused.stderr
        assert tags(registry.host, "unverified/app") == []
        forced = ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/unverified/app:v1", "--force"))
        assert "published with --force" in forced.stderr and "never verified" in forced.stderr
        assert tags(registry.host, "unverified/app") == ["v1"]
    finally:
        aside.rename(verified)


def test_a_stale_lock_an_unknown_recipe_and_an_unbuilt_image_are_refused(shipped, registry, tmp_path) -> None:
    proj, store = shipped
    stale = copy_project(proj, tmp_path / "stale")
    recipe = stale / "recipes" / "app.toml"
    recipe.write_text(recipe.read_text().replace('APP_MODE = "test"', 'APP_MODE = "changed"'))
    result = bs(stale, store, "publish", "app", "--to", f"{registry.host}/stale/app:v1")
    assert result.exit_code == 3 and "stale" in result.stderr, result.output
    assert tags(registry.host, "stale/app") == []

    result = bs(proj, store, "publish", "ap", "--to", f"{registry.host}/x/app")
    assert result.exit_code == 2 and "did you mean 'app'" in result.stderr

    result = bs(proj, tmp_path / "empty-store", "publish", "app", "--to", f"{registry.host}/x/app")
    assert result.exit_code == 1 and "buildsys build app" in result.stderr, result.output

    result = bs(proj, store, "publish", "app", "--to", "team/app")
    assert result.exit_code == 2 and "does not name a registry" in result.stderr


def test_a_registry_that_is_down_or_failing_is_named_with_no_traceback(shipped) -> None:
    proj, store = shipped
    down = f"127.0.0.1:{free_port()}"
    result = bs(proj, store, "publish", "app", "--to", f"{down}/team/app:v1")
    assert result.exit_code == 1
    assert f"registry {down}" in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    with failing_registry() as (host, server):
        result = bs(proj, store, "publish", "app", "--to", f"{host}/team/app:v1")
        assert result.exit_code == 1
        assert f"registry {host}" in result.stderr and "HTTP 500" in result.stderr
        assert "after 4 attempt(s)" in result.stderr and server.hits == 4  # retried, with backoff
        assert "Traceback" not in result.output + result.stderr


def test_a_registry_that_refuses_the_layer_type_is_named_and_nothing_is_tagged(shipped) -> None:
    """Some registries take no zstd (or no uncompressed) layers: the refusal of the manifest names its layer
    types and says what to publish with; the tag, which comes last, is never written."""
    from lyingregistry import Lies, lying_registry

    proj, store = shipped
    with lying_registry(Lies(refuse_media="tar+zstd")) as reg:
        result = bs(proj, store, "publish", "app", "--to", f"{reg.host}/team/app:v1", "--compression", "zstd")
        assert result.exit_code == 1, result.output
        assert "refused the manifest team/app@sha256:" in result.stderr, result.stderr
        assert "application/vnd.oci.image.layer.v1.tar+zstd" in result.stderr
        assert "MANIFEST_INVALID" in result.stderr and "--compression gzip" in result.stderr
        assert "Traceback" not in result.output + result.stderr
        assert not [r for r in reg.received if r.method == "PUT" and r.path.endswith("/manifests/v1")]


def test_credentials_come_from_docker_config_and_wrong_ones_are_refused(shipped, auth_registry, tmp_path,
                                                                        monkeypatch) -> None:
    proj, store = shipped
    host = auth_registry.host
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    result = bs(proj, store, "publish", "app", "--to", f"{host}/private/app:v1")
    assert result.exit_code == 1 and "docker login" in result.stderr and f"registry {host}" in result.stderr

    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "wrong", host, "builder", "nope")))
    result = bs(proj, store, "publish", "app", "--to", f"{host}/private/app:v1")
    assert result.exit_code == 1 and "credentials refused" in result.stderr, result.output
    assert "Traceback" not in result.output + result.stderr
    assert tags(host, "private/app", ("builder", "s3cret")) == []  # nothing tagged

    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "right", host, "builder", "s3cret")))
    out = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{host}/private/app:v1", "--json")).stdout)
    assert out["built_manifest_digest"] == built_app(store)[0]
    assert tags(host, "private/app", ("builder", "s3cret")) == ["v1"]


def test_references_are_parsed_strictly() -> None:
    ref = Reference.parse("127.0.0.1:5000/team/jupyter:2025-06")
    assert (ref.host, ref.repository, ref.tag, ref.digest) == ("127.0.0.1:5000", "team/jupyter", "2025-06", None)
    assert Reference.parse("localhost/a").tag is None
    assert Reference.parse("reg.example.org/a/b@sha256:" + "0" * 64).digest == "sha256:" + "0" * 64
    for bad in ("team/app", "127.0.0.1:5000/Team/app", "127.0.0.1:5000/app:bad tag", "r.io/a@sha256:12"):
        with pytest.raises(Exception, match="registry|valid|digest"):
            Reference.parse(bad)
    assert Registry("127.0.0.1:5000").scheme == "http" and Registry("[::1]:5000").scheme == "http"
    assert Registry("reg.example.org").scheme == "https"
    assert Registry("reg.example.org", insecure=True).scheme == "http"


def test_chunked_upload_and_a_mismatching_blob_is_refused(registry, tmp_path) -> None:
    import hashlib
    import os

    from buildsys.oci.registry import RegistryError

    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    reg = Registry(registry.host)
    assert reg.push_blob("chunks/x", digest, len(data), path, chunk_size=1 << 20)
    assert not reg.push_blob("chunks/x", digest, len(data), path, chunk_size=1 << 20)  # there already
    assert reg.get_blob_bytes("chunks/x", digest) == data
    wrong = "sha256:" + "0" * 64
    with pytest.raises(RegistryError, match="DIGEST_INVALID|digest"):
        reg.push_blob("chunks/x", wrong, len(data), data)


def test_the_bearer_token_flow_uses_docker_config_credentials(tmp_path, monkeypatch) -> None:
    from shipenv import token_registry

    from buildsys.oci.registry import RegistryAuthError

    with token_registry() as (host, server):
        monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "good", host, "robot", "tok3n-pass")))
        Registry(host).ping()  # 401 Bearer -> token from the realm with basic credentials -> 200
        (asked,) = server.token_requests
        assert "service=test-registry" in asked and "scope=repository%3Ateam%2Fapp%3Apull%2Cpush" in asked
        monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "bad", host, "robot", "wrong")))
        with pytest.raises(RegistryAuthError, match="token service .* answered HTTP 401"):
            Registry(host).ping()
