"""Which ways of moving a published image keep its digest (docs/shipping.md, "Moving an image").

Real clients no one here wrote: Debian's skopeo and docker itself, against Debian's
docker-registry on loopback. What a user pins is the manifest digest buildsys
printed; a copy that keeps it can be checked against the signature, attestations
and ``reproduce``; one that does not is another image with the same image ID.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import docker
import pytest
from helpers import bs, ok
from shipenv import docker_registry

from buildsys.oci.registry import Registry

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)


def test_which_copies_keep_the_published_digest(shipped, tmp_path: Path) -> None:
    proj, store = shipped
    with docker_registry(tmp_path / "registry") as reg:
        published = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{reg.host}/team/app:1",
                                     "--json")).stdout)
        digest, image_id = published["manifest_digest"], published["image_id"]
        client = Registry(reg.host)

        def served(repo: str, ref: str) -> str:
            return client.get_manifest(repo, ref)[2]

        # skopeo between registries, by default and with --preserve-digests: the same manifest, byte for byte.
        for repo, extra in (("copy/plain", []), ("copy/preserved", ["--preserve-digests"])):
            r = skopeo("copy", *extra, "--src-tls-verify=false", "--dest-tls-verify=false",
                       f"docker://{reg.host}/team/app@{digest}", f"docker://{reg.host}/{repo}:1")
            assert r.returncode == 0, r.stderr
            assert served(repo, "1") == digest, repo
        # skopeo into an OCI layout folder (what an air-gapped transfer or a scanner reads): the same digest.
        r = skopeo("copy", "--src-tls-verify=false", f"docker://{reg.host}/team/app@{digest}",
                   f"oci:{tmp_path / 'layout'}:app")
        assert r.returncode == 0, r.stderr
        index = json.loads((tmp_path / "layout" / "index.json").read_text())
        assert [m["digest"] for m in index["manifests"]] == [digest]

        # docker pull, tag, push: docker writes its own (schema 2) manifest, so the digest changes; the
        # image ID, which is the config's digest, does not. Pin digests from buildsys, not from a docker push.
        engine = docker.from_env()
        pulled = engine.images.pull(f"{reg.host}/team/app@{digest}")
        try:
            assert pulled.id == image_id
            pulled.tag(f"{reg.host}/copy/docker", "1")
            engine.images.push(f"{reg.host}/copy/docker", "1")
            data, media, pushed = client.get_manifest("copy/docker", "1")
            assert pushed != digest and media == "application/vnd.docker.distribution.manifest.v2+json"
            assert json.loads(data)["config"]["digest"] == image_id
        finally:
            for ref in (f"{reg.host}/copy/docker:1", f"{reg.host}/team/app@{digest}"):
                with contextlib.suppress(docker.errors.APIError):
                    engine.images.remove(ref)
