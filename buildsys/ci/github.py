"""The plan as a GitHub Actions workflow: one job per plan job, ``needs`` as the plan says."""

from __future__ import annotations

import re
from typing import Any

from buildsys.ci import yamltext
from buildsys.ci.plan import Job, Plan, header, job_ids

DEFAULT_PATH = ".github/workflows/buildsys.yml"
DEFAULT_RUNNER = "ubuntu-latest"
CHECKOUT = "actions/checkout@v4"
_JOB_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def release_condition(plan: Plan) -> str:
    """The ``if:`` of a publish job: the release branch, or a tag with the release prefix."""
    rule = f"github.ref == 'refs/heads/{plan.options.release_branch}'"
    if plan.options.release_tag_prefix:
        rule += f" || startsWith(github.ref, 'refs/tags/{plan.options.release_tag_prefix}')"
    return rule


def workflow(plan: Plan) -> str:
    ids = job_ids(plan, "-", _JOB_ID)
    jobs = {ids[j.key]: _job(plan, j, ids) for j in plan.jobs}
    data: dict[str, Any] = {
        "name": "buildsys",
        "on": {"push": {}, "pull_request": {}},
        "permissions": {"contents": "read"},
        "jobs": jobs,
    }
    return yamltext.dump(data, header(plan, "GitHub Actions workflow"))


def _job(plan: Plan, job: Job, ids: dict[tuple[str, str], str]) -> dict[str, Any]:
    opts = plan.options
    out: dict[str, Any] = {"name": f"{job.kind} {job.recipe}", "runs-on": list(opts.runners or (DEFAULT_RUNNER,))}
    if opts.image:
        out["container"] = {"image": opts.image}
    if job.needs:
        out["needs"] = [ids[n] for n in job.needs]
    if job.release_only:
        out["if"] = release_condition(plan)
    steps: list[dict[str, Any]] = [{"uses": CHECKOUT}]
    steps += [{"name": "setup", "run": line} for line in opts.setup]
    steps += [{"run": line} for line in job.shell()]
    out["steps"] = steps
    return out
