"""How a finished job ran, from its directory: device, scale (paper / custom / debug), launcher, thread count.

Why: the same job takes 5-8x longer under another launcher or on a shared CPU, and a debug-size run's numbers mean
nothing next to the paper's. The W&B run (tags, ``job`` config) and the result tables state these facts from one
definition (:func:`job_scale`), so a reviewer never compares unlike runs unknowingly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCALES = ("paper", "custom", "debug")


def job_scale(cfg: Mapping[str, Any], choices: Mapping[str, str], override_suffix: str) -> str:
    """``debug`` (a debug preset, the smoke experiment or the tiny prior: numbers are meaningless), ``custom``
    (overrides that change results, e.g. fewer steps: the job directory has an override suffix) or ``paper``
    (the experiment as configured)."""
    prior = str((cfg.get("prior") or {}).get("_target_", ""))
    if (choices.get("debug") or cfg.get("experiment_name") == "smoke" or prior.endswith("TinyZero123Prior")
            or choices.get("prior") == "tiny"):
        return "debug"
    return "custom" if override_suffix else "paper"


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_job_dir(job: str | Path, override_suffix: str = "") -> dict[str, Any]:
    """``device`` (e.g. ``cuda (NVIDIA H200)``, ``cpu``), ``device_kind`` (cuda | cpu | unknown), ``scale``,
    ``launcher`` and ``threads`` of a job directory (``unknown`` / empty where the files do not say)."""
    job = Path(job)
    cfg = _read_yaml(job / "config_resolved.yaml")
    hydra = _read_yaml(job / ".hydra" / "hydra.yaml").get("hydra", {})
    choices = {str(k): str(v) for k, v in ((hydra.get("runtime") or {}).get("choices") or {}).items()
               if v is not None}
    prov = _read_json(job / "provenance.json")
    device = str(prov.get("device") or cfg.get("device") or "unknown")
    kind = "cuda" if device.startswith("cuda") else ("cpu" if device == "cpu" else "unknown")
    name = str(prov.get("device_name") or "")
    label = kind if not name else (f"cuda ({name})" if kind == "cuda" else "cpu")
    return {"device": label, "device_kind": kind,
            "scale": job_scale(cfg, choices, override_suffix) if cfg else "unknown",
            "launcher": choices.get("hydra/launcher", ""),
            "threads": str(prov.get("torch_threads") or prov.get("omp_num_threads") or "")}
