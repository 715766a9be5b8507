"""The plan as a ``.gitlab-ci.yml``: one job per plan job, in a stage per kind, ``needs`` as the plan says."""

from __future__ import annotations

import re
from typing import Any

from buildsys.ci import yamltext
from buildsys.ci.plan import KINDS, Job, Plan, header, job_ids

DEFAULT_PATH = ".gitlab-ci.yml"
_JOB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_:.-]*")


def release_rules(plan: Plan) -> list[dict[str, str]]:
    """The ``rules:`` of a publish job: the release branch, or a tag with the release prefix."""
    rules = [{"if": f'$CI_COMMIT_BRANCH == "{plan.options.release_branch}"'}]
    if plan.options.release_tag_prefix:
        prefix = re.escape(plan.options.release_tag_prefix).replace("/", r"\/")
        rules.append({"if": f"$CI_COMMIT_TAG =~ /^{prefix}/"})
    return rules


def pipeline(plan: Plan) -> str:
    ids = job_ids(plan, ":", _JOB_ID)
    opts = plan.options
    default: dict[str, Any] = {}
    if opts.image:
        default["image"] = opts.image
    if opts.runners:
        default["tags"] = list(opts.runners)
    if opts.setup:
        default["before_script"] = list(opts.setup)
    used = {j.kind for j in plan.jobs}
    data: dict[str, Any] = {"stages": [k for k in KINDS if k in used]}
    if default:
        data["default"] = default
    for job in plan.jobs:
        data[ids[job.key]] = _job(plan, job, ids)
    return yamltext.dump(data, header(plan, "GitLab CI pipeline"))


def _job(plan: Plan, job: Job, ids: dict[tuple[str, str], str]) -> dict[str, Any]:
    out: dict[str, Any] = {"stage": job.kind, "needs": [ids[n] for n in job.needs], "script": job.shell()}
    if job.release_only:
        out["rules"] = release_rules(plan)
    return out
