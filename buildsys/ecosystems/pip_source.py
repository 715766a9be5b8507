"""pip packages built from their source distribution: ``[pip] from-source``.

Lock time (in the lock container, after pip chose the files): for each sdist,
read its ``[build-system]`` (PEP 517/518; setuptools' legacy backend where
there is none), install those requirements, ask the backend for more
(``get_requires_for_build_wheel``), then let pip choose wheels for the whole
set. The result is locked like any pin, as ``[[pip-build]]`` entries, and the
sdist's ``[[pip]]`` entry names its own (``build-requires``): two sdists may
need two setuptools.

Build time, one step per sdist, with no network: unpack it at a fixed path,
make a fresh venv at a fixed path (no site-packages of the image: pip's build
isolation, done here so that nothing random is in any path), install exactly
its locked build requirements into it, hash-checked, build the wheel with
``--no-build-isolation`` from that venv, install it with the image's python
by name and version from a folder (so pip writes no ``direct_url.json`` with a
path), and remove the lot. Paths are fixed and the compilers are also given
``-ffile-prefix-map`` for the source folder, so the objects hold no build path.
"""

from __future__ import annotations

import re
import shlex

SDIST_SUFFIXES = (".tar.gz", ".zip")
SRC_ROOT = "/tmp/buildsys-pip-src"
BUILD_ENV = "/tmp/buildsys-pip-build-env"
WHEEL_OUT = "/tmp/buildsys-pip-wheel"
BUILD_DIR = "pip-build"  # beside wheels/ in a layer's staging folder: the build requirements' wheels

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$")


def is_sdist(filename: str) -> bool:
    return filename.endswith(SDIST_SUFFIXES)


def split_pin(text: str) -> tuple[str, str] | None:
    """'setuptools==80.9.0' -> ('setuptools', '80.9.0'); None when it is not that shape."""
    m = _PIN.match(text)
    return (m[1], m[2]) if m else None


# --- lock time: the build requirements, found in the lock container -------------------------------------------------

# Run by the lock script as ``python3 /work/sources.py INDEX`` with pip-tools' folder on PYTHONPATH (pip,
# pyproject_hooks). Reads /work/report.json (pip's choice of files) and /work/build-previous.json (the
# previous lock's build pins by package), writes /work/sources.json; a failure is one line starting
# "buildsys: " and exit status 2.
SOURCES_PY = r'''
import hashlib, json, os, re, shutil, ssl, subprocess, sys, tarfile, tempfile, tomllib, urllib.request, zipfile
from pyproject_hooks import BuildBackendHookCaller

index = sys.argv[1]
report = json.load(open("/work/report.json"))
previous = json.load(open("/work/build-previous.json"))
canon = lambda s: re.sub(r"[-_.]+", "-", s).lower()


def fail(why):
    print("buildsys: " + why, flush=True)
    sys.exit(2)


def context():
    cafile = os.environ.get("SSL_CERT_FILE")
    if not cafile:
        from pip._vendor import certifi
        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile)


def unpack(path, dest):
    tmp = dest + ".unpack"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            z.extractall(tmp)
    else:
        with tarfile.open(path) as t:
            t.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    entries = os.listdir(tmp)
    top = os.path.join(tmp, entries[0]) if len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0])) else tmp
    os.rename(top, dest)


def pip(*args, constraints=()):
    base = [sys.executable, "-m", "pip", *args, "--only-binary=:all:", "--index-url", index, "--quiet"]
    if constraints:
        with open("/work/build-constraints.txt", "w") as f:
            f.write("".join(c + "\n" for c in constraints))
        done = subprocess.run([*base, "-c", "/work/build-constraints.txt"], capture_output=True, text=True)
        if done.returncode == 0:
            return done
    return subprocess.run(base, capture_output=True, text=True)


out = {}
for item in report.get("install", []):
    info = item.get("download_info", {})
    url = info.get("url", "")
    if url.endswith(".whl"):
        continue
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    sha = info.get("archive_info", {}).get("hashes", {}).get("sha256", "")
    work = tempfile.mkdtemp(prefix="sdist-")
    with urllib.request.urlopen(url, timeout=120, context=context()) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != sha:
        fail(f"{name} {version}: {url} is not the file pip chose (sha256 differs)")
    archive = os.path.join(work, url.rsplit("/", 1)[-1].split("#")[0])
    with open(archive, "wb") as f:
        f.write(data)
    src = os.path.join(work, "src")
    unpack(archive, src)
    try:
        with open(os.path.join(src, "pyproject.toml"), "rb") as f:
            system = tomllib.load(f).get("build-system", {})
    except FileNotFoundError:
        system = {}
    except tomllib.TOMLDecodeError as e:
        fail(f"{name} {version}: its pyproject.toml is not TOML: {e}")
    static = list(system.get("requires", ["setuptools>=40.8.0"]))
    backend = system.get("build-backend", "setuptools.build_meta:__legacy__")
    env_dir = os.path.join(work, "env")
    keep = previous.get(canon(name), [])
    done = pip("install", "--target", env_dir, "--ignore-installed", *static, constraints=keep)
    if done.returncode != 0:
        fail(f"{name} {version}: installing its build requirements {static} failed:\n" + done.stdout + done.stderr)

    def runner(cmd, cwd=None, extra_environ=None):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(extra_environ or {}, PYTHONPATH=env_dir, PATH=env_dir + "/bin:" + env.get("PATH", "/usr/bin:/bin"))
        subprocess.run(cmd, cwd=cwd, env=env, check=True)

    hooks = BuildBackendHookCaller(src, backend, system.get("backend-path"), runner=runner)
    try:
        dynamic = hooks.get_requires_for_build_wheel({})
    except Exception as e:
        fail(f"{name} {version}: its build backend ({backend}) failed to say what it needs: {type(e).__name__}: {e}")
    wanted = static + [d for d in dynamic if d not in static]
    pins = []
    if wanted:
        done = pip("install", "--dry-run", "--ignore-installed", "--report", "/work/build-report.json", *wanted,
                   constraints=keep)
        if done.returncode != 0:
            fail(f"{name} {version}: choosing wheels for its build requirements {wanted} failed:\n"
                 + done.stdout + done.stderr)
        for b in json.load(open("/work/build-report.json")).get("install", []):
            binfo = b.get("download_info", {})
            pins.append({"name": canon(b["metadata"]["name"]), "version": b["metadata"]["version"],
                         "url": binfo.get("url", ""),
                         "sha256": binfo.get("archive_info", {}).get("hashes", {}).get("sha256", "")})
    out[canon(name)] = {"version": version, "requires": wanted, "pins": pins}
    shutil.rmtree(work, ignore_errors=True)
json.dump(out, open("/work/sources.json", "w"), indent=1)
'''


