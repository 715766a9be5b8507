"""The lock reader against random and mutated locks: it never escapes the store and never tracebacks.

A seeded generator (reproducible; the seed is in the failure message) mutates
the bundled locks at the data level (a value replaced by a hostile one, a key
dropped or added, a type changed) and at the text level (bytes flipped, lines
dropped). Every outcome must be a ``Lock`` whose every path, name and URL is of
its shape, or a ``BuildsysError`` (exit 2 or 3) naming the lock.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import tomlkit

from buildsys.core.errors import BuildsysError
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts
from buildsys.ecosystems.debian_root import locked_debs
from buildsys.ecosystems.files import FilesSection
from buildsys.model.lockfile import Lock, read_lock
from buildsys.model.lockschema import is_safe_filename

REPO = Path(__file__).resolve().parents[1]
HOSTILE: list[Any] = [
    "../../../victim.txt", "/etc/shadow", "..", ".", "", "-rf", "a/b", "x\x00y", "file:///etc/shadow",
    "http://127.0.0.1:1/secret", "gopher://x/", "A" * 64, "g" * 64, "0" * 63, "sha256:" + "0" * 64,
    "pool/../../x.deb", "é" * 10, "\n", "$(reboot)", "name with space", -1, 0, 2**70, 3.5, True, [], {},
    ["../x"], {"a": 1},
]


def leaves(d: Any, path: tuple = ()) -> list[tuple]:
    out: list[tuple] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append((*path, k))
            out += leaves(v, (*path, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.append((*path, i))
            out += leaves(v, (*path, i))
    return out


def mutate(data: dict, rng: random.Random) -> dict:
    for _ in range(rng.randint(1, 3)):
        spots = leaves(data)
        spot = rng.choice(spots)
        parent: Any = data
        for k in spot[:-1]:
            parent = parent[k]
        action = rng.random()
        if action < 0.7:
            parent[spot[-1]] = rng.choice(HOSTILE)
        elif action < 0.85 and isinstance(parent, dict):
            del parent[spot[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(["extra", "local", "selected", "sha256", "files"])] = rng.choice(HOSTILE)
    return data


def assert_contained(lock: Lock, store: Store) -> None:
    for art in artifacts(lock):
        path = store.vendor_path(art.sha256)
        assert path.parent == store.vendor and len(path.name) == 64
        assert is_safe_filename(art.filename), art.filename
        for url in art.urls:
            assert urlsplit(url).scheme in ("http", "https", "file"), url
    for f in lock.section(FilesSection).files:
        assert is_safe_filename(f.name)
    for deb in locked_debs(lock):
        assert ".." not in deb.path.split("/") and not deb.path.startswith("/")


@pytest.mark.parametrize("name", ["base", "python"])
def test_mutated_locks_never_escape_and_never_traceback(name: str, tmp_path: Path) -> None:
    original = tomlkit.parse((REPO / "locks" / f"{name}.lock").read_text()).unwrap()
    store = Store(tmp_path / "store")
    path = tmp_path / f"{name}.lock"
    outcomes = {"read": 0, "refused": 0}
    for seed in range(150):
        rng = random.Random(seed)
        data = mutate(copy.deepcopy(original), rng)
        try:
            text = tomlkit.dumps(data)
        except (TypeError, ValueError):  # not representable in TOML (a NUL); the text mutations cover bytes
            continue
        path.write_text(text)
        try:
            lock = read_lock(path)
        except BuildsysError as e:
            assert e.exit_code in (2, 3), (seed, str(e))
            assert str(path) in str(e), (seed, str(e))
            outcomes["refused"] += 1
            continue
        except Exception as e:  # noqa: BLE001 - the point: nothing else may come out
            pytest.fail(f"seed {seed}: {type(e).__name__}: {e}")
        assert_contained(lock, store)
        outcomes["read"] += 1
    # Both kinds of outcome occur, so the loop tests something either way.
    assert outcomes["refused"] > 50 and outcomes["read"] > 0, outcomes


def test_byte_level_damage_never_tracebacks(tmp_path: Path) -> None:
    raw = (REPO / "locks" / "python.lock").read_bytes()
    store = Store(tmp_path / "store")
    path = tmp_path / "python.lock"
    for seed in range(300):
        rng = random.Random(seed)
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[i] = rng.randrange(256)
            else:
                del data[i: i + rng.randint(1, 80)]
        path.write_bytes(bytes(data))
        try:
            assert_contained(read_lock(path), store)
        except BuildsysError as e:
            assert e.exit_code in (2, 3) and str(path) in str(e), (seed, str(e))
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"seed {seed}: {type(e).__name__}: {e}")


def _twice(data: dict, *where: str | int) -> dict:
    """``data`` with the first entry of the array at ``where`` locked a second time, at its end."""
    entries: Any = data
    for k in where:
        entries = entries[k]
    entries.append(copy.deepcopy(entries[0]))
    return data


def _pip_build(data: dict) -> dict:
    """python.lock's [[pip]] entry built from source, with one build requirement, locked twice."""
    build = copy.deepcopy(data["pip"][0])
    data["pip"][0]["build-requires"] = [f"{build['name']}=={build['version']}"]
    data["pip-build"] = [build, copy.deepcopy(build)]
    return data


R_ENTRY = {"name": "xy", "version": "1.0", "sha256": "a" * 64, "size": 1, "url": "http://h/src/contrib/xy_1.0.tar.gz"}
FILE_ENTRY = {"name": "tool.deb", "sha256": "a" * 64, "size": 1, "url": "https://example.org/tool.deb"}


@pytest.mark.parametrize(("name", "edit", "says"), [
    ("base", lambda d: _twice(d, "base", "packages"), r"\[\[base.packages\]\] #101 \('[^']+'\): name: '[^']+' is "
                                                        r"locked twice"),
    ("python", lambda d: _twice(d, "apt"), r"\[\[apt\]\] #32 \('[^']+'\): name: '[^']+' is locked twice"),
    ("python", lambda d: _twice(d, "pip"), r"\[\[pip\]\] #2 \('[^']+'\): name: '[^']+' is locked twice"),
    ("python", _pip_build, r"\[\[pip-build\]\] #2 \('[^']+'\): name: '[^']+' [0-9.]+ is locked twice"),
    ("python", lambda d: d | {"cran": [R_ENTRY, R_ENTRY]}, r"\[\[cran\]\] #2 \('xy'\): name: 'xy' is locked twice"),
    ("python", lambda d: d | {"files": [FILE_ENTRY, FILE_ENTRY]},
     r"\[\[files\]\] #2 \('tool.deb'\): name: a second file named 'tool.deb'"),
])
def test_each_entry_is_locked_once(name: str, edit: Any, says: str, tmp_path: Path) -> None:
    data = tomlkit.parse((REPO / "locks" / f"{name}.lock").read_text()).unwrap()
    path = tmp_path / f"{name}.lock"
    path.write_text(tomlkit.dumps(edit(data)))
    with pytest.raises(BuildsysError, match=says):
        read_lock(path)
