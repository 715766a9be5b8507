"""The on-ramp: recipes from a Dockerfile (``init --from``), and the project's own requirement files as requests
(``[pip] requirements``/``pyproject``, ``[cran] renv``), and the locks exported for other tools.

Fast tests parse and translate Dockerfiles written here, as a team has them, and parse the written recipes
back with the recipe parser. The lock tests that really run are marked: one [pip] lock of a hashed
requirements file in a python3 image (docker, PyPI), one renv.lock against the loopback CRAN-like repository
of real tarballs (network: its tarballs come from Debian's pool once, then from pytest's cache).
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cranrepo import DownloadFailed, build, serve, write_repo
from helpers import bs, ok
from packaging.pylock import Pylock

# The python3 image and the store of the [pip] lock tests, shared (pytest takes fixtures imported here).
from test_pip_lock import engine, python_image, root_image  # noqa: F401

from buildsys.core.errors import EXIT_NOT_REPRODUCIBLE, EXIT_USAGE, RecipeError, StaleLock
from buildsys.core.store import Store
from buildsys.ecosystems.cran import lock_renv
from buildsys.ecosystems.cran_index import CranRecipe, InstalledR, parse_index
from buildsys.ecosystems.pip import PipSection, take_pinned
from buildsys.ecosystems.pip_export import pylock, requirements
from buildsys.ecosystems.pip_resolve import PipRecipe, lock_pip
from buildsys.ecosystems.pypi import index_files
from buildsys.engine import Engine
from buildsys.lock.freshness import check_fresh
from buildsys.model.lockfile import Lock, lock_path, read_lock, write_lock
from buildsys.model.recipe import Recipe, parse_recipe
from buildsys.onramp.dockerfile import parse_dockerfile
from buildsys.onramp.translate import split_commands

REPO = Path(__file__).parent.parent


def init(project: Path, dockerfile: str, *args: str, name: str = "Dockerfile") -> tuple[int, str, Path]:
    """Write ``dockerfile`` into ``project`` and run ``buildsys init --from`` on it."""
    project.mkdir(parents=True, exist_ok=True)
    path = project / name
    path.write_text(dockerfile)
    result = bs(project, project / ".store", "init", "--from", str(path), *args)
    return result.exit_code, result.output + result.stderr, path


def recipes(project: Path) -> dict[str, Recipe]:
    return {p.stem: parse_recipe(p) for p in sorted((project / "recipes").glob("*.toml"))}


# --- Dockerfile syntax ---------------------------------------------------------------------------------------------


def test_syntax_continuations_comments_forms_and_flags() -> None:
    text = ("# syntax=docker/dockerfile:1\n"
            "FROM --platform=linux/amd64 python:3.11-slim AS app\n"
            "RUN apt-get update \\\n"
            "# a comment inside a continued instruction is dropped\n"
            "    && apt-get install -y git\n"
            "\n"
            "COPY --from=build /out /app\n"
            'CMD ["python", "-m", "app"]\n'
            "ENTRYPOINT exec python -m app\n")
    ins = parse_dockerfile(text, Path("Dockerfile"))
    assert [(i.line, i.keyword) for i in ins] == [(2, "FROM"), (3, "RUN"), (7, "COPY"), (8, "CMD"),
                                                  (9, "ENTRYPOINT")]
    assert ins[0].flag("platform") == "linux/amd64" and ins[0].args == "python:3.11-slim AS app"
    assert ins[1].args == "apt-get update && apt-get install -y git"
    assert ins[2].flag("from") == "build" and ins[2].args == "/out /app"
    assert ins[3].exec_form == ("python", "-m", "app") and ins[4].exec_form is None


def test_escape_directive_changes_the_continuation() -> None:
    ins = parse_dockerfile("# escape=`\nFROM debian:bookworm\nRUN echo a `\n  b\n", Path("Dockerfile"))
    assert ins[1].args == "echo a b"


def test_split_commands_respects_quotes() -> None:
    assert list(split_commands("a && b 'x && y'; c \"d;e\" && f")) == ["a", "b 'x && y'", 'c "d;e"', "f"]


# --- translations of Dockerfiles as teams write them ---------------------------------------------------------------


CUDA_PIP = """\
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG TORCH=2.3.1
ENV DEBIAN_FRONTEND=noninteractive \\
    PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \\
        python3 python3-pip git=1:2.34.1-1ubuntu1 \\
    && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace
