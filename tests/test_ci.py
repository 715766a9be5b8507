"""`buildsys ci github|gitlab`: the pipeline follows the DAG, and it runs.

The fast tests read the written files back with a YAML reader (PyYAML, which
spdx-tools depends on). The slow ones run a generated pipeline's commands job
by job, each in a fresh store, alternating between the running docker engine
and a second dockerd, through one loopback registry; and build, test and run
on the second dockerd reached over TCP, as a remote engine is.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from helpers import bs, copy_project, ok

from buildsys.ci import yamltext
from buildsys.core.store import Store
from buildsys.oci.compress import CompressedBlobs, compressed_image, method

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = "127.0.0.1:5000/ci/cache"


def generate(proj: Path, target: str, *args: str, store: Path | None = None) -> tuple[dict, str]:
    out = proj / f"pipeline-{target}.yml"
    ok(bs(proj, store or proj / ".store", "ci", target, "--cache", CACHE, "-o", str(out), *args))
    text = out.read_text()
    return yaml.safe_load(text), text


def test_github_jobs_need_their_parents_jobs(tmp_path: Path) -> None:
    proj = copy_project("chain", tmp_path / "p")
    wf, text = generate(proj, "github", "--publish-to", "127.0.0.1:5000/team", "--release-tags", "v")
    jobs = wf["jobs"]
    assert list(jobs) == ["build-root", "build-tools", "build-app", "test-app", "verify-app", "publish-app"]
    assert "needs" not in jobs["build-root"]
    assert jobs["build-tools"]["needs"] == ["build-root"] and jobs["build-app"]["needs"] == ["build-tools"]
    assert jobs["test-app"]["needs"] == jobs["verify-app"]["needs"] == ["build-app"]
    assert jobs["publish-app"]["needs"] == ["test-app", "verify-app"]
    runs = {k: [s["run"] for s in j["steps"] if "run" in s] for k, j in jobs.items()}
    assert runs["build-tools"][1:] == ["buildsys fetch tools",
                                       f"buildsys build tools --cache-from {CACHE} --cache-to {CACHE}"]
    assert runs["verify-app"][-1] == "buildsys build --verify app"
    assert runs["publish-app"][-1] == "buildsys publish app --to 127.0.0.1:5000/team/app"
    # Publishing on the release branch and v* tags only; nothing else is conditional.
    assert jobs["publish-app"]["if"] == ("github.ref == 'refs/heads/main' || "
                                         "startsWith(github.ref, 'refs/tags/v')")
    assert [k for k, j in jobs.items() if "if" in j] == ["publish-app"]
    assert wf["on"] == {"push": {}, "pull_request": {}}  # the key is "on", not YAML 1.1's true
    assert text.startswith("# GitHub Actions workflow, written by `buildsys ci github --cache")


def test_gitlab_pipeline_has_stages_needs_and_release_rules(tmp_path: Path) -> None:
    proj = copy_project("chain", tmp_path / "p")
    ci, _ = generate(proj, "gitlab", "--publish-to", "127.0.0.1:5000/team", "--release-branch", "release/2",
                     "--runner", "docker", "--image", "debian:bookworm", "--project-dir", "images")
    assert ci["stages"] == ["build", "test", "verify", "publish"]
    assert ci["default"] == {"image": "debian:bookworm", "tags": ["docker"],
                             "before_script": ["python3 -m pip install ."]}
    assert ci["build:root"]["needs"] == [] and ci["build:app"]["needs"] == ["build:tools"]
    assert ci["build:app"]["script"][0] == "buildsys -C images fetch app"
    assert ci["publish:app"]["rules"] == [{"if": '$CI_COMMIT_BRANCH == "release/2"'}]
    assert "rules" not in ci["verify:app"]


def test_only_the_given_targets_and_their_chains(tmp_path: Path) -> None:
    proj = copy_project("chain", tmp_path / "p")
    wf, _ = generate(proj, "github", "tools")
    assert list(wf["jobs"]) == ["build-root", "build-tools", "test-tools", "verify-tools"]  # no --publish-to


def test_same_project_same_bytes_and_no_overwrite_without_force(tmp_path: Path) -> None:
    proj = copy_project("chain", tmp_path / "p")
    out = tmp_path / "ci.yml"
    first = ok(bs(proj, tmp_path / "s", "ci", "github", "--cache", CACHE, "-o", str(out)))
    data = out.read_bytes()
    again = ok(bs(proj, tmp_path / "s", "ci", "github", "--cache", CACHE, "-o", str(out)))
    assert "written" in first.output and "unchanged" in again.output and out.read_bytes() == data
    other = bs(proj, tmp_path / "s", "ci", "github", "--cache", "127.0.0.1:5000/other", "-o", str(out))
    assert other.exit_code == 2 and f"{out} exists and differs" in other.stderr and "--force" in other.stderr
    assert out.read_bytes() == data and [p.name for p in tmp_path.iterdir() if p.name.startswith(".ci.yml")] == []
    ok(bs(proj, tmp_path / "s", "ci", "github", "--cache", "127.0.0.1:5000/other", "-o", str(out), "--force"))
    assert b"127.0.0.1:5000/other" in out.read_bytes()


@pytest.mark.parametrize(("args", "said"), [
    (("--cache", "127.0.0.1:5000/ci/cache:latest"), "--cache 127.0.0.1:5000/ci/cache:latest: a repository"),
    (("--cache", "nohost"), "nohost"),
    (("--cache", CACHE, "--release-branch", "main; rm -rf /"), "--release-branch 'main; rm -rf /'"),
    (("--cache", CACHE, "nosuch"), "nosuch"),
])
def test_bad_options_are_refused_naming_them(tmp_path: Path, args: tuple[str, ...], said: str) -> None:
    proj = copy_project("chain", tmp_path / "p")
    out = tmp_path / "ci.yml"
    result = bs(proj, tmp_path / "s", "ci", "gitlab", "-o", str(out), *args)
    assert result.exit_code == 2 and said in result.stderr and not out.exists()


def test_the_yaml_subset_reads_back_as_the_same_data() -> None:
    tricky = ["on", "yes", "No", "null", "~", "a: b", "# not a comment", "- item", "1.0", "0x10", "@at", "`tick`",
              "x\ny", 'say "hi"', "back\\slash", "é ü 中", "", " lead", "trail ", "*star", "&amp", "!bang", "%pct"]
    data = {"on": {"push": {}}, "jobs": {k or "empty": {"run": k, "list": [k, 1, True, None]} for k in tricky},
            "keys": {k: k for k in tricky if k}, "none": [], "nested": [{"a": "b", "c": ["d"]}, "e"]}
    text = yamltext.dump(data, ["# a header"])
    assert text.isascii() and yaml.safe_load(text) == data


# ---------------------------------------------------------------- the pipeline runs: two engines, one registry

_EVENT = re.compile(r"\d+\.\ds (\S+) (verify )?(built|remote cache|cache push|remote fetch):")


def events(stderr: str) -> list[tuple[str, str]]:
    """(recipe, stage) of the progress lines that say where a layer came from; verify's rebuild apart."""
    said = " ".join(stderr.split())  # progress lines may wrap
    return [(m[1], (m[2] or "") + m[3]) for m in _EVENT.finditer(said)]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory):
    """A second dockerd, on its own socket and on a loopback TCP port, with its own bridge."""
    from shipenv import second_dockerd

    with second_dockerd(tmp_path_factory.mktemp("ci-engine2"), tcp=True, bridge="bsci0",
                        subnet="10.213.78.1/24") as engine:
        yield engine


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict], Path]:
    """The chain project locked once, each recipe's image as a plain local build makes it, and its store."""
    proj = copy_project("chain", tmp_path_factory.mktemp("ci-chain"))
    store = tmp_path_factory.mktemp("ci-local-store")
    ok(bs(proj, store, "lock", "app"))
    ok(bs(proj, store, "fetch", "app"))
    ok(bs(proj, store, "build", "app"))
    images = {}
    for recipe in ("root", "tools", "app"):
        (image,) = json.loads(ok(bs(proj, store, "build", "--json", recipe)).stdout)
        images[recipe] = image
    return proj, images, store


