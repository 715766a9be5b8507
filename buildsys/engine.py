"""The docker engine: the one module that imports ``docker``.

Everything else talks to docker through ``Engine``; docker's exceptions are
translated here into buildsys errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from buildsys.errors import EngineUnavailable


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str
    os: str
    arch: str
    storage_driver: str
    root_dir: str


class Engine:
    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, timeout: int = 600) -> Engine:
        """Connect using DOCKER_HOST and friends; exit 4 when nobody answers."""
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnavailable(_short(e)) from e
        return cls(client)

    def info(self) -> EngineInfo:
        try:
            v = self.client.version()
            i = self.client.info()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnavailable(_short(e)) from e
        return EngineInfo(
            version=v.get("Version", "?"),
            api_version=v.get("ApiVersion", "?"),
            os=v.get("Os", "?"),
            arch=v.get("Arch", "?"),
            storage_driver=i.get("Driver", "?"),
            root_dir=i.get("DockerRootDir", "?"),
        )


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
