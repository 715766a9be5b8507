"""The docker engine: the one module that imports ``docker`` (``engine_probe`` asks one read-only question without it).

Everything else talks to docker through ``Engine``; docker's exceptions are
translated here: a transport failure is ``EngineUnavailable`` (exit 4), a
refused operation is ``EngineError``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from buildsys.core.errors import BuildsysError, EngineUnavailable
from buildsys.core.store import pid_alive
from buildsys.engine.sshrelay import SshRelay

if TYPE_CHECKING:
    import docker
    import docker.errors
    import docker.types

# Every build container carries it, so one left by a killed run can be found and removed.
BUILD_LABEL = "io.buildsys.build"

# What a transport failure looks like; filled by _load_sdk() with docker's and requests' exceptions.
_TRANSPORT: tuple[type[Exception], ...] = ()


def _load_sdk() -> None:
    """Import the docker SDK on the first ``Engine``: it costs ~0.2 s, which a no-op build (which
    imports this module for its types and errors) never pays. Every use of ``docker.*`` below runs
    on an ``Engine``, so after this."""
    global docker, _TRANSPORT
    import docker
    import docker.errors
    import docker.types
    import requests.exceptions

    _TRANSPORT = (docker.errors.DockerException, requests.exceptions.RequestException)

T = TypeVar("T")

# The docker SDK's base_url for an engine reached through a local socket (unix, Windows' named pipe);
# tcp:// gives http(s)://HOST:PORT and ssh:// gives http+docker://ssh.
_LOCAL_BASE_URLS = ("http+docker://localhost", "http+docker://localnpipe")


class EngineError(BuildsysError):
    """The engine refused an operation."""


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str
    os: str
    arch: str
    storage_driver: str
    root_dir: str
    runtimes: tuple[str, ...] = ()
    default_runtime: str = ""
    cdi_spec_dirs: tuple[str, ...] = ()  # docker >= 25 with CDI enabled; empty otherwise
    host: str = ""  # where the client talks to (DOCKER_HOST or the local socket)


@dataclass(frozen=True)
class GpuRequest:
    """One docker device request, as ``--gpus`` makes it: all (count -1), N devices, or these IDs."""

    count: int | None = -1
    device_ids: tuple[str, ...] = ()
    capabilities: tuple[tuple[str, ...], ...] = (("gpu",),)
    driver: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a run/up container is made of: plain data, planned elsewhere (``buildsys.use.run``)."""

    image: str
    command: tuple[str, ...] | None = None  # None: the image's cmd
    entrypoint: tuple[str, ...] | None = None  # None: the image's entrypoint
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    workdir: str | None = None
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (host path, container path, read_only)
    ports: tuple[tuple[str, int, int], ...] = ()  # (host ip or "", host port, container port)
    gpus: tuple[GpuRequest, ...] = ()
    network: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    init: bool = True
    tty: bool = False
    auto_remove: bool = False


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    output: str


