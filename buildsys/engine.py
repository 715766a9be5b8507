"""The docker engine: the one module that imports ``docker``.

Everything else talks to docker through ``Engine``; docker's exceptions are
translated here: a transport failure is ``EngineUnavailable`` (exit 4), a
refused operation is ``EngineError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import docker
import docker.errors
import requests.exceptions

from buildsys.errors import BuildsysError, EngineUnavailable

_TRANSPORT = (docker.errors.DockerException, requests.exceptions.RequestException)


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
        except _TRANSPORT as e:
            raise _translate("loading an image", e) from e

    def has_image(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        except _TRANSPORT as e:
            raise _translate(f"inspecting {ref}", e) from e
        return True

    def tag(self, image_id: str, repository: str, tag: str = "latest") -> None:
        try:
            self.client.images.get(image_id).tag(repository, tag)
        except _TRANSPORT as e:
            raise _translate(f"tagging {image_id} as {repository}:{tag}", e) from e

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

    def run(self, image: str, command: Sequence[str] | str, *, env: Mapping[str, str] | None = None,
            user: str | None = None, network: str = "none", mounts: Iterable[tuple[str, str, bool]] = (),
            hostname: str | None = None, workdir: str | None = None,
            entrypoint: Sequence[str] | None = None) -> RunResult:
        """Run a command to completion in a fresh container, then remove it.

        ``mounts`` are (host path, container path, read_only) bind mounts.
        """
        volumes = {src: {"bind": dst, "mode": "ro" if ro else "rw"} for src, dst, ro in mounts}
        container: Any = None
        try:
            container = self.client.containers.create(
                image, command=command if isinstance(command, str) else list(command),
                environment=dict(env or {}), user=user, network_mode=network, volumes=volumes,
                hostname=hostname, working_dir=workdir, entrypoint=list(entrypoint) if entrypoint else None,
                tty=False, stdin_open=False)
            container.start()
            status = container.wait()
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
            return RunResult(exit_code=int(status.get("StatusCode", 1)), output=output)
        except _TRANSPORT as e:
            raise _translate(f"running {command!r} in {image}", e) from e
        finally:
            if container is not None:
                with contextlib.suppress(*_TRANSPORT):
                    container.remove(force=True)


def _translate(what: str, e: Exception) -> BuildsysError:
    if isinstance(e, docker.errors.APIError):
        return EngineError(f"docker: {what} failed: {e.explanation or e}")
    return EngineUnavailable(f"{what}: {_short(e)}")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
