"""``buildsys doctor``: can this engine run the images, and with the GPU?

The same checks guard ``run --gpus``, ``up --gpus`` and ``test --gpus``
before anything starts: docker accepts a GPU request at create time and only
fails at start, with words ("could not select device driver") that name none
of what is missing.

What a GPU run needs, bottom up: the NVIDIA driver on the host (the kernel
module: ``/proc/driver/nvidia/version``, ``nvidia-smi``), the NVIDIA Container
Toolkit (``nvidia-container-runtime-hook``, ``nvidia-ctk``), and docker
configured for it (an ``nvidia`` runtime in ``docker info``, or CDI specs for
``nvidia.com/gpu``). The CUDA runtime itself comes with the image (the
nvidia-* wheels), so the driver must support the image's CUDA version.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildsys.core.errors import BuildsysError, EngineUnavailable
from buildsys.ecosystems import pins
from buildsys.engine import Engine, EngineInfo, GpuRequest
from buildsys.model.lockfile import Lock

CHECK_HINT = ("check: `nvidia-smi` (driver), `nvidia-ctk --version` (NVIDIA Container Toolkit), "
              "`docker info --format '{{json .Runtimes}}'` (an nvidia runtime); set up: "
              "`sudo nvidia-ctk runtime configure --runtime=docker` then restart dockerd; "
              "`buildsys doctor` shows all of it")

# Minimum Linux driver for each CUDA toolkit (NVIDIA's CUDA Toolkit release notes, table
# "CUDA Toolkit and Corresponding Driver Versions").
CUDA_MIN_DRIVER: dict[tuple[int, int], str] = {
    (11, 8): "520.61.05", (12, 0): "525.60.13", (12, 1): "530.30.02", (12, 2): "535.54.03",
    (12, 3): "545.23.06", (12, 4): "550.54.14", (12, 5): "555.42.02", (12, 6): "560.28.03",
    (12, 8): "570.26", (12, 9): "575.51.03", (13, 0): "580.65.06", (13, 1): "590.44.01",
}
# Minor version compatibility: within a major version the runtime works on the first
# driver of that major (PTX JIT of newer kernels excepted).
MAJOR_MIN_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

# pip packages whose version is the CUDA runtime an image carries.
_CUDA_RUNTIME = re.compile(r"nvidia-cuda-runtime(-cu\d+)?")
# NVIDIA's apt packages of the CUDA runtime name its version: cuda-cudart-12-4, libcublas-12-4 are CUDA 12.4.
_CUDA_DEB = re.compile(r"(?:cuda-(?:cudart|nvrtc|libraries|runtime)|lib(?:cublas|cufft|curand|cusolver|cusparse|npp))"
                       r"-(\d+)-(\d+)")
_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


class GpuUnavailable(BuildsysError):
    """A GPU was asked for and this engine cannot give one (exit 1, before anything starts)."""

    def __init__(self, missing: str) -> None:
        self.missing = missing
        super().__init__(f"cannot run with a GPU: {missing}; nothing was started", CHECK_HINT)


class CudaDriverTooOld(BuildsysError):
    def __init__(self, recipe: str, cuda: str, driver: str, supports: str, needed: str) -> None:
        super().__init__(f"CUDA driver version is insufficient: the image of '{recipe}' carries CUDA {cuda}, "
                         f"this host's NVIDIA driver {driver} supports CUDA {supports}; nothing was started",
                         f"{needed} (`nvidia-smi` shows the driver in use)")


@dataclass(frozen=True)
class Check:
    what: str
    status: str  # "ok" | "missing" | "warn" | "info"
    detail: str
    hint: str = ""


@dataclass(frozen=True)
class GpuSupport:
    runtime: bool  # an "nvidia" runtime in docker info
    cdi_specs: tuple[str, ...]  # CDI spec files naming nvidia.com/gpu
    hook: str | None  # nvidia-container-runtime-hook on this host (docker's --gpus driver needs it)
    local: bool  # the engine runs on this host (its files are ours to read)

    @property
    def ok(self) -> bool:
        return self.runtime or bool(self.cdi_specs) or bool(self.hook)

    def missing(self) -> str:
        where = "" if self.local else " (a remote engine: only its docker info was read)"
        return ("the docker engine has no NVIDIA runtime (docker info lists none), no CDI spec for "
                "nvidia.com/gpu and no nvidia-container-runtime-hook: the NVIDIA driver and the "
                f"nvidia-container-toolkit are not installed, or docker is not configured for them{where}")


def is_local(info: EngineInfo) -> bool:
    return info.host.startswith(("http+docker://localhost", "http+docker://localunixsocket", "unix:")) or \
        "docker.sock" in info.host


def gpu_support(info: EngineInfo) -> GpuSupport:
    local = is_local(info)
    specs: list[str] = []
    if local:
        for folder in (*info.cdi_spec_dirs, *_CDI_DIRS):
            for f in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else []:
                try:
                    if f.suffix in (".yaml", ".yml", ".json") and "nvidia.com/gpu" in f.read_text(errors="replace"):
                        specs.append(str(f))
                except OSError:
                    continue
    hook = shutil.which("nvidia-container-runtime-hook") if local else None
    return GpuSupport(runtime="nvidia" in info.runtimes, cdi_specs=tuple(dict.fromkeys(specs)), hook=hook,
                      local=local)


def require_gpu(engine: Engine) -> GpuSupport:
    """Raise GpuUnavailable unless the engine can serve a GPU request."""
    support = gpu_support(engine.info())
    if not support.ok:
        raise GpuUnavailable(support.missing())
    return support


# -- the driver and the image's CUDA ----------------------------------------------


def host_driver(proc: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The loaded NVIDIA kernel module's version on this host, if any."""
    try:
        text = proc.read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module(?: for \S+)?\s+([0-9]+\.[0-9]+(?:\.[0-9]+)?)", text)
    return m.group(1) if m else None