class Engine:
    def __init__(self, client: docker.DockerClient, *, remote: bool | None = None) -> None:
        _load_sdk()
        self.client = client
        self._remote = remote
        self._host: str | None = None  # DOCKER_HOST, when the SDK talks to a relay of it

    @classmethod
    def connect(cls, timeout: int = 600) -> Engine:
        """Connect using DOCKER_HOST and friends; exit 4 when nobody answers.

        ``ssh://`` goes through the ssh client, as the docker CLI does (``sshrelay``).
        """
        _load_sdk()
        host = os.environ.get("DOCKER_HOST", "")
        relay = SshRelay(host) if host.startswith("ssh://") else None
        try:
            if relay is not None:
                client = docker.DockerClient(base_url=f"unix://{relay.path}", timeout=timeout)
            else:
                client = docker.from_env(timeout=timeout)
            client.ping()
        except _TRANSPORT as e:
            said = f" (ssh: {relay.errors[-1]})" if relay is not None and relay.errors else ""
            if relay is not None:
                relay.close()
            raise EngineUnavailable(_short(e) + said) from e
        engine = cls(client, remote=True if relay is not None else None)
        engine._host = host if relay is not None else None
        return engine

    @property
    def is_remote(self) -> bool:
        """Whether the engine may be on another machine (``DOCKER_HOST=tcp://`` or ``ssh://``): then it
        cannot see this machine's files, so nothing of this host's filesystem is mounted into a build
        container or read from the engine's storage; only the local socket (unix, npipe) is taken as here."""
        if self._remote is not None:
            return self._remote
        return str(getattr(self.client.api, "base_url", "")) not in _LOCAL_BASE_URLS

    def info(self) -> EngineInfo:
        try:
            v = self.client.version()
            i = self.client.info()
        except _TRANSPORT as e:
            raise _translate("asking for the engine's version", e) from e
        return EngineInfo(
            version=v.get("Version", "?"),
            api_version=v.get("ApiVersion", "?"),
            os=v.get("Os", "?"),
            arch=v.get("Arch", "?"),
            storage_driver=i.get("Driver", "?"),
            root_dir=i.get("DockerRootDir", "?"),
            runtimes=tuple(sorted(i.get("Runtimes") or {})),
            default_runtime=i.get("DefaultRuntime", ""),
            cdi_spec_dirs=tuple(i.get("CDISpecDirs") or ()),
            host=self._host or str(getattr(self.client.api, "base_url", "")),
        )

    def load(self, archive: IO[bytes] | bytes) -> None:
        """``docker load`` of a docker-archive tar (a stream is sent as it is read)."""
        try:
            self.client.images.load(archive)
        except docker.errors.ImageLoadError as e:  # the engine answered: it refused the archive
            raise EngineError(f"docker load refused the image: {_short(e)}",
                              "the engine refused the layers it was sent (run with -v for docker's own words); "
                              "if the image was built here, `buildsys build --no-cache RECIPE` rebuilds it") from e
        except _TRANSPORT as e:
            raise _translate("loading an image", e) from e

    def load_stream(self, produce: Callable[[IO[bytes]], T]) -> T:
        """``docker load`` of an archive that ``produce`` writes while docker reads it; return what it returns.

        No temporary archive and no second pass over the bytes: ``produce`` runs in
        a thread and its writes go to docker as they come (a bounded queue keeps
        at most a few MB in flight). An error of ``produce`` wins over docker's
        complaint about the archive it then cut short.
        """
        return self._send_stream(produce, self.load)

    def _send_stream(self, produce: Callable[[IO[bytes]], T], send: Callable[[Any], object]) -> T:
        """Hand ``send`` the bytes ``produce`` writes, as an iterator of chunks, while it writes them."""
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        stop = threading.Event()
        outcome: dict[str, Any] = {}

        def put(item: bytes | None) -> None:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    chunks.put(item, timeout=0.2)
                    return
            raise _Cancelled

        def run() -> None:
            try:
                outcome["result"] = produce(_QueueSink(put))  # type: ignore[arg-type]
            except _Cancelled:
                pass
            except BaseException as e:  # handed to the caller's thread below
                outcome["error"] = e
            with contextlib.suppress(_Cancelled):
                put(None)

        def body() -> Iterator[bytes]:
            while (chunk := chunks.get()) is not None:
                yield chunk

        worker = threading.Thread(target=run, name="buildsys-load", daemon=True)
        worker.start()
        try:
            send(body())
        except BaseException:
            if "error" not in outcome:
                raise
        finally:
            stop.set()
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        result: T = outcome["result"]
        return result

    def has_image(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        except _TRANSPORT as e:
            raise _translate(f"inspecting {ref}", e) from e
        return True

    def tag(self, image_id: str, repository: str, tag: str = "latest") -> str | None:
        """Point ``repository:tag`` at ``image_id``; return the image it pointed at before, if any."""
        previous = self.image_id(f"{repository}:{tag}")
        if previous == image_id:
            return previous
        try:
            self.client.images.get(image_id).tag(repository, tag)
        except _TRANSPORT as e:
            raise _translate(f"tagging {image_id} as {repository}:{tag}", e) from e
        return previous

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self.client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return None
        except _TRANSPORT as e:
            raise _translate(f"inspecting {ref}", e) from e

    def remove_image(self, ref: str) -> None:
        try:
            self.client.images.remove(ref, force=True)
        except docker.errors.ImageNotFound:
            pass
        except _TRANSPORT as e:
            raise _translate(f"removing {ref}", e) from e

    @contextlib.contextmanager
    def container(self, image: str, command: Sequence[str], *, entrypoint: Sequence[str] = (),
                  env: Mapping[str, str] | None = None, network: str = "none",
                  mounts: Iterable[tuple[str, str, bool]] = (), hostname: str | None = None,
                  user: str | None = None, workdir: str | None = None,
                  gpus: Sequence[GpuRequest] = (), namespaces: bool = False) -> Iterator[Container]:
        """A created (not started) container, removed on exit whatever happens.

        ``entrypoint`` replaces the image's (empty: none, ``command`` runs as is);
        ``user``/``workdir`` default to the image's; ``mounts`` are (host path,
        container path, read_only) bind mounts. Every container carries the owner
        label, so one left by a killed run is found and removed later.
        ``namespaces``: the command may make PID and mount namespaces (CAP_SYS_ADMIN, and no
        AppArmor profile where the host has one, whose docker-default denies mounting a
        ``/proc``); a build's runner takes it and drops it before any step (build/steps.py).
        """
        privileges: dict[str, Any] = ({"cap_add": ["SYS_ADMIN"], "security_opt": ["apparmor=unconfined"]}
                                      if namespaces else {})
        mounts = list(mounts)
        remote = self.is_remote
        # A remote engine cannot see this host's folders: they are copied into the container before it
        # starts (put_archive), and the writable ones copied back once it is done.
        volumes = {} if remote else {src: {"bind": dst, "mode": "ro" if ro else "rw"} for src, dst, ro in mounts}
        try:
            c = self.client.containers.create(
                image, command=list(command), entrypoint=list(entrypoint), environment=dict(env or {}), user=user,
                network_mode=network, volumes=volumes, hostname=hostname, working_dir=workdir,
                labels={BUILD_LABEL: _owner()}, tty=False, stdin_open=False,
                device_requests=_device_requests(gpus), **privileges)
        except _TRANSPORT as e:
            raise _translate(f"creating a container of {image}", e) from e
        try:
            if remote:
                for src, dst, _ in mounts:
                    self._copy_in(c.id, Path(src), dst)
            yield Container(self, c)
            if remote:
                for src, dst, ro in mounts:
                    if not ro:
                        self._copy_out(c.id, dst, Path(src))
        finally:
            with contextlib.suppress(*_TRANSPORT):
                c.remove(force=True)

    def _copy_in(self, container_id: str, src: Path, dst: str) -> None:
        """``src`` (a folder or a file of this host) at ``dst`` in a created container: a tar streamed as it
        is written, so the inputs of a big layer need neither memory nor a temporary copy."""
        import tarfile

        def produce(sink: IO[bytes]) -> None:
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tf:
                tf.add(src, arcname=dst.strip("/"))

        try:
            self._send_stream(produce, lambda body: self.client.api.put_archive(container_id, "/", body))
        except _TRANSPORT as e:
            raise _translate(f"copying {src} into container {container_id[:12]} at {dst}", e) from e

    def _copy_out(self, container_id: str, src: str, dst: Path) -> None:
        """The folder ``src`` of a container back into ``dst`` on this host (a writable mount of a remote engine).

        Extracted with tarfile's ``data`` filter: no links out of ``dst``, no devices, no absolute paths.
        """
        import tarfile
        import tempfile

        with tempfile.TemporaryFile() as buf:
            try:
                stream, _ = self.client.api.get_archive(container_id, src)
                for chunk in stream:
                    buf.write(chunk)
            except _TRANSPORT as e:
                raise _translate(f"copying {src} out of container {container_id[:12]}", e) from e
            buf.seek(0)
            top = src.rstrip("/").rsplit("/", 1)[-1]
            with tarfile.open(fileobj=buf) as tf:
                members = []
                for m in tf.getmembers():
                    name = m.name.split("/", 1)
                    if name[0] == top and len(name) == 2 and name[1]:
                        m.name = name[1]
                        members.append(m)
                tf.extractall(dst, members=members, filter="data")

    # -- containers people use (run / up), as opposed to build containers ----

    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) a container from ``spec``; return its id.

        GPU requests go as docker device requests (``--gpus``); the engine
        checks them only at start, so a created container shows what was asked.
        """
        # Mount objects, not `-v` strings: one source may go to several targets (a dict keyed by source
        # kept only the last), and a path may hold ':' (docker's "invalid volume specification").
        mounts = [docker.types.Mount(target=dst, source=src, type="bind", read_only=ro) for src, dst, ro in spec.mounts]
        ports: dict[str, tuple[str, int]] = {f"{c}/tcp": (ip or "0.0.0.0", h) for ip, h, c in spec.ports}
        try:
            c = self.client.containers.create(
                spec.image, command=list(spec.command) if spec.command is not None else None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                environment=dict(spec.env), user=spec.user, working_dir=spec.workdir, mounts=mounts,
                ports=ports, device_requests=_device_requests(spec.gpus), network=spec.network,
                labels=dict(spec.labels), name=spec.name, init=spec.init, tty=spec.tty, stdin_open=spec.tty,
                auto_remove=spec.auto_remove, detach=True)
        except docker.errors.ImageNotFound as e:
            raise EngineError(f"docker has no image {spec.image}",
                              "build it: `buildsys build RECIPE` loads it into docker") from e
        except _TRANSPORT as e:
            raise _translate(f"creating a container of {spec.image}", e) from e
        return str(c.id)

    def image_config(self, ref: str) -> dict[str, Any]:
        """The ``Config`` of an image docker holds (Entrypoint, Cmd, Env, User...)."""
        try:
            return dict(self.client.api.inspect_image(ref).get("Config") or {})
        except docker.errors.ImageNotFound as e:
            raise EngineError(f"docker has no image {ref}", "build it: `buildsys build RECIPE`") from e
        except _TRANSPORT as e:
            raise _translate(f"inspecting image {ref}", e) from e

    def inspect(self, container_id: str) -> dict[str, Any]:
        """docker inspect of a container (its HostConfig shows what was asked of the engine)."""
        try:
            return dict(self.client.api.inspect_container(container_id))
        except docker.errors.NotFound as e:
            raise EngineError(f"no container {container_id[:12]}") from e
        except _TRANSPORT as e:
            raise _translate(f"inspecting container {container_id[:12]}", e) from e

    def read_file(self, container_id: str, path: str) -> bytes | None:
        """A file of a (created) container's filesystem, or None when it has none."""
        import tarfile
        import tempfile

        try:
            stream, _ = self.client.api.get_archive(container_id, path)
            with tempfile.TemporaryFile() as buf:
                for chunk in stream:
                    buf.write(chunk)
                buf.seek(0)
                with tarfile.open(fileobj=buf) as tf:
                    member = tf.next()
                    f = tf.extractfile(member) if member is not None else None
                    return f.read() if f is not None else None
        except docker.errors.NotFound:
            return None
        except _TRANSPORT as e:
            raise _translate(f"reading {path} of container {container_id[:12]}", e) from e

    def put_files(self, container_id: str, archive: bytes) -> None:
        """Extract a tar (paths relative to /) into a created container, before it starts."""
        try:
            self.client.api.put_archive(container_id, "/", archive)
        except _TRANSPORT as e:
            raise _translate(f"writing files into container {container_id[:12]}", e) from e

    def start(self, container_id: str) -> None:
        try:
            self.client.api.start(container_id)
        except _TRANSPORT as e:
            raise _translate(f"starting container {container_id[:12]}", e) from e

    def start_and_stream(self, container_id: str, on_stdout: Callable[[bytes], None],
                         on_stderr: Callable[[bytes], None]) -> None:
        """Start a created container and copy its stdout/stderr until it exits.

        Attached before the start, as ``docker run`` does: attaching to a container
        that already exited can wait for ever on this engine (seen with docker 20.10).
        """
        try:
            output = self.client.api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True,
                                            demux=True)
            self.client.api.start(container_id)
            for out, err in output:
                if out:
                    on_stdout(out)
                if err:
                    on_stderr(err)
        except _TRANSPORT as e:
            raise _translate(f"running container {container_id[:12]}", e) from e

    def interact(self, container_id: str, fd_in: int, fd_out: int) -> None:
        """Join a TTY container to this terminal (raw mode, resized with it) until it exits; then start it."""
        import select
        import signal
        import termios
        import tty

        def resize(*_: object) -> None:
            with contextlib.suppress(OSError, *_TRANSPORT):
                rows, cols = os.get_terminal_size(fd_out)
                self.client.api.resize(container_id, height=rows, width=cols)

        try:
            sock = self.client.api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                                       "stream": 1, "logs": 1})
        except _TRANSPORT as e:
            raise _translate(f"attaching to container {container_id[:12]}", e) from e
        raw = getattr(sock, "_sock", sock)
        saved = termios.tcgetattr(fd_in)
        old_handler = signal.signal(signal.SIGWINCH, resize)
        try:
            tty.setraw(fd_in)
            self.start(container_id)
            resize()
            while True:
                ready, _, _ = select.select([raw, fd_in], [], [])
                if raw in ready:
                    data = raw.recv(65536)
                    if not data:
                        break
                    os.write(fd_out, data)
                if fd_in in ready:
                    data = os.read(fd_in, 65536)
                    if not data:
                        break
                    raw.sendall(data)
        finally:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, old_handler)
            with contextlib.suppress(OSError):
                sock.close()

    def wait(self, container_id: str) -> int:
        """The exit code of a container, once it has exited."""
        try:
            return int(self.client.api.wait(container_id).get("StatusCode", 1))
        except docker.errors.NotFound:
            return 1  # removed under us (auto-remove raced the wait): only when it was already gone
        except _TRANSPORT as e:
            raise _translate(f"waiting for container {container_id[:12]}", e) from e

    def logs(self, container_id: str, tail: int = 40) -> str:
        try:
            return bytes(self.client.api.logs(container_id, tail=tail)).decode(errors="replace")
        except _TRANSPORT:
            return ""

    def is_running(self, container_id: str) -> bool:
        try:
            return bool(self.client.api.inspect_container(container_id)["State"]["Running"])
        except docker.errors.NotFound:
            return False
        except _TRANSPORT as e:
            raise _translate(f"inspecting container {container_id[:12]}", e) from e

    def remove(self, container_id: str) -> None:
        """Stop and remove a container; one already gone, or being removed by someone else, is fine."""
        try:
            self.client.api.remove_container(container_id, force=True)
        except _TRANSPORT as e:
            if not _gone(e):  # auto-remove, or a neighbour's sweep, got there first
                raise _translate(f"removing container {container_id[:12]}", e) from e

    def labelled(self, label: str, value: str | None = None) -> list[tuple[str, str, str]]:
        """(id, name, state) of every container, running or not, that was created with ``label`` (= ``value``).

        A container inherits its image's labels, so carrying the label proves nothing: only
        a container whose value differs from its image's (or whose image has none) had it
        set when it was created. An image that sets io.buildsys.* labels (recipes may not;
        a registry base might) cannot make anyone's container look like one of ours.
        """
        flt = f"{label}={value}" if value is not None else label
        try:
            found = self.client.api.containers(all=True, filters={"label": flt})
        except _TRANSPORT as e:
            raise _translate(f"listing containers labelled {flt}", e) from e
        images: dict[str, dict[str, str] | None] = {}
        return [(c["Id"], (c.get("Names") or ["?"])[0].lstrip("/"), c.get("State", "?")) for c in found
                if label in self._own_labels(c.get("Labels") or {}, str(c.get("ImageID", "")), images)]

    def created_labels(self, container_id: str) -> dict[str, str]:
        """The labels a container was created with (its image's inherited ones left out); {} when it is gone."""
        try:
            info = self.client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return {}
        except _TRANSPORT as e:
            raise _translate(f"inspecting container {container_id[:12]}", e) from e
        return self._own_labels(info.get("Config", {}).get("Labels") or {}, str(info.get("Image", "")), {})

    def _own_labels(self, labels: Mapping[str, str], image: str,
                    cache: dict[str, dict[str, str] | None]) -> dict[str, str]:
        if image not in cache:
            try:
                cache[image] = dict(self.client.api.inspect_image(image).get("Config", {}).get("Labels") or {})
            except docker.errors.NotFound:
                cache[image] = None  # its image is gone: what was inherited cannot be told apart
            except _TRANSPORT as e:
                raise _translate(f"inspecting image {image[:19]}", e) from e
        inherited = cache[image]
        if inherited is None:
            return {}
        return {k: v for k, v in labels.items() if inherited.get(k) != v}

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        """A bridge network named ``name`` carrying ``labels``: made, or reused when one with them is left over.

        A network of that name without those labels is someone else's: refused, never joined.
        """
        try:
            if not (found := self._network(name)):
                self.client.api.create_network(name, driver="bridge", labels=dict(labels), check_duplicate=True)
                return
        except _TRANSPORT as e:
            raise _translate(f"creating network {name}", e) from e
        if not _has_labels(found, labels):
            raise EngineError(f"a docker network named {name} exists and was not made by buildsys for this",
                              f"remove or rename it (`docker network rm {name}`) if it is not used")

    def remove_network(self, name: str, labels: Mapping[str, str]) -> bool:
        """Remove the network ``name`` when it carries ``labels`` and nobody else's container uses it.

        False when it stays (someone's container is still on it); one already gone is fine.
        """
        try:
            found = self._network(name)
            if found and _has_labels(found, labels):
                self.client.api.remove_network(found["Id"])
        except _TRANSPORT as e:
            if isinstance(e, docker.errors.APIError) and "active endpoints" in str(e):
                return False
            if not _gone(e):
                raise _translate(f"removing network {name}", e) from e
        return True

    def _network(self, name: str) -> dict[str, Any] | None:
        """The network named exactly ``name`` (docker's filter matches parts of names too)."""
        return next((n for n in self.client.api.networks(names=[name]) if n.get("Name") == name), None)

    def run(self, image: str, command: Sequence[str], **options: Any) -> RunResult:
        """Run a command to completion in a fresh container (``container``'s options), then remove it."""
        with self.container(image, command, **options) as c:
            return c.run()

    def remove_stale_containers(self, label: str = BUILD_LABEL) -> int:
        """Remove containers (build ones by default) whose buildsys process is gone (killed); return how many.

        Only containers that buildsys created (the owner label set at create, not
        inherited from the image: see ``labelled``), on this host, by a process that
        no longer runs: an exited container of a live run is about to be read, never
        removed. Two buildsys processes may sweep at once: one that the other is
        already removing, or has removed, is not an error.
        """
        try:
            found = self.client.api.containers(all=True, filters={"label": label})
        except _TRANSPORT as e:
            raise _translate("listing stale buildsys containers", e) from e
        images: dict[str, dict[str, str] | None] = {}
        stale = [c["Id"] for c in found if _orphaned(
            self._own_labels(c.get("Labels") or {}, str(c.get("ImageID", "")), images).get(label, ""))]
        for cid in stale:
            self.remove(cid)
        return len(stale)


