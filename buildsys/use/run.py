"""``run``, ``up``, ``down``, ``compose``: use a built image as the seeds' users do.

Planning is plain data (``ContainerSpec``, a compose document) made from the
command line, the host user and the image; ``execute`` and ``start_up`` hand
it to the engine. The image is always the canonical one by its ID (the config
digest), never a tag that may have moved.

Identity: the container runs as the host user's UID:GID so that files written
to the mounted folder belong to that person. Before it starts, buildsys reads
the image's ``/etc/passwd`` and ``/etc/group`` and, when the UID (or GID) has
no entry there, writes one into the container's own layer, with a HOME made
for it (owned by the user, gone with the container). The shell then knows its
name, and Jupyter, pip ``--user`` and friends have a writable HOME. A UID the
image already knows (1000 is ``user`` in every bundled image) keeps its entry
and HOME.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import ipaddress
import os
import re
import secrets
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsys.build.builder import Builder
from buildsys.build.records import BuiltImage
from buildsys.core.errors import BuildsysError, ImageNotBuilt, UsageError
from buildsys.core.store import Store
from buildsys.engine import ContainerSpec, Engine, EngineError, GpuRequest
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.use.doctor import GpuUnavailable
from buildsys.use.mounts import CUDA_CACHE as CUDA_CACHE  # planned in use.mounts; importable from here as before
from buildsys.use.mounts import check_folder as check_folder
from buildsys.use.mounts import check_volumes, plan_mounts
from buildsys.use.mounts import parse_volume as parse_volume

RUN_LABEL = "io.buildsys.run"  # value: the recipe; every `buildsys run` container
OWNER_LABEL = "io.buildsys.owner"  # host:pid of the buildsys process that made it
UP_LABEL = "io.buildsys.up"  # value: the recipe; `up` containers and network, with FOLDER_LABEL
FOLDER_LABEL = "io.buildsys.folder"  # the folder `up` was run in: `down` there removes exactly these
ROLE_LABEL = "io.buildsys.role"  # jupyter | tensorboard
# A recipe may not set io.buildsys.* labels (buildsys.model.recipe), and cleanup believes a label only
# when it was set at create, not inherited from the image (Engine.labelled).

JUPYTER_PORT = 8888
TENSORBOARD_PORT = 6006


class RunError(BuildsysError):
    """A container could not be run (exit 1)."""


class PortInUse(RunError):
    def __init__(self, ip: str, port: int, flag: str) -> None:
        self.port = port
        super().__init__(f"port {port} is already in use on {ip or 'this host'}; nothing was started",
                         f"pick another: {flag}, or stop what listens there (`ss -ltnp 'sport = :{port}'`)")


class AlreadyUp(RunError):
    def __init__(self, recipe: str, folder: Path, names: Sequence[str]) -> None:
        super().__init__(f"'{recipe}' is already up for {folder}: {', '.join(names)}",
                         f"stop it first: `buildsys down {recipe}` (in {folder})")


class ServiceFailed(RunError):
    def __init__(self, what: str, why: str, logs: str) -> None:
        tail = "\n".join(f"  | {ln}" for ln in logs.rstrip().splitlines()[-20:])
        super().__init__(f"{what} did not come up: {why}; both containers were removed"
                         + (f"\n  --- last lines of its log ---\n{tail}" if tail else ""),
                         "run `buildsys run RECIPE -- CMD` to try the command by hand")


# -- parsing the command line ----------------------------------------------------


def parse_gpus(spec: str) -> GpuRequest:
    """``all``, ``N`` (that many GPUs) or ``device=ID[,ID]``, as ``docker run --gpus`` takes them."""
    value = spec.strip().strip('"').strip("'")
    if value == "all":
        return GpuRequest(count=-1)
    if value.isdigit():
        if int(value) < 1:
            raise UsageError(f"--gpus {spec}: ask for at least one GPU", "use --gpus all, --gpus 1 or --gpus device=0")
        return GpuRequest(count=int(value))
    if value.startswith("device="):
        ids = tuple(i.strip() for i in value.removeprefix("device=").split(","))
        if ids and all(re.fullmatch(r"[0-9]+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+", i) for i in ids):
            return GpuRequest(count=None, device_ids=ids)
    raise UsageError(f"--gpus {spec}: not a GPU request",
                     "use --gpus all, --gpus N (a count), or --gpus device=0,1 (indexes or GPU-UUIDs, "
                     "as `nvidia-smi -L` lists them)")


def parse_port(spec: str) -> tuple[str, int, int]:
    """``[IP:]HOST:CONTAINER`` -> (ip or "", host port, container port)."""
    parts = spec.rsplit(":", 2)
    if len(parts) == 2:
        parts = ["", *parts]
    if len(parts) == 3 and all(p.isdigit() and 0 < int(p) < 65536 for p in parts[1:]):
        return parts[0].strip("[]"), int(parts[1]), int(parts[2])
    raise UsageError(f"-p {spec}: not a port mapping", "use -p HOST:CONTAINER, e.g. -p 8888:8888 "
                                                      "(or -p 127.0.0.1:8888:8888)")


def check_ports_free(ports: Sequence[tuple[str, int, int]], flag: Callable[[int], str]) -> None:
    """Fail before anything starts when a host port is taken, or asked for twice (docker would fail half-way).

    The probe binds with SO_REUSEADDR, as docker's proxy (a Go listener) does: a port whose last connection
    is in TIME_WAIT (`up` right after `down`) is free, one something listens on is not.
    """
    every = ("", "0.0.0.0")
    seen: list[tuple[str, int]] = []
    for ip, port, _ in ports:
        if any(p == port and (i == ip or i in every or ip in every) for i, p in seen):
            raise UsageError(f"host port {port} is asked for twice; nothing was started", flag(port))
        seen.append((ip, port))
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip or "0.0.0.0", port))
            except OSError as e:
                raise PortInUse(ip, port, flag(port)) from e


# -- the host user, and who they are inside the image ---------------------------


@dataclass(frozen=True)
class HostUser:
    uid: int
    gid: int
    name: str

    @classmethod
    def current(cls) -> HostUser:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = f"user{os.getuid()}"
        return cls(uid=os.getuid(), gid=os.getgid(), name=name)


@dataclass(frozen=True)
class Identity:
    """Who the host user is inside the image, and the files that make it so (None: the image knows them)."""

    user: str  # "uid:gid"
    name: str
    home: str
    files: bytes | None  # a tar to extract at / before the start


def identity(user: HostUser, passwd: bytes | None, group: bytes | None,
             mount_targets: Sequence[str] = ()) -> Identity:
    """The passwd/group entries and HOME for ``user`` in an image whose files are ``passwd``/``group``."""
    pw = [ln.split(":") for ln in (passwd or b"").decode(errors="replace").splitlines() if ln.count(":") >= 6]
    gr = [ln.split(":") for ln in (group or b"").decode(errors="replace").splitlines() if ln.count(":") >= 3]
    mine = next((e for e in pw if e[2] == str(user.uid)), None)
    add_passwd = add_group = b""
    if mine and mine[5] not in ("", "/", "/nonexistent"):
        name, home, make_home = mine[0], mine[5], False
    else:
        taken = {e[0] for e in pw}
        name = mine[0] if mine else (user.name if user.name not in taken and re.fullmatch(
            r"[a-z_][a-z0-9_.-]*", user.name) else f"user{user.uid}")
        home = f"/home/{name}"
        # HOME must not be a bind mount (nor inside one): it is created in the container's own layer.
        if any(home == t or home.startswith(t.rstrip("/") + "/") for t in mount_targets):
            home = f"/var/tmp/buildsys-home-{user.uid}"
        make_home = True
        if not mine:
            add_passwd = f"{name}:x:{user.uid}:{user.gid}:buildsys run:{home}:/bin/bash\n".encode()
    if not any(e[2] == str(user.gid) for e in gr):
        add_group = f"{name}:x:{user.gid}:\n".encode()
    if not (add_passwd or add_group or make_home):
        return Identity(f"{user.uid}:{user.gid}", name, home, None)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, old, extra in (("etc/passwd", passwd, add_passwd), ("etc/group", group, add_group)):
            if extra:
                base = old or b""
                data = base + (b"" if not base or base.endswith(b"\n") else b"\n") + extra
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
        if make_home:
            info = tarfile.TarInfo(home.lstrip("/"))
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, user.uid, user.gid
            tf.addfile(info)
    return Identity(f"{user.uid}:{user.gid}", name, home, buf.getvalue())


def cuda_cache_dir() -> Path:
    """The host user's CUDA kernel cache (``$XDG_CACHE_HOME/buildsys/cuda``): JIT-compiled kernels survive runs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "buildsys" / "cuda"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


