"""``[apt]`` on a chain rooted on a registry image: Debian's archive of the image's own release.

The Debian image is made here by buildsys itself (a bookworm minbase root,
locked, fetched, built) and published into Debian's docker-registry on
loopback; a second project takes it as ``[base] image`` and puts jq on top.
Non-Debian images are the tiny image of ``regimage`` (its os-release is the
host's, but it has no dpkg database) and children of it that remove or
rewrite its os-release.
"""

from __future__ import annotations

import email.utils
import io
import json
import re
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import bs, ok
from regimage import push_tiny_image
from shipenv import docker_registry

from buildsys.core import dpkg
from buildsys.ecosystems.registry_apt import NotDebianImage, image_release, parse_os_release
from buildsys.model.recipe import parse_recipe
from buildsys.oci.layer.tree import ParentTree
from buildsys.oci.registry import Registry

DEBROOT = """description = "bookworm minbase, to be published and used as a registry base"
[base]
debian = { suite = "bookworm", variant = "minbase" }
"""
ROOT = """description = "the published Debian image, from the registry"
[base]
image = "{ref}"
[test]
commands = ["test -f /etc/debian_version"]
"""
TOOLS = """description = "jq from Debian's archive, on the registry image"
parents = ["regdeb"]
[apt]
packages = ["jq", "bash"]
[test]
commands = ["jq --version", "echo '{\\"a\\": 1}' | jq -e '.a == 1'"]
"""
PY = """description = "a second apt layer (python3, same archive state) and pip on top"
parents = ["regjq"]
[apt]
packages = ["python3"]
[pip]
packages = ["six"]
[test]
commands = ["python3 -c 'import six'"]
"""


