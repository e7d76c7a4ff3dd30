"""The whole pipeline once on CPU (tiny prior): outputs layout, metrics, and a re-run that skips the finished job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_every_output_and_rerun_skips(tmp_path, example_image):
    args = [sys.executable, "launch.py", "+experiment=smoke", f"image={example_image}",
            f"paths.output_root={tmp_path}"]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    job = tmp_path / example_image.stem / "smoke" / "seed0"
    for rel in ["DONE", "config_resolved.yaml", "cmd.txt", "job.log", ".hydra/config.yaml",
                "input/preprocessed_rgba.png", "input/reference_rgba.png", "stage1/ckpts/last.ckpt",
                "stage1/point_cloud.ply", "stage1/turntable.mp4", "mesh/coarse.obj", "mesh/coarse_albedo.png",
                "mesh/coarse.glb", "stage2/ckpts/last.ckpt", "stage2/model.obj", "stage2/model.mtl",
                "stage2/model_albedo.png", "stage2/model.glb", "stage2/turntable.mp4", "metrics.json"]:
        assert (job / rel).is_file() and (job / rel).stat().st_size > 0, rel
    metrics = json.loads((job / "metrics.json").read_text())
    assert 0 <= metrics["eval/lpips"] <= 1 and -1 <= metrics["eval/clip_similarity"] <= 1
    assert metrics["time/stage1_s"] > 0 and metrics["stage1/final_num_gaussians"] > 0
    state = json.loads((job / "state.json").read_text())
    assert state["completed"] == ["input", "stage1", "mesh", "stage2", "export", "evaluate"]

    mtime = (job / "stage2" / "model.glb").stat().st_mtime_ns
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "job already finished" in (job / "job.log").read_text()
    assert (job / "stage2" / "model.glb").stat().st_mtime_ns == mtime
    assert json.loads((job / "metrics.json").read_text()) == metrics