def _ver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def driver_cuda(driver: str) -> str | None:
    """The newest CUDA version this driver supports, from NVIDIA's table."""
    ok = [cv for cv, d in CUDA_MIN_DRIVER.items() if _ver(driver) >= _ver(d)]
    return f"{max(ok)[0]}.{max(ok)[1]}" if ok else None


def image_cuda(locks: Mapping[str, Lock], chain: Sequence[str]) -> tuple[str, str] | None:
    """(CUDA major.minor, the pin it comes from) of the CUDA runtime in the chain's locks: a runtime wheel
    (PyPI's nvidia-cuda-runtime-cu12) or NVIDIA's apt package (cuda-cudart-12-4, from its CUDA repository)."""
    for name in reversed(chain):
        for _, p in pins(locks[name]) if name in locks else []:
            if p.kind == "pip" and _CUDA_RUNTIME.fullmatch(p.name):
                major_minor = ".".join(p.version.split(".")[:2])
                return major_minor, f"{p.name} {p.version} in locks/{name}.lock"
            if p.kind == "apt" and (m := _CUDA_DEB.fullmatch(p.name)):
                return f"{m[1]}.{m[2]}", f"{p.name} {p.version} in locks/{name}.lock"
    return None


@dataclass(frozen=True)
class CudaVerdict:
    status: str  # "ok" | "warn" | "missing"
    detail: str
    needed: str  # the driver that supports this CUDA exactly (or the major's first)


def cuda_verdict(cuda: str, driver: str) -> CudaVerdict:
    cv = tuple(_ver(cuda)[:2])
    exact = CUDA_MIN_DRIVER.get((cv[0], cv[1]))
    major = MAJOR_MIN_DRIVER.get(cv[0])
    supports = driver_cuda(driver) or "none known"
    if exact and _ver(driver) >= _ver(exact):
        return CudaVerdict("ok", f"driver {driver} supports CUDA {supports} >= {cuda}", exact)
    if major and _ver(driver) >= _ver(major):
        return CudaVerdict("warn", f"driver {driver} supports CUDA {supports}; CUDA {cuda} runs through minor "
                                   "version compatibility (kernels JIT-compiled from PTX may fail)", exact or "")
    return CudaVerdict("missing", f"CUDA driver version is insufficient: driver {driver} supports CUDA {supports}, "
                                  f"the image carries CUDA {cuda}", exact or major or "")


def upgrade_hint(cuda: str, needed: str) -> str:
    if needed:
        return f"upgrade the NVIDIA driver to {needed} or newer"
    return f"upgrade the NVIDIA driver to one that supports CUDA {cuda} (`nvidia-smi` shows what a driver supports)"


def check_cuda(recipe: str, locks: Mapping[str, Lock], chain: Sequence[str], driver: str | None) -> None:
    """Before a GPU run: refuse a driver too old for the image's CUDA (when both are known here)."""
    cuda = image_cuda(locks, chain)
    if cuda is None or driver is None:
        return
    verdict = cuda_verdict(cuda[0], driver)
    if verdict.status == "missing":
        raise CudaDriverTooOld(recipe, cuda[0], driver, driver_cuda(driver) or "none known",
                               upgrade_hint(cuda[0], verdict.needed))


# -- the report -------------------------------------------------------------------


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    unreachable: EngineUnavailable | None = None

    def add(self, what: str, status: str, detail: str, hint: str = "") -> None:
        self.checks.append(Check(what, status, detail, hint))

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.status == "missing"]


