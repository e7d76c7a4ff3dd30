"""Experiment loggers: one W&B run per job (shared by both stages), or CSV, or none.

Why these rules (see the frameworks reference and README "Reviewing results in W&B"):

- the run id is derived from the output root, the job directory and the job identity, so a SLURM requeue or a
  resumed job continues the *same* run, while the same relative job under another output root is another run;
- the name, group and tags say what the run is (image / experiment / overrides; sweep, debug, device, prior), so a
  reviewer can group and filter a sweep without opening runs; the config holds the resolved config, the Hydra
  overrides and the provenance (git, versions, device);
- each stage plots against its own step metric (``stage1/step``, ``stage2/step``: the number of optimisation steps
  applied to what a row shows), declared with ``define_metric``: both stages start at 0 and every image, video and
  mesh is logged at the step it shows;
- offline mode is chosen automatically without an API key, so jobs never block on a login prompt;
- a failed job still leaves a run, finished with exit code 1 and the error in its summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from omegaconf import DictConfig, OmegaConf

from cg_lightning.errors import ConfigError
from cg_lightning.runtime.job_info import job_scale

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")
# keys that are products of a stage but not named after it, and the step metric they are plotted against
_EXTRA_STEP_METRICS = {"mesh/*": "stage1/step"}


def step_metric(stage: str) -> str:
    """The x-axis of a stage's keys in W&B."""
    return f"{stage}/step"


# ---------------------------------------------------------------------------------------------------- identity
def _relative_job_dir(output_dir: str | Path, output_root: str | Path | None) -> Path:
    p = Path(output_dir).resolve()
    if output_root is not None:
        try:
            return p.relative_to(Path(output_root).resolve())
        except ValueError:
            pass
    return Path(p.name)


def wandb_run_id(output_dir: str | Path, output_root: str | Path | None = None, identity: str = "") -> str:
    """Stable W&B id of a job: hash of (absolute output root, job directory relative to it, identity hash).

    The same job re-run, requeued or resumed gets the same id; another output root or another job identity (e.g. a
    different input image with the same file name) gets another one.
    """
    root = str(Path(output_root).resolve()) if output_root is not None else ""
    key = "\n".join((root, str(_relative_job_dir(output_dir, output_root)), identity))
    return "cg-" + hashlib.sha1(key.encode()).hexdigest()[:16]


def _job_identity_hash(cfg: DictConfig, output_dir: str | Path) -> str:
    """The job's identity hash (``runtime/identity.py``: input content + result-changing config): the one recorded
    in ``<job>/job.json``, else computed; a hash of the image path when it cannot be (unreadable input)."""
    try:
        from cg_lightning.runtime.identity import identity_hash, job_identity, read_job_record

        record = read_job_record(output_dir)
        if record and record.get("identity_hash"):
            return str(record["identity_hash"])
        return str(identity_hash(job_identity(cfg, cfg.get("image"))))
    except Exception:  # noqa: BLE001 - e.g. a missing image: the job fails on it itself, the run must still exist
        return "path-" + hashlib.sha1(str(Path(str(cfg.get("image", ""))).resolve()).encode()).hexdigest()[:12]


def _hydra_runtime() -> tuple[dict[str, str], list[str], bool]:
    """(config-group choices, task overrides, is multirun) of the running Hydra job; empty outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return {}, [], False
        hc = HydraConfig.get()
        choices = {str(k): str(v) for k, v in (hc.runtime.choices or {}).items() if v is not None}
        return choices, [str(o) for o in hc.overrides.task], hc.mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - an incomplete Hydra config (tests): no runtime info
        return {}, [], False


def device_kind(cfg: DictConfig) -> str:
    """``cuda`` or ``cpu``: what ``device`` resolves to on this machine (never raises)."""
    try:
        from cg_lightning.runtime.device import resolve_device

        return resolve_device(str(cfg.get("device", "auto"))).type
    except Exception:  # noqa: BLE001 - an invalid device is reported by the job itself
        return "unknown"


def run_naming(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Id, name, group, tags and the ``job`` config block of the W&B run of one job."""
    root = cfg.get("paths", {}).get("output_root")
    rel = _relative_job_dir(output_dir, root)
    experiment = str(cfg.get("experiment_name", "custom"))
    parts = rel.parts
    # <image-stem>/<experiment>/seed<N>[/<override-subdir>...]: the suffix is what makes this job a variant
    suffix = "/".join(parts[3:]) if len(parts) > 3 and parts[2].startswith("seed") else ""
    choices, overrides, multirun = _hydra_runtime()
    scale = job_scale(cfg, choices, suffix)
    device = device_kind(cfg)
    prior = choices.get("prior") or str((cfg.get("prior") or {}).get("_target_", "none")).rsplit(".", 1)[-1]
    tags = [f"experiment:{experiment}", f"scale:{scale}", f"device:{device}", f"prior:{prior}",
            "sweep:" + choices["sweep"] if choices.get("sweep") else ("multirun" if multirun else "single-run")]
    if choices.get("debug"):
        tags.append(f"debug:{choices['debug']}")
    identity = _job_identity_hash(cfg, output_dir)
    return {
        "id": wandb_run_id(output_dir, root, identity),
        "name": str(rel),
        "group": experiment + (f"[{suffix}]" if suffix else ""),
        "tags": [t[:64] for t in dict.fromkeys(tags)],
        "job": {"dir": str(Path(output_dir).resolve()), "relative_dir": str(rel), "image_stem": parts[0] if
                len(parts) > 2 else "", "experiment": experiment, "variant": suffix, "seed": cfg.get("seed"),
                "scale": scale, "device": device, "sweep": choices.get("sweep"), "debug": choices.get("debug"),
                "prior": prior, "identity": identity},
        "overrides": overrides,
        "choices": choices,
    }