# -- the image -------------------------------------------------------------------


def find_image(store: Store, graph: Graph, locks: dict[str, Lock], recipe: str, engine: Engine) -> BuiltImage:
    """The canonical image of ``recipe`` for its current locks, loaded into docker; builds nothing."""
    # `run` containers of a buildsys process that was killed (SIGKILL: no chance to remove them).
    engine.remove_stale_containers(label=OWNER_LABEL)
    builder = Builder(store, graph, locks, engine=engine, tag=False)
    image = builder.find(recipe)
    if image is None:
        raise ImageNotBuilt(recipe)
    builder.load(image.record)
    return image


def has_own_init(entrypoint: Sequence[str] | None) -> bool:
    """An image whose entrypoint is already an init (tini, dumb-init) needs no docker --init above it:
    tini then runs as a child and warns that it cannot reap zombies."""
    if not entrypoint:
        return False
    return Path(entrypoint[0]).name in ("tini", "tini-static", "dumb-init", "docker-init")


def read_identity_files(engine: Engine, image: str) -> tuple[bytes | None, bytes | None]:
    """The image's /etc/passwd and /etc/group, read from a created (never started) container."""
    cid = engine.create(ContainerSpec(image=image, command=("true",), entrypoint=(), network="none",
                                      labels=((OWNER_LABEL, _owner()),), init=False))
    try:
        return engine.read_file(cid, "/etc/passwd"), engine.read_file(cid, "/etc/group")
    finally:
        engine.remove(cid)