def nvidia_smi_host() -> list[str] | None:
    """``index, name, driver, memory`` per GPU from the host's nvidia-smi, or None without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()] if out.returncode == 0 else None


def diagnose(connect: Callable[[], Engine], recipe: str | None = None, chain: Sequence[str] = (),
             locks: Mapping[str, Lock] | None = None, find_image: Callable[[Engine], str | None] | None = None,
             want_gpu: bool = False, gpu_probe: Callable[[Engine, str], list[str] | None] | None = None) -> Report:
    """Every check, in order; ``want_gpu`` (or a recipe carrying CUDA) makes GPU support required."""
    report = Report()
    try:
        engine = connect()
        info = engine.info()
    except EngineUnavailable as e:
        report.add("engine", "missing", e.message, "start dockerd, or point DOCKER_HOST at one")
        report.unreachable = e
        return report
    report.add("engine", "ok", f"docker {info.version} (API {info.api_version}, {info.os}/{info.arch}) at {info.host}")
    report.add("storage driver", "ok" if info.storage_driver == "overlay2" else "warn", info.storage_driver,
               "" if info.storage_driver == "overlay2" else "builds read layers through docker save: slower")
    cuda = image_cuda(locks or {}, chain) if recipe else None
    needed = "missing" if (want_gpu or cuda) else "info"
    support = gpu_support(info)
    runtimes = ", ".join(info.runtimes) + (f" (default {info.default_runtime})" if info.default_runtime else "")
    report.add("runtimes", "ok" if support.runtime else needed, runtimes + ("" if support.runtime else "; no nvidia"),
               "" if support.runtime else "`sudo nvidia-ctk runtime configure --runtime=docker`, restart dockerd")
    cdi_dirs = ", ".join(info.cdi_spec_dirs or _CDI_DIRS)
    report.add("CDI specs", "ok" if support.cdi_specs else "info",
               ", ".join(support.cdi_specs) or f"none for nvidia.com/gpu (in {cdi_dirs})",
               "" if support.cdi_specs else "`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`")
    if support.local:
        report.add("container toolkit", "ok" if support.hook else ("info" if support.runtime else needed),
                   support.hook or "nvidia-container-runtime-hook not found on PATH",
                   "" if support.hook else "install nvidia-container-toolkit (NVIDIA's apt repository)")
    driver = host_driver() if support.local else None
    gpus = nvidia_smi_host() if support.local else None
    image: str | None = None
    if recipe and find_image is not None:
        image = find_image(engine)
    if gpus is None and support.ok and image and gpu_probe is not None:
        gpus = gpu_probe(engine, image)  # nvidia-smi as the NVIDIA runtime puts it in a container
    if gpus and driver is None:
        driver = gpus[0].split(",")[2].strip() if gpus[0].count(",") >= 3 else None
    report.add("NVIDIA driver", "ok" if driver else needed,
               f"{driver} (supports CUDA {driver_cuda(driver) or '?'})" if driver
               else "none found (/proc/driver/nvidia/version, nvidia-smi)",
               "" if driver else "install the NVIDIA driver for the GPU; `nvidia-smi` must list it")
    report.add("GPUs", "ok" if gpus else needed, "; ".join(gpus) if gpus else "none visible",
               "" if gpus else "no GPU here: images run on the CPU; GPU tests are reported skipped")
    if recipe:
        report.add(f"image {recipe}", "ok" if image else "missing", image or "not built for its current locks",
                   "" if image else f"`buildsys fetch {recipe} && buildsys build {recipe}`")
        if cuda is None:
            report.add("CUDA", "info", "the image carries no CUDA runtime (a CPU image)")
        elif driver is None:
            major, minor = _ver(cuda[0])[:2]
            least = CUDA_MIN_DRIVER.get((major, minor)) or MAJOR_MIN_DRIVER.get(major, "?")
            report.add("CUDA", "missing", f"the image carries CUDA {cuda[0]} ({cuda[1]}); no NVIDIA driver to run it",
                       f"it runs on the CPU; for the GPU, a host whose driver is {least} or newer")
        else:
            v = cuda_verdict(cuda[0], driver)
            report.add("CUDA", v.status, f"image needs CUDA {cuda[0]} ({cuda[1]}); {v.detail}",
                       "" if v.status == "ok" else upgrade_hint(cuda[0], v.needed))
    return report


def gpu_probe(engine: Engine, image: str) -> list[str] | None:
    """GPUs as seen through the NVIDIA runtime: nvidia-smi in a container of ``image`` with all GPUs."""
    try:
        res = engine.run(image, ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                                 "--format=csv,noheader"], entrypoint=[], network="none", gpus=[GpuRequest()])
    except BuildsysError:
        return None
    lines = [ln.strip() for ln in res.output.splitlines() if ln.strip()]
    return lines if res.exit_code == 0 and lines else None