def _write(where: Path, recipes: dict[str, str]) -> Path:
    (where / "recipes").mkdir(parents=True)
    for name, text in recipes.items():
        (where / "recipes" / f"{name}.toml").write_text(text)
    return where


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.network
def test_apt_on_a_debian_registry_image_locks_builds_and_verifies_with_the_registry_gone(tmp_path: Path) -> None:
    seconds: dict[str, float] = {}
    store = tmp_path / "store"
    with docker_registry(tmp_path / "registry") as reg:
        # The Debian image: a buildsys root, published by buildsys into the loopback registry.
        src = _write(tmp_path / "src", {"debroot": DEBROOT})
        ok(bs(src, tmp_path / "src-store", "lock"))
        ok(bs(src, tmp_path / "src-store", "fetch"))
        ok(bs(src, tmp_path / "src-store", "build", "debroot"))
        ref = f"{reg.host}/debroot:1"
        ok(bs(src, tmp_path / "src-store", "publish", "debroot", "--to", ref, "--force"))
        image_status = tomllib.loads((src / "locks" / "debroot.lock").read_text())["base"]["packages"]
        proj = _write(tmp_path / "proj", {"regdeb": ROOT.format(ref=ref), "regjq": TOOLS, "regpy": PY})
        t = time.monotonic()
        ok(bs(proj, store, "lock"))
        seconds["lock"] = time.monotonic() - t
        lock = tomllib.loads((proj / "locks" / "regjq.lock").read_text())
        apt = {d["name"]: d for d in lock["apt"]}
        # jq and what it needs, minus what the image's own dpkg status has (libc6, bash...).
        assert {"jq", "libjq1", "libonig5"} <= set(apt), sorted(apt)
        in_image = {p["name"] for p in image_status}
        assert not set(apt) & in_image, sorted(set(apt) & in_image)
        assert lock["apt-in-image"] == ["bash"]
        assert [a["suite"] for a in lock["apt-archives"]] == ["bookworm", "bookworm-updates", "bookworm-security"]
        assert all(d["mirror"] in {a["mirror"] for a in lock["apt-archives"]} for d in apt.values())
        root_lock = tomllib.loads((proj / "locks" / "regdeb.lock").read_text())
        releases = [int(email.utils.parsedate_to_datetime(a["release-date"]).timestamp())
                    for a in lock["apt-archives"]]
        assert lock["source-date-epoch"] == max(root_lock["source-date-epoch"], *releases)  # never the clock
        py = tomllib.loads((proj / "locks" / "regpy.lock").read_text())
        assert py["apt-archives"] == lock["apt-archives"]  # one archive state per chain
        assert "python3" in {d["name"] for d in py["apt"]} and not {d["name"] for d in py["apt"]} & set(apt)
        assert py["pip"][0]["name"] == "six" and py["python"].startswith("3.11.")
        ok(bs(proj, store, "lock", "--check"))
        t = time.monotonic()
        ok(bs(proj, store, "fetch"))
        seconds["fetch"] = time.monotonic() - t
        # The tag moves upstream to another manifest; then the registry goes away.
        client = Registry(reg.host)
        manifest, media, _ = client.get_manifest("debroot", "1")
        client.put_manifest("debroot", "1", json.dumps(json.loads(manifest), indent=1).encode(), media)
    ok(bs(proj, store, "lock", "--check"))
    # An edited lock: a .deb from a mirror none of the chain's archives is stale (3); a bad hash is refused (2).
    path = proj / "locks" / "regjq.lock"
    text = path.read_text()
    path.write_text(text.replace('mirror = "http://deb.debian.org/debian"\nname = "libonig5"',
                                 'mirror = "http://evil.example/debian"\nname = "libonig5"'))
    result = bs(proj, store, "lock", "--check")
    assert result.exit_code == 3 and "not from the chain's archives" in result.output, result.output
    path.write_text(re.sub(r'inrelease-sha256 = "[^"]*"', 'inrelease-sha256 = "../../etc"', text, count=1))
    result = bs(proj, store, "lock", "--check")
    assert result.exit_code == 2 and "[[apt-archives]] #1: inrelease-sha256" in result.output, result.output
    path.write_text(text)
    t = time.monotonic()
    first = json.loads(ok(bs(proj, store, "build", "--json", "regpy")).stdout)[0]
    seconds["build"] = time.monotonic() - t
    t = time.monotonic()
    result = ok(bs(proj, store, "build", "--no-cache", "--verify", "regpy"))
    seconds["verify"] = time.monotonic() - t
    assert "reproducible" in result.output
    again = json.loads(ok(bs(proj, store, "build", "--json", "regpy")).stdout)[0]
    assert again["image_id"] == first["image_id"] and again["manifest_digest"] == first["manifest_digest"]
    ok(bs(proj, store, "test", "regpy"))
    # The chain's first apt layer pins an archive state that is not Debian's now: the second one refuses to
    # mix states (apt's lists are refreshed to be sure), names what to relock, and writes nothing.
    before = (proj / "locks" / "regpy.lock").read_bytes()
    path.write_text(text.replace(lock["apt-archives"][2]["inrelease-sha256"], "0" * 64))
    result = bs(proj, store, "lock", "regpy")
    assert result.exit_code == 1, result.output
    assert "bookworm-security changed since the chain's earlier apt layer" in result.output, result.output
    assert "buildsys lock --upgrade regjq regpy" in result.output
    assert (proj / "locks" / "regpy.lock").read_bytes() == before
    path.write_text(text)
    print("registry apt seconds:", {k: round(v, 2) for k, v in seconds.items()})


TINY_ROOT = """[base]
image = "{ref}"
"""
APT_CHILD = 'parents = ["{parent}"]\n[apt]\npackages = ["jq"]\n'


@pytest.mark.docker
@pytest.mark.parametrize("between, words", [
    (None, ["has no dpkg database", "Debian GNU/Linux 12 (bookworm)"]),
    ('run = ["rm /etc/os-release"]', ["has no /etc/os-release"]),
    ("""run = ['printf "ID=alpine\\nPRETTY_NAME=\\"Alpine Linux v3.19\\"\\n" > /etc/os-release']""",
     ["Alpine Linux v3.19 (ID=alpine)", "not a release of the Debian family"]),
])
def test_apt_on_an_image_that_is_not_debian_is_a_named_error_and_writes_no_lock(
        tmp_path: Path, between: str | None, words: list[str]) -> None:
    with docker_registry(tmp_path / "registry") as reg:
        image = push_tiny_image(reg.host)
        recipes = {"root": TINY_ROOT.format(ref=image.ref())}
        parent = "root"
        if between is not None:
            recipes["mid"] = f'parents = ["root"]\n{between}\n'
            parent = "mid"
        recipes["tools"] = APT_CHILD.format(parent=parent)
        proj = _write(tmp_path / "proj", recipes)
        result = bs(proj, tmp_path / "store", "lock")
    assert result.exit_code == 1, result.output
    for w in [*words, "tools.toml", image.ref(), "registry images of the Debian family"]:
        assert w in result.output, (w, result.output)
    assert not (proj / "locks" / "regjq.lock").exists()


