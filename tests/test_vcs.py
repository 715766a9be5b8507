"""core/vcs.py: the commit an image's labels name, read from real git checkouts; absent rather than wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildsys.core.vcs import public_url, revision

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "project"
    (repo / "recipes").mkdir(parents=True)
    (repo / "locks").mkdir()
    (repo / "recipes" / "app.toml").write_text('description = "app"\n')
    (repo / "locks" / "app.lock").write_text("# lock\n")
    (repo / "README.md").write_text("hello\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    git(repo, "remote", "add", "origin", "https://ci-bot:s3cr3t@git.example.com/team/project.git")
    return repo


def inputs(repo: Path) -> list[Path]:
    return [repo / "recipes" / "app.toml", repo / "locks" / "app.lock"]


def test_the_last_commit_of_the_inputs_not_head_and_no_credentials(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("changed\n")
    git(repo, "commit", "-qam", "docs only")
    rev = revision(inputs(repo))
    assert rev is not None and rev.commit == first != git(repo, "rev-parse", "HEAD")
    assert rev.source == "https://git.example.com/team/project.git"  # the token is not in the image
    (repo / "recipes" / "app.toml").write_text('description = "app, changed"\n')
    git(repo, "commit", "-qam", "recipe")
    changed = revision(inputs(repo))
    assert changed is not None and changed.commit == git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize("change", ["modified", "staged", "untracked lock", "deleted"])
def test_inputs_not_as_committed_have_no_revision(repo: Path, change: str) -> None:
    recipe, lock = inputs(repo)
    if change == "modified":
        recipe.write_text(recipe.read_text() + "# a comment\n")
    elif change == "staged":
        recipe.write_text(recipe.read_text() + "# a comment\n")
        git(repo, "add", str(recipe))
    elif change == "untracked lock":
        git(repo, "rm", "-q", "--cached", str(lock))
        git(repo, "commit", "-qm", "untrack")
    else:
        lock.unlink()
    assert revision(inputs(repo)) is None
    # Changes elsewhere in the checkout do not matter: the README, an untracked file.
    assert revision([repo / "README.md"]) is not None


def test_a_shallow_clone_or_no_checkout_has_none(repo: Path, tmp_path: Path) -> None:
    (repo / "recipes" / "app.toml").write_text('description = "second"\n')
    git(repo, "commit", "-qam", "second")
    (repo / "README.md").write_text("third\n")
    git(repo, "commit", "-qam", "third")
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow)], check=True)
    assert revision(inputs(shallow)) is None  # its one commit would be named for changes made before it
    full = tmp_path / "full"
    subprocess.run(["git", "clone", "-q", str(repo), str(full)], check=True)
    rev = revision(inputs(full))
    assert rev is not None and rev.commit == git(repo, "rev-parse", "HEAD~1")
    assert rev.source is None  # origin is a path on this machine: nothing another machine can fetch
    plain = tmp_path / "plain"
    shutil.copytree(repo, plain, ignore=shutil.ignore_patterns(".git"))
    assert revision(inputs(plain)) is None


def test_a_checkout_owned_by_someone_else_is_read_the_same(repo: Path) -> None:
    """git refuses a repository another user owns ("dubious ownership"); buildsys reads it with plumbing
    that runs nothing from it, so a teammate's checkout gives the same labels."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the checkout to another user")
    expected = revision(inputs(repo))
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, 4242, 4242)
    assert subprocess.run(["git", "-C", str(repo), "status"], capture_output=True).returncode != 0
    assert revision(inputs(repo)) == expected is not None


@pytest.mark.parametrize(("remote", "url"), [
    ("https://user:token@github.com/org/repo.git", "https://github.com/org/repo.git"),
    ("git@github.com:org/repo.git", "ssh://git@github.com/org/repo.git"),
    ("ssh://git@gitlab.example.com:2222/g/r.git", "ssh://git@gitlab.example.com:2222/g/r.git"),
    ("https://example.com/r?x=1#frag", "https://example.com/r"),
    ("/srv/git/repo.git", None),
    ("file:///srv/git/repo.git", None),
    ("../sibling", None),
])
def test_public_url(remote: str, url: str | None) -> None:
    assert public_url(remote) == url
