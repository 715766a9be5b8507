"""Bootstrap a Debian root filesystem from vendored .debs, with no network.

The locked .debs are linked into a throw-away local repository, indexed with
``apt-ftparchive`` (a Release file naming the suite is required: without it
mmdebstrap finds no essential packages and quietly writes an empty tarball,
docs/reproducibility.md "Inputs"), then ``mmdebstrap`` runs inside ``unshare --net``: a
network namespace with only a downed loopback, so nothing can be downloaded
even by mistake; and in its own PID namespace (with its own ``/proc``), so the
maintainer scripts see the same process IDs on every build, as a layer's steps do,
and nothing they start outlives the bootstrap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from buildsys.build.checks import not_as_locked
from buildsys.core import dpkg
from buildsys.core.errors import BuildError, ToolMissing
from buildsys.core.store import Store
from buildsys.ecosystems.debian_root import DebianBaseLock, bootstrap_repository, check_bootstrap, locked_debs
from buildsys.model.lockfile import Lock

# The fixed build environment of docs/design.md (SOURCE_DATE_EPOCH is added per layer).
BUILD_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
BUILD_HOSTNAME = "buildsys"

# Messages of tools that tried to reach the network; the build has none by design.
NETWORK_SIGNS = (
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Could not resolve host",
    "Name or service not known",
    "No route to host",
    "Failed to establish a new connection",
    "getaddrinfo failed",
)
NO_NETWORK_HINT = ("the build has no network by design: everything a step needs must be locked "
                   "([apt], [pip] or [[files]]) and is found under /buildsys")


@dataclass(frozen=True)
class Bootstrapped:
    tarball: Path
    installed: dict[str, str]  # package name -> version, read from the result's dpkg status


def require_tools(*tools: tuple[str, str]) -> None:
    for tool, package in tools:
        if shutil.which(tool) is None:
            raise ToolMissing(tool, package)


def bootstrap_debian(store: Store, lock: Lock, run_steps: Sequence[str], out_dir: Path) -> Bootstrapped:
    """Run mmdebstrap offline from the vendored .debs; return the rootfs tarball."""
    base = lock.get(DebianBaseLock)
    assert base is not None
    require_tools(("mmdebstrap", "mmdebstrap"), ("unshare", "util-linux"))
    with store.scratch("repo") as tmp:
        repo = Path(tmp) / "repo"
        bootstrap_repository(store, lock, repo)
        tarball = out_dir / "rootfs.tar"
        status_copy = Path(tmp) / "status"
        env = {**BUILD_ENV, "SOURCE_DATE_EPOCH": str(lock.source_date_epoch)}
        # mmdebstrap's own temporary folder (the whole chroot) goes into our scratch folder,
        # which is removed on any exit and swept after a kill, never left in /tmp; and a
        # private mount namespace, so nothing it mounted outlives it.
        mm_tmp = Path(tmp) / "tmp"
        mm_tmp.mkdir()
        env["TMPDIR"] = str(mm_tmp)
        cmd = [
            "unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "--",
            "mmdebstrap", "--quiet", "--mode=root", "--format=tar",
            f"--variant={base.variant}", f"--architectures={base.architecture}",
            '--aptopt=Acquire::Languages "none"',
            '--aptopt=APT::Install-Recommends "false"',
        ]
        # Name every locked package: the local repository's Packages file carries each
        # .deb's own control Priority, not the archive's override (apt's says
        # "important" there, "required" in the archive), so mmdebstrap's own
        # selection from it would miss some. The lock is the bill of materials.
        names = sorted({p.name for p in locked_debs(lock)})
        cmd.append("--include=" + ",".join(names))
        # A fixed hostname, as on every layer (docs/design.md).
        cmd.append(f'--customize-hook=echo {BUILD_HOSTNAME} > "$1/etc/hostname"')
        # mmdebstrap leaves the local repository's temporary path in sources.list
        # (caught by --verify); the image gets the locked mirror instead.
        sources = "\\n".join(f"deb {a.mirror} {a.suite} {' '.join(base.components)}" for a in base.all_archives)
        cmd.append(f"--customize-hook=printf '{sources}\\n' > \"$1/etc/apt/sources.list\"")
        for i, step in enumerate(run_steps):
            script = Path(tmp) / f"step-{i}.sh"
            script.write_text(step + "\n")
            envs = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
            cmd.append(f'--customize-hook=chroot "$1" /usr/bin/env -i {envs} /bin/sh -e < {script}')
        cmd.append(f'--customize-hook=cp "$1/var/lib/dpkg/status" {status_copy}')
        cmd += [base.suite, str(tarball), f"deb [trusted=yes] copy://{repo} ./"]
        try:
            _run(cmd, env={**os.environ, **env}, what=f"mmdebstrap (offline bootstrap of '{lock.recipe}')",
                 recipe=lock.recipe)
        except BuildError as e:
            # mmdebstrap --quiet says only "failed to run" when tar hits a full disk.
            free = shutil.disk_usage(out_dir).free
            if free < 64 << 20:
                e.hint = (f"the disk holding {out_dir.parent} has {free >> 20} MiB free; a root needs about "
                          f"3 times its size while it is built: free some space and run again")
            raise
        if not tarball.is_file() or tarball.stat().st_size < 1 << 20 or not status_copy.is_file():
            raise BuildError(lock.recipe, "mmdebstrap", "it wrote no usable root filesystem (no dpkg status)",
                             hint="the local repository's Release may not name the suite; relock and refetch")
        installed = dpkg.installed(status_copy.read_bytes())
    # dpkg must hold exactly the locked packages: the lock is the bill of materials.
    if problem := check_bootstrap(lock, installed):
        raise not_as_locked(lock.recipe, "mmdebstrap", problem)
    return Bootstrapped(tarball=tarball, installed=installed)


def _run(cmd: list[str], *, what: str, recipe: str = "", cwd: Path | None = None,
         env: dict[str, str] | None = None, stdout: IO[bytes] | None = None) -> bytes:
    try:
        # Its own session: on failure mmdebstrap signals its whole process group
        # (SIGHUP), which would otherwise kill buildsys before it can clean up.
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError as e:  # pragma: no cover - require_tools checks first
        raise ToolMissing(cmd[0], cmd[0]) from e
    try:
        out, err = proc.communicate()
    except BaseException:
        # Ctrl-C (or any error) here: the tool's whole group must stop before its scratch
        # folder is removed under it; SIGTERM lets mmdebstrap clean up after itself.
        _stop_group(proc)
        raise
    if proc.returncode != 0:
        output = ((out or b"") + err).decode(errors="replace")
        raise BuildError(recipe or "bootstrap", what, output, hint=NO_NETWORK_HINT if tried_network(output) else None)
    return out if stdout is None else b""


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent


def tried_network(output: str) -> bool:
    return any(sign in output for sign in NETWORK_SIGNS)
