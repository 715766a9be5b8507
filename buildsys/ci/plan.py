"""The pipeline of a project, whatever CI runs it: one job per recipe that needs its parents' jobs.

Every layer is built once, by the job of its recipe, and handed on through a
registry repository (``build --cache-from REPO --cache-to REPO``): a job takes
its parents' layers from there (checked by digest, no container started, no
vendored input needed) and pushes its own. For each target (by default the
recipes that are no recipe's parent) three more jobs follow: ``test``;
``verify`` (``build --verify``, a rebuild from nothing compared with what the
cache holds); and ``publish`` (by digest), on the release branch or tags only.
``publish`` runs ``build --verify`` again in its own store: ``publish``
trusts only a verification made in the store it reads the image from.

The plan is plain data; ``github`` and ``gitlab`` write it in their CI's
words. Same project and options: same plan, same bytes.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildsys.core.errors import BuildsysError, UsageError
from buildsys.model.graph import Graph
from buildsys.oci.registry import Reference

# Branch names and tag prefixes are written into CI expressions: only characters that need no quoting there.
REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
KINDS = ("build", "test", "verify", "publish")


@dataclass(frozen=True)
class CiOptions:
    cache: str  # HOST[:PORT]/REPO: the shared layer cache
    publish_to: str | None = None  # HOST[:PORT]/PREFIX: each target is published to PREFIX/RECIPE
    release_branch: str = "main"
    release_tag_prefix: str | None = None  # tags starting with it publish too ("v": v1.2.0)
    runners: tuple[str, ...] = ()  # GitHub's runs-on labels, GitLab's runner tags
    image: str | None = None  # the job container image (GitLab image:, GitHub container:)
    setup: tuple[str, ...] = ("python3 -m pip install .",)  # shell lines before buildsys, in every job
    project_dir: str = "."  # the buildsys project, relative to the repository's root
    insecure: bool = False

    def __post_init__(self) -> None:
        for flag, ref in (("--cache", self.cache), ("--publish-to", self.publish_to)):
            if ref is not None:
                parsed = Reference.parse(ref)
                if parsed.tag or parsed.digest:
                    raise UsageError(f"{flag} {ref}: a repository, not an image (no :TAG, no @DIGEST)",
                                     f"give HOST[:PORT]/REPO, e.g. {parsed.host}/{parsed.repository}")
        if not REF_NAME.fullmatch(self.release_branch):
            raise UsageError(f"--release-branch '{self.release_branch}' is not a plain branch name",
                             "use letters, digits and . _ / - (e.g. main)")
        if self.release_tag_prefix is not None and not REF_NAME.fullmatch(self.release_tag_prefix):
            raise UsageError(f"--release-tags '{self.release_tag_prefix}' is not a plain tag prefix",
                             "use letters, digits and . _ / - (e.g. v)")


@dataclass(frozen=True)
class Job:
    kind: str  # one of KINDS
    recipe: str
    needs: tuple[tuple[str, str], ...]  # (kind, recipe) of the jobs that must succeed first
    commands: tuple[tuple[str, ...], ...]  # argument lists, each starting with "buildsys"
    release_only: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.recipe

    def shell(self) -> list[str]:
        return [shlex.join(c) for c in self.commands]


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]  # in an order where every job comes after the jobs it needs
    targets: tuple[str, ...]
    options: CiOptions
    argv: tuple[str, ...] = field(default=())  # the command that wrote it, for the header

    def job(self, kind: str, recipe: str) -> Job:
        return next(j for j in self.jobs if j.key == (kind, recipe))


def make_plan(graph: Graph, targets: Sequence[str], options: CiOptions, argv: Sequence[str] = ()) -> Plan:
    """The jobs for ``targets`` (default: every recipe that is no recipe's parent) and their chains."""
    chosen = graph.select(targets) if targets else leaves(graph)
    bs = ("buildsys",) if options.project_dir in ("", ".") else ("buildsys", "-C", options.project_dir)
    insecure = ("--insecure",) if options.insecure else ()
    cache = options.cache
    jobs: list[Job] = []
    for name in graph.closure(chosen):
        jobs.append(Job("build", name, tuple(("build", p) for p in graph.parents.get(name, ())), (
            (*bs, "fetch", name),
            (*bs, "build", name, "--cache-from", cache, "--cache-to", cache, *insecure))))
    take = (*bs, "build")
    for name in chosen:
        from_cache = (*take, name, "--cache-from", cache, *insecure)
        jobs.append(Job("test", name, (("build", name),), (from_cache, (*bs, "test", name))))
        verify = ((*bs, "fetch", name), from_cache, (*bs, "build", "--verify", name))
        jobs.append(Job("verify", name, (("build", name),), verify))
        if options.publish_to:
            to = f"{options.publish_to}/{name}"
            jobs.append(Job("publish", name, (("test", name), ("verify", name)),
                            (*verify, (*bs, "publish", name, "--to", to, *insecure)), release_only=True))
    return Plan(jobs=tuple(jobs), targets=tuple(chosen), options=options, argv=tuple(argv))


def leaves(graph: Graph) -> list[str]:
    """The recipes no recipe names as a parent: the images a project ships."""
    parents = {p for ps in graph.parents.values() for p in ps}
    return [n for n in graph.order if n not in parents]


def job_ids(plan: Plan, sep: str, allowed: re.Pattern[str]) -> dict[tuple[str, str], str]:
    """Each job's id in a CI's words (``build-tools``, ``build:tools``); two jobs never share one."""
    ids: dict[tuple[str, str], str] = {}
    seen: dict[str, tuple[str, str]] = {}
    for job in plan.jobs:
        ident = f"{job.kind}{sep}{job.recipe}"
        if not allowed.fullmatch(ident):
            ident = re.sub(r"[^A-Za-z0-9_-]", "_", ident)
        if ident in seen:
            raise UsageError(f"recipes '{seen[ident][1]}' and '{job.recipe}' give the same CI job name '{ident}'",
                             "rename one of them (CI job names allow letters, digits, '-' and '_')")
        seen[ident] = job.key
        ids[job.key] = ident
    return ids


def header(plan: Plan, what: str) -> list[str]:
    """The comment lines that open a pipeline file: what wrote it, and how to write it again."""
    command = shlex.join(plan.argv) if plan.argv else "buildsys ci"
    return [f"# {what}, written by `{command}`.",
            "# One job per recipe, needing its parents' jobs; layers travel through the registry cache "
            f"{plan.options.cache}.",
            "# Do not edit: run the command again (with --force) after changing recipes. See docs/ci.md."]


class PipelineExists(BuildsysError):
    exit_code = UsageError.exit_code

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists and differs from the pipeline written now; it was left as it is",
                         "pass --force to replace it, or -o another file")


def write_pipeline(path: Path, text: str, *, force: bool = False) -> bool:
    """Write ``text`` to ``path`` whole or not at all; False when the file already holds exactly it.

    Without ``force`` an existing file that differs is refused, and the new file is
    linked into place (``os.link`` fails on an existing name), so a file that appears
    meanwhile is not replaced either.
    """
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
        if not force:
            raise PipelineExists(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError as e:
        raise UsageError(f"{path} is a folder", "give -o a file name") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as e:
                raise PipelineExists(path) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True
