"""A recipe's layer as several OCI layers (docs/recipes.md, "Split layers").

The rules on entries and groups run here without docker. The build itself (the
chain fixture's ``tools`` with its two pip wheels each a layer of its own) is
``test_a_split_layer_builds_verifies_and_keeps_its_groups_when_the_rest_changes``:
docker, Debian's archive and PyPI, on a hard-linked copy of the session's
``shipped`` store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import bs, copy_project, ok

from buildsys.build.verify import diff_images, layer_name
from buildsys.core.errors import EXIT_USAGE, BuildError, RecipeError
from buildsys.ecosystems.pip_layers import LARGE_FILE, SPLIT_THRESHOLD, LayerSpec, owners, pip_groups
from buildsys.ecosystems.pip_resolve import PipRecipe
from buildsys.model.recipe import parse_recipe
from buildsys.oci.image import OciLayout
from buildsys.oci.layer.entry import Item
from buildsys.oci.layer.split import split_entries

EPOCH = 1_700_000_000
SITE = "usr/local/lib/python3.11/dist-packages"


def d(path: str) -> Item:
    return Item(path, "dir", 0o755, 0, 0, EPOCH)


def f(path: str, data: bytes = b"x", **kw) -> Item:
    return Item(path, "file", 0o644, 0, 0, EPOCH, size=len(data), data=data, **kw)


def paths(items: list[Item]) -> list[str]:
    return [it.path for it in items]


def test_entries_split_by_owner_with_their_directories_links_and_whiteouts() -> None:
    entries = [
        d("etc"), f("etc/.wh.gone"), f("etc/new.conf"),
        d("opt"), f("opt/.wh..wh..opq"), d("opt/a"), f("opt/a/one"), f("opt/a/two"), d("opt/b"), f("opt/b/three"),
        Item("opt/b/three-link", "hardlink", 0o644, 0, 0, EPOCH, linkname="opt/a/one"),
        d("var"), d("var/empty"),
    ]
    owned = {"opt/a/one": 0, "opt/a/two": 0, "opt/b/three": 1}
    low, mid, top = split_entries(entries, 2, owned.get)
    # The opaque marker stays at the bottom (higher, it would hide what the lower layers put in opt).
    assert paths(low) == ["opt", "opt/.wh..wh..opq", "opt/a", "opt/a/one", "opt/a/two", "opt/b", "opt/b/three-link"]
    assert paths(mid) == ["opt", "opt/b", "opt/b/three"]
    # Whiteouts, unowned files, and directories nothing owned lies under: the top layer.
    assert paths(top) == ["etc", "etc/.wh.gone", "etc/new.conf", "var", "var/empty"]
    # Every path but the directories in exactly one layer; none lost.
    flat = [it.path for part in (low, mid, top) for it in part if it.kind != "dir"]
    assert sorted(flat) == sorted(it.path for it in entries if it.kind != "dir")
    # No split asked: one layer, the same entries.
    (alone,) = split_entries(entries, 0, lambda path: None)
    assert paths(alone) == paths(entries)


def record(dist: str, version: str, files: list[str]) -> Item:
    rows = "".join(f"{p},sha256=x,1\n" for p in files) + f"{dist}-{version}.dist-info/RECORD,,\n"
    return f(f"{SITE}/{dist}-{version}.dist-info/RECORD", rows.encode())


def test_a_distribution_owns_what_its_record_lists_scripts_and_bytecode_included() -> None:
    entries = [
        d("usr"), d("usr/local"), d("usr/local/bin"), f("usr/local/bin/torchrun"), d(SITE),
        d(f"{SITE}/torch"), f(f"{SITE}/torch/__init__.py"), f(f"{SITE}/torch/__pycache__/__init__.cpython-311.pyc"),
        d(f"{SITE}/torch-2.5.1.dist-info"), f(f"{SITE}/torch-2.5.1.dist-info/INSTALLER"),
        record("torch", "2.5.1", ["torch/__init__.py", "torch/__pycache__/__init__.cpython-311.pyc",
                                  "../../../bin/torchrun"]),
        f(f"{SITE}/nvidia/__init__.py"), record("nvidia_cublas_cu12", "12.4.5.8", ["nvidia/__init__.py"]),
        f(f"{SITE}/six.py"), record("six", "1.16.0", ["six.py"]),
    ]
    groups = pip_groups("pytorch", (), True, {"nvidia-cublas-cu12": 400 << 20, "torch": 800 << 20, "six": 11_000})
    assert [(g.name, g.distributions) for g in groups] == [("cuda", ("nvidia-cublas-cu12",)),
                                                           ("frameworks", ("torch",))]
    owned = owners(entries, groups)
    assert owned["usr/local/bin/torchrun"] == 1 and owned[f"{SITE}/torch/__init__.py"] == 1
    assert owned[f"{SITE}/torch/__pycache__/__init__.cpython-311.pyc"] == 1
    assert owned[f"{SITE}/torch-2.5.1.dist-info/INSTALLER"] == 1  # not in RECORD, but in its .dist-info
    assert owned[f"{SITE}/nvidia/__init__.py"] == 0
    assert f"{SITE}/six.py" not in owned and f"{SITE}/six-1.16.0.dist-info/RECORD" not in owned


def test_the_default_rule_splits_only_big_sets_and_explicit_groups_are_checked() -> None:
    small = {"torch": LARGE_FILE, "six": 11_000}
    assert pip_groups("x", (), True, small) == ()  # under the threshold: one layer
    big = {"nvidia-cudnn-cu12": SPLIT_THRESHOLD, "tensorflow": LARGE_FILE, "keras": 1 << 20}
    assert [g.distributions for g in pip_groups("x", (), True, big)] == [("nvidia-cudnn-cu12",), ("tensorflow",)]
    assert pip_groups("x", (), False, big) == ()  # split = false
    # Explicit groups, bottom first; the first group that matches a distribution takes it.
    specs = (LayerSpec("tf", ("tensorflow", "Keras")), LayerSpec("rest-of-big", ("*",)))
    groups = pip_groups("x", specs, True, {"six": 1, **big})
    assert [g.distributions for g in groups] == [("keras", "tensorflow"), ("nvidia-cudnn-cu12", "six")]
    with pytest.raises(BuildError, match=r"\[\[pip.layers\]\] 1 \('cuda': nvidia-\*\) matches none of the 2"):
        pip_groups("x", (LayerSpec("cuda", ("nvidia-*",)),), True, small)


def test_pip_layers_in_a_recipe_and_what_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipes" / "gpu.toml"
    path.parent.mkdir()
    good = ('parents = ["python"]\n[pip]\npackages = ["torch"]\n'
            '[[pip.layers]]\nname = "cuda"\npackages = ["nvidia-*"]\n')
    spec = parse_recipe(path, good).section(PipRecipe)
    assert spec.layers == (LayerSpec("cuda", ("nvidia-*",)),) and spec.split
    assert not parse_recipe(path, 'parents = ["python"]\n[pip]\npackages = ["torch"]\nsplit = false\n') \
        .section(PipRecipe).split
    for text, key, words in [
        (good + "[[pip.layers]]\nname = \"cuda\"\npackages = [\"torch\"]\n", "pip.layers[1].name", "two"),
        (good.replace('name = "cuda"', 'name = "CUDA libs"'), "pip.layers[0].name", "lowercase"),
        (good.replace('["nvidia-*"]', '[]'), "pip.layers[0].packages", "at least one"),
        (good.replace('["nvidia-*"]', '["nvidia cuda"]'), "pip.layers[0].packages[0]", "not a distribution"),
        (good.replace('packages = ["torch"]', 'packages = ["torch"]\nsplit = false'), "pip.split", "remove one"),
    ]:
        with pytest.raises(RecipeError) as e:
            parse_recipe(path, text)
        assert e.value.exit_code == EXIT_USAGE and e.value.key == key and words in str(e.value), (key, str(e.value))
        assert str(path) in str(e.value)


def test_a_differing_layer_is_named_by_its_history() -> None:
    config = {"history": [{"created_by": "buildsys: root (mmdebstrap; lock 0)"},
                          {"created_by": "ENV X=1", "empty_layer": True},
                          {"created_by": "buildsys: tools/cuda (pip 19: nvidia-cublas-cu12; lock 1)"},
                          {"created_by": "RUN make"}]}
    assert layer_name(config, 1) == "tools/cuda" and layer_name(config, 2) == "" and layer_name(config, 5) == ""


# ---- the build, with docker


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a store whose files are hard links: blobs are immutable, and entries are replaced by rename."""
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)
    return dst


