"""What a job *is*: the content of its input image and the fully resolved config keys that change its results.

A job directory is reused (skipped when finished, resumed otherwise) only when the identity recorded in its
``job.json`` equals the identity of the new command. Keys that never change results are left out, so that
re-running with another logger, checkpoint frequency, stage list, device choice or output root still finds the job:

- ``hydra``, ``paths``: where things go, not what is computed;
- ``logger``, ``callbacks``, ``tags``: what is logged and how often ``last.ckpt`` is written (resume is exact);
- ``resume``, ``stages``, ``on_mismatch``: how this invocation runs the job (``stages=[stage1,mesh]`` then
  ``stages=[stage1,mesh,stage2]`` is one job);
- ``device``, ``trainer.accelerator`` / ``devices`` / progress-bar / summary / logging cadence: the device changes
  floating-point rounding, not the experiment; the device a job ran on is in ``provenance.json``;
- ``image``: the *path*; its content (sha256) is in the identity instead, so two files with one stem never share
  results, and a moved file is still the same input.

The code version is not part of the identity either (a fix must not orphan finished sweeps); it is recorded in
``provenance.json``. Everything else (experiment, seed, prior, losses, stage settings, renderer backends, mesh,
evaluation, ``+debug=tiny`` presets, ``from_run``) is in it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cg_lightning.utils.atomic import write_text

JOB_FILE = "job.json"
#: top-level keys that never change a job's results
NON_IDENTITY_KEYS = ("hydra", "paths", "logger", "callbacks", "tags", "resume", "stages", "on_mismatch", "device",
                     "image")
#: Lightning Trainer keys that only choose the device or the console/logging output
NON_IDENTITY_TRAINER_KEYS = ("accelerator", "devices", "enable_progress_bar", "enable_model_summary",
                             "log_every_n_steps")
_CHUNK = 1 << 20
_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime: the directory resolver and the job both ask)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def result_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the keys that do not change results (see the module docstring)."""
    out: dict[str, Any] = {}
    for key in cfg.keys():
        if key in NON_IDENTITY_KEYS:
            continue
        value = cfg[key]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if key == "trainer" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in NON_IDENTITY_TRAINER_KEYS}
        out[str(key)] = value
    return out


def job_identity(cfg: DictConfig, image_path: str | Path | None = None) -> dict[str, Any]:
    """``{"input_sha256": ..., "config": {...}}`` of a job; ``image_path`` defaults to ``cfg.image``."""
    image = Path(str(cfg.image if image_path is None else image_path))
    return {"input_sha256": file_sha256(image), "config": result_config(cfg)}


def identity_hash(identity: dict[str, Any]) -> str:
    """Short hex digest of an identity (12 characters: directory suffixes, W&B ids, messages)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_job_record(job_dir: str | Path) -> dict[str, Any] | None:
    """The ``job.json`` of a directory; None when there is none or it cannot be read."""
    path = Path(job_dir) / JOB_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "identity" in record else None


def write_job_record(job_dir: str | Path, identity: dict[str, Any], image_path: str | Path) -> dict[str, Any]:
    record = {"identity_hash": identity_hash(identity), "image": os.path.abspath(str(image_path)),
              "identity": identity}
    write_text(Path(job_dir) / JOB_FILE, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def identity_differences(recorded: dict[str, Any], current: dict[str, Any], limit: int = 8) -> list[str]:
    """Human-readable ``key: recorded -> current`` lines (at most ``limit``, then a count)."""
    if recorded.get("input_sha256") != current.get("input_sha256"):
        lines = [f"input image content: sha256 {str(recorded.get('input_sha256'))[:12]} -> "
                 f"{str(current.get('input_sha256'))[:12]}"]
    else:
        lines = []
    old, new = _flatten(recorded.get("config", {})), _flatten(current.get("config", {}))
    missing = object()
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            lines.append(f"{key}: {'(absent)' if a is missing else repr(a)} -> {'(absent)' if b is missing else repr(b)}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines
