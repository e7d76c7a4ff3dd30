"""The pipeline's evaluate step on a prepared job directory (smoke config), then the table builder on its output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_models import single_thread
from PIL import Image

_threads = pytest.fixture(autouse=True)(single_thread)
ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box"


def test_evaluate_step_writes_metrics_the_table_builder_reads(compose, tmp_path):
    from cg_lightning.evaluation import tables as T
    from cg_lightning.evaluation.metrics import release_eval_models
    from cg_lightning.gaussians.model import GaussianModel
    from cg_lightning.gaussians.ply import save_ply
    from cg_lightning.runtime.context import JobContext
    from cg_lightning.runtime.layout import JobLayout
    from cg_lightning.runtime.loggers import JobLoggers
    from cg_lightning.runtime.state import JobState
    from cg_lightning.steps.evaluate import run_evaluate, write_metrics

    job = tmp_path / "outputs" / "box_rgba" / "smoke" / "seed0"
    cfg = compose(["+experiment=smoke", f"image={BOX / 'box_rgba.png'}"], run_dir=job)
    assert cfg.evaluation.views == 2 and cfg.evaluation.mesh_renderer == "torch"
    layout = JobLayout(job)
    layout.model_glb.parent.mkdir(parents=True)
    shutil.copy(BOX / "model.glb", layout.model_glb)          # the true object as the "final mesh"
    layout.gaussians_ply.parent.mkdir(parents=True)
    save_ply(layout.gaussians_ply, GaussianModel.random_ball(num_points=300,
                                                              generator=torch.Generator().manual_seed(0)))
    state = JobState(job)
    for stage, seconds in (("stage1", 12.0), ("stage2", 3.0)):  # as the pipeline records a finished stage
        state.end_stage(stage, seconds)
        state.mark_done(stage, seconds)
    ctx = JobContext(cfg=cfg, layout=layout, device=torch.device("cpu"), loggers=JobLoggers(cfg, job), state=state)
    ctx.reference_rgba = np.asarray(Image.open(BOX / "box_rgba.png").convert("RGBA"))
    try:
        run_evaluate(ctx)
        write_metrics(ctx)
    finally:
        release_eval_models()
    metrics = json.loads(layout.metrics.read_text())
    assert metrics["eval/lpips"] < 0.02                       # true mesh, pixel-aligned reference view
    assert metrics["eval/stage1_lpips"] > metrics["eval/lpips"] + 0.02   # a random ball is not the box
    for key in ("eval/clip_similarity", "eval/stage1_clip_similarity"):
        assert -1.0 <= metrics[key] <= 1.0
    assert metrics["time/total_s"] == pytest.approx(15.0)

    report = T.build_report(T.discover_jobs([tmp_path / "outputs"]), T.load_paper_numbers(
        ROOT / "experiments" / "paper_numbers.yaml"), tmp_path / "tables", plot=False)
    other = next(t for t in report.tables if t.name == "other")
    summary = other.rows[0]["summary"]
    assert other.rows[0]["experiment"] == "smoke"
    assert summary.stats["eval/lpips"].mean == pytest.approx(metrics["eval/lpips"])
