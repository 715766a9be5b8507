"""Roots on a registry image (``[base] image``): locked to digests, vendored, built with the registry gone.

The registry is Debian's docker-registry on loopback; the image is a tiny real
one pushed into it (``regimage``): a gzip, a plain and a zstd layer, a
whiteout, a multi-platform index whose first entry is arm64.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from pathlib import Path

import pytest
from helpers import bs, ok
from regimage import CREATED_EPOCH, TinyImage, push_tiny_image, registry_blob_file
from shipenv import RegistryService, docker_registry, free_port

from buildsys.oci.image import OciLayout, rfc3339
from buildsys.oci.registry import Registry

ROOT = """description = "a tiny image from a registry"
[base]
image = "{ref}"
[image]
env = {{ ROOT_SET = "1" }}
[test]
commands = ['read g < /etc/greeting && [ "$g" = "hello from the base image" ]', '[ ! -e /etc/motd ]',
            'read z < /etc/zstd-layer && [ "$z" = "unpacked with zstd" ]',
            '[ "$FROM_BASE" = yes ] && [ "$ROOT_SET" = 1 ]']
"""
CHILD = """parents = ["root"]
run = ["echo built > /etc/built", "rm /etc/os-release"]
[test]
commands = ['read b < /etc/built && [ "$b" = built ]', '[ ! -e /etc/os-release ]']
"""


def project(where: Path, ref: str, child: str | None = CHILD, root: str = ROOT) -> Path:
    (where / "recipes").mkdir(parents=True)
    (where / "recipes" / "root.toml").write_text(root.format(ref=ref))
    if child is not None:
        (where / "recipes" / "child.toml").write_text(child)
    return where


@pytest.fixture
def tiny(tmp_path: Path):
    """A fresh registry holding the tiny image (each test may damage or stop its own)."""
    with docker_registry(tmp_path / "registry") as reg:
        yield reg, push_tiny_image(reg.host)


@pytest.mark.docker
@pytest.mark.slow
def test_lock_fetch_then_build_verify_and_test_with_the_registry_stopped(tmp_path: Path) -> None:
    store = tmp_path / "store"
    seconds: dict[str, float] = {}
    with docker_registry(tmp_path / "registry") as reg:
        image = push_tiny_image(reg.host)
        proj = project(tmp_path / "proj", image.ref())
        t = time.monotonic()
        ok(bs(proj, store, "lock"))
        seconds["lock"] = time.monotonic() - t
        lock = tomllib.loads((proj / "locks" / "root.lock").read_text())
        pinned = lock["base"]["image"]
        # The index's amd64 entry, not its first (arm64) one; every blob with its size and type.
        assert pinned["manifest-digest"] == image.amd64_manifest != image.arm64_manifest
        assert pinned["reference"] == image.ref() and pinned["platform"] == "linux/amd64"
        assert pinned["config-digest"] == image.config_digest
        assert [la["digest"] for la in pinned["layers"]] == image.layer_digests
        assert [la["media-type"].rsplit(".", 1)[-1] for la in pinned["layers"]] == ["tar+gzip", "tar", "tar+zstd"]
        assert lock["source-date-epoch"] == CREATED_EPOCH  # the config's created, not the clock
        before = (proj / "locks" / "root.lock").read_bytes()
        ok(bs(proj, store, "lock", "--upgrade", "root"))  # relock: byte-identical
        assert (proj / "locks" / "root.lock").read_bytes() == before
        t = time.monotonic()
        ok(bs(proj, store, "fetch"))
        seconds["fetch"] = time.monotonic() - t
    # The registry is gone (as an old NVIDIA tag is): nothing below may need it.
    ok(bs(proj, store, "fetch"))  # all vendored already
    ok(bs(proj, store, "lock", "--check"))
    t = time.monotonic()
    out = json.loads(ok(bs(proj, store, "build", "--json", "child")).stdout)
    seconds["build"] = time.monotonic() - t
    built = out[0]
    assert built["diff_ids"][:3] == image.diff_ids and len(built["diff_ids"]) == 4
    layout = OciLayout(store / "oci")
    root_manifest = layout.resolve("root")
    assert root_manifest is not None
    _, config = layout.read_image(root_manifest)
    assert config["rootfs"]["diff_ids"] == image.diff_ids  # the image's own layers, checked
    inner = config["config"]
    assert "FROM_BASE=yes" in inner["Env"] and "ROOT_SET=1" in inner["Env"]
    assert inner["Cmd"] == ["/bin/sh"] and inner["WorkingDir"] == "/tmp"
    assert inner["Labels"]["org.example.base"] == "tiny" and inner["Labels"]["org.opencontainers.image.title"] == "root"
    # Every image of the chain names the registry image it starts from, for bots that watch bases move.
    child_config = layout.read_config(built["image_id"])
    for labels in (inner["Labels"], child_config["config"]["Labels"]):
        assert labels["org.opencontainers.image.base.name"] == image.ref()
        assert labels["org.opencontainers.image.base.digest"] == image.amd64_manifest
    assert "Hostname" not in inner and "container_config" not in config and "docker_version" not in config
    assert {h["created"] for h in config["history"]} == {rfc3339(CREATED_EPOCH)}
    assert config["history"][-1]["empty_layer"] is True  # the root adds config, no layer
    t = time.monotonic()
    result = ok(bs(proj, store, "build", "--verify", "child"))
    seconds["verify"] = time.monotonic() - t
    assert "reproducible" in result.output
    t = time.monotonic()
    ok(bs(proj, store, "test", "child"))
    seconds["test"] = time.monotonic() - t
    # The SBOM names the base image by its manifest digest, next to what the chain locked.
    for fmt in ("cyclonedx", "spdx"):
        sbom = ok(bs(proj, store, "sbom", "child", "--format", fmt)).stdout
        assert f"pkg:oci/tiny@{image.amd64_manifest}?arch=amd64&repository_url={image.host}/test/tiny" in sbom
    facts = {p["name"]: p["value"] for p in json.loads(ok(bs(proj, store, "sbom", "child")).stdout)["metadata"]
             ["properties"]}  # and its metadata names the image the chain stands on
    assert facts["buildsys:base-image-digest"] == image.amd64_manifest and "test/tiny" in facts["buildsys:base-image"]
    print("registry base seconds:", {k: round(v, 2) for k, v in seconds.items()})


@pytest.mark.docker
def test_a_registry_mirror_serves_lock_and_fetch_and_the_lock_names_upstream(
        tiny: tuple[RegistryService, TinyImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """registry.example.com does not exist: every request goes to its mirror (a pull-through cache on
    loopback, by the user's configuration), and the lock records only the upstream reference."""
    reg, image = tiny
    upstream = "registry.example.com"
    proj = project(tmp_path / "proj", image.ref().replace(image.host, upstream), child=None)
    monkeypatch.setenv("BUILDSYS_MIRRORS", f"https://{upstream}=http://{reg.host}")
    store = tmp_path / "store"
    ok(bs(proj, store, "lock"))
    text = (proj / "locks" / "root.lock").read_text()
    assert reg.host not in text and "127.0.0.1" not in text
    pinned = tomllib.loads(text)["base"]["image"]
    assert pinned["reference"] == f"{upstream}/test/tiny:1.0" and pinned["manifest-digest"] == image.amd64_manifest
    ok(bs(proj, store, "fetch"))
    monkeypatch.delenv("BUILDSYS_MIRRORS")
    r = bs(proj, tmp_path / "other-store", "fetch")  # without the mirror: the upstream, which is not there
    assert r.exit_code != 0 and upstream in r.output, r.output


@pytest.mark.docker
def test_docker_hub_references_use_its_api_host_and_library_repositories(
        tiny: tuple[RegistryService, TinyImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker.io/tiny:1.0 is Docker Hub's library/tiny, read from registry-1.docker.io (here: its mirror on
    loopback, the only way to reach it from these machines); the lock keeps the reference as written."""
    reg, _ = tiny
    hub = push_tiny_image(reg.host, "library/tiny")
    proj = project(tmp_path / "proj", "docker.io/tiny:1.0", child=None)
    monkeypatch.setenv("BUILDSYS_MIRRORS", f"https://registry-1.docker.io=http://{reg.host}")
    ok(bs(proj, tmp_path / "store", "lock"))
    pinned = tomllib.loads((proj / "locks" / "root.lock").read_text())["base"]["image"]
    assert pinned["reference"] == "docker.io/tiny:1.0" and pinned["manifest-digest"] == hub.amd64_manifest
    ok(bs(proj, tmp_path / "store", "fetch"))


@pytest.mark.parametrize("tag, words", [
    ("nope", ["manifest nope in test/tiny is not there", "tag deleted upstream"]),
    ("arm-only", ["has no linux/amd64 entry", "linux/arm64"]),
])
def test_lock_names_the_registry_and_reference_and_writes_nothing(tiny: tuple[RegistryService, TinyImage],
                                                                   tmp_path: Path, tag: str,
                                                                   words: list[str]) -> None:
    reg, image = tiny
    proj = project(tmp_path / "proj", image.ref(tag), child=None)
    result = bs(proj, tmp_path / "store", "lock")
    assert result.exit_code == 1, result.output
    assert image.ref(tag) in result.output and "root.toml" in result.output
    for w in words:
        assert w in result.output
    assert not (proj / "locks" / "root.lock").exists()


def test_lock_against_a_registry_that_is_down(tmp_path: Path) -> None:
    ref = f"127.0.0.1:{free_port()}/test/tiny:1.0"
    proj = project(tmp_path / "proj", ref, child=None)
    result = bs(proj, tmp_path / "store", "lock")
    assert result.exit_code == 1, result.output
    assert "unreachable" in result.output and ref in result.output and "then lock again" in result.output
    assert not (proj / "locks").exists() or not any((proj / "locks").iterdir())


def test_platform_from_the_recipe_and_checks_of_the_lock(tiny: tuple[RegistryService, TinyImage],
                                                         tmp_path: Path) -> None:
    reg, image = tiny
    arm = ROOT.replace('image = "{ref}"', 'image = "{ref}"\nplatform = "linux/arm64"')
    proj = project(tmp_path / "proj", image.ref(), child=None, root=arm)
    store = tmp_path / "store"
    ok(bs(proj, store, "lock"))
    path = proj / "locks" / "root.lock"
    assert tomllib.loads(path.read_text())["base"]["image"]["manifest-digest"] == image.arm64_manifest
    ok(bs(proj, store, "lock", "--check"))
    client = Registry(reg.host)
    amd64, media, _ = client.get_manifest("test/tiny", image.amd64_manifest)
    client.put_manifest("test/tiny", "1.0", amd64, media)  # the tag now names an amd64 image alone
    result = bs(proj, store, "lock", "--upgrade")
    assert result.exit_code == 1 and "the image is for linux/amd64, the recipe asks for linux/arm64" in result.output
    # A tag moved upstream to another arm64 image: `lock --upgrade --check` names the move, writes nothing.
    arm64, media, _ = client.get_manifest("test/tiny", image.arm64_manifest)
    moved = json.dumps(json.loads(arm64)).encode()
    digest = client.put_manifest("test/tiny", "sha256:" + hashlib.sha256(moved).hexdigest(), moved, media)
    client.put_manifest("test/tiny", "1.0", moved, media)
    result = bs(proj, store, "lock", "--upgrade", "--check")
    assert result.exit_code == 3, result.output
    row = next(line for line in result.output.splitlines() if image.ref() in line and "image" in line)
    assert image.arm64_manifest[:19] in row and digest[:19] in row, result.output
    assert tomllib.loads(path.read_text())["base"]["image"]["manifest-digest"] == image.arm64_manifest
    text = path.read_text()
    # A lock edited to pin another reference no longer covers its recipe (exit 3).
    path.write_text(text.replace(f'reference = "{image.ref()}"', f'reference = "{image.ref("arm-only")}"'))
    result = bs(proj, store, "lock", "--check")
    assert result.exit_code == 3 and "pins" in result.output, result.output
    # Hostile values: each one named by its table, entry and key (exit 2), before any is used.
    for old, new, named in [
        (image.layer_digests[0], "sha256:../../etc/passwd", "[[base.image.layers]] #1: digest"),
        (f"\nsize = {image.layer_sizes[1]}", f'\nsize = "{image.layer_sizes[1]}"',
         "[[base.image.layers]] #2: size"),
        ("application/vnd.oci.image.layer.v1.tar+gzip", "application/x-evil", "media-type"),
        (image.arm64_manifest, "sha256:abc", "[base.image]: manifest-digest"),
    ]:
        path.write_text(text.replace(old, new, 1))
        result = bs(proj, store, "fetch")
        assert result.exit_code == 2, (new, result.output)
        assert named in result.output and "root.lock" in result.output, result.output


def test_steps_in_an_image_root_are_refused_with_what_to_do(tiny: tuple[RegistryService, TinyImage],
                                                            tmp_path: Path) -> None:
    _, image = tiny
    proj = project(tmp_path / "a", image.ref(), child=None, root='run = ["true"]\n' + ROOT)
    result = bs(proj, tmp_path / "store", "lock")
    assert result.exit_code == 1 and "it cannot have run" in result.output and "child recipe" in result.output
    # [apt] on top of an image that is not Debian: tests/test_registry_apt.py.


@pytest.mark.docker
def test_a_damaged_blob_is_never_vendored_and_a_wrong_diff_id_is_never_built(tiny: tuple[RegistryService, TinyImage],
                                                                              tmp_path: Path) -> None:
    reg, image = tiny
    # An image whose config names another diff_id than its layer unpacks to: a named error, no image.
    proj, store = project(tmp_path / "b", image.ref("bad-diffid"), child=None), tmp_path / "store-b"
    ok(bs(proj, store, "lock"))
    ok(bs(proj, store, "fetch"))
    result = bs(proj, store, "build", "root")
    assert result.exit_code == 1, result.output
    assert "layer 2" in result.output and image.diff_ids[1] in result.output and "diff_id" in result.output
    assert OciLayout(store / "oci").resolve("root") is None
    # The registry serves other bytes for the first layer (same size): fetch refuses them, keeps nothing.
    proj, store = project(tmp_path / "a", image.ref(), child=None), tmp_path / "store-a"
    ok(bs(proj, store, "lock"))
    blob = registry_blob_file(reg.root, image.layer_digests[0])
    blob.write_bytes(b"\0" * blob.stat().st_size)
    result = bs(proj, store, "fetch")
    hexd = image.layer_digests[0].split(":")[1]
    assert result.exit_code == 1 and hexd in result.output, result.output
    assert not list((store / "vendor" / "sha256").glob(f"{hexd}*"))


def test_fetch_resumes_a_partial_blob_with_a_range_request(tiny: tuple[RegistryService, TinyImage],
                                                           tmp_path: Path) -> None:
    reg, image = tiny
    proj, store = project(tmp_path / "proj", image.ref(), child=None), tmp_path / "store"
    ok(bs(proj, store, "lock"))
    blob = registry_blob_file(reg.root, image.layer_digests[0])
    good = blob.read_bytes()
    half = len(good) // 2
    hexd = image.layer_digests[0].split(":")[1]
    (store / "vendor" / "sha256").mkdir(parents=True)
    (store / "vendor" / "sha256" / f"{hexd}.partial").write_bytes(good[:half])  # an interrupted fetch
    # The registry now serves a damaged first half: only a fetch that asks for the rest can succeed.
    blob.write_bytes(b"\0" * half + good[half:])
    ok(bs(proj, store, "fetch"))
    assert (store / "vendor" / "sha256" / hexd).read_bytes() == good
