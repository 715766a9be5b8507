"""Debian roots end to end: lock, fetch, build offline, verify, cache, faults.

These talk to the real things: Debian's archive (deb.debian.org), mmdebstrap,
and the dockerd that `make test` / .ci/run started. One store is shared by the
whole module, so the archive is asked once and each bootstrap runs only where
a test needs a new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from helpers import bs, copy_project

from buildsys.ecosystems.debian_root import DebianBaseLock
from buildsys.model.lockfile import lock_path, read_lock
from buildsys.oci.image import OciLayout

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Path:
    """The mini root, locked and fetched once for the module."""
    proj = copy_project("root-bookworm", tmp_path_factory.mktemp("proj"))
    assert bs(proj, store, "lock", "mini").exit_code == 0
    assert bs(proj, store, "fetch", "mini").exit_code == 0
    return proj


@pytest.fixture(scope="module")
def built(project: Path, store: Path) -> dict:
    result = bs(project, store, "build", "--json", "mini")
    assert result.exit_code == 0, result.output + result.stderr
    (image,) = json.loads(result.stdout)
    return image


def test_lock_pins_every_deb_with_hashes_and_an_archive_epoch(project: Path) -> None:
    lock = read_lock(lock_path(project, "mini"))
    base = lock.get(DebianBaseLock)
    assert base is not None
    names = {p.name for p in base.packages}
    assert {"base-files", "dpkg", "apt", "libc6", "bash"} <= names
    for p in base.packages:
        assert len(p.sha256) == 64 and p.size > 0 and p.path.startswith("pool/")
    # The epoch is the signed Release date, not the wall clock of locking.
    assert lock.source_date_epoch < time.time() - 3600
    assert base.release_date and len(base.inrelease_sha256) == 64


def test_relock_with_nothing_new_is_byte_identical(project: Path, store: Path) -> None:
    before = lock_path(project, "mini").read_bytes()
    result = bs(project, store, "lock", "--upgrade", "mini")
    assert result.exit_code == 0, result.stderr
    assert lock_path(project, "mini").read_bytes() == before


def test_build_loads_an_image_whose_id_is_the_config_digest(built: dict, store: Path) -> None:
    client = docker.from_env()
    img = client.images.get("mini:latest")
    assert img.id == built["image_id"]
    assert built["cached"] is False
    assert len(built["diff_ids"]) == 1
    # The OCI layout in the store holds the same image.
    layout = OciLayout(store / "oci")
    manifest, config = layout.read_image(built["manifest_digest"])
    assert layout.blob_path(manifest["config"]["digest"]).is_file()
    assert config["rootfs"]["diff_ids"] == built["diff_ids"]
    assert "GREETING=hello" in config["config"]["Env"]
    assert config["created"].startswith("20")  # the epoch, RFC 3339
    out = client.containers.run("mini:latest", ["cat", "/etc/debian_version"], remove=True, network_mode="none")
    assert out.decode().startswith("12.")


def test_noop_rebuild_is_a_cache_hit_that_bootstraps_nothing(project: Path, store: Path, built: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # No mmdebstrap on PATH: a rebuild that tried to bootstrap would fail.
    monkeypatch.setenv("PATH", "/nonexistent")
    started = time.monotonic()
    result = bs(project, store, "build", "--json", "mini")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    (image,) = json.loads(result.stdout)
    assert image["cached"] is True
    assert image["image_id"] == built["image_id"]
    assert elapsed < 5  # generous: the figure that matters is in bench/, this only catches a rebuild


def test_verify_proves_two_builds_equal(project: Path, store: Path, built: dict) -> None:
    result = bs(project, store, "build", "--verify", "mini")
    assert result.exit_code == 0, result.output + result.stderr
    assert "mini: reproducible" in result.output
    assert built["image_id"] in result.output


def test_test_command_runs_the_recipe_tests_inside_the_image(project: Path, store: Path, built: dict) -> None:
    result = bs(project, store, "test", "mini")
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.count("pass") == 2


def test_a_tampered_vendored_file_is_refused_and_removed(project: Path, store: Path, built: dict) -> None:
    lock = read_lock(lock_path(project, "mini"))
    base = lock.get(DebianBaseLock)
    assert base is not None
    victim = next(p for p in base.packages if p.name == "bash")
    path = store / "vendor" / "sha256" / victim.sha256
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    result = bs(project, store, "build", "--no-cache", "mini")
    assert result.exit_code == 1
    assert "bash" in result.stderr and "damaged" in result.stderr
    assert "buildsys fetch mini" in result.stderr
    assert not path.exists()  # never trusted by a later run
    # fetch puts the right one back
    assert bs(project, store, "fetch", "mini").exit_code == 0
    assert path.is_file()


def test_a_missing_vendored_file_says_run_fetch(project: Path, tmp_path: Path) -> None:
    empty_store = tmp_path / "store"
    result = bs(project, empty_store, "build", "mini")
    assert result.exit_code == 1
    assert "missing from the vendor store" in result.stderr
    assert "run `buildsys fetch mini`" in result.stderr
    assert not (empty_store / "cache" / "layers").exists()


def test_stale_lock_is_refused_by_build_and_reported_by_check(project: Path, store: Path, tmp_path: Path) -> None:
    proj = copy_project("root-bookworm", tmp_path / "p")
    shutil.copytree(project / "locks", proj / "locks")
    assert bs(proj, store, "lock", "--check").exit_code == 0
    recipe = proj / "recipes" / "mini.toml"
    recipe.write_text(recipe.read_text().replace('GREETING = "hello"', 'GREETING = "bye"'))
    before = (proj / "locks" / "mini.lock").read_bytes()
    check = bs(proj, store, "lock", "--check")
    assert check.exit_code == 3
    assert "mini: stale" in check.stdout
    assert (proj / "locks" / "mini.lock").read_bytes() == before  # --check writes nothing
    build = bs(proj, store, "build", "mini")
    assert build.exit_code == 3
    assert "run `buildsys lock mini`" in build.stderr


def test_missing_lock_is_exit_3(tmp_path: Path, store: Path) -> None:
    proj = copy_project("root-bookworm", tmp_path / "p")
    result = bs(proj, store, "build", "mini")
    assert result.exit_code == 3
    assert "no lock" in result.stderr and "buildsys lock mini" in result.stderr


def test_unknown_suite_names_it(tmp_path: Path, store: Path) -> None:
    proj = copy_project("root-bookworm", tmp_path / "p")
    recipe = proj / "recipes" / "mini.toml"
    recipe.write_text(recipe.read_text().replace('"bookworm"', '"bookwurm"'))
    result = bs(proj, store, "lock", "mini")
    assert result.exit_code != 0
    assert "bookwurm" in result.stderr
    assert not (proj / "locks" / "mini.lock").exists()


def test_missing_mmdebstrap_is_a_clear_error(project: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    result = bs(project, store, "build", "--no-cache", "mini")
    assert result.exit_code == 1
    assert "mmdebstrap" in result.stderr and "apt-get install" in result.stderr


def test_unreachable_engine_is_exit_4(project: Path, store: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    result = bs(project, store, "build", "mini")
    assert result.exit_code == 4
    assert "unreachable" in result.stderr


def test_an_interrupted_build_leaves_nothing_a_later_run_trusts(project: Path, tmp_path: Path, store: Path) -> None:
    fresh = tmp_path / "store"
    shutil.copytree(store / "vendor", fresh / "vendor")
    cmd = [sys.executable, "-m", "buildsys", "-C", str(project), "--store", str(fresh), "build", "mini"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(8)  # inside the bootstrap
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()  # left open, it is an unclosed file wherever the GC finds it
    assert not list((fresh / "cache" / "layers").glob("*.json")) if (fresh / "cache" / "layers").exists() else True
    layout = OciLayout(fresh / "oci")
    assert layout.refs() == {}
    # Nothing half-written under a final name: every blob present hashes to its name.
    for blob in (fresh / "oci" / "blobs" / "sha256").glob("*") if (fresh / "oci").exists() else []:
        if not blob.name.startswith("."):
            assert layout.read_blob("sha256:" + blob.name)
    # And the next run builds fine.
    result = bs(project, fresh, "build", "--json", "mini")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["cached"] is False


def test_ctrl_c_during_the_bootstrap_leaves_no_temporary_root_behind(project: Path, tmp_path: Path,
                                                                       store: Path) -> None:
    """Before, SIGINT left a 149 MB /tmp/mmdebstrap.* that no later run removed."""
    fresh = tmp_path / "store"
    shutil.copytree(store / "vendor", fresh / "vendor")
    before = set(Path("/tmp").glob("mmdebstrap.*"))
    cmd = [sys.executable, "-m", "buildsys", "-C", str(project), "--store", str(fresh), "build", "mini"]
    # SIGINT at its default in the child (a shell's background job inherits it ignored; Python then keeps it so).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while not list((fresh / "tmp").glob("repo-*/tmp/mmdebstrap.*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((fresh / "tmp").glob("repo-*/tmp/mmdebstrap.*")), "mmdebstrap never started its root"
    time.sleep(3)  # well inside the bootstrap: packages are being unpacked
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0, out
    assert list((fresh / "tmp").iterdir()) == []
    assert set(Path("/tmp").glob("mmdebstrap.*")) == before
    alive = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert alive == [], f"processes of the interrupted bootstrap still run: {alive}"


def test_verify_catches_a_step_that_writes_the_time_and_names_the_file(tmp_path: Path, store: Path) -> None:
    proj = copy_project("root-stamp", tmp_path / "p")
    assert bs(proj, store, "lock", "stamp").exit_code == 0
    assert bs(proj, store, "fetch", "stamp").exit_code == 0
    result = bs(proj, store, "build", "--verify", "stamp")
    assert result.exit_code == 3, result.output + result.stderr
    assert "NOT reproducible" in result.stderr
    assert "etc/build-stamp: content" in result.stderr
    # Only that file differs: the rest of the bootstrap is reproducible.
    assert result.stderr.count(": content") == 1


def test_diff_compares_two_images_file_by_file(tmp_path: Path, store: Path, built: dict) -> None:
    proj = copy_project("root-stamp", tmp_path / "p")
    assert bs(proj, store, "lock", "stamp").exit_code == 0
    assert bs(proj, store, "build", "stamp").exit_code == 0
    result = bs(proj, store, "diff", "mini", "stamp")
    assert result.exit_code == 1
    assert "etc/build-stamp: only in B" in result.stdout
    assert "config config.Env" in result.stdout  # GREETING only in mini
    same = bs(proj, store, "diff", "mini", built["manifest_digest"])
    assert same.exit_code == 0 and "identical" in same.stdout



def test_a_full_disk_is_a_clear_error_and_leaves_nothing_trusted(project: Path, store: Path, built: dict,
                                                                 small_disk: Path) -> None:
    lock = read_lock(lock_path(project, "mini"))
    base = lock.get(DebianBaseLock)
    assert base is not None
    vendor = small_disk / "vendor" / "sha256"
    vendor.mkdir(parents=True)
    for p in base.packages:  # ~40 MB of .debs: the 170 MB root cannot fit beside them
        shutil.copyfile(store / "vendor" / "sha256" / p.sha256, vendor / p.sha256)
    result = bs(project, small_disk, "build", "mini")
    assert result.exit_code == 1
    assert "free some space" in result.stderr and "Traceback" not in result.stderr
    assert not (small_disk / "cache" / "layers").exists() or not any((small_disk / "cache" / "layers").iterdir())
    assert OciLayout(small_disk / "oci").refs() == {}
    assert not list((small_disk / "tmp").iterdir())  # scratch removed on the way out


def test_the_root_is_what_an_updated_bookworm_machine_has(project: Path, built: dict) -> None:
    """Locked from the suite, -updates and -security: the built image, with the network on and its
    three standard sources, finds nothing to upgrade (the same versions as apt-cache policy picks)."""
    lock = read_lock(lock_path(project, "mini"))
    base = lock.get(DebianBaseLock)
    assert base is not None
    archives = [(a.mirror, a.suite) for a in base.all_archives]
    assert archives == [("http://deb.debian.org/debian", "bookworm"),
                        ("http://deb.debian.org/debian", "bookworm-updates"),
                        ("http://deb.debian.org/debian-security", "bookworm-security")]
    script = ("apt-get update -qq && sha256sum /var/lib/apt/lists/*InRelease && echo ::upgrades:: && "
              "apt-get -s dist-upgrade | grep '^Inst' || true")
    out = docker.from_env().containers.run(built["image_id"], ["sh", "-c", script], remove=True,
                                           network_mode="bridge").decode()
    seen = set(re.findall(r"^([0-9a-f]{64}) ", out, re.M))
    if seen != {a.inrelease_sha256 for a in base.all_archives}:
        pytest.skip("Debian's archive moved between locking and this check; the next run compares again")
    sources = docker.from_env().containers.run(built["image_id"], ["cat", "/etc/apt/sources.list"],
                                               remove=True).decode()
    assert sources.splitlines() == [f"deb {m} {s} main" for m, s in archives]
    assert out.split("::upgrades::", 1)[1].strip() == ""


def test_upgrade_check_shows_what_a_relock_moves_and_writes_nothing(project: Path, store: Path,
                                                                    tmp_path: Path) -> None:
    proj = copy_project(project, tmp_path / "p")
    # The suite alone, as roots were locked before they took their security fixes.
    recipe = proj / "recipes" / "mini.toml"
    recipe.write_text(recipe.read_text().replace('variant = "minbase" }',
                                                  'variant = "minbase", updates = false, security = false }'))
    assert bs(proj, store, "lock", "mini").exit_code == 0
    old = read_lock(lock_path(proj, "mini"))
    old_base = old.get(DebianBaseLock)
    assert old_base is not None and old_base.archives == ()  # the old form, unchanged for who opts out
    recipe.write_text(recipe.read_text().replace(", updates = false, security = false", ""))
    before = lock_path(proj, "mini").read_bytes()
    result = bs(proj, store, "lock", "--upgrade", "--check", "mini")
    assert result.exit_code == 3, result.output + result.stderr
    assert lock_path(proj, "mini").read_bytes() == before
    assert "a relock would change" in result.stdout and "debian-security" in result.stdout
    assert "run `buildsys lock --upgrade mini`" in result.stderr
    assert bs(proj, store, "lock", "mini").exit_code == 0
    # Seconds later, with nothing new upstream (as test_relock_with_nothing_new_is_byte_identical assumes too).
    again = bs(proj, store, "lock", "--upgrade", "--check", "mini")
    assert again.exit_code == 0 and "nothing would change" in again.stdout, again.stdout
