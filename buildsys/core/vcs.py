"""Where an image's inputs came from: the git commit that last changed them, and the repository's URL.

The OCI labels ``org.opencontainers.image.revision`` and ``.source`` (docs/shipping.md)
come from here. They go into the image's config, so they must be a function of the
inputs, like everything else in it:

- the commit is the last one that changed the chain's recipe and lock files
  (``git log -1 -- PATHS``), not HEAD: a commit that touches only the README
  does not give every image a new ID;
- nothing at all when it could be wrong: not a git checkout, git missing, a
  shallow clone (its oldest commit would be named for changes made before it),
  or any of the files not exactly as committed at HEAD;
- the URL is the ``origin`` remote's with any user name and password removed,
  an scp-like ``host:path`` written as the ``ssh://`` URL it means; a remote on
  this machine's file system (a path or ``file://``) names nothing another
  machine can fetch and is left out.

Git is asked with plumbing only (``rev-parse``, ``log``, ``cat-file``, ``config``),
which reads the repository and never runs what its configuration could name
(filters, fsmonitor, hooks, signature programs); a file is compared with its
committed bytes here rather than by ``git status``, which would run them. So a
checkout owned by another user (a teammate's, or a shared folder) is read as
well, with git's ownership check off for these commands alone: the same
labels, the same image ID for everyone who builds the same files.

A recipe's local inputs (``[[files]]`` with ``local = true``, apt source keys) are
pinned by sha256 in the recipe itself, so the recipe and lock files cover them.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SCP_LIKE = re.compile(r"(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+):(?P<path>(?!//).+)")


@dataclass(frozen=True)
class Revision:
    commit: str
    source: str | None  # None: no remote another machine could fetch


class _Git:
    """Read-only git in one checkout: our own global config (ownership checks off, since these commands only
    read; nothing of the user's), no system config, no pager, no prompt, no optional locks."""

    def __init__(self, cwd: Path, home: Path) -> None:
        (home / "gitconfig").write_text("[safe]\n\tdirectory = *\n")
        self.cwd = cwd
        self.env = {**os.environ, "GIT_CONFIG_GLOBAL": str(home / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}

    def raw(self, *args: str, stdin: bytes = b"") -> bytes | None:
        try:
            done = subprocess.run(["git", "-c", "core.fsmonitor=false", "-c", "log.showSignature=false",
                                   "-C", str(self.cwd), *args], input=stdin, capture_output=True, timeout=60,
                                  env=self.env, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def __call__(self, *args: str) -> str | None:
        out = self.raw(*args)
        return None if out is None else out.decode(errors="replace").strip()

    def committed(self, names: Sequence[str]) -> list[bytes | None]:
        """Each file's bytes at HEAD (None: not there), with one ``cat-file --batch``."""
        out = self.raw("cat-file", "--batch", stdin="".join(f"HEAD:{n}\n" for n in names).encode())
        if out is None:
            return [None] * len(names)
        blobs: list[bytes | None] = []
        at = 0
        for _ in names:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            if len(header) != 3 or header[1] != b"blob":  # "HEAD:x missing", or a folder
                blobs.append(None)
                at = end + 1
                continue
            size = int(header[2])
            blobs.append(out[end + 1:end + 1 + size])
            at = end + 1 + size + 1
        return blobs


def public_url(remote: str) -> str | None:
    """``remote`` as a URL to name in an image: no credentials, never a local path (None)."""
    remote = remote.strip()
    if "://" not in remote:
        m = _SCP_LIKE.fullmatch(remote)
        if m is None or remote.startswith(("/", ".")):
            return None
        user = f"{m['user']}@" if m["user"] else ""
        return f"ssh://{user}{m['host']}/{m['path'].lstrip('/')}"
    parts = urllib.parse.urlsplit(remote)
    if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
        return None
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    # ssh's user is the account to log in as, not a secret; http's user and password are credentials.
    if parts.scheme == "ssh" and parts.username:
        host = f"{parts.username}@{host}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def revision(paths: Sequence[Path]) -> Revision | None:
    """The commit that last changed ``paths`` (all in one git checkout), when each is committed unchanged."""
    if not paths:
        return None
    with tempfile.TemporaryDirectory(prefix="buildsys-git-") as home:
        git = _Git(paths[0].parent, Path(home))
        top = git("rev-parse", "--show-toplevel")
        if not top or git("rev-parse", "--is-shallow-repository") != "false":
            return None
        rel = [os.path.relpath(p.resolve(), Path(top).resolve()) for p in paths]
        if any(r.startswith("..") for r in rel):
            return None
        git.cwd = Path(top)  # the paths are relative to it
        commit = git("log", "-1", "--no-show-signature", "--format=%H", "HEAD", "--", *rel)
        if not commit:
            return None
        for path, committed in zip(paths, git.committed(rel), strict=True):
            try:
                if committed is None or path.read_bytes() != committed:
                    return None  # untracked, or changed since HEAD (staged or not)
            except OSError:
                return None
        remote = git("config", "--get", "remote.origin.url")
    return Revision(commit=commit, source=public_url(remote) if remote else None)