COPY requirements.txt .
RUN pip3 install --no-cache-dir -U pip \\
 && pip3 install --no-cache-dir -r requirements.txt torch==${TORCH} "transformers>=4.40"
EXPOSE 8888/tcp 6006
CMD ["jupyter", "lab", "--ip=0.0.0.0"]
"""


def test_cuda_with_pip(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy>=1.26\nscipy\n")
    code, out, _ = init(tmp_path, CUDA_PIP, "--name", "train")
    assert code == 0, out
    r = recipes(tmp_path)
    assert set(r) == {"train", "train-base"}
    assert r["train-base"].data["base"] == {"image": "docker.io/nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"}
    layer = r["train"]
    assert layer.parents == ("train-base",)
    assert layer.data["apt"] == {"packages": ["python3", "python3-pip", "git"]}
    pip = layer.section(PipRecipe)
    assert layer.data["pip"]["requirements"] == "requirements.txt"
    # the ARG default is written where it is used; the file's lines join the recipe's own
    assert pip.packages == ("torch==2.3.1", "transformers>=4.40", "numpy>=1.26", "scipy")
    assert dict(layer.image.env) == {"DEBIAN_FRONTEND": "noninteractive", "PYTHONUNBUFFERED": "1"}
    assert layer.image.workdir == "/workspace" and layer.image.expose == (8888, 6006)
    assert layer.image.cmd == ("jupyter", "lab", "--ip=0.0.0.0")
    assert not layer.run
    assert "Dockerfile:6: dropped: apt package git=1:2.34.1-1ubuntu1" in out.replace("\n", " ") or \
        "git=1:2.34.1-1ubuntu1: the version is what the lock pins" in out
    assert "pip install pip: the lock pins the pip" in out and "not translated" not in out


DEBIAN_R = """\
FROM debian:bookworm-slim
LABEL org.opencontainers.image.authors="data team" version="1.0"
RUN apt-get update && apt-get install -y r-base-core r-base-dev libxml2-dev && apt-get clean
RUN R -e "install.packages(c('jsonlite', 'data.table'), repos='https://cloud.r-project.org')"
RUN Rscript -e 'install.packages("ggplot2")' && Rscript -e "remotes::install_github('r-lib/cli')"
RUN useradd -m analyst && mkdir -p /data && chown analyst /data || true
USER analyst
WORKDIR /home/analyst
CMD R --no-save
"""


def test_debian_with_r(tmp_path: Path) -> None:
    code, out, _ = init(tmp_path, DEBIAN_R)
    assert code == 0, out
    r = recipes(tmp_path)
    assert r["app-base"].data["base"] == {"debian": {"suite": "bookworm", "variant": "minbase"}}
    layer = r["app"]
    assert layer.data["apt"]["packages"] == ["r-base-core", "r-base-dev", "libxml2-dev"]
    cran = layer.section(CranRecipe)
    assert cran.packages == ("jsonlite", "data.table", "ggplot2")
    # cloud.r-project.org moves every day: a dated snapshot instead, said in a comment
    assert cran.repo and "/cran/20" in cran.repo
    assert layer.run == ("useradd -m analyst && mkdir -p /data && chown analyst /data || true",)
    assert layer.image.user == "analyst" and layer.image.cmd == ("/bin/sh", "-c", "R --no-save")
    assert dict(layer.image.labels) == {"org.opencontainers.image.authors": "data team", "version": "1.0"}
    assert "5: not translated: remotes::install_github('r-lib/cli')" in out
    assert "6: kept: run step 'useradd" in out


PYTHON_SLIM = """\
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY requirements.txt /tmp/req.txt
RUN python -m pip install --upgrade pip && python -m pip install -r /tmp/req.txt --index-url https://pypi.org/simple
RUN python -m compileall -q /usr/local/lib/python3.11
ENTRYPOINT ["python"]
"""


def test_python_slim_is_a_registry_root(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("requests==2.32.3\n")
    code, out, _ = init(tmp_path, PYTHON_SLIM)
    assert code == 0, out
    r = recipes(tmp_path)
    assert r["app-base"].data["base"] == {"image": "docker.io/library/python:3.11-slim"}
    pip = r["app"].section(PipRecipe)
    assert pip.packages == ("requests==2.32.3",) and pip.index_url == "https://pypi.org/simple"
    assert r["app"].image.workdir == "/srv/app"  # $APP_HOME from the ENV above it
    # docker runs RUN in the WORKDIR (which it creates); run steps say so
    assert r["app"].run == ("mkdir -p /srv/app && cd /srv/app && python -m compileall -q /usr/local/lib/python3.11",)
    assert r["app"].image.entrypoint == ("python",)


UNSUPPORTED = """\
FROM golang:1.22 AS build
RUN go build -o /out/tool ./cmd/tool
FROM ubuntu:22.04
SHELL ["/bin/bash", "-c"]
RUN curl -fsSL https://deb.nodesource.com/setup_20.x | bash - && apt-get install -y nodejs
ADD https://example.org/data.tar.gz /data/
COPY --from=build /out/tool /usr/local/bin/tool
COPY . /app
RUN pip install -e . && pip install git+https://github.com/org/lib.git
RUN git clone https://github.com/org/repo /opt/repo
VOLUME /data
ENV PATH=/opt/tools/bin:$PATH
HEALTHCHECK CMD curl -f http://localhost/ || exit 1
"""


def test_unsupported_constructs_are_reported_line_by_line(tmp_path: Path) -> None:
    code, out, _ = init(tmp_path, UNSUPPORTED)
    assert code == 0, out
    notes = [ln for ln in out.splitlines() if ": not translated: " in ln]
    lines = sorted({int(ln.split(":")[1]) for ln in notes})
    assert lines == [1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], out
    assert "downloads at build time (curl)" in out and "[[files]]" in out
    assert "5: kept: apt packages nodejs come from the image's own apt sources" in out
    assert "the build context is not copied into images" in out
    assert "COPY --from=build" in out and "stage 'golang:1.22 AS build'" in out
    assert "$PATH comes from the base image" in out
    r = recipes(tmp_path)
    assert r["app-base"].data["base"] == {"image": "docker.io/library/ubuntu:22.04"}
    assert r["app"].data.get("apt") == {"packages": ["nodejs"]} and "pip" not in r["app"].data
    assert not r["app"].run


def test_a_debian_root_without_python_says_what_to_add(tmp_path: Path) -> None:
    code, out, _ = init(tmp_path, "FROM debian:bookworm\nRUN pip install --break-system-packages six\n")
    assert code == 0 and '1: not translated: a Debian root has no Python: add "python3"' in out, out


def test_a_stage_from_an_earlier_stage_carries_it(tmp_path: Path) -> None:
    code, out, _ = init(tmp_path, "FROM python:3.11-slim AS base\nRUN pip install six\n"
                                  "FROM base AS final\nUSER 1000\nRUN touch /tmp/x\n")
    assert code == 0 and "not translated" not in out, out
    r = recipes(tmp_path)
    assert r["app-base"].data["base"] == {"image": "docker.io/library/python:3.11-slim"}
    assert r["app"].section(PipRecipe).packages == ("six",) and r["app"].run == ("touch /tmp/x",)
    assert "5: kept: the Dockerfile ran it as USER 1000; run steps run as root" in out


# --- bad input: named, line-numbered, nothing written ---------------------------------------------------------------


@pytest.mark.parametrize(("dockerfile", "line", "words"), [
    ("FROM debian:bookworm\nRUN <<EOF\napt-get install -y git\nEOF\n", 2, "heredoc"),
    ("ARG BASE=python:3.11\nFROM ${BASE}\nRUN true\n", 2, "ARG-driven base"),
    ("FROM debian:bookworm\nFROBNICATE now\n", 2, "unknown instruction 'FROBNICATE'"),
    ("RUN true\nFROM debian:bookworm\n", 1, "RUN before the first FROM"),
    ("FROM scratch\nCOPY app /app\n", 1, "FROM scratch"),
    ("# an empty FROM\nFROM\n", 2, "FROM names no image"),
])
def test_bad_dockerfiles_name_file_and_line(tmp_path: Path, dockerfile: str, line: int, words: str) -> None:
    code, out, path = init(tmp_path, dockerfile)
    assert code == EXIT_USAGE, out
    assert f"{path}:{line}: " in out and words in out
    assert not (tmp_path / "recipes").exists()


def test_missing_dockerfile(tmp_path: Path) -> None:
    result = bs(tmp_path, tmp_path / ".store", "init", "--from", str(tmp_path / "Dockerfile.gpu"))
    assert result.exit_code == EXIT_USAGE
    assert f"{tmp_path / 'Dockerfile.gpu'}: no such file" in result.output


def test_existing_recipes_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "app.toml").write_text("# mine\n")
    code, out, _ = init(tmp_path, "FROM debian:bookworm\nRUN apt-get install -y git\n")
    assert code == EXIT_USAGE and f"{tmp_path / 'recipes' / 'app.toml'}" in out and "overwrite" in out
    assert (tmp_path / "recipes" / "app.toml").read_text() == "# mine\n"
    assert sorted(p.name for p in (tmp_path / "recipes").iterdir()) == ["app.toml"]  # no app-base.toml either


def test_a_requirements_file_outside_the_project_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "requirements.txt").write_text("six\n")
    code, out, _ = init(tmp_path / "ctx", "FROM python:3.11\nCOPY requirements.txt .\n"
                                          "RUN pip install -r requirements.txt\n",
                        "-o", str(tmp_path / "project"))
    assert code == 0, out
    assert "is outside the project" in out and "not translated" in out
    assert "pip" not in recipes(tmp_path / "project")["app"].data


# --- [pip] requirements / pyproject, [cran] renv: reading ---------------------------------------------------------


def project(tmp_path: Path, pip: str, files: dict[str, str]) -> Path:
    (tmp_path / "recipes").mkdir(parents=True, exist_ok=True)
    (tmp_path / "recipes" / "py.toml").write_text(f'parents = ["base"]\n\n{pip}\n')
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path / "recipes" / "py.toml"


SIX_WHEEL = "six-1.17.0-py2.py3-none-any.whl"


def test_requirements_file_joins_packages_and_its_content_is_in_the_recipe_hash(tmp_path: Path) -> None:
    path = project(tmp_path, '[pip]\npackages = ["six"]\nrequirements = "req/base.txt"',
                   {"req/base.txt": "# ours\nnumpy>=2 ; python_version >= '3.10'  # why\n"
                                    "pandas \\\n  ==2.2.3\n--index-url https://pypi.org/simple/\n"})
    r = parse_recipe(path)
    assert r.section(PipRecipe).packages == ("six", "numpy>=2 ; python_version >= '3.10'", "pandas ==2.2.3")
    assert r.section(PipRecipe).origin("pandas ==2.2.3") == "req/base.txt:3"
    before = r.recipe_hash
    (tmp_path / "req/base.txt").write_text("numpy>=2\n")
    assert parse_recipe(path).recipe_hash != before
    # a recipe that names no file hashes as it always did (the committed locks stay fresh)
    plain = project(tmp_path / "plain", '[pip]\npackages = ["six"]', {})
    assert parse_recipe(plain).recipe_hash == Recipe("py", plain, data=parse_recipe(plain).data).recipe_hash


def test_nested_requirement_files_are_read_and_hashed(tmp_path: Path) -> None:
    path = project(tmp_path, '[pip]\nrequirements = "requirements/dev.txt"',
                   {"requirements/dev.txt": "-r base.txt\npytest\n", "requirements/base.txt": "numpy\n-rextra.txt\n",
                    "requirements/extra.txt": "six\n-r base.txt\n"})  # a cycle is read once
    r = parse_recipe(path)
    assert r.section(PipRecipe).packages == ("numpy", "six", "pytest")
    assert r.section(PipRecipe).origin("six") == "requirements/extra.txt:1"
    assert [p for p, _ in r.inputs] == ["requirements/base.txt", "requirements/dev.txt", "requirements/extra.txt"]
    before = r.recipe_hash
    (tmp_path / "requirements/extra.txt").write_text("six==1.17.0\n")
    assert parse_recipe(path).recipe_hash != before
    (tmp_path / "requirements/extra.txt").write_text("six\n-e .\n")
    with pytest.raises(RecipeError, match=r"requirements/extra\.txt:2: -e \.: an editable install"):
        parse_recipe(path)


def test_editing_the_requirements_file_makes_the_lock_stale(tmp_path: Path) -> None:
    path = project(tmp_path, '[pip]\nrequirements = "requirements.txt"', {"requirements.txt": "six\n"})
    r = parse_recipe(path)
    write_lock(tmp_path, Lock(recipe="py", recipe_hash=r.recipe_hash, parents={"base": "sha256:" + "0" * 64},
                               source_date_epoch=0))
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    with pytest.raises(StaleLock, match=r"py\.toml or a file it names \(requirements\.txt\) changed since it "
                                        "was locked") as e:
        check_fresh(tmp_path, parse_recipe(path), {})
    assert e.value.exit_code == EXIT_NOT_REPRODUCIBLE


@pytest.mark.parametrize(("text", "line", "words"), [
    ("six\n-e .\n", 2, "an editable install"),
    ("six\n./libs/mine\n", 2, "a path, URL or VCS link"),
    ("git+https://github.com/org/lib.git\n", 1, "a path, URL or VCS link"),
    ("six\n\n--extra-index-url https://example.org/simple\n", 3, "a second index"),
    ("--index-url https://example.org/simple\nsix\n", 1, "not the recipe's"),
    ("six\n-r other.txt\n", 2, "other.txt does not exist"),
    ("-r ../../outside.txt\n", 1, "the file is not inside the project"),
    ("-c constraints.txt\n", 1, "a constraints file"),
    ("six==1.17.0 --hash=sha256:" + "a" * 64 + "\nnumpy>=2\n", 2, "every requirement is pinned with =="),
    ("six==1.17.0 --hash=md5:" + "a" * 32 + "\n", 1, "only --hash=sha256"),
    ("six ===\n", 1, "not a requirement"),
])
def test_unpinnable_requirement_lines_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = project(tmp_path, '[pip]\nrequirements = "requirements.txt"', {"requirements.txt": text})
    with pytest.raises(RecipeError) as e:
        parse_recipe(path)
    assert e.value.exit_code == EXIT_USAGE
    assert str(e.value).startswith(f"{tmp_path / 'requirements.txt'}:{line}: ") and words in str(e.value)


def test_missing_or_escaping_file_names_the_recipe_key(tmp_path: Path) -> None:
    path = project(tmp_path, '[pip]\nrequirements = "requirements.txt"', {})
    with pytest.raises(RecipeError, match=r"py\.toml:4: pip\.requirements: names .*requirements\.txt, which does "
                                          r"not exist"):
        parse_recipe(path)
    path = project(tmp_path, '[pip]\nrequirements = "../requirements.txt"', {})
    with pytest.raises(RecipeError, match="must be a path inside the project"):
        parse_recipe(path)
    result = bs(tmp_path, tmp_path / ".store", "graph")
    assert result.exit_code == EXIT_USAGE and "inside the project" in result.output


def test_hashed_requirements_are_the_pin_set(tmp_path: Path) -> None:
    sha = "b" * 64
    path = project(tmp_path, '[pip]\nrequirements = "requirements.txt"',
                   {"requirements.txt": f"six==1.17.0 \\\n    --hash=sha256:{sha}\n"})
    (pin,) = parse_recipe(path).section(PipRecipe).pinned
    assert (pin.name, pin.version, pin.sha256, pin.line) == ("six", "1.17.0", frozenset({sha}), 1)
    path.write_text('parents = ["base"]\n[pip]\npackages = ["numpy"]\nrequirements = "requirements.txt"\n')
    with pytest.raises(RecipeError, match="it is the whole pin set"):
        parse_recipe(path)


def test_pyproject_dependencies_and_extras(tmp_path: Path) -> None:
    pyproject = ('[project]\nname = "mytool"\nversion = "0.1"\ndependencies = [\n  "click>=8",\n  "rich",\n]\n'
                 '[project.optional-dependencies]\nplot = ["matplotlib>=3.8"]\ndev = ["pytest", "mytool[plot]"]\n')
    path = project(tmp_path, '[pip]\npyproject = "pyproject.toml"\nextras = ["plot"]',
                   {"pyproject.toml": pyproject})
    r = parse_recipe(path)
    assert r.section(PipRecipe).packages == ("click>=8", "rich", "matplotlib>=3.8")
    assert r.inputs and r.inputs[0][0] == "pyproject.toml"
    path.write_text('parents = ["base"]\n[pip]\npyproject = "pyproject.toml"\nextras = ["dev"]\n')
    with pytest.raises(RecipeError, match=r"pyproject\.toml:10: mytool\[plot\]: the project requires itself"):
        parse_recipe(path)
    path.write_text('parents = ["base"]\n[pip]\npyproject = "pyproject.toml"\nextras = ["docs"]\n')
    with pytest.raises(RecipeError, match=r"py\.toml:4: pip\.extras: 'docs' is no group.*\n.*groups there: dev, plot"):
        parse_recipe(path)


RENV = {"R": {"Version": "4.2.2", "Repositories": [{"Name": "CRAN", "URL": "https://cloud.r-project.org"}]},
        "Packages": {"mime": {"Package": "mime", "Version": "@MIME@", "Source": "Repository", "Repository": "CRAN"},
                     "digest": {"Package": "digest", "Version": "@DIGEST@", "Source": "Repository",
                                "Repository": "CRAN"}}}


def renv_project(tmp_path: Path, renv: dict, repo: str = "https://cran.example.org") -> Path:
    (tmp_path / "recipes").mkdir(parents=True, exist_ok=True)
    (tmp_path / "renv.lock").write_text(json.dumps(renv, indent=2))
    path = tmp_path / "recipes" / "rpkgs.toml"
    path.write_text(f'parents = ["r"]\n\n[cran]\nrenv = "renv.lock"\nrepo = "{repo}"\n')
    return path


def test_renv_lock_is_read_with_its_lines(tmp_path: Path) -> None:
    renv = json.loads(json.dumps(RENV).replace("@MIME@", "0.12").replace("@DIGEST@", "0.6.31"))
    r = parse_recipe(renv_project(tmp_path, renv))
    cran = r.section(CranRecipe)
    assert cran.packages == ("digest", "mime") and cran.renv and cran.renv.r_version == "4.2.2"
    assert r.inputs[0][0] == "renv.lock"
    (tmp_path / "recipes" / "rpkgs.toml").write_text('parents = ["r"]\n[cran]\nrenv = "renv.lock"\n')
    # without [cran] repo: renv.lock's own CRAN repository
    assert parse_recipe(tmp_path / "recipes" / "rpkgs.toml").section(CranRecipe).repo == "https://cloud.r-project.org"
    renv["Packages"]["cli"] = {"Package": "cli", "Version": "3.6.3", "Source": "GitHub", "RemoteUrl":
                               "https://github.com/r-lib/cli"}
    with pytest.raises(RecipeError) as e:
        parse_recipe(renv_project(tmp_path, renv))
    text = (tmp_path / "renv.lock").read_text().splitlines()
    line = next(i for i, ln in enumerate(text, 1) if '"cli": {' in ln)
    assert str(e.value).startswith(f"{tmp_path / 'renv.lock'}:{line}: cli 3.6.3 comes from GitHub")
    (tmp_path / "renv.lock").write_text("{ not json")
    with pytest.raises(RecipeError, match=r"renv\.lock:1: not a renv\.lock"):
        parse_recipe(tmp_path / "recipes" / "rpkgs.toml")


# --- export --------------------------------------------------------------------------------------------------------


def test_export_pylock_and_requirements_of_the_committed_stack(tmp_path: Path) -> None:
    out = tmp_path / "pylock.toml"
    ok(bs(REPO, tmp_path / "store", "lock", "--export", "pylock", "jupyter", "-o", str(out)))
    lock = Pylock.from_dict(tomllib.loads(out.read_text()))
    lock.validate()
    chain = {p.name for name in ("python", "jupyter")
             for p in read_lock(lock_path(REPO, name)).section(PipSection).packages}
    assert {p.name for p in lock.packages} == chain and "numpy" in chain  # the parent's numpy too
    assert all(w.hashes and "sha256" in w.hashes for p in lock.packages for w in p.wheels or ())
    req = tmp_path / "requirements.txt"
    ok(bs(REPO, tmp_path / "store", "lock", "--export", "requirements", "python", "-o", str(req)))
    text = req.read_text()
    assert text.count("==") == 1 and "numpy==" in text and "--hash=sha256:" in text
    # deterministic
    again = tmp_path / "again.toml"
    ok(bs(REPO, tmp_path / "store", "lock", "--export", "pylock", "jupyter", "-o", str(again)))
    assert again.read_bytes() == out.read_bytes()


def test_export_usage_and_stale_lock(tmp_path: Path) -> None:
    result = bs(REPO, tmp_path / "store", "lock", "--export", "pylock", "jupyter")
    assert result.exit_code == EXIT_USAGE and "-o FILE" in result.output
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "recipes", proj / "recipes")
    shutil.copytree(REPO / "locks", proj / "locks")
    (proj / "recipes" / "python.toml").write_text((proj / "recipes" / "python.toml").read_text()
                                                  .replace("numpy>=2,<3", "numpy>=2,<4"))
    out = tmp_path / "pylock.toml"
    result = bs(proj, tmp_path / "store", "lock", "--export", "pylock", "python", "-o", str(out))
    assert result.exit_code == EXIT_NOT_REPRODUCIBLE and "stale" in result.output
    assert not out.exists()


def test_export_text_is_pure(tmp_path: Path) -> None:
    chain = [read_lock(lock_path(REPO, "python"))]
    text = requirements(chain, "python")
    assert text.startswith("# The [pip] packages of the image of recipe python")
    assert "installer" not in pylock(chain, "python") and 'name = "pip"' not in pylock(chain, "python")


# --- the lock tests that run ----------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_hashed_requirements_lock_takes_exactly_their_pins(engine: Engine, python_image: str,  # noqa: F811
                                                           tmp_path: Path) -> None:
    files = index_files("https://pypi.org/simple", "six")
    wheel = next(f for f in files.values() if f.name == SIX_WHEEL)
    sdist = next(f for f in files.values() if f.name == "six-1.17.0.tar.gz")
    path = project(tmp_path, '[pip]\nrequirements = "requirements.txt"',
                   {"requirements.txt": f"six==1.17.0 \\\n    --hash=sha256:{wheel.sha256}\n"})
    recipe = parse_recipe(path)
    started = time.monotonic()
    pl = lock_pip(engine, python_image, recipe, Store(tmp_path / "store"), constraints={}, previous=(),
                  upgrade=False, upgrade_packages=())
    print(f"lock of a hashed requirements file: {time.monotonic() - started:.1f}s")
    assert {f.sha256 for f in pl.packages[0].files} >= {wheel.sha256, sdist.sha256}  # pip-compile saw them all
    (six,) = take_pinned(recipe, pl.packages)
    assert (six.name, six.version, six.selected) == ("six", "1.17.0", SIX_WHEEL)
    assert [f.sha256 for f in six.files] == [wheel.sha256]  # only what the file allows
    # The same file hashing only the sdist: pip installs the wheel, which the file does not allow.
    (tmp_path / "requirements.txt").write_text(f"six==1.17.0 --hash=sha256:{sdist.sha256}\n")
    with pytest.raises(RecipeError, match=r"requirements\.txt:1: six==1\.17\.0: none of its --hash values"):
        take_pinned(parse_recipe(path), pl.packages)
    # A file that lacks a distribution the resolution needs is incomplete: named, with how to fix it.
    (tmp_path / "requirements.txt").write_text(f"numpy==2.1.3 --hash=sha256:{'c' * 64}\n")
    with pytest.raises(RecipeError, match="is hashed but lacks six"):
        take_pinned(parse_recipe(path), pl.packages)


@pytest.fixture(scope="module")
def cran_repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    cache = Path(request.config.cache.mkdir("cran-origs"))
    try:
        packages = build(cache, ("r-cran-mime", "r-cran-digest"))
    except DownloadFailed as e:
        pytest.fail(f"building the loopback CRAN repository: {e}")
    root = tmp_path_factory.mktemp("cran-repo")
    write_repo(root, packages, archived=("digest",))  # the repo moved on: digest only under Archive/
    with serve(root) as url:
        yield url, root, packages


@pytest.mark.network
@pytest.mark.slow
def test_renv_versions_are_locked_exactly_from_the_repo_or_its_archive(cran_repo: tuple, tmp_path: Path) -> None:
    url, root, packages = cran_repo
    renv = json.loads(json.dumps(RENV).replace("@MIME@", packages["mime"][0])
                      .replace("@DIGEST@", packages["digest"][0]))
    recipe = parse_recipe(renv_project(tmp_path, renv, url))
    index = parse_index((root / "src/contrib/PACKAGES").read_text(), url)
    assert "digest" not in index
    store = Store(tmp_path / "store")
    installed = InstalledR("4.2.2", {"base": ("4.2.2", "base")})
    locked = {c.name: c for c in lock_renv(recipe, recipe.section(CranRecipe).renv, store,  # type: ignore[arg-type]
                                           index, installed, True, lambda m: None)}
    assert set(locked) == {"digest", "mime"}
    assert locked["digest"].url == f"{url}/src/contrib/Archive/digest/digest_{packages['digest'][0]}.tar.gz"
    assert locked["mime"].url == f"{url}/src/contrib/mime_{packages['mime'][0]}.tar.gz"
    for c in locked.values():
        assert store.vendor_path(c.sha256).is_file() and c.version == packages[c.name][0]
    # another R minor release than the image's: refused, naming renv.lock's line
    other = InstalledR("4.4.1", {})
    with pytest.raises(RecipeError, match=r"renv\.lock:3: R\.Version is 4\.2\.2, the image's R is 4\.4\.1"):
        lock_renv(recipe, recipe.section(CranRecipe).renv, store, index, other, True,  # type: ignore[arg-type]
                  lambda m: None)
    # a package the parent already has at another version
    with pytest.raises(RecipeError, match=r"mime .*: the parent image already has mime 0\.1"):
        lock_renv(recipe, recipe.section(CranRecipe).renv, store, index,  # type: ignore[arg-type]
                  InstalledR("4.2.2", {"mime": ("0.1", "")}), True, lambda m: None)
