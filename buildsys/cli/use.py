"""Using an image: `buildsys run`, `up`, `down`, `compose`, `doctor` and `engine`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import click

from buildsys.cli.app import Context
from buildsys.cli.render import print_table
from buildsys.core.errors import BuildsysError

if TYPE_CHECKING:
    from buildsys.build.records import BuiltImage
    from buildsys.engine import Engine, GpuRequest
    from buildsys.model.lockfile import Lock
    from buildsys.use.run import UpOptions

F = TypeVar("F", bound=Callable[..., None])


def _locked_image(obj: Context, recipe: str,
                  gpus: GpuRequest | None) -> tuple[dict[str, Lock], Engine, BuiltImage]:
    """(locks, engine, built image) of RECIPE: fresh locks, GPU support when asked, the image loaded in docker."""
    from buildsys.core.errors import UnknownRecipe
    from buildsys.engine import Engine
    from buildsys.lock import fresh_locks
    from buildsys.use.doctor import check_cuda, host_driver, require_gpu
    from buildsys.use.run import find_image

    g = obj.graph()
    if recipe not in g.recipes:
        raise UnknownRecipe(recipe, g.recipes)
    locks = fresh_locks(obj.project, g, [recipe])
    engine = Engine.connect()
    support = require_gpu(engine) if gpus else None  # before anything is loaded or started
    image = find_image(obj.open_store(), g, locks, recipe, engine)
    if support:
        check_cuda(recipe, locks, image.chain, host_driver() if support.local else None)
    return locks, engine, image


@click.command("run")
@click.argument("recipe")
@click.option("--gpus", metavar="SPEC", help="GPUs for the container: all, N, or device=ID[,ID].")
@click.option("-p", "--publish", "ports", multiple=True, metavar="[IP:]HOST:CONTAINER", help="Publish a port.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CONTAINER[:ro]",
              help="Mount another host folder (it must exist).")
@click.option("--network", metavar="NAME", help="A docker network (default: docker's bridge).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run_cmd(obj: Context, recipe: str, gpus: str | None, ports: tuple[str, ...], volumes: tuple[str, ...],
            network: str | None, command: tuple[str, ...]) -> None:
    """Run RECIPE's image by its digest, the current folder mounted as working folder, as you.

    Files written to the folder belong to you (your UID/GID inside, with a
    name and a writable HOME). Everything after `--` is the command (default:
    the image's). The container's exit code is buildsys's.
    """
    import signal
    import sys

    from buildsys.use.run import (
        HostUser,
        RunOptions,
        check_folder,
        cuda_cache_dir,
        execute,
        has_own_init,
        identity,
        mount_targets,
        parse_gpus,
        parse_port,
        parse_volume,
        plan_run,
        read_identity_files,
    )

    cwd = Path.cwd().resolve()
    check_folder(cwd)
    opts = RunOptions(recipe=recipe, cwd=cwd, command=command, gpus=parse_gpus(gpus) if gpus else None,
                      ports=tuple(parse_port(p) for p in ports), volumes=tuple(parse_volume(v, cwd) for v in volumes),
                      network=network, tty=sys.stdin.isatty() and sys.stdout.isatty())
    _ports_free(opts.ports)
    locks, engine, image = _locked_image(obj, recipe, opts.gpus)
    who = identity(HostUser.current(), *read_identity_files(engine, image.record.config_digest),
                   mount_targets=mount_targets(opts))
    own_init = has_own_init(engine.image_config(image.record.config_digest).get("Entrypoint"))
    spec = plan_run(image.record.config_digest, opts, who, cuda_cache_dir(), init=not own_init)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        code = execute(engine, spec, who, _sink(sys.stdout.buffer), _sink(sys.stderr.buffer))
    except KeyboardInterrupt:
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.stdout.flush()
    click.get_current_context().exit(code)


def _sink(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()
    return write


def _ports_free(ports: tuple[tuple[str, int, int], ...]) -> None:
    from buildsys.use.run import check_ports_free

    check_ports_free(ports, lambda port: f"-p OTHER:{next(c for _, h, c in ports if h == port)}")


class DoctorFound(BuildsysError):
    def __init__(self, what: str) -> None:
        super().__init__(f"missing: {what}", "see the table's next steps")


@click.command("doctor")
@click.argument("recipe", required=False)
@click.option("--gpus", "want_gpu", is_flag=True, help="GPU support is required (as for run --gpus).")
@click.pass_obj
def doctor_cmd(obj: Context, recipe: str | None, want_gpu: bool) -> None:
    """Engine, storage driver, runtimes, CDI, GPUs and driver; for RECIPE, the CUDA its image needs.

    Exit 0 when everything asked for works, 1 when something is missing, 4 when
    the engine is unreachable. A recipe whose image carries CUDA asks for GPU support.
    """
    from buildsys.build.builder import Builder
    from buildsys.core.errors import MissingLock, StaleLock, UnknownRecipe
    from buildsys.engine import Engine
    from buildsys.lock import fresh_locks
    from buildsys.use.doctor import diagnose, gpu_probe

    chain: list[str] = []
    locks: dict[str, Lock] = {}
    find: Callable[[Engine], str | None] | None = None
    lock_problem: BuildsysError | None = None
    if recipe:
        g = obj.graph()
        if recipe not in g.recipes:
            raise UnknownRecipe(recipe, g.recipes)
        chain = g.chain(recipe)
        try:
            locks = fresh_locks(obj.project, g, [recipe])
        except (MissingLock, StaleLock) as e:  # the engine and GPU checks need no lock: still run them
            lock_problem = e

        def find_built(engine: Engine) -> str | None:
            if lock_problem is not None:
                return None
            try:
                image = Builder(obj.open_store(), g, locks, engine=engine, tag=False).find(recipe)
            except BuildsysError:
                return None
            return image.record.config_digest if image else None

        find = find_built

    report = diagnose(Engine.connect, recipe, chain, locks, find, want_gpu=want_gpu, gpu_probe=gpu_probe)
    if lock_problem is not None:
        report.add(f"lock of {recipe}", "missing", lock_problem.message,
                   lock_problem.hint or f"`buildsys lock {recipe}`")
    colour = {"ok": "green", "missing": "red", "warn": "yellow", "info": "dim"}
    print_table("buildsys doctor", ("check", "status", "detail", "next step"),
                ((c.what, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.hint) for c in report.checks))
    if report.unreachable:
        raise report.unreachable
    if report.missing:
        raise DoctorFound(", ".join(c.what for c in report.missing))
    click.echo("everything asked for is here")


def _up_options(recipe: str, port: int, tensorboard_port: int, gpus: str | None, bind: str) -> UpOptions:
    from buildsys.use.run import UpOptions, parse_gpus

    return UpOptions(recipe=recipe, cwd=Path.cwd().resolve(), port=port, tensorboard_port=tensorboard_port,
                     gpus=parse_gpus(gpus) if gpus else None, bind=bind)


_UP_OPTIONS = [
    click.option("--port", default=8888, show_default=True, type=click.IntRange(1, 65535),
                 help="Host port of JupyterLab."),
    click.option("--tensorboard-port", default=6006, show_default=True, type=click.IntRange(1, 65535),
                 help="Host port of TensorBoard."),
    click.option("--gpus", metavar="SPEC", help="GPUs for the notebook: all, N, or device=ID[,ID]."),
    click.option("--bind", default="127.0.0.1", show_default=True, help="Host address to publish on."),
]


def _with_up_options(f: F) -> F:
    for option in reversed(_UP_OPTIONS):
        f = option(f)
    return f


@click.command("up")
@click.argument("recipe")
@_with_up_options
@click.pass_obj
def up_cmd(obj: Context, recipe: str, port: int, tensorboard_port: int, gpus: str | None, bind: str) -> None:
    """JupyterLab and TensorBoard on the current folder (TensorBoard reads runs/), with a new token."""
    from buildsys.use.run import (
        HostUser,
        check_folder,
        cuda_cache_dir,
        has_own_init,
        identity,
        new_token,
        plan_up,
        read_identity_files,
        start_up,
    )

    opts = _up_options(recipe, port, tensorboard_port, gpus, bind)
    check_folder(opts.cwd)
    locks, engine, image = _locked_image(obj, recipe, opts.gpus)
    who = identity(HostUser.current(), *read_identity_files(engine, image.record.config_digest),
                   mount_targets=[str(opts.cwd)])
    token = new_token()
    own_init = has_own_init(engine.image_config(image.record.config_digest).get("Entrypoint"))
    specs = plan_up(image.record.config_digest, opts, who, token, cuda_cache_dir(), init=not own_init)
    result = start_up(engine, specs, who, opts, token)
    click.echo(f"JupyterLab:  {result.jupyter_url}")
    click.echo(f"TensorBoard: {result.tensorboard_url}  (logs in {opts.cwd / 'runs'})")
    click.echo(f"image {image.record.config_digest}; stop both with `buildsys down {recipe}` in {opts.cwd}")


@click.command("down")
@click.argument("recipe")
@click.pass_obj
def down_cmd(obj: Context, recipe: str) -> None:
    """Stop and remove the containers that `buildsys up RECIPE` started in the current folder."""
    from buildsys.engine import Engine
    from buildsys.use.run import down

    removed = down(Engine.connect(), recipe, Path.cwd().resolve())
    click.echo(f"removed {', '.join(removed)}" if removed else f"nothing of '{recipe}' is up in {Path.cwd()}")


@click.command("compose")
@click.argument("recipe")
@_with_up_options
@click.pass_obj
def compose_cmd(obj: Context, recipe: str, port: int, tensorboard_port: int, gpus: str | None, bind: str) -> None:
    """Print what `up` starts as a Compose file for Compose v1 and v2 (the token from $JUPYTER_TOKEN)."""
    from buildsys.core.errors import UnknownRecipe
    from buildsys.lock import fresh_locks
    from buildsys.use.compose import compose_file
    from buildsys.use.run import HostUser

    opts = _up_options(recipe, port, tensorboard_port, gpus, bind)
    g = obj.graph()
    if recipe not in g.recipes:
        raise UnknownRecipe(recipe, g.recipes)
    click.echo(compose_file(obj.open_store(), g, fresh_locks(obj.project, g, [recipe]), opts, HostUser.current()),
               nl=False)


@click.command("engine")
@click.pass_obj
def engine_cmd(obj: Context) -> None:
    """Check that the docker engine answers and show what it is."""
    from buildsys.engine import Engine

    info = Engine.connect().info()
    click.echo(f"docker engine {info.version} (API {info.api_version}, {info.os}/{info.arch}, "
               f"storage {info.storage_driver}, root {info.root_dir})")
