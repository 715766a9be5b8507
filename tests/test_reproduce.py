"""``buildsys reproduce REF``: anyone with the project proves a published image, or learns what differs.

A real loopback registry (Debian's docker-registry) and a real rebuild from
nothing, on "another machine": a copy of the project (recipes and locks only)
with an empty store. The published image is the chain fixture's, pushed with
the default compression, signed with a key made here; a second one is the same
image with one file added to its top layer, as a tampered mirror would serve.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from helpers import bs, ok
from shipenv import docker_registry

from buildsys.core.errors import EXIT_FAILED, EXIT_NOT_REPRODUCIBLE
from buildsys.oci.image import OciLayout
from buildsys.oci.layer.normalize import normalize_tar
from buildsys.oci.registry import Registry
from buildsys.ship.publish import push_image

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


def _tampered(store: Path, manifest_digest: str, into: Path) -> str:
    """The stored image with ``etc/tampered`` added to its top layer, as an OCI layout at ``into``."""
    src = OciLayout(store / "oci")
    manifest, config = src.read_image(manifest_digest)
    into.mkdir(parents=True)
    out = OciLayout(into)
    for desc in manifest["layers"][:-1]:
        shutil.copyfile(src.blob_path(desc["digest"]), into / "top.tar")
        out.add_blob_file(into / "top.tar", desc["digest"])
    raw = io.BytesIO()
    with tarfile.open(src.blob_path(manifest["layers"][-1]["digest"])) as old, \
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as new:
        for member in old.getmembers():
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        extra = tarfile.TarInfo("etc/tampered")
        extra.size = 6
        new.addfile(extra, io.BytesIO(b"extra\n"))
    raw.seek(0)
    with open(into / "top.tar", "wb") as f:
        info = normalize_tar(raw, f, 0)
    out.add_blob_file(into / "top.tar", info.digest)
    config["rootfs"]["diff_ids"][-1] = info.digest
    layers = [(d["digest"], int(d["size"])) for d in manifest["layers"][:-1]] + [(info.digest, info.size)]
    return out.write_image(config, layers).manifest_digest


def test_a_published_image_is_reproduced_from_the_project_alone(shipped, tmp_path: Path) -> None:
    proj, store = shipped
    other = tmp_path / "elsewhere"  # another machine: the recipes and locks, no store
    shutil.copytree(proj / "recipes", other / "recipes")
    shutil.copytree(proj / "locks", other / "locks")
    built = json.loads(ok(bs(proj, store, "build", "--json", "app")).stdout)[0]
    with docker_registry(tmp_path / "registry") as reg:
        ok(bs(proj, store, "keygen", "-o", str(tmp_path / "release"), "--no-passphrase"))
        # Pushed gzip-compressed, signed and attested before the tag is set.
        published = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{reg.host}/team/app:1", "--sign",
                                     str(tmp_path / "release.key"), "--attest", "--json")).stdout)
        assert published["signed"]["manifest_digest"] == published["manifest_digest"]
        assert len(published["attested"]["attestations"]) == 2
        listed = json.loads(ok(bs(other, tmp_path / "other-store", "attestations", f"{reg.host}/team/app:1",
                                  "--key", str(tmp_path / "release.pub"), "--json")).stdout)
        assert sorted(a["verified"] for a in listed["attestations"]) == [True, True], listed

        r = ok(bs(other, tmp_path / "other-store", "reproduce", f"{reg.host}/team/app:1", "--key",
                  str(tmp_path / "release.pub"), "--json"))
        result = json.loads(r.stdout)
        assert result["equal"] and result["signed"] and result["recipe"] == "app"
        assert result["image_id"] == result["rebuilt_image_id"] == built["image_id"]
        # The published manifest (its layers gzip-compressed) is rebuilt byte for byte, not only its contents.
        assert result["rebuilt_manifest_digest"] == published["manifest_digest"] != built["manifest_digest"]
        print("reproduce seconds:", result["seconds"])

        # A tampered copy: one file more in the top layer, same labels (so the same recipe and lock).
        bad = _tampered(store, built["manifest_digest"], tmp_path / "tampered")
        push_image(Registry(reg.host), "team/app", OciLayout(tmp_path / "tampered"), bad)
        r = bs(other, tmp_path / "other-store", "reproduce", f"{reg.host}/team/app@{bad}")
        assert r.exit_code == EXIT_NOT_REPRODUCIBLE, r.output
        assert "first differing layer: 3 (made by 'app')" in r.output and "etc/tampered" in r.output, r.output

        # An image no recipe of this project built (its lock moved on): which commit to check out.
        (other / "locks" / "app.lock").write_text((other / "locks" / "app.lock").read_text().replace(
            "source-date-epoch = ", "source-date-epoch = 1", 1))
        r = bs(other, tmp_path / "other-store", "reproduce", published["reference"])
        assert r.exit_code != 0 and "no recipe" in r.output and "check out" in r.output, r.output
        r = bs(other, tmp_path / "other-store", "reproduce", f"{reg.host}/team/app@sha256:{'0' * 64}")
        assert r.exit_code == EXIT_FAILED and "sha256:0000" in r.output, r.output