# -- run -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    recipe: str
    cwd: Path
    command: tuple[str, ...] = ()
    gpus: GpuRequest | None = None
    ports: tuple[tuple[str, int, int], ...] = ()
    volumes: tuple[tuple[str, str, bool], ...] = ()
    network: str | None = None
    tty: bool = False

    def __post_init__(self) -> None:
        # Before anything is created or started: a folder that would hide the image's system, two mounts on one path.
        check_folder(self.cwd)
        check_volumes(self.cwd, self.volumes)


def plan_run(image: str, opts: RunOptions, who: Identity, cuda_cache: Path, init: bool = True) -> ContainerSpec:
    """The container of ``buildsys run``: plain data, nothing started."""
    env = {"PYTHONUNBUFFERED": "1", "HOME": who.home, "USER": who.name, "LOGNAME": who.name,
           "CUDA_CACHE_PATH": CUDA_CACHE}
    if opts.tty:
        env["TERM"] = os.environ.get("TERM", "xterm")
    cwd = str(opts.cwd)
    mounts = plan_mounts(opts.cwd, cuda_cache, opts.volumes)
    return ContainerSpec(
        image=image, command=opts.command or None, env=tuple(sorted(env.items())), user=who.user, workdir=cwd,
        mounts=mounts, ports=opts.ports, gpus=(opts.gpus,) if opts.gpus else (), network=opts.network,
        labels=((OWNER_LABEL, _owner()), (RUN_LABEL, opts.recipe)), init=init, tty=opts.tty)


def mount_targets(opts: RunOptions) -> list[str]:
    return [t for _, t, _ in plan_mounts(opts.cwd, Path("/nonexistent"), opts.volumes)]