class Container:
    """A build container: run once, then read its filesystem diff."""

    def __init__(self, engine: Engine, container: Any) -> None:
        self.engine = engine
        self._c = container

    @property
    def id(self) -> str:
        return str(self._c.id)

    def run(self, on_output: Callable[[str], None] | None = None) -> RunResult:
        """Start, stream the output line by line to ``on_output``, wait; return exit code and output."""
        lines: list[str] = []
        try:
            self._c.start()
            pending = ""
            for chunk in self._c.logs(stdout=True, stderr=True, stream=True, follow=True):
                pending += chunk.decode(errors="replace")
                *done, pending = pending.split("\n")
                for line in done:
                    lines.append(line)
                    if on_output:
                        on_output(line)
            if pending:
                lines.append(pending)
            status = self._c.wait()
        except _TRANSPORT as e:
            raise _translate("running a build container", e) from e
        return RunResult(exit_code=int(status.get("StatusCode", 1)), output="\n".join(lines))

    def upper_dir(self) -> Path | None:
        """The container's own filesystem diff on this host (overlay2), or None when not readable.

        Reading it costs what the layer holds, whatever the depth of the image
        below; ``docker save`` would rewrite every layer of the image instead.
        """
        if self.engine.is_remote:  # its storage is on another machine (or may be): export it instead
            return None
        try:
            data = self.engine.client.api.inspect_container(self.id)["GraphDriver"]
        except _TRANSPORT as e:
            raise _translate("inspecting a build container", e) from e
        if data.get("Name") != "overlay2":
            return None
        upper = Path(data.get("Data", {}).get("UpperDir", ""))
        return upper if upper.is_absolute() and os.access(upper, os.R_OK | os.X_OK) else None

    def commit(self) -> str:
        """A (temporary) image of the container's state; the caller removes it."""
        try:
            return str(self._c.commit().id)
        except _TRANSPORT as e:
            raise _translate("committing a container", e) from e

    def export(self, dst: IO[bytes]) -> None:
        """The container's whole filesystem as a tar (``docker export``): every engine and driver has it."""
        try:
            for chunk in self._c.export(chunk_size=1 << 20):
                dst.write(chunk)
        except _TRANSPORT as e:
            raise _translate("exporting a build container's filesystem", e) from e


