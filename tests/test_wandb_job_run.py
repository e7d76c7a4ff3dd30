"""The W&B run of a job, read back from the real offline transaction log (``run-<id>.wandb``).

Fast tests drive :class:`JobLoggers` directly (a real offline wandb run, a real Lightning fit of a trivial module);
the slow test runs the whole smoke pipeline and checks every item a reviewer looks at, at the step it shows.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from cg_lightning.runtime.loggers import JobLoggers, run_naming
from cg_lightning.runtime.wandb_records import iter_raw_records, read_run

pytest.importorskip("wandb")
WAIT_S = 60.0   # the wandb service may still be flushing a run that was just finished


def _job_cfg(compose, image, job_dir: Path, *extra: str):
    """The smoke experiment with W&B, for the job directory ``<tmp>/outputs/<stem>/smoke/seed0``."""
    return compose(["+experiment=smoke", f"image={image}", "logger=wandb", *extra], run_dir=job_dir)


# ------------------------------------------------------------------------------------------------ identity
def test_run_naming_separates_output_roots_and_names_variants(compose, example_image, tmp_path):
    cfg = compose(["+experiment=full", f"image={example_image}"])
    rel = Path("box_rgba") / "full" / "seed0"
    with open_dict(cfg):
        cfg.paths.output_root = str(tmp_path / "a")
    a = run_naming(cfg, tmp_path / "a" / rel)
    assert a["id"] == run_naming(cfg, tmp_path / "a" / rel)["id"]            # a requeue / resume: the same run
    with open_dict(cfg):
        cfg.paths.output_root = str(tmp_path / "b")
    b = run_naming(cfg, tmp_path / "b" / rel)
    assert a["id"] != b["id"]                                                # same job under another root
    assert a["name"] == "box_rgba/full/seed0" and a["group"] == "full"

    variant = run_naming(cfg, tmp_path / "b" / rel / "stage1.steps=6")
    assert variant["name"] == "box_rgba/full/seed0/stage1.steps=6"          # the image stays in the name
    assert variant["group"] == "full[stage1.steps=6]"                         # never joins plain `full`
    assert variant["id"] not in (a["id"], b["id"])
    assert variant["job"]["scale"] == "custom" and a["job"]["scale"] == "paper"
    assert {"experiment:full", "scale:paper", "prior:zero123_xl", "single-run"} <= set(a["tags"])
    assert any(t.startswith("device:") for t in a["tags"])


def test_debug_and_sweep_runs_are_tagged(compose, example_image, tmp_path):
    cfg = compose(["+experiment=full", "+debug=tiny", f"image={example_image}"])
    naming = run_naming(cfg, tmp_path / "outputs" / "box_rgba" / "full" / "seed0")
    assert {"debug:tiny", "scale:debug", "prior:tiny", "device:cpu"} <= set(naming["tags"])
    cfg = compose(["+sweep=ablations", "+experiment=no_sr", f"image={example_image}"])
    naming = run_naming(cfg, tmp_path / "outputs" / "box_rgba" / "no_sr" / "seed0")
    assert {"sweep:ablations", "experiment:no_sr", "scale:paper"} <= set(naming["tags"])
    assert naming["job"]["sweep"] == "ablations" and naming["group"] == "no_sr"


# ------------------------------------------------------------------------------------------------ logging
class _Counter(L.LightningModule):
    """Logs ``<stage>/value`` = step index and an image at every step (manual optimisation, like the stages)."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        step = self.global_step
        loss = (self.w - 1).pow(2).sum()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log(f"{self.stage}/value", float(step), on_step=True, on_epoch=False, batch_size=1)
        for lg in self.loggers:
            if hasattr(lg, "log_image"):
                lg.log_image(key=f"{self.stage}/views", images=[torch.full((3, 4, 4), 0.5)], step=step)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(list(range(100)), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_stage_logger_steps_config_and_last_step(compose, example_image, tmp_path):
    job = tmp_path / "outputs" / "box_rgba" / "smoke" / "seed0"
    cfg = _job_cfg(compose, example_image, job)
    loggers = JobLoggers(cfg, job)
    for stage, steps in (("stage1", 7), ("stage2", 3)):
        trainer = L.Trainer(max_steps=steps, logger=loggers.for_stage(stage), callbacks=loggers.callbacks(),
                            log_every_n_steps=5, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(_Counter(stage))
    loggers.close()

    run = read_run(job / "wandb", wait_s=WAIT_S)
    assert run.id == run_naming(cfg, job)["id"] and run.name == "box_rgba/smoke/seed0" and run.group == "smoke"
    assert run.exit_code == 0
    assert run.config["job"]["scale"] == "debug" and run.config["job"]["relative_dir"] == "box_rgba/smoke/seed0"
    assert "provenance" in run.config and run.config["experiment_name"] == "smoke"
    assert run.metrics["stage1/*"] == "stage1/step" and run.metrics["stage2/*"] == "stage2/step"
    # every 5th step plus the last one (a 3-step stage still logs), each on its own step axis from 0
    assert run.steps_of("stage1/value") == [4, 6]
    assert [r["stage1/value"] for r in run.rows_with("stage1/value")] == [4.0, 6.0]
    assert run.steps_of("stage2/value") == [2]
    assert run.steps_of("stage1/views") == list(range(7))          # images at the step whose renders they are
    assert all("trainer/global_step" not in row and "epoch" not in row for row in run.history)


def test_media_land_at_their_stage_step(compose, example_image, tmp_path):
    import wandb

    job = tmp_path / "outputs" / "box_rgba" / "smoke" / "seed0"
    cfg = _job_cfg(compose, example_image, job)
    loggers = JobLoggers(cfg, job)
    loggers.log_media({"mesh/coarse": wandb.Object3D(torch.rand(20, 3).numpy())}, stage="stage1", step=12)
    loggers.log_media({"stage2/turntable": wandb.Image(torch.rand(3, 8, 8))}, stage="stage2", step=2)
    loggers.close()
    run = read_run(job, wait_s=WAIT_S)
    assert run.steps_of("mesh/coarse") == [12] and run.step_metric_of("mesh/coarse") == "stage1/step"
    assert run.steps_of("stage2/turntable") == [2]
    assert set(run.media_keys()) == {"mesh/coarse", "stage2/turntable"}


def test_failed_job_ends_a_failed_run_with_the_error(compose, tmp_path):
    from cg_lightning.errors import CGError
    from cg_lightning.pipeline import run as run_job

    bad = tmp_path / "broken_rgba.png"
    bad.write_bytes(b"not a png at all")
    job = tmp_path / "outputs" / "broken_rgba" / "smoke" / "seed0"
    cfg = _job_cfg(compose, bad, job)
    with pytest.raises(CGError):
        run_job(cfg)
    assert (job / "FAILED").is_file()
    run = read_run(job / "wandb", wait_s=WAIT_S)
    assert run.exit_code == 1 and run.name == "broken_rgba/smoke/seed0"
    assert run.summary["status"] == "failed"
    assert run.summary["error"].startswith("InputImageError: Input file is not a readable image")
    assert run.summary["error_type"] == "InputImageError"


def test_reader_rejects_foreign_files(tmp_path):
    from cg_lightning.errors import CGError

    f = tmp_path / "run-x.wandb"
    f.write_bytes(b"PK\x03\x04 something else")
    with pytest.raises(CGError, match="not a W&B transaction log"):
        list(iter_raw_records(f))


# ------------------------------------------------------------------------------------------------ whole job
@pytest.mark.slow
def test_smoke_job_run_holds_every_item_at_its_step(compose, example_image, tmp_path):
    from cg_lightning.pipeline import run as run_job

    job = tmp_path / "outputs" / example_image.stem / "smoke" / "seed0"
    cfg = _job_cfg(compose, example_image, job)
    run_job(cfg)
    run = read_run(job / "wandb", wait_s=WAIT_S)
    n1, n2 = int(cfg.stage1.steps), int(cfg.stage2.steps)
    every, images_every = int(cfg.trainer.log_every_n_steps), int(cfg.stage1.image_log_every_n_steps)
    assert run.exit_code == 0 and run.summary["status"] == "finished"
    assert run.name == f"{example_image.stem}/smoke/seed0" and run.group == "smoke"
    assert {"experiment:smoke", "scale:debug", "device:cpu", "prior:tiny"} <= set(run.tags)
    # scalars: every log_every_n_steps and always at the last step of each stage, each stage from 0
    expected1 = sorted({s for s in range(n1) if (s + 1) % every == 0} | {n1 - 1})
    assert run.steps_of("stage1/loss") == expected1
    assert run.steps_of("stage2/loss/total") == [n2 - 1]
    # media, each at the step it shows
    assert run.steps_of("input/preprocessed") == [0] and run.steps_of("input/reference", "_step") == [0]
    assert run.steps_of("stage1/views") == [s for s in range(n1) if (s + 1) % images_every == 0]
    assert run.steps_of("stage2/views") == list(range(n2))
    for key, step in (("stage1/gaussians", n1), ("mesh/coarse", n1), ("stage1/turntable", n1),
                      ("stage2/mesh", n2), ("stage2/turntable", n2)):
        assert run.steps_of(key) == [step], key
    kinds = {k: run.rows_with(k)[0][k]["_type"] for k in run.media_keys()}
    assert kinds["mesh/coarse"] == kinds["stage2/mesh"] == "object3D-file"
    assert kinds["stage1/turntable"] == "video-file" and kinds["job/metrics"] == "table-file"
    assert {"eval/renders", "eval/stage1_renders"} <= set(kinds)
    caption = run.rows_with("stage1/views")[0]["stage1/views"]["captions"][0]
    assert caption.startswith(f"step {images_every - 1}:")
    # summary: the numbers Table I reads, which mesh was scored, the metrics table
    assert 0 <= run.summary["eval/lpips"] <= 1 and run.summary["eval/scored_mesh"] == "stage2/model.glb"
    assert run.summary["job/metrics"]["nrows"] == 1
