"""The docker engine: the one module that imports ``docker``.

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
from typing import IO, Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from buildsys.errors import BuildsysError, EngineUnavailable

# Every build container carries it, so one left by a killed run can be found and removed.
BUILD_LABEL = "io.buildsys.build"

_TRANSPORT = (docker.errors.DockerException, requests.exceptions.RequestException)

T = TypeVar("T")


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


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    output: str


class Engine:
    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, timeout: int = 600) -> Engine:
        """Connect using DOCKER_HOST and friends; exit 4 when nobody answers."""
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except _TRANSPORT as e:
            raise EngineUnavailable(_short(e)) from e
        return cls(client)

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
        )

    def load(self, archive: IO[bytes] | bytes) -> None:
        """``docker load`` of a docker-archive tar (a stream is sent as it is read)."""
        try:
            self.client.images.load(archive)
        except docker.errors.ImageLoadError as e:  # the engine answered: it refused the archive
            raise EngineError(f"docker load refused the image: {_short(e)}",
                              "the image in the store may be damaged: run `buildsys build --no-cache` "
                              "for the recipe (run with -v for details)") from e
        except _TRANSPORT as e:
            raise _translate("loading an image", e) from e

    def load_stream(self, produce: Callable[[IO[bytes]], T]) -> T:
        """``docker load`` of an archive that ``produce`` writes while docker reads it; return what it returns.

        No temporary archive and no second pass over the bytes: ``produce`` runs in
        a thread and its writes go to docker as they come (a bounded queue keeps
        at most a few MB in flight). An error of ``produce`` wins over docker's
        complaint about the archive it then cut short.
        """
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
            self.load(body())  # type: ignore[arg-type]
        except BaseException:
            if "error" not in outcome:
                raise
        finally:
            stop.set()
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]  # type: ignore[no-any-return]

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
                  user: str | None = None, workdir: str | None = None) -> Iterator[Container]:
        """A created (not started) container, removed on exit whatever happens.

        ``entrypoint`` replaces the image's (empty: none, ``command`` runs as is);
        ``user``/``workdir`` default to the image's; ``mounts`` are (host path,
        container path, read_only) bind mounts. Every container carries the owner
        label, so one left by a killed run is found and removed later.
        """
        volumes = {src: {"bind": dst, "mode": "ro" if ro else "rw"} for src, dst, ro in mounts}
        try:
            c = self.client.containers.create(
                image, command=list(command), entrypoint=list(entrypoint), environment=dict(env or {}), user=user,
                network_mode=network, volumes=volumes, hostname=hostname, working_dir=workdir,
                labels={BUILD_LABEL: _owner()}, tty=False, stdin_open=False)
        except _TRANSPORT as e:
            raise _translate(f"creating a container of {image}", e) from e
        try:
            yield Container(self, c)
        finally:
            with contextlib.suppress(*_TRANSPORT):
                c.remove(force=True)

    def run(self, image: str, command: Sequence[str], **options: Any) -> RunResult:
        """Run a command to completion in a fresh container (``container``'s options), then remove it."""
        with self.container(image, command, **options) as c:
            return c.run()

    def remove_stale_containers(self) -> int:
        """Remove build containers whose buildsys process is gone (killed); return how many.

        Only containers made on this host by a process that no longer runs: an
        exited container of a live run is about to be read, never removed.
        """
        try:
            found = self.client.containers.list(all=True, filters={"label": BUILD_LABEL})
            stale = [c for c in found if _orphaned(c.labels.get(BUILD_LABEL, ""))]
            for c in stale:
                c.remove(force=True)
        except _TRANSPORT as e:
            raise _translate("removing stale build containers", e) from e
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


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _orphaned(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _translate(what: str, e: Exception) -> BuildsysError:
    if isinstance(e, docker.errors.APIError):
        return EngineError(f"docker: {what} failed: {e.explanation or e}")
    return EngineUnavailable(f"{what}: {_short(e)}")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
