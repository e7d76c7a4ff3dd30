"""Experiment loggers: one W&B run per job (shared by both stages), or CSV, or none.

Why these rules (see the frameworks reference): a deterministic run id derived from the output directory lets a
SLURM requeue continue the same W&B run; offline mode is chosen automatically without an API key so jobs never
block on a login prompt; ``finish_wandb`` is called by the task wrapper so multirun jobs never share a run.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cg_lightning.errors import ConfigError

log = logging.getLogger(__name__)


def wandb_run_id(output_dir: str | Path, output_root: str | Path | None = None) -> str:
    """Stable W&B id for a job directory (relative to the output root when possible, so moving roots is fine)."""
    p = Path(output_dir).resolve()
    if output_root is not None:
        try:
            p = p.relative_to(Path(output_root).resolve())
        except ValueError:
            pass
    return "cg-" + hashlib.sha1(str(p).encode()).hexdigest()[:16]


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def wandb_mode(requested: str) -> str:
    """``auto`` -> ``WANDB_MODE`` if set, else online with credentials, else offline."""
    if requested not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode={requested!r}; expected auto, online, offline or disabled")
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if has_wandb_credentials() else "offline"


class JobLoggers:
    """Creates the loggers of one job; stage trainers ask for theirs with :meth:`for_stage`."""

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self._wandb = None
        spec = cfg.get("logger") or {}
        unknown = set(spec.keys()) - {"wandb", "csv"}
        if unknown:
            raise ConfigError(f"logger: unknown logger(s) {sorted(unknown)}; use logger=wandb, logger=csv or logger=none")
        self.spec = spec

    @property
    def wandb(self):
        """The job's WandbLogger (created on first use), or None when W&B is not configured/disabled."""
        if self._wandb is None and "wandb" in self.spec:
            w = self.spec.wandb
            mode = wandb_mode(w.get("mode", "auto"))
            if mode == "disabled":
                return None
            from lightning.pytorch.loggers import WandbLogger

            self._wandb = WandbLogger(
                project=w.project, entity=w.get("entity"), group=w.get("group"), job_type=w.get("job_type"),
                tags=list(w.get("tags") or []), log_model=w.get("log_model", False),
                save_dir=str(self.output_dir), id=wandb_run_id(self.output_dir, self.cfg.paths.output_root),
                name="/".join(self.output_dir.parts[-3:]), offline=(mode == "offline"), resume="allow",
            )
            self._wandb.log_hyperparams(OmegaConf.to_container(self.cfg, resolve=True))
            log.info("W&B run %s (%s) in %s", self._wandb.version, mode, self.output_dir)
        return self._wandb

    def for_stage(self, stage: str) -> list[Any]:
        loggers: list[Any] = []
        if self.wandb is not None:
            loggers.append(self.wandb)
        if "csv" in self.spec:
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(save_dir=str(self.output_dir), name="csv", version=stage))
        return loggers

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final numbers (``eval/*``, timings) into the W&B run summary, where Table I is read from."""
        if self.wandb is not None:
            for key, value in metrics.items():
                self.wandb.experiment.summary[key] = value

    def close(self) -> None:
        finish_wandb()
        self._wandb = None


def finish_wandb(exit_code: int | None = None) -> None:
    """Close the active W&B run, if any (safe to call when wandb was never imported)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
