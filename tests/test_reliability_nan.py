"""NaN/inf through the pipeline: a NaN loss is skipped then fatal, NaN Gaussians stop the run; either way the run ends
with one clear :class:`NonFiniteError` (marked FAILED) and ``last.ckpt`` still holds the last good, finite state.

(Step skipping itself is tested on the stage in tests/test_stage1_stage.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny_models import single_thread

from cg_lightning.errors import NonFiniteError
from cg_lightning.runtime.trainer import AtomicCheckpointIO, non_finite_entries

_threads = pytest.fixture(autouse=True)(single_thread)
ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box" / "box_rgba.png"
TINY_STAGE1 = ["+experiment=smoke", f"image={BOX}", "stages=[stage1]", "stage1.steps=6", "stage1.num_points=300",
               "stage1.ref_size=32", "stage1.views.resolution.values=[32,32]", "stage1.views.batch_size=1",
               "loss=dreamgaussian", "preprocess=none", "trainer.enable_progress_bar=false", "logger=none",
               "callbacks.checkpoint_every_n_steps=1"]


def load_last(job: Path) -> dict:
    return torch.load(job / "stage1" / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)


def assert_stopped_cleanly(job: Path, expected_step: int) -> dict:
    ckpt = load_last(job)
    assert ckpt["global_step"] == expected_step
    assert non_finite_entries(ckpt) == []
    assert (job / "FAILED").read_text().startswith("NonFiniteError (user error)")
    assert not (job / "stage1" / "point_cloud.ply").exists() and not (job / "DONE").exists()
    return ckpt


def test_nan_gaussians_stop_the_run_and_keep_the_last_good_checkpoint(compose, tmp_path, monkeypatch):
    from cg_lightning.pipeline import run
    from cg_lightning.stages.gaussian_stage import GaussianStage

    original = GaussianStage.training_step

    def poison_at_step_2(self, batch, batch_idx):
        if self.global_step == 2:
            with torch.no_grad():
                self.gaussians.opacity[:5] = float("nan")   # e.g. an overflow inside the optimiser
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GaussianStage, "training_step", poison_at_step_2)
    job = tmp_path / "job"
    with pytest.raises(NonFiniteError, match=r"NaN/inf .*gaussians\.opacity") as info:
        run(compose(TINY_STAGE1, run_dir=job))
    assert "last good one is kept" in str(info.value)
    assert_stopped_cleanly(job, expected_step=2)


def test_nan_loss_steps_are_skipped_then_fatal_through_the_pipeline(compose, tmp_path, monkeypatch):
    from cg_lightning.losses import ReferenceRGBLoss
    from cg_lightning.pipeline import run

    original = ReferenceRGBLoss.forward
    seen: list[int] = []

    def nan_from_step_2(self, ctx, logs):
        seen.append(ctx.step)
        value = original(self, ctx, logs)
        return value * float("nan") if ctx.step >= 2 else value

    monkeypatch.setattr(ReferenceRGBLoss, "forward", nan_from_step_2)
    job = tmp_path / "job"
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        run(compose([*TINY_STAGE1, "stage1.max_consecutive_bad_steps=2"], run_dir=job))
    assert seen == [0, 1, 2, 3]                  # step 2 skipped, step 3 the second bad one in a row
    ckpt = assert_stopped_cleanly(job, expected_step=3)
    assert ckpt["stage1"]["skipped_steps"] == 1  # the checkpoint after the skipped step: same (finite) weights


def test_checkpoint_with_nan_is_never_written(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    good = {"global_step": 4, "state_dict": {"w": torch.ones(3)}, "optimizer_states": [{"state": {0: {
        "exp_avg": torch.zeros(3)}}}]}
    io.save_checkpoint(good, path)
    bad_weights = {**good, "global_step": 5, "state_dict": {"w": torch.tensor([1.0, float("nan"), 1.0])}}
    bad_adam = {**good, "global_step": 6, "optimizer_states": [{"state": {0: {"exp_avg": torch.full((3,), float("inf"))}}}]}
    for bad, name in ((bad_weights, "state_dict.w"), (bad_adam, "optimizer_states[0].state.0.exp_avg")):
        with pytest.raises(NonFiniteError, match=name.replace("[", r"\[").replace("]", r"\]")):
            io.save_checkpoint(bad, path)
    assert torch.load(path, weights_only=False)["global_step"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    # integer tensors and empty ones are fine
    io.save_checkpoint({**good, "state_dict": {"n": torch.tensor([3]), "e": torch.zeros(0)}}, path)
