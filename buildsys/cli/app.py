"""The click group: global options, and the one place errors become exit codes.

A ``BuildsysError`` carries its exit code (``core/errors.py``); an ``OSError``
is the machine's (a full disk, a permission) and exits 1. Either way the
person sees ``error: ...`` and the next step; a traceback only with ``-v``.

Only click and ``core.errors`` load here: ``buildsys --help`` must stay fast,
so the model (tomlkit, networkx) loads when a command first asks for the graph.
"""

from __future__ import annotations

import errno
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys import __version__
from buildsys.core.errors import EXIT_FAILED, BuildsysError

if TYPE_CHECKING:
    from buildsys.core.store import Store
    from buildsys.model.graph import Graph


@dataclass
class Context:
    project: Path
    store: Path
    verbose: bool

    def graph(self) -> Graph:
        import buildsys.ecosystems  # noqa: F401  (each registers its part of a recipe, which the parser checks)
        from buildsys.model.graph import build_graph
        from buildsys.model.recipe import load_recipes

        return build_graph(load_recipes(self.project))

    def open_store(self) -> Store:
        from buildsys.core.store import Store

        return Store(self.store)


class BuildsysGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BuildsysError as e:
            self._fail(ctx, str(e), e.exit_code)
        except OSError as e:  # the machine, not buildsys: a full disk, a permission, a vanished file
            self._fail(ctx, _os_error_message(e, ctx.obj), EXIT_FAILED)
        return None  # pragma: no cover - _fail exits

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        if ctx.obj is not None and ctx.obj.verbose:
            traceback.print_exc()
        click.echo(f"error: {message}", err=True)
        ctx.exit(code)


def _os_error_message(e: OSError, obj: Context | None) -> str:
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        store = f" (the store is {obj.store})" if obj else ""
        return (f"no space left on the device{where}; nothing half-written was kept\n"
                f"  free some space{store} and run the command again; `docker system df` shows docker's share")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        # Say what was refused: a read-only locks/ is not a question of being root.
        what = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return (f"{what}{where}: {e.strerror}\n  make {e.filename or 'it'} writable for this user, or run "
                "buildsys where it may write (builds themselves also need root: mmdebstrap, unshare, docker)")
    return f"{e.strerror or e}{where}\n  run again with -v for the details"


@click.group(cls=BuildsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "project", type=click.Path(file_okay=False, path_type=Path), default=".",
              help="Project folder (holds recipes/ and locks/). Default: the current folder.")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), envvar="BUILDSYS_STORE",
              default=None, help="Store folder (vendor files, OCI images, cache). Default: PROJECT/.buildsys.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and more detail.")
@click.version_option(__version__, prog_name="buildsys")
@click.pass_context
def cli(ctx: click.Context, project: Path, store: Path | None, verbose: bool) -> None:
    """Reproducible, layered container images from locked recipes."""
    project = project.resolve()
    ctx.obj = Context(project=project, store=(store or project / ".buildsys").resolve(), verbose=verbose)
    from buildsys.core import mirrors

    mirrors.configure(mirrors.load(project))  # a bad setting fails here, before any command runs
