"""What a layer's build container sees and runs.

The inputs are staged into one folder of hardlinks into the vendor store,
mounted read-only at ``/buildsys``: ``repo/`` (the layer's .debs as a flat apt
repository), ``wheels/`` (the selected wheels, the pinned pip, and a hashed
requirements file), ``files/`` (the ``[[files]]`` downloads by name),
``cran/`` (the R source tarballs and a Makevars),
``steps/`` (one script per ``run`` step) and ``build.sh``. The container has no
network; the script prints a marker before each step so a failure names it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from buildsys.build.bootstrap import BUILD_ENV, link_debs, make_local_repo
from buildsys.core.errors import NotVendored
from buildsys.core.store import Store
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe

MOUNT = "/buildsys"
STEP_MARKER = "::buildsys-step::"
INSTALLED_MARKER = "::buildsys-installed::"

@dataclass(frozen=True)
class Staged:
    folder: Path
    env: dict[str, str]
    command: list[str]


def build_env(lock: Lock) -> dict[str, str]:
    """The fixed environment of every build step (docs/design.md), plus pip's isolation."""
    return {
        **{k: v for k, v in BUILD_ENV.items() if k != "PATH"},
        "SOURCE_DATE_EPOCH": str(lock.source_date_epoch),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_NO_INPUT": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


def stage_layer(store: Store, recipe: Recipe, lock: Lock, folder: Path) -> Staged:
    """Link the layer's inputs into ``folder`` and write its build script."""
    folder.mkdir(parents=True)
    script = ["#!/bin/sh", "set -eu", "umask 022", "cd /"]
    if lock.apt:
        link_debs(store, recipe.name, lock.apt, folder / "repo")
        make_local_repo(folder / "repo", "buildsys", "buildsys")
        (folder / "sources.list").write_text(f"deb [trusted=yes] file:{MOUNT}/repo ./\n")
        apt = (f"-o Dir::Etc::SourceList={MOUNT}/sources.list -o Dir::Etc::SourceParts=/nonexistent "
               "-o APT::Sandbox::User=root -o Acquire::Languages=none -o APT::Install-Recommends=false "
               "-o Dpkg::Use-Pty=0 -q")
        names = " ".join(shlex.quote(n) for n in sorted(recipe.apt_packages))
        script += [
            f"echo '{STEP_MARKER}apt: install {len(lock.apt)} packages'",
            # No service may start inside a build container.
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
            f"apt-get {apt} update",
            f"apt-get {apt} install -y {names}",
            "rm -f /usr/sbin/policy-rc.d",
            "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin",
            f"echo '{INSTALLED_MARKER}'",
            "dpkg-query -W -f '${db:Status-Abbrev} ${Package}=${Version}\\n' | awk '$1 == \"ii\" {print $2}'",
            f"echo '{INSTALLED_MARKER}'",
        ]
    if lock.pip:
        from buildsys.ecosystems.pip import install_script, stage_wheels

        stage_wheels(store, lock, folder / "wheels")
        script += [f"echo '{STEP_MARKER}pip: install {len(lock.pip)} packages'",
                   install_script(lock, f"{MOUNT}/wheels")]
    if lock.cran:
        from buildsys.ecosystems.cran import install_script as cran_script
        from buildsys.ecosystems.cran import stage_tarballs

        stage_tarballs(store, recipe.name, lock.cran, folder / "cran")
        script += [cran_script(lock.cran, lock.cran_repo or "", MOUNT, lock.source_date_epoch)]
    if lock.files:
        (folder / "files").mkdir()
        for f in lock.files:
            src = store.vendor_path(f.sha256)
            if not src.is_file():
                raise NotVendored(recipe.name, f"file {f.name} ({f.url})")
            (folder / "files" / f.name).hardlink_to(src)
    if recipe.run:
        (folder / "steps").mkdir()
        for i, step in enumerate(recipe.run, 1):
            (folder / "steps" / f"{i}.sh").write_text(step + "\n")
            script += [f"echo {shlex.quote(f'{STEP_MARKER}run[{i - 1}]: {step}')}",
                       f"/bin/sh -e {MOUNT}/steps/{i}.sh"]
    script.append(f"echo '{STEP_MARKER}done'")
    (folder / "build.sh").write_text("\n".join(script) + "\n")
    return Staged(folder=folder, env=build_env(lock), command=["/bin/sh", f"{MOUNT}/build.sh"])


def failure_hint(output: str) -> str | None:
    """A next step that knows the failed step's ecosystem (an R package's missing header), if any."""
    from buildsys.ecosystems.cran import failure_hint as cran_hint

    return cran_hint(output)


def failed_step(output: str) -> str:
    """The step a build script was in when it stopped (its last marker)."""
    steps = [ln.split(STEP_MARKER, 1)[1] for ln in output.splitlines() if STEP_MARKER in ln]
    return steps[-1] if steps else "start of the build"


def installed_packages(output: str) -> dict[str, str] | None:
    """``name -> version`` as dpkg-query printed it between the markers, if it did."""
    parts = output.split(INSTALLED_MARKER)
    if len(parts) < 3:
        return None
    pkgs = {}
    for line in parts[-2].strip().splitlines():
        name, _, version = line.strip().partition("=")
        if name and version:
            pkgs[name.split(":")[0]] = version
    return pkgs