def ordered(jobs: dict[str, dict]) -> list[str]:
    """The job ids in an order where each comes after those it needs (as a CI runs them)."""
    done: list[str] = []
    while len(done) < len(jobs):
        ready = [k for k, j in jobs.items() if k not in done and all(n in done for n in j.get("needs", []))]
        assert ready, f"the needs form a cycle among {set(jobs) - set(done)}"
        done.append(ready[0])
    return done


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_the_generated_pipeline_runs_job_by_job_on_two_engines(locked, engines, registry, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    proj, local, local_store = locked
    space = f"ci-{uuid.uuid4().hex[:8]}"
    cache, publish_to = f"{registry.host}/{space}/cache", f"{registry.host}/{space}/pub"
    out = tmp_path / "workflow.yml"
    ok(bs(proj, tmp_path / "s", "ci", "github", "--cache", cache, "--publish-to", publish_to, "-o", str(out)))
    jobs = yaml.safe_load(out.read_text())["jobs"]
    pushed: dict[str, str] = {}  # recipe -> the job that pushed its layer
    built: list[tuple[str, str]] = []  # (job, recipe) of every layer built outside verify
    figures = []
    for i, job_id in enumerate(ordered(jobs)):
        host = engines.host if i % 2 else None  # alternate: the running engine, the second one
        if host:
            monkeypatch.setenv("DOCKER_HOST", host)
        else:
            monkeypatch.delenv("DOCKER_HOST", raising=False)
        store = tmp_path / f"store-{i}"  # a fresh machine: nothing built, nothing fetched
        commands = [shlex.split(s["run"]) for s in jobs[job_id]["steps"] if "run" in s]
        commands = [c for c in commands if c[0] == "buildsys"]  # the setup line installs buildsys
        started = time.monotonic()
        said: list[tuple[str, str]] = []
        outputs = []
        for argv in commands:
            result = ok(bs(proj, store, *argv[1:]))
            said += events(result.stderr)
            outputs.append(result.output)
        seconds = time.monotonic() - started
        for recipe, stage in said:  # a job's own pushes count for the jobs after it
            if stage == "built":
                assert recipe not in pushed, f"{job_id} rebuilt {recipe}, which {pushed[recipe]} had pushed"
                built.append((job_id, recipe))
        for recipe, stage in said:
            if stage == "cache push":
                pushed.setdefault(recipe, job_id)
        recipe = jobs[job_id]["name"].split()[-1]
        (image,) = json.loads(ok(bs(proj, store, "build", "--json", recipe)).stdout)  # a local hit now
        assert image["image_id"] == local[recipe]["image_id"], job_id
        assert image["manifest_digest"] == local[recipe]["manifest_digest"], job_id
        if job_id.startswith("verify-"):
            assert f"{recipe}: reproducible" in outputs[-1]
        if job_id.startswith("publish-"):
            digest = outputs[-1].strip().splitlines()[-1]
            # What publish pushes: the local image with its layers gzip-compressed (one pinned method).
            shipped = compressed_image(CompressedBlobs(Store(local_store)), local[recipe]["manifest_digest"],
                                       method("gzip"))
            assert digest == shipped.manifest_digest != local[recipe]["manifest_digest"]
            url = f"http://{registry.host}/v2/{space}/pub/{recipe}/manifests/{digest}"
            assert requests.head(url, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                                 timeout=10).status_code == 200
        figures.append((job_id, "second" if host else "first", seconds,
                        sum(1 for _, s in said if s == "remote cache"), sum(1 for _, s in said if s == "built"),
                        sum(1 for _, s in said if s == "verify built")))
    # Each layer was built once, by its own recipe's job, and taken from the cache everywhere else.
    assert sorted(built) == [("build-app", "app"), ("build-root", "root"), ("build-tools", "tools")]
    assert pushed == {"root": "build-root", "tools": "build-tools", "app": "build-app"}
    print(f"\n{len(figures)} jobs (engine: seconds, layers from the cache / built / rebuilt by verify):")
    for job_id, engine, seconds, pulled, made, verified in figures:
        print(f"  {job_id:12} {engine:6} {seconds:6.1f}s  {pulled} pulled, {made} built, {verified} verify-built")


# ---------------------------------------------------------------- a remote engine: DOCKER_HOST=tcp://


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_build_test_and_run_on_an_engine_reached_over_tcp(locked, engines, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    proj, local, local_store = locked
    assert engines.tcp
    monkeypatch.setenv("DOCKER_HOST", engines.tcp)
    store = tmp_path / "remote-store"
    ok(bs(proj, store, "fetch", "app"))
    started = time.monotonic()
    result = ok(bs(proj, store, "build", "--json", "app"))
    cold = time.monotonic() - started
    (image,) = json.loads(result.stdout)
    assert image["image_id"] == local["app"]["image_id"]
    said = " ".join(result.stderr.split())
    # The inputs were sent into the container, and the diff read by export: no upper dir of that engine.
    assert said.count(", export ") == 2 and "upper dir" not in said, said
    for recipe in ("root", "tools"):
        (image,) = json.loads(ok(bs(proj, store, "build", "--json", recipe)).stdout)
        assert image["image_id"] == local[recipe]["image_id"], recipe
    assert engines.docker("image", "inspect", "app:latest", "--format", "{{.Id}}").stdout.strip() == \
        local["app"]["image_id"]
    ok(bs(proj, store, "test", "app"))
    ran = ok(bs(proj, store, "run", "app", "--", "sh", "-c", "cat /home/app/built.txt"))
    assert "built" in ran.output
    # The no-op build loads no docker SDK: it asks the engine one question over plain TCP.
    from buildsys.engine.probe import tagged_image

    assert tagged_image("app:latest") == local["app"]["image_id"]
    assert tagged_image("no-such-image-here:latest") == ""
    script = ("import sys, time\nfrom buildsys.cli import cli\nt = time.monotonic()\n"
              f"cli(['-C', {str(proj)!r}, '--store', {str(store)!r}, 'build', 'app'], standalone_mode=False)\n"
              "print('SDK', 'docker' in sys.modules, round(time.monotonic() - t, 3))\n")
    noop = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert noop.returncode == 0, noop.stderr
    sdk_line = noop.stdout.strip().splitlines()[-1].split()
    assert sdk_line[:2] == ["SDK", "False"], noop.stdout
    print(f"\nover tcp: cold build of tools+app (root bootstrapped here) {cold:.1f}s; "
          f"no-op build {sdk_line[2]}s in-process")


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_remote_engine_gets_folders_copied_in_and_the_writable_ones_back(locked, engines, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``lock``'s pip resolution needs of a remote engine: inputs in, its results back out."""
    from buildsys.engine import Engine

    _, local, _ = locked
    image = local["root"]["image_id"]
    if engines.docker("image", "inspect", image, check=False).returncode != 0:
        saved = subprocess.run(["docker", "save", image], check=True, capture_output=True).stdout
        subprocess.run(["docker", "-H", engines.host, "load"], input=saved, check=True, capture_output=True)
    inputs, results = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "sub" / "a.txt").write_text("hello\n")
    results.mkdir()
    (tmp_path / "ca.pem").write_text("a file mounted alone\n")
    assert Engine.connect().is_remote is False  # the local socket
    monkeypatch.setenv("DOCKER_HOST", str(engines.tcp))
    engine = Engine.connect()
    assert engine.is_remote
    run = engine.run(image, ["/bin/sh", "-c", "cat /in/sub/a.txt /ca.pem && mkdir /out/d && echo made > /out/d/new"],
                     mounts=[(str(inputs), "/in", True), (str(results), "/out", False),
                             (str(tmp_path / "ca.pem"), "/ca.pem", True)])
    assert run.exit_code == 0 and run.output.split("\n")[:2] == ["hello", "a file mounted alone"], run.output
    assert (results / "d" / "new").read_text() == "made\n"
    assert sorted(p.name for p in inputs.rglob("*")) == ["a.txt", "sub"]  # a read-only one is not copied back


# ---------------------------------------------------------------- a remote engine: DOCKER_HOST=ssh://


@pytest.fixture(scope="module")
def ssh_engine(engines, tmp_path_factory: pytest.TempPathFactory):
    """DOCKER_HOST=ssh://root@127.0.0.1:PORT reaching the second dockerd through a real sshd.

    sshd runs on loopback with its own host key and an authorized key whose forced command is
    ``docker system dial-stdio`` against the second engine's socket; the client is the ssh binary
    (what the docker SDK runs for ssh://), given its own config by a wrapper first on PATH:
    root's ~/.ssh is left alone.
    """
    import shutil

    from shipenv import free_port

    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("no sshd (apt-get install openssh-server)")
    root = tmp_path_factory.mktemp("ci-ssh")
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    dial = f"docker -H {engines.host} system dial-stdio"
    (root / "authorized_keys").write_text(f'command="{dial}",no-pty,no-port-forwarding '
                                          f"{(root / 'client.pub').read_text()}")
    port = free_port()
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-p", str(port),
                             "-o", "ListenAddress=127.0.0.1", "-o", f"HostKey={root / 'host'}",
                             "-o", f"AuthorizedKeysFile={root / 'authorized_keys'}", "-o", "StrictModes=no",
                             "-o", "PasswordAuthentication=no", "-o", "PermitRootLogin=prohibit-password",
                             "-o", f"PidFile={root / 'sshd.pid'}"],
                            stdout=subprocess.DEVNULL, stderr=open(root / "sshd.log", "wb"))  # noqa: SIM115
    (root / "bin").mkdir()
    (root / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {root / 'client'}\n  IdentitiesOnly yes\n"
                                 f"  UserKnownHostsFile {root / 'known_hosts'}\n  StrictHostKeyChecking accept-new\n"
                                 "  BatchMode yes\n")
    wrapper = root / "bin" / "ssh"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {root / 'config'} \"$@\"\n")
    wrapper.chmod(0o755)
    try:
        deadline = time.monotonic() + 20
        env = {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
               "DOCKER_HOST": f"ssh://root@127.0.0.1:{port}"}
        while subprocess.run(["docker", "version"], env=env, capture_output=True).returncode != 0:
            if sshd.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker over ssh did not answer: {(root / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield env
    finally:
        sshd.terminate()
        sshd.wait(10)


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_build_test_and_run_on_an_engine_reached_over_ssh(locked, ssh_engine, registry, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    proj, local, local_store = locked
    cache = f"{registry.host}/ci-{uuid.uuid4().hex[:8]}/cache"
    ok(bs(proj, local_store, "build", "root", "--cache-to", cache))
    for name in ("PATH", "DOCKER_HOST"):
        monkeypatch.setenv(name, ssh_engine[name])
    store = tmp_path / "ssh-store"
    ok(bs(proj, store, "fetch", "app"))
    ok(bs(proj, store, "build", "root", "--cache-from", cache))  # the root from the cache: no bootstrap here
    started = time.monotonic()
    result = ok(bs(proj, store, "build", "--json", "app"))
    print(f"\nover ssh: tools and app built in containers there in {time.monotonic() - started:.1f}s")
    said = " ".join(result.stderr.split())
    assert said.count(", export ") == 2 and "upper dir" not in said, said  # tools and app, in containers
    assert json.loads(result.stdout)[0]["image_id"] == local["app"]["image_id"]
    ok(bs(proj, store, "test", "app"))
    ran = ok(bs(proj, store, "run", "app", "--", "sh", "-c", "cat /home/app/built.txt"))
    assert "built" in ran.output


def test_an_ssh_engine_that_does_not_answer_is_exit_4_with_what_ssh_said(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from shipenv import free_port

    def relays() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("buildsys-ssh-*"))

    before = relays()
    monkeypatch.setenv("DOCKER_HOST", f"ssh://nobody@127.0.0.1:{free_port()}")
    result = bs(copy_project("chain", tmp_path / "p"), tmp_path / "s", "engine")
    assert result.exit_code == 4, result.output
    assert "(ssh: ssh: connect to host 127.0.0.1 port" in result.stderr and "Connection refused" in result.stderr
    assert relays() <= before  # the relay's socket folder is gone
