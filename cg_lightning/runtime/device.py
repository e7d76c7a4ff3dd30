"""Turn the ``device`` config key into a torch device, and pick the CPU thread count a job should use."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from cg_lightning.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> first CUDA GPU if available, else CPU. Asking for CUDA without one is a config error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device={spec!r} is not a valid torch device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} but CUDA is not available on this machine; use device=auto or device=cpu")
    return device


def lightning_accelerator(device: torch.device) -> dict:
    """Trainer arguments that put a stage on ``device`` (one device per job; we never use DDP)."""
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    return {"accelerator": "cpu", "devices": 1}


# ------------------------------------------------------------------------------------------------ CPU threads
def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cgroups' cpusets, SLURM), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows have no affinity API
        return max(1, os.cpu_count() or 1)


def launcher_parallel_jobs() -> int:
    """How many jobs the Hydra launcher of this run executes at once (joblib's ``n_jobs``; 1 otherwise)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return 1
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
    except Exception:  # noqa: BLE001 - no Hydra, or a launcher without that key: one job at a time
        return 1
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    return usable_cpus() if n_jobs < 0 else max(1, n_jobs)  # joblib: -1 = one job per CPU


def cpu_threads(
    parallel_jobs: int = 1, environ: Mapping[str, str] | None = None, load: float | None = None
) -> int:
    """Intra-op threads for one job: ``OMP_NUM_THREADS`` when the user set it, else this process's usable CPUs
    shared among the jobs running side by side (never below 1), and 1 when the machine is already busy (1-min
    load average at or above the usable CPUs; ``load`` defaults to ``os.getloadavg()``).

    Measured on a 2-core machine (README, "CPU and GPU"): a second thread speeds a job up when its core is
    free (0.62-0.73x the wall time) and slows it 2.3-7.5x when other busy processes compete for the cores, so
    oversubscribing is far worse than leaving a core idle.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    usable = usable_cpus()
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= usable:
        return 1
    return max(1, usable // max(1, int(parallel_jobs)))


def configure_cpu_threads(parallel_jobs: int | None = None) -> int:
    """Apply :func:`cpu_threads` to torch (intra-op pool) and return the count."""
    threads = cpu_threads(launcher_parallel_jobs() if parallel_jobs is None else parallel_jobs)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
