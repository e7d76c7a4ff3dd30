"""Build the Lightning Trainer of a stage: checkpoints that survive a kill, resume from ``last.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from cg_lightning.runtime.device import lightning_accelerator
from cg_lightning.utils.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file + rename: a SIGKILL mid-save leaves the previous ``last.ckpt`` intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def checkpoint_dir(output_dir: Path, stage: str) -> Path:
    return Path(output_dir) / stage / "ckpts"


def last_checkpoint(output_dir: Path, stage: str) -> Path | None:
    path = checkpoint_dir(output_dir, stage) / "last.ckpt"
    return path if path.is_file() else None


def build_trainer(cfg: DictConfig, *, stage: str, max_steps: int, output_dir: Path, device: torch.device,
                  loggers: list[Any], extra_callbacks: list[Any] | None = None) -> Trainer:
    """One Trainer per stage; ``last.ckpt`` every ``callbacks.checkpoint_every_n_steps`` and at the end."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") else {}
    kwargs.pop("max_steps", None)
    kwargs.update(lightning_accelerator(device))
    ckpt = ModelCheckpoint(
        dirpath=str(checkpoint_dir(output_dir, stage)), filename="step{step:05d}", save_last=True, save_top_k=0,
        every_n_train_steps=max(1, int(cfg.callbacks.checkpoint_every_n_steps)), save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
    )
    return Trainer(
        max_steps=max_steps, max_epochs=-1, logger=loggers or False,
        callbacks=[ckpt, *(extra_callbacks or [])], plugins=[AtomicCheckpointIO()],
        default_root_dir=str(Path(output_dir) / stage), num_sanity_val_steps=0,
        **kwargs,
    )


def fit_resumable(trainer: Trainer, module, *, output_dir: Path, stage: str, resume: str) -> None:
    """``resume=auto``: continue from this stage's ``last.ckpt`` when there is one; ``never``: start fresh."""
    ckpt = last_checkpoint(output_dir, stage) if resume == "auto" else None
    trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
