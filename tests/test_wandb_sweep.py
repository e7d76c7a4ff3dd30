"""Sweep level: the table builder's W&B run (read back from its offline files) and the submitit job folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from cg_lightning.runtime.wandb_records import read_run

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("wandb")
WAIT_S = 60.0   # the wandb service may still be flushing a run that was just finished


def _job(root: Path, image: str, exp: str, seed: int, metrics: dict | None, device: str = "cuda:0",
         failed: str | None = None) -> Path:
    d = root / image / exp / f"seed{seed}"
    (d / "input").mkdir(parents=True)
    (d / "config_resolved.yaml").write_text(f"experiment_name: {exp}\nprior: {{_target_: x.Zero123Prior}}\n")
    (d / "provenance.json").write_text(json.dumps({"device": device, "device_name": "NVIDIA H200"}))
    from PIL import Image

    Image.new("RGBA", (32, 32), (200, 50, 50, 255)).save(d / "input" / "preprocessed_rgba.png")
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if failed:
        (d / "FAILED").write_text(failed + "\n")
    return d


def _sweep(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    for i, image in enumerate(("anya_rgba", "zelda_rgba")):
        for seed in (0, 1):
            _job(root, image, "full", seed, {"eval/lpips": 0.3 + 0.01 * i, "eval/clip_similarity": 0.8,
                                             "time/total_s": 80.0 + seed, "memory/peak_gpu_gb": 7.0})
            _job(root, image, "dreamgaussian", seed, {"eval/lpips": 0.4, "eval/clip_similarity": 0.6,
                                                      "time/total_s": 60.0, "memory/peak_gpu_gb": 5.0})
    _job(root, "anya_rgba", "no_sr", 0, None, failed="InputImageError (user error): Input file is not a readable image")
    # what Hydra leaves in the sweep dir: the sweep's config, with its overrides and the chosen +sweep
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["+sweep=table1", "hydra/launcher=slurm"]},
        "sweeper": {"params": {"+experiment": "full,dreamgaussian", "seed": "0,1"}},
        "runtime": {"choices": {"sweep": "table1", "hydra/launcher": "slurm"}}}}))
    return root


def _cli():
    spec = importlib.util.spec_from_file_location("build_tables", ROOT / "experiments" / "build_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tables_run_is_tied_to_the_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = _sweep(tmp_path)
    out = tmp_path / "tables"
    assert _cli().main([str(root), "--out", str(out), "--wandb-log", "cg-test"]) == 0
    assert "logged to W&B" in capsys.readouterr().out
    run = read_run(out / "wandb", wait_s=WAIT_S)
    assert run.id.startswith("tables-") and run.name == "tables: table1" and run.group == "sweep:table1"
    assert set(run.tags) == {"tables", "sweep:table1"} and run.job_type == "tables" and run.exit_code == 0
    sweep = run.config["sweep"]
    assert sweep["name"] == "table1" and sweep["sweeps"][0]["overrides"] == ["+sweep=table1", "hydra/launcher=slurm"]
    assert sweep["sweeps"][0]["params"]["seed"] == "0,1"
    assert len(run.config["git"]["commit"]) == 40                   # git info of the code that built the tables
    assert run.config["jobs"] == {"total": 9, "done": 8, "failed": 1, "incomplete": 0}
    kinds = {k: run.rows_with(k)[0][k]["_type"] for k in run.media_keys()}
    for key in ("jobs", "failed_jobs", "table1/table", "table2/table"):
        assert kinds[key] == "table-file", key
    assert kinds["table1/plot"] == "image-file"
    assert run.history[0]["jobs"]["nrows"] == 9 and run.history[0]["failed_jobs"]["nrows"] == 1
    # bar charts (ours vs paper): a chart table per metric, and the chart spec in the config
    assert {"table1/lpips_table", "table1/clip_similarity_table", "table1/time_s_table",
            "table2/lpips_table"} <= set(kinds)
    charts = json.dumps(run.config.get("_wandb", {}))
    assert "table1/lpips" in charts
    assert run.summary["jobs/failed"] == 1

    # the per-job table: one row per job with its thumbnail and every metric
    table = run.table("jobs")
    columns = table["columns"]
    assert {"image", "experiment", "seed", "status", "device", "scale", "input", "eval/lpips",
            "memory/peak_gpu_gb"} <= set(columns)
    rows = [dict(zip(columns, r, strict=True)) for r in table["data"]]
    assert len(rows) == 9 and all(r["input"]["_type"] == "image-file" for r in rows)
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["experiment"] == "no_sr" and failed["error"].startswith("InputImageError")

    # re-building the tables of the same sweep logs into the same run
    assert _cli().main([str(root), "--out", str(out), "--wandb-log", "cg-test", "--no-plot"]) == 0
    # the run id from each file's name (run-<id>.wandb): two runs started in the same second get a "-1" folder suffix
    runs = {p.stem.removeprefix("run-") for p in (out / "wandb").rglob("*.wandb")}
    assert len(list((out / "wandb").rglob("*.wandb"))) == 2 and runs == {run.id}


def test_local_submitit_launcher_leaves_no_literal_job_id_folder(compose, tmp_path):
    submitit = pytest.importorskip("submitit")
    cfg = compose(["hydra/launcher=local", "image=x.png"])
    folder = str(cfg.hydra.launcher.submitit_folder).replace(str(cfg.hydra.sweep.dir), str(tmp_path / "sweep"))
    assert "%j" not in folder
    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    executor.update_parameters(timeout_min=1)
    job = executor.submit(sum, [1, 2])
    assert job.result() == 3
    assert not [p for p in (tmp_path / "sweep").rglob("*") if "%" in p.name]
    assert (Path(folder) / f"{job.job_id}_0_log.out").is_file()
