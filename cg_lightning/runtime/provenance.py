"""Where and with what a job ran: ``<job>/provenance.json`` (code version, library versions, hardware, attempts).

Not part of the job's identity (see :mod:`cg_lightning.runtime.identity`): the same job resumed on another machine
or after a bug fix is still the same job, and this file says which attempt ran where, with which code.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from cg_lightning.utils.atomic import write_text

PROVENANCE_FILE = "provenance.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: distribution names whose versions are recorded ("not installed" when absent)
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "lightning", "hydra-core", "omegaconf", "numpy",
            "gsplat", "diff_gaussian_rasterization", "nvdiffrast", "pymeshlab", "xatlas", "spandrel", "rembg",
            "wandb")


def package_version(name: str) -> str:
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the source tree (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def collect_provenance(device: Any) -> dict[str, Any]:
    """Code, libraries and hardware of this process (``device``: the torch device the job runs on)."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = f"cpu ({cpu_model()})" if dev.type == "cpu" else str(dev)
    return {
        "git": git_state(),
        "versions": {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}},
        "device": str(dev),
        "device_name": device_name,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "pid": os.getpid(),
        "start_time": now(),
    }


class ProvenanceFile:
    """``provenance.json``: the provenance of the latest attempt at top level, every attempt in ``attempts``."""

    def __init__(self, job_dir: str | Path) -> None:
        self.path = Path(job_dir) / PROVENANCE_FILE
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data.setdefault("attempts", [])

    def begin(self, provenance: dict[str, Any]) -> None:
        attempts = self.data["attempts"]
        attempts.append({k: provenance.get(k) for k in ("start_time", "host", "pid", "device_name")}
                        | {"git_commit": provenance.get("git", {}).get("commit"), "end_time": None,
                           "outcome": "running"})
        self.data.update(provenance, end_time=None, num_attempts=len(attempts))
        self._save()

    def end(self, outcome: str) -> None:
        stamp = now()
        if self.data["attempts"]:
            self.data["attempts"][-1].update(end_time=stamp, outcome=outcome)
        self.data.update(end_time=stamp, outcome=outcome)
        self._save()

    def _save(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")