def execute(engine: Engine, spec: ContainerSpec, who: Identity,
            on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> int:
    """Create, give the user an identity, start, follow to the end; the container is removed whatever happens.

    Returns the container's exit code (docker gives 128+N for a signal N).
    """
    cid = engine.create(spec)
    try:
        if who.files:
            engine.put_files(cid, who.files)
        if spec.tty:
            engine.interact(cid, sys.stdin.fileno(), sys.stdout.fileno())
        else:
            engine.start_and_stream(cid, on_stdout, on_stderr)
        return engine.wait(cid)
    except EngineError as e:
        mapped = gpu_start_error(e, spec)
        if mapped is e:
            raise
        raise mapped from e
    finally:
        engine.remove(cid)


def gpu_start_error(e: EngineError, spec: ContainerSpec) -> BuildsysError:
    """docker's words for a GPU request it cannot serve, said as what is missing."""
    text = str(e)
    if spec.gpus and ("device driver" in text or "nvidia" in text.lower()):
        return GpuUnavailable(f"the engine refused the GPU request at start: {e.message}")
    return e


# -- up / down / compose ---------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    recipe: str
    cwd: Path
    port: int = JUPYTER_PORT
    tensorboard_port: int = TENSORBOARD_PORT
    gpus: GpuRequest | None = None
    bind: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.port == self.tensorboard_port:
            raise UsageError(f"--port and --tensorboard-port are both {self.port}; nothing was started",
                             "give each its own, e.g. --port 8888 --tensorboard-port 6006")
        if self.bind:
            try:
                ipaddress.ip_address(self.bind)
            except ValueError:
                raise UsageError(f"--bind {self.bind}: not an IP address",
                                 "use --bind 127.0.0.1 (this host only), ::1, or 0.0.0.0 (every interface)") from None
        check_folder(self.cwd)

    @property
    def url_host(self) -> str:
        """The host part of the URLs printed: loopback for "every interface", an IPv6 address in brackets."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.bind, self.bind)
        return f"[{host}]" if ":" in host else host


def new_token() -> str:
    return secrets.token_hex(24)


def up_labels(recipe: str, cwd: Path) -> tuple[tuple[str, str], ...]:
    return ((UP_LABEL, recipe), (FOLDER_LABEL, str(cwd)))


def container_name(recipe: str, cwd: Path, role: str) -> str:
    return f"{network_name(recipe, cwd)}-{role}"


def network_name(recipe: str, cwd: Path) -> str:
    """The pair's own network: TensorBoard (no authentication) answers nobody on docker's default bridge."""
    return f"buildsys-{recipe}-{hashlib.sha256(str(cwd).encode()).hexdigest()[:8]}"


def plan_up(image: str, opts: UpOptions, who: Identity, token: str, cuda_cache: Path,
            init: bool = True) -> list[ContainerSpec]:
    """JupyterLab and TensorBoard on the same folder (``runs/`` for TensorBoard's logs)."""
    cwd = str(opts.cwd)
    env = {"PYTHONUNBUFFERED": "1", "HOME": who.home, "USER": who.name, "LOGNAME": who.name,
           "CUDA_CACHE_PATH": CUDA_CACHE}
    labels = up_labels(opts.recipe, opts.cwd)
    mounts = plan_mounts(opts.cwd, cuda_cache, ())
    network = network_name(opts.recipe, opts.cwd)
    jupyter = ContainerSpec(
        image=image, command=("jupyter", "lab", "--ip=0.0.0.0", f"--port={JUPYTER_PORT}", "--no-browser",
                              f"--ServerApp.root_dir={cwd}",
                              # root on the host is root inside (its files stay its own); Jupyter wants it said
                              *(("--allow-root",) if who.user.startswith("0:") else ())),
        env=tuple(sorted({**env, "JUPYTER_TOKEN": token}.items())), user=who.user, workdir=cwd, mounts=mounts,
        ports=((opts.bind, opts.port, JUPYTER_PORT),), gpus=(opts.gpus,) if opts.gpus else (), network=network,
        labels=(*labels, (ROLE_LABEL, "jupyter")), name=container_name(opts.recipe, opts.cwd, "jupyter"), init=init)
    tensorboard = ContainerSpec(
        image=image, command=("tensorboard", f"--logdir={cwd}/runs", "--bind_all", f"--port={TENSORBOARD_PORT}"),
        env=tuple(sorted(env.items())), user=who.user, workdir=cwd, mounts=mounts,
        ports=((opts.bind, opts.tensorboard_port, TENSORBOARD_PORT),), network=network,
        labels=(*labels, (ROLE_LABEL, "tensorboard")), name=container_name(opts.recipe, opts.cwd, "tensorboard"),
        init=init)
    return [jupyter, tensorboard]


@dataclass(frozen=True)
class UpResult:
    jupyter_url: str
    tensorboard_url: str
    containers: tuple[str, ...]


def start_up(engine: Engine, specs: Sequence[ContainerSpec], who: Identity, opts: UpOptions, token: str,
             timeout: float = 120.0) -> UpResult:
    """Start both and wait until each answers over HTTP; on any failure remove both."""
    if mine := [name for _, name in _up_containers(engine, opts.recipe, opts.cwd)]:
        raise AlreadyUp(opts.recipe, opts.cwd, mine)
    check_ports_free([p for s in specs for p in s.ports],
                     lambda port: "--port N" if port == opts.port else "--tensorboard-port N")
    (opts.cwd / "runs").mkdir(exist_ok=True)
    host = opts.url_host
    jupyter_url = f"http://{host}:{opts.port}/lab?token={token}"
    tensorboard_url = f"http://{host}:{opts.tensorboard_port}/"
    network = network_name(opts.recipe, opts.cwd)
    ids: list[str] = []
    try:
        engine.ensure_network(network, dict(up_labels(opts.recipe, opts.cwd)))
        for spec in specs:
            cid = engine.create(spec)
            ids.append(cid)
            if who.files:
                engine.put_files(cid, who.files)
            try:
                engine.start(cid)
            except EngineError as e:
                mapped = gpu_start_error(e, spec)
                if mapped is e:
                    raise
                raise mapped from e
        checks = [(ids[0], "JupyterLab", f"http://{host}:{opts.port}/api/status?token={token}"),
                  (ids[1], "TensorBoard", tensorboard_url)]
        for cid, what, url in checks:
            _wait_http(engine, cid, what, url, timeout)
    except BaseException:
        for cid in ids:
            engine.remove(cid)
        engine.remove_network(network, dict(up_labels(opts.recipe, opts.cwd)))
        raise
    return UpResult(jupyter_url, tensorboard_url, tuple(ids))


def _wait_http(engine: Engine, cid: str, what: str, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    why = "no answer"
    while time.monotonic() < deadline:
        if not engine.is_running(cid):
            raise ServiceFailed(what, f"its container exited (code {engine.wait(cid)})", engine.logs(cid))
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
                why = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            why = str(getattr(e, "reason", e))
        time.sleep(0.5)
    raise ServiceFailed(what, f"no answer on {url.split('?')[0]} within {timeout:.0f}s ({why})", engine.logs(cid))


def _up_containers(engine: Engine, recipe: str, cwd: Path) -> list[tuple[str, str]]:
    """(id, name) of the containers ``up RECIPE`` made in ``cwd``: both labels set by buildsys, not inherited."""
    return [(cid, name) for cid, name, _ in engine.labelled(UP_LABEL, recipe)
            if engine.created_labels(cid).get(FOLDER_LABEL) == str(cwd)]


def down(engine: Engine, recipe: str, cwd: Path) -> list[str]:
    """Remove exactly the containers (and the network) that ``up RECIPE`` made in ``cwd``; return their names."""
    found = _up_containers(engine, recipe, cwd)
    for cid, _ in found:
        engine.remove(cid)
    engine.remove_network(network_name(recipe, cwd), dict(up_labels(recipe, cwd)))
    return sorted(name for _, name in found)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"