def _tree(files: dict[str, bytes | str]) -> ParentTree:
    """A parent chain of one layer: str values are symlink targets."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            ti = tarfile.TarInfo(path)
            if isinstance(data, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return _tree_from(buf.getvalue())


def _tree_from(blob: bytes) -> ParentTree:
    import tempfile

    f = Path(tempfile.mkdtemp()) / "layer.tar"
    f.write_bytes(blob)
    return ParentTree.from_layers([f])


STATUS = b"""Package: libc6
Status: install ok installed
Version: 2.36-9+deb12u10
Description: GNU C Library
 a continuation line: Version: 0

Package: gone
Status: deinstall ok config-files
Version: 1.0

Package: bash
Status: install ok installed
Version: 5.2.15-2+b7
"""


def test_the_image_release_is_read_through_the_os_release_symlink(tmp_path: Path) -> None:
    recipe_file = tmp_path / "recipes" / "tools.toml"
    recipe_file.parent.mkdir()
    recipe_file.write_text(APT_CHILD.format(parent="root"))
    recipe = parse_recipe(recipe_file)
    debian = b'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n'
    tree = _tree({"etc/os-release": "../usr/lib/os-release", "usr/lib/os-release": debian,
                  "var/lib/dpkg/status": STATUS})
    release = image_release(recipe, "r.example/x:1", tree)
    assert (release.suite, release.pretty) == ("trixie", "Debian GNU/Linux 13 (trixie)")
    assert dpkg.installed(release.status) == {"libc6": "2.36-9+deb12u10", "bash": "5.2.15-2+b7"}
    ubuntu = (b'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n'
              b"VERSION_CODENAME=jammy\n")
    sid = b'PRETTY_NAME="Debian GNU/Linux trixie/sid"\nID=debian\nVERSION_CODENAME=trixie\n'
    alpine = b'PRETTY_NAME="Alpine Linux v3.19"\nID=alpine\nVERSION_ID=3.19.1\n'
    for text, words in [(alpine, "Alpine Linux v3.19 (ID=alpine), not a release of the Debian family"),
                        (sid, "names no release"),
                        (ubuntu, "Ubuntu 22.04.4 LTS, whose apt has no sources")]:
        with pytest.raises(NotDebianImage) as e:
            image_release(recipe, "r.example/x:1", _tree({"etc/os-release": text, "var/lib/dpkg/status": STATUS}))
        assert words in e.value.message and "r.example/x:1" in e.value.message and "tools.toml" in e.value.message
    # Ubuntu with its sources and keys: what its own apt reads, each source with the keys it trusts
    jammy = _tree({"etc/os-release": ubuntu, "var/lib/dpkg/status": STATUS,
                   "etc/apt/sources.list": b"deb http://archive.ubuntu.com/ubuntu/ jammy main universe\n"
                                           b"deb http://security.ubuntu.com/ubuntu/ jammy-security main\n",
                   "etc/apt/trusted.gpg.d/ubuntu-keyring-2018-archive.gpg": b"KEY"})
    release = image_release(recipe, "r.example/x:1", jammy)
    assert release.suite == "jammy" and [(s.uri, s.suite, s.keys) for s in release.sources] == [
        ("http://archive.ubuntu.com/ubuntu", "jammy", (b"KEY",)),
        ("http://security.ubuntu.com/ubuntu", "jammy-security", (b"KEY",))]
    assert parse_os_release(b"# c\nID='debian'\nX=\"a b\"\n") == {"ID": "debian", "X": "a b"}


# ---- an image whose apt reads other archives than Debian's: its own sources and keys -----------------------------

VENDOR = """description = "the Debian root made to look like an Ubuntu image with NVIDIA's repository in it"
parents = ["debroot"]
run = [
  "cp /buildsys/files/os-release /usr/lib/os-release",
  "cp /buildsys/files/suite.asc /usr/share/keyrings/vendor-archive-keyring.asc",
  "cp /buildsys/files/flat.gpg /usr/share/keyrings/cuda-archive-keyring.gpg",
  "cp /buildsys/files/vendor.list /buildsys/files/cuda.sources /etc/apt/sources.list.d/",
]
""" + "".join(f'[[files]]\nurl = "{{url}}/image/{name}"\nlocal = true\n'
              for name in ("os-release", "suite.asc", "flat.gpg", "vendor.list", "cuda.sources"))
IMAGE_FILES = {
    "os-release": 'PRETTY_NAME="Ubuntu-like test image"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n'
                  "VERSION_CODENAME=noble\n",
    # one-line, with an armored key; deb822, with a binary keyring, for a flat repository
    "vendor.list": "deb [signed-by=/usr/share/keyrings/vendor-archive-keyring.asc] {url}/suite noble main\n",
    "cuda.sources": "Types: deb\nURIs: {url}/flat/\nSuites: /\n"
                    "Signed-By: /usr/share/keyrings/cuda-archive-keyring.gpg\n",
}
ON_VENDOR = """description = "jdupes from the image's vendor archive, hprof-conv from its flat repository"
parents = ["regvendor"]
[apt]
packages = ["jdupes", "hprof-conv"]
[test]
commands = ["jdupes -v | grep -q 'linked to libjodycode'",
            "/usr/lib/android-sdk/platform-tools/hprof-conv 2>&1 | grep -q 'Usage: hprof-conf'"]
