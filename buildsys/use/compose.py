"""``buildsys compose``: the ``up`` pair as one Compose file that Compose v1 and v2 both accept.

Debian 12 ships Compose v1 (``docker-compose`` 1.29.2) and no ``docker compose``
plugin; Docker's own packages and newer distributions have v2. One file serves
both, written in the part of the Compose Specification that both read, each
choice checked with 1.29.2's own validation (``docker-compose config``):

- No top-level ``version`` and no ``name``: 1.29 reads a file without
  ``version`` as the Compose Specification (it reports 3.9), but a top-level
  ``name`` makes it take the file for the old format 1 and refuse it ("you're
  using the wrong Compose file version"). The project name goes on the command
  line instead (``-p``), in the commands the header prints.
- Bind mounts in the long syntax (``type: bind``, ``source``, ``target``): a
  path may hold ``:``.
- Ports in the short syntax, an IPv6 address in brackets: 1.29 refuses
  ``host_ip`` in the long one.
- GPUs as ``deploy.resources.reservations.devices`` (1.28 and later, and v2).
- ``$`` doubled in every string taken from a path or a name: compose
  interpolates ``${...}`` anywhere, so a folder named ``${JUPYTER_TOKEN}``
  would put the token into the command line. The token is the one reference.

Compose interpolates the whole file for every command, ``down`` included,
and neither version can require a variable for ``up`` alone: ``down`` needs
JUPYTER_TOKEN set too (to anything); the header says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from buildsys.build.builder import Builder
from buildsys.core.errors import ImageNotBuilt
from buildsys.core.store import Store
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock
from buildsys.use.run import (
    FOLDER_LABEL,
    ROLE_LABEL,
    HostUser,
    Identity,
    UpOptions,
    has_own_init,
    network_name,
    plan_up,
)

COMPOSE_LABEL = "io.buildsys.compose"  # value: the recipe (not io.buildsys.up: `buildsys down` leaves these be)


class Reference(str):
    """A string compose must interpolate (the token): the only one whose ``$`` is not doubled."""


TOKEN = Reference("${JUPYTER_TOKEN:?export JUPYTER_TOKEN first, a long random string}")


def compose(image: str, opts: UpOptions, user: HostUser, init: bool = True) -> dict[str, Any]:
    """The ``up`` pair as a Compose document (the token comes from the environment); ``$`` not yet escaped."""
    specs = plan_up(image, opts, Identity(f"{user.uid}:{user.gid}", user.name, "/tmp", None), TOKEN,
                    Path("/nonexistent"), init=init)
    services: dict[str, Any] = {}
    for spec in specs:
        role = dict(spec.labels)[ROLE_LABEL]
        env = {k: v for k, v in spec.env if k != "CUDA_CACHE_PATH"}
        labels = {COMPOSE_LABEL: opts.recipe, FOLDER_LABEL: str(opts.cwd), ROLE_LABEL: role}
        svc: dict[str, Any] = {
            "image": spec.image,
            "command": list(spec.command or ()),
            "user": spec.user,
            "working_dir": spec.workdir,
            "environment": env,
            "volumes": [{"type": "bind", "source": str(opts.cwd), "target": str(opts.cwd)}],
            "ports": [_port(ip, h, c) for ip, h, c in spec.ports],
            # The image's entrypoint may already be an init (tini in every bundled image): then none above it.
            "init": spec.init,
            "labels": labels,
        }
        if spec.gpus:
            g = spec.gpus[0]
            dev: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
            if g.device_ids:
                dev["device_ids"] = list(g.device_ids)
            else:
                dev["count"] = "all" if g.count == -1 else g.count
            svc["deploy"] = {"resources": {"reservations": {"devices": [dev]}}}
        services[role] = svc
    # Compose gives the project a network of its own (PROJECT_default): TensorBoard answers nobody else.
    return {"services": services}


def _port(ip: str, host: int, container: int) -> str:
    if not ip:
        return f"{host}:{container}"
    return f"[{ip}]:{host}:{container}" if ":" in ip else f"{ip}:{host}:{container}"


def escape(doc: Any) -> Any:
    """``$`` -> ``$$`` in every string but a ``Reference``: compose then passes it on literally."""
    if isinstance(doc, Reference):
        return str(doc)
    if isinstance(doc, str):
        return doc.replace("$", "$$")
    if isinstance(doc, dict):
        return {escape(k): escape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [escape(v) for v in doc]
    return doc


def project_name(recipe: str, cwd: Path) -> str:
    """Named for the recipe and the folder, as `up`'s containers are; only what both versions allow."""
    return re.sub(r"[^a-z0-9_-]", "_", network_name(recipe, cwd))


def compose_command() -> str:
    """How this machine starts a Compose file: ``docker compose`` (v2) when the plugin answers, else
    ``docker-compose`` (v1, Debian 12's), else ``docker compose`` (then neither is installed)."""
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0:
                return "docker compose"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "docker-compose" if shutil.which("docker-compose") else "docker compose"


def compose_file(store: Store, graph: Graph, locks: dict[str, Lock], opts: UpOptions, user: HostUser,
                 command: str | None = None) -> str:
    """The whole text ``buildsys compose`` prints: a header saying how to start and stop it, then the file."""
    builder = Builder(store, graph, locks, tag=False)
    image = builder.find(opts.recipe)
    if image is None:
        raise ImageNotBuilt(opts.recipe)
    image_id = image.record.config_digest
    entrypoint = (builder.layout.read_config(image_id).get("config") or {}).get("Entrypoint")
    doc = escape(compose(image_id, opts, user, init=not has_own_init(entrypoint)))
    run = f"{command or compose_command()} -p {project_name(opts.recipe, opts.cwd)} -f FILE"
    host = opts.url_host
    header = [
        f"# buildsys compose {opts.recipe}: the image by its ID; docker must hold it (`buildsys build {opts.recipe}`).",
        f"# Start: export JUPYTER_TOKEN=$(openssl rand -hex 24); {run} up -d",
        f"#        JupyterLab http://{host}:{opts.port}/lab?token=$JUPYTER_TOKEN, "
        f"TensorBoard http://{host}:{opts.tensorboard_port}/",
        f"# Stop:  {run} down   (JUPYTER_TOKEN still set: compose reads it for every command; any value does)",
    ]
    return "\n".join(header) + "\n" + to_yaml(doc) + "\n"


def to_yaml(doc: Any, indent: int = 0) -> str:
    """A small YAML writer for compose documents: scalars as JSON strings (valid YAML), maps and lists."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            key = k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", k) else json.dumps(k)
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
    elif isinstance(doc, list):
        for v in doc:
            if isinstance(v, dict) and v:
                inner = to_yaml(v, indent + 1).splitlines()
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines += inner[1:]
            else:
                lines.append(f"{pad}- {_scalar(v)}")
    return "\n".join(lines)


def _scalar(v: Any) -> str:
    if isinstance(v, dict | list):
        return "{}" if isinstance(v, dict) else "[]"
    if isinstance(v, bool | int) or v is None:
        return json.dumps(v)
    return json.dumps(str(v))
