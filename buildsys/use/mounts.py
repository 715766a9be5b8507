"""The folders a run/up container gets: the working folder, the CUDA kernel cache and ``-v`` mounts, planned together.

Two rules, checked before anything is created or started:

- **No mount hides the image's own system.** The working folder is mounted at
  its own path, so running from ``/var/lib`` would put the host's ``/var/lib``
  (dpkg's database, docker's data) read-write over the image's. Refused: ``/``;
  the top-level system folders themselves (``SYSTEM_FOLDERS``: ``/usr``,
  ``/var``, ``/home``, ``/opt``...); and anything inside the trees the
  operating system owns whole (``OS_TREES``: ``/usr``, ``/etc``, ``/var``,
  ``/run``, ``/proc``, ``/lib*``...), except ``/var/tmp``, which is anyone's.
  A ``-v`` target is the user's explicit choice (``-v ./conf:/etc/jupyter`` is
  meant), so only the first two apply to it.
- **No mount is silently dropped.** Two mounts on one container path are an
  error naming both, unless they are the same mount twice (then one is kept).
  One host folder may be mounted at several paths (``-v D:/in:ro -v D:/out``):
  the engine gets a list of mounts, not a map keyed by the host path.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path

from buildsys.core.errors import UsageError

# Inside the container: where the host's CUDA kernel cache is mounted. Outside HOME on purpose:
# a bind mount under HOME would make docker create HOME's parents as root, unwritable.
CUDA_CACHE = "/var/cache/buildsys/cuda"

SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc",
                  "/root", "/run", "/sbin", "/sys", "/usr", "/var")
OS_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin", "/sys",
            "/usr", "/var")
ANYONES = ("/var/tmp",)  # inside an OS tree, but meant for anybody's files

Mount = tuple[str, str, bool]  # (host path, container path, read-only)


class MountCollision(UsageError):
    def __init__(self, target: str, first: str, second: str) -> None:
        super().__init__(f"two mounts on {target} in the container: {first} and {second}; nothing was started "
                         "(docker would keep only one of them)",
                         "give each its own container path, e.g. -v HOST:/data2")


class SystemMount(UsageError):
    def __init__(self, what: str, target: str, hidden: str, hint: str) -> None:
        super().__init__(f"{what} would be mounted at {target} and hide the image's own {hidden}; nothing was started",
                         hint)


def hidden_by(target: str, whole_trees: bool = True) -> str | None:
    """What of the image's system a mount at ``target`` would hide, or None when it hides none of it."""
    path = posixpath.normpath(target)
    if path in ("/", "//"):
        return "root filesystem"
    if path in SYSTEM_FOLDERS:
        return path
    if whole_trees and not any(path == a or path.startswith(a + "/") for a in ANYONES):
        for tree in OS_TREES:
            if path.startswith(tree + "/"):
                return f"{tree} tree ({path} is part of it)"
    return None


def check_folder(cwd: Path) -> None:
    """The current folder is mounted at its own path: refuse one that would hide the image's system."""
    if hidden := hidden_by(str(cwd)):
        raise SystemMount(f"the current folder {cwd}", str(cwd), hidden,
                          "cd into a project folder first (buildsys mounts the current folder at the same path; "
                          "a folder under /var, /usr, /etc... cannot be); mount other folders with -v HOST:/data")


def parse_volume(spec: str, cwd: Path) -> Mount:
    """``HOST:CONTAINER[:ro|rw]``; HOST may hold ':' (the container path is the last part before the mode).

    HOST must exist: docker would make an empty root-owned folder.
    """
    parts = spec.split(":")
    mode = parts.pop() if len(parts) >= 3 and parts[-1] in ("ro", "rw") else "rw"
    target = parts.pop() if len(parts) >= 2 else ""
    source = ":".join(parts)
    if not source or not target.startswith("/"):
        raise UsageError(f"-v {spec}: not a mount", "use -v HOST:CONTAINER[:ro], CONTAINER an absolute path, "
                                                    "e.g. -v ~/data:/data:ro")
    if hidden := hidden_by(target, whole_trees=False):
        raise SystemMount(f"-v {spec}", posixpath.normpath(target), hidden, "mount it at a path of its own, "
                          "e.g. -v HOST:/data")
    host = (cwd / Path(source).expanduser()).resolve()
    if not host.exists():
        raise UsageError(f"-v {spec}: {host} does not exist", f"create it (`mkdir -p {host}`) or fix the path")
    return str(host), posixpath.normpath(target), mode == "ro"


def plan_mounts(cwd: Path, cuda_cache: Path | None, volumes: Sequence[Mount]) -> tuple[Mount, ...]:
    """The working folder, the CUDA cache (when given) and ``volumes``, in that order; collisions refused."""
    named: list[tuple[Mount, str]] = [((str(cwd), str(cwd), False), f"the current folder {cwd}")]
    if cuda_cache is not None:
        named.append(((str(cuda_cache), CUDA_CACHE, False), "the CUDA kernel cache"))
    named += [(v, f"-v {v[0]}:{v[1]}{':ro' if v[2] else ''}") for v in volumes]
    planned: dict[str, tuple[Mount, str]] = {}
    for mount, what in named:
        target = posixpath.normpath(mount[1])
        if target in planned:
            (src, _, ro), first = planned[target]
            if (src, ro) == (mount[0], mount[2]):
                continue  # the same mount twice: once is what was meant
            raise MountCollision(target, first, what)
        planned[target] = ((mount[0], target, mount[2]), what)
    return tuple(m for m, _ in planned.values())


def check_volumes(cwd: Path, volumes: Sequence[Mount]) -> None:
    """Refuse collisions among ``volumes``, the working folder and the CUDA cache's path (before anything runs)."""
    plan_mounts(cwd, Path("/nonexistent/cuda-cache"), volumes)