def _image(store: Path, name: str) -> tuple[str, dict, dict]:
    layout = OciLayout(store / "oci")
    digest = layout.resolve(name)
    assert digest is not None
    manifest, config = layout.read_image(digest)
    return digest, manifest, config


def _docker_layers(ref: str) -> list[str]:
    """The diff_ids of the image docker holds as ``ref``."""
    out = subprocess.run(["docker", "image", "inspect", ref, "--format", "{{json .RootFS.Layers}}"],
                         capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


def _layer_files(store: Path, digest: str) -> list[str]:
    import tarfile

    with tarfile.open(store / "oci" / "blobs" / "sha256" / digest[7:]) as tf:
        return [m.name for m in tf.getmembers() if not m.isdir()]


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_split_layer_builds_verifies_and_keeps_its_groups_when_the_rest_changes(shipped, tmp_path: Path) -> None:
    proj_s, store_s = shipped
    proj = copy_project(proj_s, tmp_path / "proj")
    store = _linked_copy(store_s, tmp_path / "store")
    whole_digest, whole, _ = _image(store, "tools")
    tools = proj / "recipes" / "tools.toml"
    tools.write_text(tools.read_text() + '\n[[pip.layers]]\nname = "six"\npackages = ["six"]\n'
                                          '\n[[pip.layers]]\nname = "markup"\npackages = ["markup*"]\n')
    ok(bs(proj, store, "lock", "app"))  # the recipe changed: its pins are kept
    built = ok(bs(proj, store, "build", "app"))
    # The three layers streamed into one docker load as they are written; docker's image is the store's.
    assert "docker load (3 new layers), streamed as written" in built.output
    digest, manifest, config = _image(store, "tools")
    assert _docker_layers("tools:latest") == config["rootfs"]["diff_ids"]
    below = len(whole["layers"]) - 1
    own = manifest["layers"][below:]
    assert len(own) == 3, manifest["layers"]
    history = [h["created_by"] for h in config["history"] if not h.get("empty_layer")][below:]
    assert [h.partition(" (")[0] for h in history] == ["buildsys: tools/six", "buildsys: tools/markup",
                                                       "buildsys: tools"]
    six, markup, rest = (_layer_files(store, layer["digest"]) for layer in own)
    # The bottom layer also holds the layer's opaque-directory markers (apt emptied its lists).
    assert any(p.endswith("/six.py") for p in six) and all("six" in p or p.endswith("/.wh..wh..opq") for p in six), six
    assert any("/markupsafe/" in p for p in markup) and all("markupsafe" in p.lower() for p in markup), markup
    assert not any(f"{SITE}/" in p and ("six" in p or "markupsafe" in p.lower()) for p in rest), rest
    assert "usr/bin/jq" in rest
    # Stacked, the three layers are the one layer's filesystem, file for file.
    assert diff_images(OciLayout(store / "oci"), whole_digest, OciLayout(store / "oci"), digest).files == []
    ok(bs(proj, store, "test", "app"))
    # Reproducible, layer by layer.
    ok(bs(proj, store, "build", "--verify", "app"))
    # The rest of the layer changes (one more apt package): the wheels' layers keep their digests.
    tools.write_text(tools.read_text().replace('packages = ["jq", "python3"]', 'packages = ["jq", "python3", "tree"]'))
    ok(bs(proj, store, "lock", "app"))
    rebuilt = ok(bs(proj, store, "build", "app"))
    # The two wheel layers come out as last time: hashed, not written again, and not sent to docker.
    assert "docker load (1 new layer; 2 it has)" in rebuilt.output, rebuilt.output
    _, after, _ = _image(store, "tools")
    changed = bs(proj, store, "diff", digest, "tools")
    assert changed.exit_code == 1 and "usr/bin/tree: only in B (in tools)" in changed.stdout, changed.stdout
    assert [x["digest"] for x in after["layers"][:below + 2]] == [x["digest"] for x in manifest["layers"][:below + 2]]
    assert after["layers"][-1]["digest"] != manifest["layers"][-1]["digest"]
    # An image nobody runs yet stays out of docker with --no-load; `test` loads it when it runs it.
    app = proj / "recipes" / "app.toml"
    app.write_text(app.read_text().replace("echo built > /home/app/built.txt",
                                           "echo built > /home/app/built.txt; true"))
    ok(bs(proj, store, "lock", "app"))
    quiet = ok(bs(proj, store, "build", "--no-load", "app", "--json"))
    image_id = json.loads(quiet.stdout)[-1]["image_id"]
    assert subprocess.run(["docker", "image", "inspect", image_id], capture_output=True).returncode != 0
    ok(bs(proj, store, "test", "app"))
    assert subprocess.run(["docker", "image", "inspect", image_id], capture_output=True).returncode == 0
    # An image docker lacks whole (the root too) goes in from the store: what it holds after is the store's
    # image, layer for layer.
    root_id = _image(store, "root")[1]["config"]["digest"]
    subprocess.run(["docker", "image", "rm", "-f", image_id, root_id], capture_output=True, check=True)
    ok(bs(proj, store, "test", "app"))
    app_ids = OciLayout(store / "oci").read_config(image_id)["rootfs"]["diff_ids"]
    assert _docker_layers(image_id) == app_ids and len(app_ids) == below + 4
    subprocess.run(["docker", "image", "rm", image_id], capture_output=True)