# --- build time: one step per sdist ---------------------------------------------------------------------------------

# Unpacks the sdist (tar or zip) to argv[2], its single top folder becoming that folder.
_UNPACK_PY = ("import os, sys, tarfile, zipfile\n"
              "src, dest = sys.argv[1:]\n"
              "tmp = dest + '.unpack'\n"
              "if zipfile.is_zipfile(src):\n"
              "    zipfile.ZipFile(src).extractall(tmp)\n"
              "else:\n"
              "    tarfile.open(src).extractall(tmp, **({'filter': 'data'} if hasattr(tarfile, 'data_filter') "
              "else {}))\n"
              "entries = os.listdir(tmp)\n"
              "one = len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0]))\n"
              "os.rename(os.path.join(tmp, entries[0]) if one else tmp, dest)\n")

PIP_FLAGS = "--isolated --no-index --no-cache-dir --disable-pip-version-check --no-input"
INSTALL_FLAGS = f"{PIP_FLAGS} --root-user-action=ignore --no-deps --no-warn-script-location"


def build_step(name: str, version: str, sdist: str, pip: str, wheels_dir: str, build_dir: str,
               requirements: str | None) -> str:
    """The body of one build step: build ``sdist`` (in ``wheels_dir``) and install the wheel it gives.

    ``pip`` is the locked pip (``.../pip-X.whl/pip``); ``requirements`` the hash-pinned build requirements
    in ``build_dir`` (None when the package needs none).
    """
    q = shlex.quote
    src = f"{SRC_ROOT}/{name}-{version}"
    lines = [
        f"src={q(src)} env={BUILD_ENV} out={WHEEL_OUT}",
        f'rm -rf {SRC_ROOT} "$env" "$out" && mkdir -p {SRC_ROOT} "$out"',
        f'python3 -c {q(_UNPACK_PY)} {q(f"{wheels_dir}/{sdist}")} "$src"',
        # The build environment: a venv without the image's site-packages (pip's own build isolation
        # makes one at a random path, which compiled objects can then hold).
        'python3 -m venv --without-pip "$env"',
    ]
    if requirements:
        lines.append(f'"$env/bin/python" {q(pip)} install {INSTALL_FLAGS} --find-links {q(build_dir)} '
                     f'--require-hashes --quiet -r {q(f"{build_dir}/{requirements}")}')
    prefix = "-ffile-prefix-map=$src=."
    lines += [
        'cd "$src"',
        f'CFLAGS="${{CFLAGS:+$CFLAGS }}{prefix}" CXXFLAGS="${{CXXFLAGS:+$CXXFLAGS }}{prefix}" '
        f'PATH="$env/bin:$PATH" "$env/bin/python" {q(pip)} wheel {PIP_FLAGS} --no-deps --no-build-isolation '
        '--wheel-dir "$out" .',
        "cd /",
        # By name from a folder, as the locked wheels are: no direct_url.json naming a path of this build.
        f'python3 {q(pip)} install {INSTALL_FLAGS} --find-links "$out" --break-system-packages '
        f" {q(f'{name}=={version}')}",
        f'rm -rf {SRC_ROOT} "$env" "$out"',
    ]
    return "\n".join(lines) + "\n"