def _provenance(device: str) -> dict[str, Any]:
    """``runtime/provenance.py``'s record when available, else git commit and package versions."""
    try:
        from cg_lightning.runtime.provenance import collect_provenance
    except ImportError:
        return _minimal_provenance(device)
    try:
        import torch

        return dict(collect_provenance(torch.device(device if device != "unknown" else "cpu")))
    except Exception as exc:  # noqa: BLE001 - provenance must never fail a job
        log.warning("provenance could not be collected: %s", exc)
        return _minimal_provenance(device)


def _minimal_provenance(device: str) -> dict[str, Any]:
    import platform
    import subprocess

    import torch

    here = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    info: dict[str, Any] = {"git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
                            "python": platform.python_version(), "torch": torch.__version__,
                            "host": platform.node(), "device": {"type": device}}
    if device == "cuda" and torch.cuda.is_available():
        info["device"]["name"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------------- mode
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


# ---------------------------------------------------------------------------------------------------- Lightning
def _stage_wandb_logger_class():
    from lightning.pytorch.loggers import WandbLogger

    class StageWandbLogger(WandbLogger):
        """The job's W&B run as one stage's Lightning logger: rows carry ``<stage>/step`` instead of
        ``trainer/global_step`` (which restarts in every stage), and Lightning's constant ``epoch`` is dropped."""

        def __init__(self, run: Any, stage: str) -> None:
            super().__init__(experiment=run)
            self.stage = stage

        def log_hyperparams(self, params: Any) -> None:  # the run config already holds the resolved config
            pass

        def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
            payload = {k: v for k, v in metrics.items() if k not in ("epoch", "trainer/global_step")}
            if step is not None:
                payload[step_metric(self.stage)] = int(step)
            self.experiment.log(payload)

    return StageWandbLogger


class LogLastStep(Callback):
    """Makes Lightning hand the last step's metrics to the loggers: it only does so every ``log_every_n_steps``
    (or when ``should_stop``), so a stage shorter than that, or not a multiple of it, would lose its final values."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


# ---------------------------------------------------------------------------------------------------- the job
class JobLoggers:
    """Creates the loggers of one job; stage trainers ask for theirs with :meth:`for_stage`, the pipeline steps log
    media with :meth:`log_media`."""

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self._run = None
        self._closed = False
        spec = cfg.get("logger") or {}
        unknown = set(spec.keys()) - {"wandb", "csv"}
        if unknown:
            raise ConfigError(f"logger: unknown logger(s) {sorted(unknown)}; use logger=wandb, logger=csv or logger=none")
        self.spec = spec

    # ------------------------------------------------------------------------------------------ the W&B run
    @property
    def run(self):
        """The job's W&B run (created on first use), or None when W&B is not configured / disabled / closed."""
        if self._run is None and not self._closed and "wandb" in self.spec:
            w = self.spec.wandb
            mode = wandb_mode(w.get("mode", "auto"))
            if mode == "disabled":
                return None
            self._run = self._init_run(w, mode)
        return self._run

    @property
    def wandb(self):
        """The job's W&B run (kept for callers of the old name)."""
        return self.run

    def _init_run(self, w: DictConfig, mode: str):
        import wandb

        naming = run_naming(self.cfg, self.output_dir)
        config = OmegaConf.to_container(self.cfg, resolve=True)
        config.update({"job": naming["job"], "hydra_overrides": naming["overrides"],
                       "hydra_choices": naming["choices"], "provenance": _provenance(naming["job"]["device"])})
        run = wandb.init(
            project=w.project, entity=w.get("entity"), id=naming["id"], name=w.get("name") or naming["name"],
            group=w.get("group") or naming["group"], job_type=w.get("job_type"),
            tags=list(dict.fromkeys([*naming["tags"], *(str(t)[:64] for t in (w.get("tags") or []))])), config=config, dir=str(self.output_dir), mode=mode, resume="allow",
            reinit="finish_previous", allow_val_change=True,
        )
        for stage in STAGES:
            run.define_metric(step_metric(stage))
            run.define_metric(f"{stage}/*", step_metric=step_metric(stage))
        for pattern, metric in _EXTRA_STEP_METRICS.items():
            run.define_metric(pattern, step_metric=metric)
        log.info("W&B run %s (%s, group %s) in %s", naming["id"], mode, naming["group"], self.output_dir)
        return run

    # ------------------------------------------------------------------------------------------ Lightning
    def for_stage(self, stage: str) -> list[Any]:
        loggers: list[Any] = []
        if self.run is not None:
            loggers.append(_stage_wandb_logger_class()(self.run, stage))
        if "csv" in self.spec:
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(save_dir=str(self.output_dir), name="csv", version=stage))
        return loggers

    def callbacks(self) -> list[Callback]:
        """Trainer callbacks the loggers need (the last step of a stage is always logged)."""
        return [LogLastStep()]

    # ------------------------------------------------------------------------------------------ media and results
    def log_media(self, payload: Mapping[str, Any], *, stage: str | None = None, step: int | None = None) -> None:
        """Log media (``wandb.Image`` / ``Video`` / ``Object3D`` / ``Table``) into the run, at ``<stage>/step``
        ``step`` when given (the step the media shows). A no-op without a W&B run."""
        if self.run is None or not payload:
            return
        row = dict(payload)
        if stage is not None and step is not None:
            row[step_metric(stage)] = int(step)
        self.run.log(row)

    def log_input(self) -> None:
        """The input pair: the preprocessed image (what is scored against) and the reference the stages fit."""
        if self.run is None:
            return
        from cg_lightning.runtime import wandb_media

        self.log_media(wandb_media.input_images(self.output_dir))

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final numbers (``eval/*``, timings, memory) into the run summary (where Table I is read from), plus the
        evaluation renders behind them and a one-row table of the job's metrics with the input thumbnail."""
        if self.run is None:
            return
        from cg_lightning.runtime import wandb_media

        for key, value in metrics.items():
            self.run.summary[key] = value
        try:  # the text entries of metrics.json too, e.g. eval/scored_mesh (which mesh the scores are of)
            stored = json.loads((self.output_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            stored = {}
        for key, value in stored.items():
            if isinstance(value, str):
                self.run.summary[key] = value
        self.run.summary["status"] = "finished"
        try:
            self.log_media(wandb_media.evaluation_renders(self.cfg, self.output_dir))
        except Exception as exc:  # noqa: BLE001 - a picture must never fail a finished job
            log.warning("W&B: evaluation renders not logged: %s", exc)
        self.log_media({"job/metrics": wandb_media.metrics_table(self.cfg, self.output_dir, metrics,
                                                                 run_naming(self.cfg, self.output_dir)["job"])})

    def fail(self, exc: BaseException) -> None:
        """End the run as failed with the error in its summary (creates the run if the job failed before it)."""
        try:
            run = self.run
        except Exception as inner:  # noqa: BLE001 - e.g. a bad logger.wandb.mode: the job's own error wins
            log.warning("W&B: could not record the failure: %s", inner)
            return
        if run is None:
            return
        first = (str(exc).strip().splitlines() or [""])[0]
        run.summary.update({"status": "failed", "error": f"{type(exc).__name__}: {first}"[:1000],
                            "error_type": type(exc).__name__})
        self._finish(exit_code=1)

    def _finish(self, exit_code: int | None = None) -> None:
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
        self._run, self._closed = None, True

    def close(self) -> None:
        """Finish the run. Called in a ``finally``: an exception on its way out marks the run failed (an
        interruption, SIGTERM or Ctrl-C, ends it with the interruption's status so a re-run can resume it)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, Exception):
            self.fail(exc)      # also when the job failed before anything was logged: the run is created for it
        elif exc is None or self._run is None:
            self._finish()
        else:
            self._run.summary["status"] = "interrupted"
            code = getattr(exc, "code", None)
            self._finish(exit_code=code if isinstance(code, int) and code else 143)


def finish_wandb(exit_code: int | None = None) -> None:
    """Close the active W&B run, if any (safe to call when wandb was never imported)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
