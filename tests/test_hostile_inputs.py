"""Trust nothing a lock or the store says: hostile and damaged inputs, through the CLI.

Each case was reproduced against the previous code first (noted per test).
The project is a copy of the bundled recipes and locks, so the locks are real
ones as `buildsys lock` wrote them; the tests edit them as a careless or
hostile pull request would. None of these needs the network or the engine:
every case is refused before anything is fetched or started.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from helpers import bs, ok

from buildsys.ecosystems.files import FilesSection
from buildsys.ecosystems.pip import PipSection
from buildsys.model.lockfile import lock_path, read_lock, write_lock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    (proj / "recipes").mkdir(parents=True)
    (proj / "locks").mkdir()
    for name in ("base", "python"):  # only base -> python here, whatever else the stack holds
        for kind, suffix in (("recipes", "toml"), ("locks", "lock")):
            (proj / kind / f"{name}.{suffix}").write_bytes((REPO / kind / f"{name}.{suffix}").read_bytes())
    return proj


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def edit_lock(proj: Path, name: str, old: str, new: str, count: int = 1) -> None:
    path = lock_path(proj, name)
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def first_apt_sha(proj: Path, name: str) -> str:
    text = lock_path(proj, name).read_text()
    m = re.compile(r'^sha256 = "([0-9a-f]{64})"', re.M).search(text, text.index("[[apt]]"))
    assert m
    return m.group(1)


def test_the_bundled_locks_pass_every_check(project: Path, store: Path) -> None:
    """The other tests must fail for what they changed, not for the copy."""
    result = ok(bs(project, store, "lock", "--check"))
    assert "base: fresh" in result.output and "python: fresh" in result.output


# 1. A lock's sha256 was used as a path: `build` hashed a host file, called it damaged and deleted it.
@pytest.mark.parametrize("command", [("lock", "--check"), ("fetch",), ("build",), ("build", "--verify")])
def test_a_digest_that_is_a_path_is_exit_2_and_touches_nothing(project: Path, store: Path, tmp_path: Path,
                                                               command: tuple[str, ...]) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (store / "vendor" / "sha256").mkdir(parents=True)
    edit_lock(project, "python", f'sha256 = "{first_apt_sha(project, "python")}"', 'sha256 = "../../../victim.txt"')
    result = bs(project, store, *command, "python")
    assert result.exit_code == 2, result.output + result.stderr
    assert "locks/python.lock: [[apt]] #1 ('libexpat1'): sha256: '../../../victim.txt' is not 64 lowercase hex" \
        in result.stderr
    assert "relock with `buildsys lock python`" in result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_text() == "keep me\n"


# 2. [[files]].name of ../../../../../../PWNED made `build` hardlink vendored content anywhere, exit 0.
def test_a_file_name_that_climbs_out_is_exit_2(project: Path, store: Path, tmp_path: Path) -> None:
    path = lock_path(project, "python")
    path.write_text(path.read_text() + '\n[[files]]\nname = "../../../../../../PWNED"\n'
                    f'sha256 = "{"a" * 64}"\nsize = 3\nurl = "https://example.org/x"\n')
    for command in (("lock", "--check"), ("fetch",), ("build",)):
        result = bs(project, store, *command, "python")
        assert result.exit_code == 2, result.output + result.stderr
        assert "[[files]] #1 ('../../../../../../PWNED'): name:" in result.stderr
        assert "is not a plain file name" in result.stderr
    assert not list(tmp_path.rglob("PWNED")) and not Path("/PWNED").exists()


@pytest.mark.parametrize("entry, key, words", [
    ('[[apt]]\narchitecture = "amd64"\nmirror = "http://deb.debian.org/debian"\nname = "xy"\n'
     'path = "pool/../../../etc/passwd"\nsha256 = "{sha}"\nsize = 1\nversion = "1"\n', "path", "'..'"),
    ('[[apt]]\narchitecture = "amd64"\nmirror = "http://deb.debian.org/debian"\nname = "-oAPT::X=1"\n'
     'path = "pool/x.deb"\nsha256 = "{sha}"\nsize = 1\nversion = "1"\n', "name", "Debian package name"),
    ('[[apt]]\narchitecture = "amd64"\nmirror = "gopher://x/"\nname = "xy"\n'
     'path = "pool/x.deb"\nsha256 = "{sha}"\nsize = 1\nversion = "1"\n', "mirror", "not an http(s) or file URL"),
    ('[[apt]]\narchitecture = "amd64"\nmirror = "http://deb.debian.org/debian"\nname = "xy"\n'
     'path = "pool/x.deb"\nsha256 = "{sha}"\nsize = -1\nversion = "1"\n', "size", "whole number"),
    ('[[apt]]\narchitecture = "amd64"\nmirror = "http://deb.debian.org/debian"\nname = "xy"\n'
     'path = "pool/x.deb"\nsha256 = "{sha}"\nsize = 1\nversion = "1"\nextra = 1\n', "extra", "unknown key"),
])
def test_every_value_is_checked_for_its_shape(project: Path, store: Path, entry: str, key: str,
                                              words: str) -> None:
    path = lock_path(project, "python")
    path.write_text(path.read_text() + "\n" + entry.format(sha="b" * 64))
    result = bs(project, store, "lock", "--check", "python")
    assert result.exit_code == 2, result.output + result.stderr
    assert f": {key}: " in result.stderr and words in result.stderr


# 3. [[files]] url = "file:///etc/shadow" locked, fetched and built with no word.
def test_a_recipe_file_that_reads_this_machine_is_refused_at_every_command(project: Path, store: Path) -> None:
    recipe = project / "recipes" / "steal.toml"
    recipe.write_text('parents = ["base"]\nrun = ["cp /buildsys/files/shadow /shadow"]\n\n'
                      '[[files]]\nurl = "file:///etc/shadow"\n')
    for command in (("lock", "steal"), ("lock", "--check"), ("fetch", "steal"), ("build", "steal"), ("graph",)):
        result = bs(project, store, *command)
        assert result.exit_code == 2, (command, result.output + result.stderr)
        assert "steal.toml:5: files[0].url: 'file:///etc/shadow' reads from this machine" in result.stderr
        assert "add local = true" in result.stderr
    assert not lock_path(project, "steal").exists()


def test_a_lock_whose_file_the_recipe_never_asked_for_is_stale(project: Path, store: Path) -> None:
    """A file: URL smuggled into a lock (the recipe has no [[files]]) is not fetched: the lock is stale."""
    path = lock_path(project, "python")
    path.write_text(path.read_text() + f'\n[[files]]\nname = "shadow"\nsha256 = "{"c" * 64}"\nsize = 3\n'
                    'url = "file:///etc/shadow"\nlocal = true\n')
    for command in (("lock", "--check"), ("fetch",), ("build",)):
        result = bs(project, store, *command, "python")
        assert result.exit_code == 3, result.output + result.stderr
        assert "file 'shadow' (file:///etc/shadow) is locked but not in the recipe" in result.output + result.stderr
    assert not (store / "vendor" / "sha256" / ("c" * 64)).exists()


def test_a_local_file_with_local_true_is_locked_with_a_warning_and_recorded(project: Path, store: Path,
                                                                            tmp_path: Path) -> None:
    data = tmp_path / "model.bin"
    data.write_bytes(b"weights\n")
    (project / "recipes" / "withlocal.toml").write_text(
        f'parents = ["base"]\n\n[[files]]\nurl = "{data.as_uri()}"\nlocal = true\n')
    result = ok(bs(project, store, "lock", "withlocal"))
    said = " ".join(result.stderr.split())  # rich folds long lines
    assert "withlocal warning: files[0] (model.bin): reading" in said and "as local = true allows" in said
    (locked,) = read_lock(lock_path(project, "withlocal")).section(FilesSection).files
    assert locked.local and locked.sha256 == hashlib.sha256(b"weights\n").hexdigest()
    assert "local = true" in lock_path(project, "withlocal").read_text()
    # Dropping the opt-in from the recipe makes the lock stale, not silently trusted.
    (project / "recipes" / "withlocal.toml").write_text(
        'parents = ["base"]\n\n[[files]]\nurl = "http://example.org/model.bin"\n')
    assert bs(project, store, "lock", "--check", "withlocal").exit_code == 3


# 4. Deleting a [[pip]] entry: `lock --check`, `fetch` and `build` all succeeded, the image lacked the package.
def test_a_lock_without_a_requested_package_is_stale_everywhere(project: Path, store: Path) -> None:
    text = lock_path(project, "python").read_text()
    start = text.index('[[pip]]\nname = "numpy"')
    end = text.find("\n[[pip]]", start + 1)
    lock_path(project, "python").write_text(text[:start] + (text[end + 1:] if end != -1 else ""))
    for command in (("lock", "--check"), ("fetch",), ("build",)):
        result = bs(project, store, *command, "python")
        assert result.exit_code == 3, result.output + result.stderr
        assert "pip package 'numpy' is not locked" in result.output + result.stderr
    check = bs(project, store, "lock", "--check", "python").output
    assert "python: stale (it does not cover its recipe" in check


def test_a_lock_without_a_requested_apt_package_is_stale(project: Path, store: Path) -> None:
    text = lock_path(project, "python").read_text()
    # python3-venv is requested; drop its entry (the lock is otherwise intact)
    start = text.index('name = "python3-venv"')
    start = text.rindex("[[apt]]", 0, start)
    end = text.index("\n[[", start + 1)
    lock_path(project, "python").write_text(text[:start] + text[end + 1:])
    result = bs(project, store, "lock", "--check", "python")
    assert result.exit_code == 3 and "apt package 'python3-venv' is not locked" in result.output


def test_a_pin_outside_the_recipe_specifier_is_stale(project: Path, store: Path) -> None:
    lock = read_lock(lock_path(project, "python"))
    numpy = next(p for p in lock.section(PipSection).packages if p.name == "numpy")
    edit_lock(project, "python", f'name = "numpy"\nselected = "{numpy.selected}"\nversion = "{numpy.version}"',
              f'name = "numpy"\nselected = "{numpy.selected}"\nversion = "1.26.4"')
    result = bs(project, store, "lock", "--check", "python")
    assert result.exit_code == 3
    assert "pip package 'numpy' is locked at 1.26.4, which is not <3,>=2" in result.output


def test_a_swapped_mirror_is_stale(project: Path, store: Path) -> None:
    edit_lock(project, "python", 'mirror = "http://deb.debian.org/debian"', 'mirror = "http://evil.example/debian"')
    result = bs(project, store, "lock", "--check", "python")
    assert result.exit_code == 3
    assert "comes from http://evil.example/debian, not the root's mirror http://deb.debian.org/debian" in result.output


# Smaller cases of the issue.
def test_locks_keep_the_mode_of_the_file_they_replace_and_are_0644_when_new(project: Path, tmp_path: Path) -> None:
    lock = read_lock(lock_path(project, "python"))
    os.chmod(lock_path(project, "python"), 0o664)
    edit_lock(project, "python", "version = 1", "version = 1\n# a comment that a rewrite drops")
    write_lock(project, lock)
    assert stat.S_IMODE(lock_path(project, "python").stat().st_mode) == 0o664
    lock_path(project, "python").unlink()
    old = os.umask(0o022)
    try:
        write_lock(project, lock)
    finally:
        os.umask(old)
    assert stat.S_IMODE(lock_path(project, "python").stat().st_mode) == 0o644


@pytest.mark.parametrize("args", [("build", "-j", "0"), ("fetch", "-j", "0"), ("fetch", "--jobs=-3")])
def test_option_values_are_checked(project: Path, store: Path, args: tuple[str, ...]) -> None:
    result = bs(project, store, *args, "python")
    assert result.exit_code == 2 and "is not in the range x>=1" in result.stderr


def test_diff_with_a_malformed_digest_is_usage_exit_2(project: Path, store: Path) -> None:
    result = bs(project, store, "diff", "sha256:xyz", "python")
    assert result.exit_code == 2
    assert "'sha256:xyz' is not a manifest digest" in result.stderr


# 4, continued: a dependency deleted from the lock. pip installs with --no-deps, so only the
# wheels' own metadata can tell; real wheels from PyPI, the same check `build` runs on a miss.
@pytest.mark.network
def test_a_wheel_whose_dependency_is_locked_nowhere_is_named(tmp_path: Path) -> None:
    from buildsys.core.store import Store
    from buildsys.ecosystems.pip import pip_closure
    from buildsys.ecosystems.pip_resolve import LockedPip, LockedWheelFile
    from buildsys.ecosystems.pypi import index_files
    from buildsys.fetch.vendor import fetch
    from buildsys.model.lockfile import Lock

    def pinned(project: str, filename: str) -> LockedPip:
        (f,) = [f for f in index_files("https://pypi.org/simple", project).values() if f.name == filename]
        return LockedPip(name=project, version=filename.split("-")[1], selected=filename,
                         files=(LockedWheelFile(name=f.name, sha256=f.sha256, url=f.url, size=f.size),))

    dateutil = pinned("python-dateutil", "python_dateutil-2.9.0.post0-py2.py3-none-any.whl")
    six = pinned("six", "six-1.17.0-py2.py3-none-any.whl")
    store = Store(tmp_path / "store")
    fetch(store, [*dateutil.artifacts(), *six.artifacts()], progress=False)

    def lock(*pins: LockedPip) -> Lock:
        return Lock(recipe="app", recipe_hash="sha256:" + "0" * 64, source_date_epoch=1).with_sections(
            PipSection(packages=pins, python="3.11.2"))

    assert pip_closure(store, [lock(dateutil, six)], lock(dateutil, six)) == []
    parent = lock(six)  # an ancestor's pin counts
    assert pip_closure(store, [parent, lock(dateutil)], lock(dateutil)) == []
    assert pip_closure(store, [lock(dateutil)], lock(dateutil)) == [
        "python-dateutil 2.9.0.post0 needs 'six>=1.5', which no lock of the chain pins"]
    old_six = LockedPip(name="six", version="1.4.0", files=six.files, selected=six.selected)
    assert pip_closure(store, [lock(dateutil, old_six)], lock(dateutil, old_six)) == [
        "python-dateutil 2.9.0.post0 needs 'six>=1.5', the chain pins 1.4.0"]


def test_a_write_the_os_refuses_names_the_file_not_root(project: Path) -> None:
    """A read-only locks/ used to say only "buildsys builds need root"."""
    import errno

    from buildsys.cli import Context, _os_error_message

    ctx = Context(project=project, store=project / ".buildsys", verbose=False)
    for code, word in ((errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")):
        message = _os_error_message(OSError(code, os.strerror(code), str(project / "locks" / "python.lock")), ctx)
        assert message.startswith(f"{word} ({project}/locks/python.lock)")
        assert f"make {project}/locks/python.lock writable" in message