class _Cancelled(Exception):
    """docker stopped reading: the producer of a streamed archive stops too."""


class _QueueSink:
    def __init__(self, put: Callable[[bytes | None], None]) -> None:
        self._put = put

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._put(bytes(data))  # the writer reuses its buffer
        return len(data)


def _device_requests(gpus: Sequence[GpuRequest]) -> list[docker.types.DeviceRequest] | None:
    """``--gpus`` as docker's device requests (the engine's GPU driver serves them at start)."""
    return [docker.types.DeviceRequest(count=g.count, device_ids=list(g.device_ids) or None,
                                       capabilities=[list(c) for c in g.capabilities], driver=g.driver)
            for g in gpus] or None


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = obj.get("Labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def _gone(e: Exception) -> bool:
    """docker's answer when someone else removed the thing first, or is removing it now (404, 409)."""
    if isinstance(e, docker.errors.NotFound):
        return True
    return isinstance(e, docker.errors.APIError) and e.status_code == 409 and (
        "in progress" in str(e) or "No such" in str(e))


def _orphaned(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def _translate(what: str, e: Exception) -> BuildsysError:
    if isinstance(e, docker.errors.APIError):
        return EngineError(f"docker: {what} failed: {e.explanation or e}")
    return EngineUnavailable(f"{what}: {_short(e)}")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
