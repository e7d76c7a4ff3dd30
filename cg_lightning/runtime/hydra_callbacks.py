"""Hydra callback (registered in ``conf/hydra/default.yaml`` as ``hydra.callbacks.cg``) for the two things a job
cannot do itself:

- *before* Hydra creates the job directory: check that ``paths.output_root`` can be written, so a read-only or full
  output location is one clear message instead of a traceback from Hydra's ``mkdir``;
- *after* a multirun: list the jobs of this sweep that are marked ``FAILED`` (with their first error line) and exit
  with status 1 if there are any, so scripts and CI notice partial failures (the other jobs still ran).
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cg_lightning.runtime.state import DONE_FILE, FAILED_FILE

_ALWAYS_SKIP = {".hydra", "wandb", ".submitit"}
#: (job dir, first error line) of the jobs of this process that were refused before touching their directory
#: (invalid config, locked by another process, identity mismatch): listed by the sweep summary
REFUSED_JOBS: list[tuple[Path, str]] = []
_JOB_CHILDREN = {"ckpts", "csv", "input", "stage1", "stage2", "mesh"}   # never job dirs inside a job dir


def _walk_jobs(root: str | Path):
    """``os.walk`` over the job tree, not descending into the per-job output folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        inside_job = "config_resolved.yaml" in filenames or ".hydra" in dirnames
        skip = _ALWAYS_SKIP | (_JOB_CHILDREN if inside_job else set())
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        yield Path(dirpath), filenames


def _select(config: DictConfig, key: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            HydraConfig.instance().set_config(config)
        value = OmegaConf.select(config, key)
    except Exception:  # noqa: BLE001 - unresolvable here: the job will report it
        return None
    return None if value is None else str(value)


def output_root_problem(root: str | Path) -> str | None:
    """Why ``root`` cannot hold job directories (None if it can): creates it if needed and writes a probe file."""
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cg_probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.ENOTDIR: "a parent of it is a file, not a directory",
                  }.get(exc.errno or 0, exc.strerror or str(exc))
        return f"paths.output_root={path} cannot be written: {reason}. Set paths.output_root to a writable directory."
    return None


def failed_jobs(root: str | Path, since: float = 0.0) -> list[tuple[Path, str]]:
    """``(job dir, first line of FAILED)`` for each job under ``root`` whose FAILED marker is newer than ``since``."""
    found: list[tuple[Path, str]] = []
    for dirpath, filenames in _walk_jobs(root):
        if FAILED_FILE in filenames:
            marker = dirpath / FAILED_FILE
            try:
                if marker.stat().st_mtime < since:
                    continue
                first = (marker.read_text(errors="replace").strip().splitlines() or ["(no message)"])[0]
            except OSError:
                continue
            found.append((dirpath, first))
    return found


def finished_jobs(root: str | Path, since: float = 0.0) -> int:
    count = 0
    for dirpath, filenames in _walk_jobs(root):
        try:
            count += DONE_FILE in filenames and (dirpath / DONE_FILE).stat().st_mtime >= since
        except OSError:
            continue
    return count


class JobCallbacks(Callback):
    """See the module docstring. ``fail_exit_code=0`` keeps a sweep's exit status 0 even when jobs failed."""

    def __init__(self, fail_exit_code: int = 1) -> None:
        self.fail_exit_code = int(fail_exit_code)
        self._sweep_started = 0.0

    def _preflight(self, config: DictConfig) -> None:
        root = _select(config, "paths.output_root")
        problem = output_root_problem(root) if root else None
        if problem:
            print(f"\nError: {problem}\n", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._validate(config)
        self._preflight(config)

    @staticmethod
    def _validate(config: DictConfig) -> None:
        """An invalid config stops a single run before Hydra creates (or touches) the job directory."""
        from cg_lightning.config.validate import validate_config
        from cg_lightning.errors import ConfigError

        _select(config, "paths.output_root")   # makes ${hydra:...} resolvable here
        try:
            validate_config(config)
        except ConfigError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._preflight(config)
        self._sweep_started = time.time() - 1.0  # file systems store mtimes coarsely
        REFUSED_JOBS.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = _select(config, "hydra.sweep.dir")
        if not root or not Path(root).is_dir():
            return
        failed = failed_jobs(root, self._sweep_started) + [(p, f"refused: {e}") for p, e in REFUSED_JOBS]
        done = finished_jobs(root, self._sweep_started)
        lines = [f"\nSweep finished: {done} job(s) done, {len(failed)} FAILED."]
        lines += [f"  FAILED {path}: {error}" for path, error in failed]
        if failed:
            lines.append("Fix the cause and re-run the same command: finished stages are reused, interrupted "
                         "ones resume from their last checkpoint.")
        print("\n".join(lines), file=sys.stderr)
        if failed and self.fail_exit_code:
            sys.exit(self.fail_exit_code)
