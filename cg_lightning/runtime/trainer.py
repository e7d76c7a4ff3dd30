"""Build the Lightning Trainer of a stage: checkpoints that survive a kill, resume from ``last.ckpt``.

Guarantees (each has a test in ``tests/test_reliability_*``):
- a checkpoint is written to a temp file and renamed: a SIGKILL mid-save leaves the previous ``last.ckpt`` intact;
- a checkpoint holding NaN/inf weights or optimiser state is never written: the run stops with
  :class:`NonFiniteError` and the last good ``last.ckpt`` stays;
- SIGTERM stops after the current step with a fresh ``last.ckpt`` (:class:`SaveOnSigterm`);
- a re-run resumes from ``last.ckpt`` and says so in the log; an unreadable one is set aside and the stage restarts.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cg_lightning.errors import NonFiniteError, OutputError
from cg_lightning.runtime.device import lightning_accelerator
from cg_lightning.runtime.seeding import seed_all
from cg_lightning.runtime.task import RESUME_HINT, defer_sigterm
from cg_lightning.utils.atomic import atomic_path

log = logging.getLogger(__name__)


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}[{i}]")


def non_finite_entries(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of the weights / optimiser state that hold NaN or inf."""
    parts = {"state_dict": checkpoint.get("state_dict", {}), "optimizer_states": checkpoint.get("optimizer_states", [])}
    return [name for name, t in _tensors(parts)
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())]


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file + rename; refuses to replace a good checkpoint by one with NaN/inf in it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        bad = non_finite_entries(checkpoint)
        if bad:
            step = checkpoint.get("global_step", "?")
            raise NonFiniteError(
                f"The model became NaN/inf at step {step} ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}); "
                f"the checkpoint was not written, the last good one is kept in {Path(path).parent}. Lower the "
                f"learning rates or loss weights, check the input image, then re-run (resume=never to start over).")
        with atomic_path(path) as tmp:
            try:
                torch.save(checkpoint, tmp)
            except RuntimeError as exc:
                # torch's zip writer turns ENOSPC/EDQUOT into e.g. "[enforce fail at inline_container.cc] unexpected
                # pos": no errno to go by, so judge by the writer's message and the space left right now
                free_mb = shutil.disk_usage(tmp.parent).free / 2**20
                if "inline_container" in str(exc) or "write" in str(exc).lower() or free_mb < 1:
                    raise OutputError(f"Could not write the checkpoint {path} ({exc}); {free_mb:.0f} MB free there "
                                      f"- is the disk full or the quota exceeded? Free space or set "
                                      f"paths.output_root elsewhere, then {RESUME_HINT}.") from exc
                raise


class SaveOnSigterm(Callback):
    """Lightning stops at the end of the step after a SIGTERM (``SIGTERMException``); save ``last.ckpt`` there so the
    re-run loses nothing. Other exceptions save nothing: the state may be mid-update."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            trainer.save_checkpoint(str(self.path))
            log.warning("SIGTERM: saved %s at step %d", self.path, trainer.global_step)


class ReseedEachStep(Callback):
    """Seed torch / NumPy / Python from ``(seed, stage, step)`` before every training step (and at fit start), so a
    stage resumed from ``last.ckpt`` draws what the uninterrupted run drew (SDS / refine noise, timesteps) whatever
    ran before it in this process. A module that reseeds itself (``reseed_each_step``, stage 1) is left alone."""

    def __init__(self, seed: int, stage: str) -> None:
        self.seed, self.stage = int(seed), stage

    @staticmethod
    def _own(pl_module: Any) -> bool:
        return bool(getattr(pl_module, "reseed_each_step", False))

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        if not self._own(pl_module):
            seed_all(self.seed, self.stage, "fit_start")

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._own(pl_module):
            seed_all(self.seed, self.stage, "step", int(trainer.global_step))


def checkpoint_dir(output_dir: Path, stage: str) -> Path:
    return Path(output_dir) / stage / "ckpts"


def last_checkpoint(output_dir: Path, stage: str) -> Path | None:
    path = checkpoint_dir(output_dir, stage) / "last.ckpt"
    return path if path.is_file() else None


def checkpoint_step(path: Path) -> int | None:
    """``global_step`` stored in a checkpoint, or None if the file cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - any unreadable file is treated the same way
        return None


def resume_checkpoint(output_dir: Path, stage: str, resume: str) -> Path | None:
    """The checkpoint to resume ``stage`` from (``resume=auto``), or None to start fresh.

    A ``last.ckpt`` that cannot be read (copied half, foreign file) is renamed ``last.unreadable-<time>.ckpt`` and the
    stage restarts, rather than failing every re-run.
    """
    if resume != "auto":
        return None
    path = last_checkpoint(output_dir, stage)
    if path is None:
        return None
    step = checkpoint_step(path)
    if step is None:
        aside = path.with_name(f"last.unreadable-{time.strftime('%Y%m%d-%H%M%S')}.ckpt")
        path.rename(aside)
        log.warning("%s: %s cannot be read; moved it to %s and starting the stage from scratch", stage, path, aside)
        return None
    log.info("%s: resuming from %s (step %d)", stage, path, step)
    return path


def build_trainer(cfg: DictConfig, *, stage: str, max_steps: int, output_dir: Path, device: torch.device,
                  loggers: list[Any], extra_callbacks: list[Any] | None = None) -> Trainer:
    """One Trainer per stage; ``last.ckpt`` every ``callbacks.checkpoint_every_n_steps``, at the end and on SIGTERM."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") else {}
    kwargs.pop("max_steps", None)
    kwargs.update(lightning_accelerator(device))
    ckpt_dir = checkpoint_dir(output_dir, stage)
    ckpt = ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="step{step:05d}", save_last=True, save_top_k=0,
        every_n_train_steps=max(1, int(cfg.callbacks.checkpoint_every_n_steps)), save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,   # always overwrite last.ckpt: never a last-v1.ckpt beside a stale last.ckpt
    )
    return Trainer(
        max_steps=max_steps, max_epochs=-1, logger=loggers or False,
        callbacks=[ckpt, SaveOnSigterm(ckpt_dir / "last.ckpt"), ReseedEachStep(int(cfg.seed), stage),
                   *(extra_callbacks or [])],
        plugins=[AtomicCheckpointIO()], default_root_dir=str(Path(output_dir) / stage), num_sanity_val_steps=0,
        **kwargs,
    )


def fit_resumable(trainer: Trainer, module, *, output_dir: Path, stage: str, resume: str) -> None:
    """``resume=auto``: continue from this stage's ``last.ckpt`` when there is one; ``never``: start fresh.

    SIGTERM during the fit stops it after the current step (see :func:`~cg_lightning.runtime.task.defer_sigterm`).
    """
    ckpt = resume_checkpoint(output_dir, stage, resume)
    with defer_sigterm():
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
