"""Config, manifest, OCI layout and docker archive: formats frozen by known digests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from buildsys.model.recipe import ImageConfig
from buildsys.oci.image import (
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    ImageError,
    ImageMeta,
    OciLayout,
    canonical_bytes,
    digest_bytes,
    make_config,
    manifest_annotations,
    oci_labels,
    write_docker_archive,
)
from buildsys.oci.layer.normalize import LayerInfo, normalize_tar

EPOCH = 1_700_000_000
HASH_B, HASH_C = "sha256:" + "b" * 64, "sha256:" + "c" * 64


def base_config(diff_id: str = "sha256:" + "a" * 64) -> dict[str, Any]:
    return make_config(
        parent=None,
        diff_id=diff_id,
        epoch=EPOCH,
        image=ImageConfig(env=(("LANG", "C.UTF-8"),), user="1000:1000", workdir="/home/user", expose=(8888,),
                          cmd=("jupyter", "lab")),
        labels=oci_labels("base", HASH_B, HASH_C, "Débian base", epoch=EPOCH),
        created_by="buildsys base",
    )


def test_known_digest_freezes_the_config_format() -> None:
    data = canonical_bytes(base_config())
    assert data.startswith(b'{"architecture":"amd64","config":{"Cmd":["jupyter","lab"],"Env":["PATH=')
    assert "Débian".encode() in data  # UTF-8, not \u escapes
    assert digest_bytes(data) == "sha256:17f5c4d43997789715611a0944a06780760277ee3f2c2343ece1926867aed5c7"


def test_fresh_config_has_no_build_machine_or_clock_facts() -> None:
    cfg = base_config()
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    assert cfg["history"] == [{"created": "2023-11-14T22:13:20Z", "created_by": "buildsys base"}]
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]}
    assert cfg["config"]["Env"][0].startswith("PATH=/usr/local/sbin:")
    assert cfg["config"]["ExposedPorts"] == {"8888/tcp": {}}
    assert set(cfg) == {"architecture", "os", "created", "config", "rootfs", "history"}


def test_child_config_inherits_like_a_dockerfile() -> None:
    parent = base_config()
    parent["container"] = "0123abcd"  # docker's own keys, as an imported parent may carry them
    parent["docker_version"] = "20.10.24"
    parent["config"]["Hostname"] = "0123abcd"
    parent["config"]["Env"].append("A=old")
    child = make_config(
        parent=parent,
        diff_id="sha256:" + "d" * 64,
        epoch=EPOCH + 86400,
        image=ImageConfig(env=(("A", "new"), ("B", "2")), expose=(6006,), entrypoint=("tini", "--"),
                          labels=(("team", "ds"), ("io.buildsys.recipe-hash", "forged"))),
        labels=oci_labels("child", "sha256:" + "e" * 64, HASH_C, "", epoch=EPOCH + 86400),
        created_by="buildsys child",
    )
    inner = child["config"]
    assert inner["Env"] == [parent["config"]["Env"][0], "LANG=C.UTF-8", "A=new", "B=2"]
    assert inner["Entrypoint"] == ["tini", "--"] and "Cmd" not in inner  # ENTRYPOINT resets the inherited CMD
    assert inner["User"] == "1000:1000" and inner["WorkingDir"] == "/home/user"
    assert inner["ExposedPorts"] == {"8888/tcp": {}, "6006/tcp": {}}
    assert inner["Labels"]["team"] == "ds"
    assert inner["Labels"]["io.buildsys.recipe-hash"] == "sha256:" + "e" * 64  # a recipe cannot forge it
    assert inner["Labels"]["org.opencontainers.image.title"] == "child"
    assert "org.opencontainers.image.description" not in inner["Labels"]  # not the parent's
    assert inner["Labels"]["org.opencontainers.image.created"] == "2023-11-15T22:13:20Z"
    assert "Hostname" not in inner and "container" not in child and "docker_version" not in child
    assert child["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64, "sha256:" + "d" * 64]
    assert [h["created_by"] for h in child["history"]] == ["buildsys base", "buildsys child"]
    assert child["created"] == "2023-11-15T22:13:20Z"
    assert parent["config"]["Cmd"] == ["jupyter", "lab"]  # the parent is not modified

    both = make_config(parent=parent, diff_id="sha256:" + "d" * 64, epoch=EPOCH, labels=({}, {}), created_by="x",
                       image=ImageConfig(entrypoint=("tini", "--"), cmd=("bash",)))
    assert both["config"]["Entrypoint"] == ["tini", "--"] and both["config"]["Cmd"] == ["bash"]


def test_oci_labels_are_this_image_s_own_and_derived_ones_cannot_be_set() -> None:
    """What registries, scanners and bots read (docs/shipping.md): the parent's org.opencontainers.image.*
    labels describe the parent (a base image's version or vendor) and are not inherited; other labels are,
    as in a Dockerfile; a recipe sets the free-text ones over buildsys's defaults, never the derived ones."""
    parent = base_config()
    parent["config"]["Labels"].update({"org.opencontainers.image.version": "22.04", "maintainer": "NVIDIA",
                                       "org.opencontainers.image.vendor": "Canonical"})
    meta = ImageMeta(revision="c" * 40, source="https://git.example.com/team/stack.git",
                     base_name="docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04", base_digest="sha256:" + "f" * 64)
    child = make_config(
        parent=parent, diff_id="sha256:" + "d" * 64, epoch=EPOCH, created_by="x",
        image=ImageConfig(labels=(("org.opencontainers.image.version", "2026.12"),
                                  ("org.opencontainers.image.title", "Team JupyterLab"),
                                  ("org.opencontainers.image.created", "forged"))),
        labels=oci_labels("child", HASH_B, HASH_C, "Lab", epoch=EPOCH, meta=meta))
    labels = child["config"]["Labels"]
    assert labels == {
        "maintainer": "NVIDIA",  # not an OCI annotation key: inherited as docker would
        "org.opencontainers.image.title": "Team JupyterLab",  # the recipe's, over the recipe name
        "org.opencontainers.image.description": "Lab",
        "org.opencontainers.image.version": "2026.12",  # the recipe's, not the base's 22.04
        "org.opencontainers.image.created": "2023-11-14T22:13:20Z",  # the lock's epoch, whatever a recipe says
        "org.opencontainers.image.revision": "c" * 40,
        "org.opencontainers.image.source": "https://git.example.com/team/stack.git",
        "org.opencontainers.image.base.name": "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
        "org.opencontainers.image.base.digest": "sha256:" + "f" * 64,
        "io.buildsys.recipe-hash": HASH_B, "io.buildsys.lock-hash": HASH_C,
    }
    assert "Canonical" not in json.dumps(child)
    assert manifest_annotations(child) == {k: v for k, v in labels.items() if k.startswith("org.opencontainers.")}


def add_layer(layout: OciLayout, tmp_path: Path, name: str, data: bytes) -> LayerInfo:
    src = io.BytesIO()
    with tarfile.open(fileobj=src, mode="w") as tf:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    src.seek(0)
    out = tmp_path / f"{name}.tar"
    with open(out, "wb") as f:
        info = normalize_tar(src, f, EPOCH)
    assert layout.add_blob_file(out, info.digest) == info.digest
    assert not out.exists()  # moved in
    return info


def test_oci_layout_round_trip(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layer = add_layer(layout, tmp_path, "hello.txt", b"hello\n")
    config = base_config(layer.digest)
    rec = layout.write_image(config, [layer], ref="base")
    manifest, got = layout.read_image(rec.manifest_digest)
    assert got == config == layout.read_config(rec.config_digest)
    assert manifest == {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": rec.config_digest,
                   "size": len(canonical_bytes(config))},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}],
        # The config's OCI labels, for registries and tools that read only the manifest.
        "annotations": {"org.opencontainers.image.created": "2023-11-14T22:13:20Z",
                        "org.opencontainers.image.description": "Débian base",
                        "org.opencontainers.image.title": "base"},
    }
    assert rec.config_digest == digest_bytes(canonical_bytes(config))
    assert rec.diff_ids == (layer.digest,)
    assert json.loads((tmp_path / "oci/oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert layout.resolve("base") == rec.manifest_digest
    for blob in (tmp_path / "oci/blobs/sha256").iterdir():  # every blob is named by its content
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    # the same image again: same digests, nothing rewritten
    assert layout.write_image(config, [layer], ref="base") == rec


def test_index_ref_is_replaced_and_sorted(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    one = add_layer(layout, tmp_path, "one", b"1")
    two = add_layer(layout, tmp_path, "two", b"2")
    first = layout.write_image(base_config(one.digest), [one], ref="zeta")
    layout.write_image(base_config(one.digest), [one], ref="alpha")
    second = layout.write_image(base_config(two.digest), [(two.digest, two.size)])  # pairs work too
    layout.set_ref("zeta", second.manifest_digest)
    index = json.loads((tmp_path / "oci/index.json").read_bytes())
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert refs == ["alpha", "zeta"]
    assert layout.refs() == {"alpha": first.manifest_digest, "zeta": second.manifest_digest}


def test_write_image_refuses_inconsistent_input(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layer = add_layer(layout, tmp_path, "one", b"1")
    with pytest.raises(ImageError, match="diff_ids"):
        layout.write_image(base_config("sha256:" + "f" * 64), [layer])
    absent = LayerInfo("sha256:" + "f" * 64, 10, 1)
    with pytest.raises(ImageError, match="missing"):
        layout.write_image(base_config(absent.digest), [absent])
    with pytest.raises(ImageError, match="not a sha256 digest"):
        layout.blob_path("sha256:../../etc/passwd")


class WriteOnly(io.RawIOBase):
    """A pipe: no tell, no seek."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += b
        return len(b)


def test_docker_archive_is_deterministic_and_an_oci_layout(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layer = add_layer(layout, tmp_path, "hello.txt", b"hello\n")
    rec = layout.write_image(base_config(layer.digest), [layer], ref="base")
    out1, out2 = WriteOnly(), WriteOnly()
    write_docker_archive(layout, rec.manifest_digest, ["buildsys/base:latest"], out1)  # type: ignore[arg-type]
    write_docker_archive(layout, rec.manifest_digest, ["buildsys/base:latest"], out2)  # type: ignore[arg-type]
    assert out1.data == out2.data

    with tarfile.open(fileobj=io.BytesIO(bytes(out1.data))) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
        files = {m.name: tf.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(files["manifest.json"])
    assert manifest == [{
        "Config": "blobs/sha256/" + rec.config_digest.split(":")[1],
        "RepoTags": ["buildsys/base:latest"],
        "Layers": ["blobs/sha256/" + layer.digest.split(":")[1]],
    }]
    for name, data in files.items():
        if name.startswith("blobs/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    assert [m["digest"] for m in index["manifests"]] == [rec.manifest_digest]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}


@pytest.mark.docker
def test_docker_load_gives_the_config_digest_as_image_id(tmp_path: Path) -> None:
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as e:  # any failure to reach the daemon means: skip
        pytest.skip(f"no docker engine: {e}")
    layout = OciLayout(tmp_path / "oci")
    layer = add_layer(layout, tmp_path, "hello.txt", b"hello from buildsys tests\n")
    rec = layout.write_image(base_config(layer.digest), [layer])
    tag = "buildsys-test/image-id:" + rec.config_digest.split(":")[1][:12]
    archive = tmp_path / "image.tar"
    with open(archive, "wb") as f:
        write_docker_archive(layout, rec.manifest_digest, [tag], f)
    try:
        with open(archive, "rb") as f:
            (image,) = client.images.load(f)
        assert image.id == rec.config_digest
        assert client.images.get(tag).id == rec.config_digest
    finally:
        client.images.remove(rec.config_digest, force=True)


@pytest.mark.docker
def test_streamed_load_of_a_layer_written_while_docker_reads(tmp_path: Path) -> None:
    from buildsys.core.errors import EngineUnavailable
    from buildsys.engine import Engine
    from buildsys.oci.image import write_streamed_archive
    from buildsys.oci.layer.entry import LayerError
    from buildsys.oci.layer.inputs import read_tar
    from buildsys.oci.layer.normalize import plan_layer

    try:
        engine = Engine.connect(timeout=60)
    except EngineUnavailable as e:
        pytest.skip(f"no docker engine: {e}")
    src = tmp_path / "in.tar"
    with tarfile.open(src, "w") as tf:
        data = b"streamed into docker load\n" * 1000
        ti = tarfile.TarInfo("streamed.txt")
        ti.size, ti.mtime = len(data), EPOCH - 5
        tf.addfile(ti, io.BytesIO(data))
    layout = OciLayout(tmp_path / "oci")
    with open(src, "rb") as f:
        plan = plan_layer(read_tar(f), EPOCH)
        made: dict[str, str] = {}

        def write_layer(sink: Any) -> bytes:
            with open(tmp_path / "layer.tar", "wb") as blob:
                info = plan.write(blob, sink)
            layout.add_blob_file(tmp_path / "layer.tar", digest=info.digest)
            rec = layout.write_image(base_config(info.digest), [LayerInfo(info.digest, info.size, 1)])
            made["config"] = rec.config_digest
            return layout.read_blob(rec.config_digest)

        engine.load_stream(lambda sink: write_streamed_archive(sink, [], [plan.size], lambda _, s: write_layer(s)))
    try:
        assert engine.image_id(made["config"]) == made["config"]  # docker's image ID is the config digest
    finally:
        engine.remove_image(made["config"])

    def fails(sink: Any) -> None:
        sink.write(b"x" * 1000)
        raise LayerError("the layer could not be read", "a test")

    with pytest.raises(LayerError, match="could not be read"):  # the producer's error, not docker's complaint
        engine.load_stream(fails)
