"""A tiny real image pushed into a loopback registry, for the registry-base tests.

No image can be pulled on these machines, so the image is made here from real
layer tarballs: the host's dash (as /bin/sh), its libc and loader, and its
/etc/os-release in a gzip layer; a second, uncompressed layer whiteouts one
file of the first and adds rm and another file; a third is zstd-compressed. It is pushed with buildsys's own registry
client under a multi-platform index (an arm64 entry first, so taking the first
entry would be wrong), plus two broken variants: an index without linux/amd64
and an image whose config names a wrong diff_id.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from buildsys.oci.registry import Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REPO = "test/tiny"
CREATED = "2024-05-01T12:00:00Z"
CREATED_EPOCH = 1714564800


@dataclass
class TinyImage:
    host: str
    index_digest: str
    amd64_manifest: str
    arm64_manifest: str
    config_digest: str
    layer_digests: list[str]  # the blobs as pushed (gzip, plain, zstd)
    layer_sizes: list[int]
    diff_ids: list[str]

    def ref(self, tag: str = "1.0") -> str:
        return f"{self.host}/{REPO}:{tag}"


def _tar(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """(path, content or None for a directory, mode) in the order given; fixed times and owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data, mode in entries:
            ti = tarfile.TarInfo(path)
            ti.mtime, ti.mode, ti.uid, ti.gid = CREATED_EPOCH, mode, 0, 0
            if data is None:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layers() -> tuple[bytes, bytes, bytes]:
    """The three layers, uncompressed."""
    host = Path("/")
    first = _tar([
        ("bin", None, 0o755), ("etc", None, 0o755), ("lib", None, 0o755), ("lib/x86_64-linux-gnu", None, 0o755),
        ("lib64", None, 0o755), ("tmp", None, 0o1777),
        ("bin/sh", (host / "usr/bin/dash").read_bytes(), 0o755),
        ("etc/motd", b"removed by the second layer\n", 0o644),
        ("etc/os-release", (host / "etc/os-release").read_bytes(), 0o644),
        ("lib/x86_64-linux-gnu/libc.so.6", (host / "lib/x86_64-linux-gnu/libc.so.6").read_bytes(), 0o755),
        ("lib64/ld-linux-x86-64.so.2", (host / "lib64/ld-linux-x86-64.so.2").read_bytes(), 0o755),
    ])
    second = _tar([("bin", None, 0o755), ("bin/rm", (host / "usr/bin/rm").read_bytes(), 0o755),
                   ("etc", None, 0o755), ("etc/.wh.motd", b"", 0o644),
                   ("etc/greeting", b"hello from the base image\n", 0o644)])
    third = _tar([("etc", None, 0o755), ("etc/zstd-layer", b"unpacked with zstd\n", 0o644)])
    return first, second, third


def config(diff_ids: list[str], arch: str = "amd64") -> bytes:
    return json.dumps({
        "architecture": arch, "os": "linux", "created": CREATED,
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "FROM_BASE=yes"], "Cmd": ["/bin/sh"],
                   "WorkingDir": "/tmp", "Labels": {"org.example.base": "tiny"}, "Hostname": "builder-7f3a"},
        "container_config": {"Hostname": "builder-7f3a"}, "docker_version": "20.10.24",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-04-30T08:00:00Z", "created_by": "ADD rootfs /"},
                    {"created": CREATED, "created_by": "RUN rm /etc/motd && echo hello > /etc/greeting"},
                    {"created": CREATED, "created_by": 'CMD ["/bin/sh"]', "empty_layer": True}],
    }, indent=2).encode()


def push_tiny_image(host: str, repo: str = REPO) -> TinyImage:
    reg = Registry(host)
    first, second, third = layers()
    first_gz = gzip.compress(first, mtime=0)
    third_zst = subprocess.run(["zstd", "-q", "-c", "-"], input=third, capture_output=True, check=True).stdout
    diff_ids = [_digest(first), _digest(second), _digest(third)]
    blobs = [first_gz, second, third_zst]
    types = ["tar+gzip", "tar", "tar+zstd"]
    descs = [{"mediaType": f"application/vnd.oci.image.layer.v1.{t}", "digest": _digest(b), "size": len(b)}
             for t, b in zip(types, blobs, strict=True)]
    for blob in blobs:
        reg.push_blob(repo, _digest(blob), len(blob), blob)

    def image(cfg: bytes, media: str = OCI_MANIFEST) -> tuple[str, int]:
        reg.push_blob(repo, _digest(cfg), len(cfg), cfg)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": media,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": _digest(cfg), "size": len(cfg)},
                               "layers": descs}, indent=3).encode()
        return reg.put_manifest(repo, _digest(manifest), manifest, media), len(manifest)

    amd64_cfg = config(diff_ids)
    amd64, amd64_size = image(amd64_cfg)
    arm64, arm64_size = image(config(diff_ids, "arm64"))

    def index(entries: list[tuple[str, int, str]], tag: str) -> str:
        data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": s, "platform": {"os": "linux", "architecture": a}}
            for d, s, a in entries]}).encode()
        return reg.put_manifest(repo, tag, data, OCI_INDEX)

    index_digest = index([(arm64, arm64_size, "arm64"), (amd64, amd64_size, "amd64")], "1.0")
    index([(arm64, arm64_size, "arm64")], "arm-only")
    # An image whose config names a diff_id that its second layer does not have.
    bad, _ = image(config([diff_ids[0], _digest(b"not the second layer"), diff_ids[2]]))
    manifest, media, _ = reg.get_manifest(repo, bad)
    reg.put_manifest(repo, "bad-diffid", manifest, media)
    return TinyImage(host, index_digest, amd64, arm64, _digest(amd64_cfg), [_digest(b) for b in blobs],
                     [len(b) for b in blobs], diff_ids)


def registry_blob_file(root: Path, digest: str) -> Path:
    """Where docker-registry keeps a blob's bytes under its storage folder (to damage it on purpose)."""
    hexd = digest.split(":", 1)[1]
    return root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"
