"""The command line: parse options, call one core function, print.

``app`` holds the group, its global options and the one error-to-exit-code
mapper; each command module holds a family of commands; ``render`` draws.
Command modules import buildsys's core inside the commands, so that
``buildsys --help`` and ``buildsys graph`` load neither docker nor rich.
"""

from __future__ import annotations

from buildsys.cli.app import Context, _os_error_message, cli
from buildsys.cli.attest import attest_cmd, attestations_cmd
from buildsys.cli.build import build_cmd, diff_cmd, reproduce_cmd, test_cmd
from buildsys.cli.ci import ci_cmd
from buildsys.cli.fetch import fetch_cmd
from buildsys.cli.graph import graph_cmd
from buildsys.cli.init import init_cmd
from buildsys.cli.lock import lock_cmd
from buildsys.cli.ship import export_cmd, import_cmd, publish_cmd, sbom_cmd
from buildsys.cli.sign import keygen_cmd, sign_cmd, verify_signature_cmd
from buildsys.cli.use import compose_cmd, doctor_cmd, down_cmd, engine_cmd, run_cmd, up_cmd

# tests/test_hostile_inputs.py reads the OSError messages through this package.
__all__ = ["Context", "_os_error_message", "cli", "main"]

for _command in (graph_cmd, lock_cmd, fetch_cmd, build_cmd, test_cmd, diff_cmd, publish_cmd, export_cmd,
                 import_cmd, sbom_cmd, run_cmd, doctor_cmd, up_cmd, down_cmd, compose_cmd, engine_cmd,
                 keygen_cmd, sign_cmd, verify_signature_cmd, attest_cmd, attestations_cmd, reproduce_cmd,
                 init_cmd, ci_cmd):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="buildsys", auto_envvar_prefix=None)


if __name__ == "__main__":  # pragma: no cover
    main()