"""


def _vendor_repos(tmp_path: Path, request: pytest.FixtureRequest, suite_key: Any, flat_key: Any) -> Path:
    """www/suite (jdupes with its library, Ubuntu-like ``noble``) and www/flat (hprof-conv, NVIDIA-like) of
    real .debs (tests/aptrepo.py), each signed with the key given."""
    import aptrepo

    debs = aptrepo.debs(Path(request.config.cache.mkdir("aptrepo-debs")), ["jdupes", "libjodycode3", "hprof-conv"])
    www = tmp_path / "www"
    aptrepo.suite_repo(www / "suite", suite_key, {"main": [debs["jdupes"], debs["libjodycode3"]]})
    aptrepo.flat_repo(www / "flat", flat_key, [debs["hprof-conv"]])
    return www


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.network
def test_apt_on_an_image_reads_the_image_s_own_sources_with_its_own_keys(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import aptrepo

    seconds: dict[str, float] = {}
    suite_key = aptrepo.make_key(tmp_path / "gnupg-suite", "buildsys test vendor")
    flat_key = aptrepo.make_key(tmp_path / "gnupg-flat", "buildsys test cuda")
    www = _vendor_repos(tmp_path, request, suite_key, flat_key)
    (www / "image").mkdir()
    suite_key.export(www / "image" / "suite.asc")
    flat_key.export(www / "image" / "flat.gpg", armor=False)
    store = tmp_path / "store"
    with aptrepo.serve(www) as url, docker_registry(tmp_path / "registry") as reg:
        for name, text in IMAGE_FILES.items():
            (www / "image" / name).write_text(text.format(url=url))
        src = _write(tmp_path / "src", {"debroot": DEBROOT, "vendor": VENDOR.format(url=url)})
        for command in (("lock",), ("fetch",), ("build", "vendor")):
            ok(bs(src, tmp_path / "src-store", *command))
        ref = f"{reg.host}/vendor:1"
        ok(bs(src, tmp_path / "src-store", "publish", "vendor", "--to", ref, "--force"))
        proj = _write(tmp_path / "proj", {"regvendor": ROOT.format(ref=ref), "onvendor": ON_VENDOR})
        t = time.monotonic()
        ok(bs(proj, store, "lock"))
        seconds["lock"] = time.monotonic() - t
        lock = tomllib.loads((proj / "locks" / "onvendor.lock").read_text())
        archives = [(a["mirror"], a["suite"]) for a in lock["apt-archives"]]
        # What the image's apt reads, in its order: sources.list (Debian's three), then sources.list.d by name.
        assert archives == [("http://deb.debian.org/debian", "bookworm"),
                            ("http://deb.debian.org/debian", "bookworm-updates"),
                            ("http://deb.debian.org/debian-security", "bookworm-security"),
                            (f"{url}/flat", "./"), (f"{url}/suite", "noble")], archives
        mirrors = {d["name"]: d["mirror"] for d in lock["apt"]}
        assert mirrors == {"jdupes": f"{url}/suite", "libjodycode3": f"{url}/suite", "hprof-conv": f"{url}/flat"}
        t = time.monotonic()
        ok(bs(proj, store, "fetch"))
        seconds["fetch"] = time.monotonic() - t
    # The vendor's archives and the registry are gone.
    t = time.monotonic()
    ok(bs(proj, store, "build", "onvendor"))
    seconds["build"] = time.monotonic() - t
    t = time.monotonic()
    assert "reproducible" in ok(bs(proj, store, "build", "--verify", "onvendor")).output
    seconds["verify"] = time.monotonic() - t
    ok(bs(proj, store, "test", "onvendor"))
    print("apt on the image's own sources, seconds:", {k: round(v, 2) for k, v in seconds.items()})


@pytest.mark.network
@pytest.mark.parametrize("wrong", ["suite", "flat"])
def test_an_image_source_that_its_own_keys_do_not_sign_is_a_named_error(
        tmp_path: Path, request: pytest.FixtureRequest, wrong: str) -> None:
    """The keys are the image's: a source signed by another key than the one its signed-by names is refused
    by apt at lock time, naming the source (the release archive's, or a vendor's beside it)."""
    import aptrepo

    from buildsys.core.errors import LockError
    from buildsys.core.store import Store
    from buildsys.ecosystems.apt_image_sources import ImageSource
    from buildsys.ecosystems.registry_apt import ImageRelease, image_resolver, lock_apt_on_image
    from buildsys.ecosystems.registry_image import ImageBaseLock
    from buildsys.oci.image import MANIFEST_MEDIA_TYPE

    signer = aptrepo.make_key(tmp_path / "gnupg-signer", "buildsys test signer")
    stranger = aptrepo.make_key(tmp_path / "gnupg-stranger", "buildsys test stranger")
    www = _vendor_repos(tmp_path, request, signer, signer)
    good = signer.export(tmp_path / "signer.gpg", armor=False).read_bytes()
    bad = stranger.export(tmp_path / "stranger.asc").read_bytes()
    with aptrepo.serve(www) as url:
        sources = (
            ImageSource(f"{url}/suite", "noble", ("main",), (bad if wrong == "suite" else good,),
                        ("/usr/share/keyrings/vendor.gpg",), (), "etc/apt/sources.list:1"),
            ImageSource(f"{url}/flat/", "/", (), (bad if wrong == "flat" else good,),
                        ("/usr/share/keyrings/cuda.gpg",), (), "etc/apt/sources.list.d/cuda.sources (stanza 1)"),
        )
        release = ImageRelease(suite="noble", pretty="Ubuntu-like test image", status=STATUS, sources=sources)
        resolver, n = image_resolver(tmp_path / "apt", "amd64", release, [])
        assert n == 1 and resolver.mirror == f"{url}/suite" and resolver.third_party[0].suite == "./"
        recipe_file = tmp_path / "recipes" / "tools.toml"
        recipe_file.parent.mkdir()
        recipe_file.write_text(APT_CHILD.format(parent="root"))
        root = ImageBaseLock(reference="r.example/ubuntu-like:1", platform="linux/amd64",
                             manifest_digest="sha256:" + "0" * 64, manifest_media_type=MANIFEST_MEDIA_TYPE,
                             manifest_size=1, config_digest="sha256:" + "1" * 64, config_size=1, layers=())
        with pytest.raises(LockError) as e:
            lock_apt_on_image(parse_recipe(recipe_file), root, release, [], Store(tmp_path / "store"))
    msg = str(e.value)
    assert "tools.toml" in msg and "r.example/ubuntu-like:1 (Ubuntu-like test image)" in msg, msg
    assert f"{url}/{wrong}" in msg and ("signature" in msg or "not signed" in msg), msg
    if wrong == "suite":  # the release archive: the hint names the image's own keyrings, not Debian's
        assert "/usr/share/keyrings/vendor.gpg" in msg and "debian-archive-keyring" not in msg, msg
