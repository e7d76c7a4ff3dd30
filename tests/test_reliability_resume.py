"""Interrupted runs: SIGTERM / SIGKILL mid stage 1 (and mid stage 2, slow), then the same command again.

The re-run must resume from ``last.ckpt`` (it says so and trains fewer steps), finish with the normal outputs layout,
and leave no temp file or half-written output behind. Cheap unit checks of the SIGTERM plumbing come first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import single_thread
from omegaconf import OmegaConf
from PIL import Image

from cg_lightning.runtime.state import JobState
from cg_lightning.runtime.task import JobInterrupted, defer_sigterm, job_guard, remove_stale_temp_files
from cg_lightning.runtime.trainer import resume_checkpoint

_threads = pytest.fixture(autouse=True)(single_thread)
ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box" / "box_rgba.png"
#: the cheapest real stage 1: 300 Gaussians, 32 px, reference losses + SDS of the tiny prior, a checkpoint per step
TINY_STAGE1 = ["+experiment=smoke", f"image={BOX}", "stages=[stage1]", "stage1.num_points=300", "stage1.ref_size=32",
               "stage1.views.resolution.values=[32,32]", "stage1.views.batch_size=1", "loss=dreamgaussian",
               "trainer.enable_progress_bar=false", "callbacks.checkpoint_every_n_steps=1",
               # densify every 4 steps (the smoke preset's 3 prunes every Gaussian of this 300-point, 32 px toy)
               "stage1.density.densify_from=4", "stage1.density.interval=4"]
TEMP_NAME = __import__("re").compile(r"\..+\.[a-z0-9_]{8}(\.[^.]*)?")


# ------------------------------------------------------------------------------------------------ helpers
def launch_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", CG_CACHE=str(cache), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def start(overrides: list[str], root: Path, cache: Path) -> subprocess.Popen:
    """launch.py in the background; its stdout/stderr go to files (a full pipe would block it)."""
    out, err = root.parent / "killed.out", root.parent / "killed.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "launch.py", *overrides, f"paths.output_root={root}"], cwd=ROOT,
                                env=launch_env(cache), stdout=fo, stderr=fe)
    proc.stderr_path = err  # type: ignore[attr-defined]
    return proc


def only_job_dir(root: Path) -> Path:
    jobs = [p.parent for p in root.rglob(".hydra")]
    assert len(jobs) == 1, jobs
    return jobs[0]


def wait_for(path_glob: str, root: Path, proc: subprocess.Popen, timeout: float = 300.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in root.rglob(path_glob)] if root.exists() else []
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc={proc.returncode}) before {path_glob} appeared:\n"
                        f"{proc.stderr_path.read_text()[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{path_glob} did not appear within {timeout} s")


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def assert_no_temp_files(job: Path) -> None:
    leftovers = [p for p in job.rglob(".*") if p.is_file() and TEMP_NAME.fullmatch(p.name)]
    assert not leftovers, f"temp files left behind: {leftovers}"


def assert_outputs_load(job: Path) -> None:
    """Every output of a finished stage-1 job is complete and readable."""
    from cg_lightning.gaussians.ply import load_ply

    assert (job / "DONE").is_file() and not (job / "FAILED").exists()
    for png in ("input/preprocessed_rgba.png", "input/reference_rgba.png"):
        with Image.open(job / png) as im:
            im.load()
    assert load_ply(job / "stage1" / "point_cloud.ply").num_points > 0
    json.loads((job / "metrics.json").read_text())
    json.loads((job / "state.json").read_text())
    OmegaConf.load(job / "config_resolved.yaml")
    assert JobState(job).is_done("stage1")


STAGE1_LAYOUT = {"DONE", "state.json", "metrics.json", "config_resolved.yaml", "cmd.txt", "input/preprocessed_rgba.png",
                 "input/reference_rgba.png", "stage1/point_cloud.ply", "stage1/ckpts/last.ckpt", "job.json",
                 "provenance.json"}


def layout(job: Path) -> set[str]:
    """Output files of a job, without logs (csv/, wandb/, .hydra/, job.log) and the lock / heartbeat files."""
    skip = ("csv/", "wandb/", ".hydra/", "job.log", ".lock", ".heartbeat")
    return {str(p.relative_to(job)) for p in job.rglob("*") if p.is_file() and not str(p.relative_to(job)).startswith(skip)}


# ------------------------------------------------------------------------------------------------ unit checks
def test_sigterm_outside_training_stops_at_once_without_failed_marker(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        with job_guard(tmp_path, continue_on_error=True):   # even in a sweep: the whole process is being stopped
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            pytest.fail("SIGTERM did not interrupt the job")
    assert exited.value.code == 143
    assert not (tmp_path / "FAILED").exists() and not (tmp_path / "DONE").exists()
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before      # the previous handler is back


def test_sigterm_inside_a_fit_waits_for_the_end_of_the_block(tmp_path):
    reached = []
    with pytest.raises(SystemExit) as exited:
        with job_guard(tmp_path):
            with defer_sigterm():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached.append("rest of the step")  # a Lightning fit would finish its step and save here
            reached.append("after the fit")
    assert reached == ["rest of the step"] and exited.value.code == 143


def test_sigterm_owned_by_another_handler_is_left_to_it(tmp_path):
    """submitit (SLURM) bypasses SIGTERM on purpose and requeues on its own signal: the job guard must not stop it."""
    calls = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with job_guard(tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert calls == [signal.SIGTERM] and (tmp_path / "DONE").is_file()


def test_interrupt_is_not_swallowed_by_except_exception(tmp_path):
    assert not issubclass(JobInterrupted, Exception)


def test_stale_temp_files_are_removed_but_not_those_of_a_nested_job(tmp_path):
    job = tmp_path / "job"
    (job / "stage1" / "ckpts").mkdir(parents=True)
    (job / ".hydra").mkdir()
    stale = [job / "stage1" / "ckpts" / ".last.ckpt.k3j_9zq1.ckpt", job / ".state.json.abcdefgh.json",
             job / ".DONE.x1y2z3w4"]
    keep = [job / "stage1" / "ckpts" / "last.ckpt", job / ".write_notes.txt", job / ".hydra" / "config.yaml"]
    nested = job / "mesh.resolution=64"        # a sweep's sub-job, maybe running right now
    (nested / ".hydra").mkdir(parents=True)
    keep.append(nested / ".model.glb.abcd1234.glb")
    for p in stale + keep:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(job)) == sorted(stale)
    assert all(p.exists() for p in keep)


def test_unreadable_last_ckpt_is_set_aside_and_the_stage_restarts(tmp_path, caplog):
    ckpts = tmp_path / "stage1" / "ckpts"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 half a zip")
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path, "stage1", "auto") is None
    assert not (ckpts / "last.ckpt").exists() and len(list(ckpts.glob("last.unreadable-*.ckpt"))) == 1
    assert "starting the stage from scratch" in caplog.text
    torch.save({"global_step": 7}, ckpts / "last.ckpt")
    assert resume_checkpoint(tmp_path, "stage1", "auto") == ckpts / "last.ckpt"
    assert resume_checkpoint(tmp_path, "stage1", "never") is None


# ------------------------------------------------------------------------------------------------ in-process
def test_sigterm_mid_stage1_saves_then_the_rerun_resumes(compose, tmp_path, monkeypatch, caplog):
    from cg_lightning.pipeline import run
    from cg_lightning.stages.gaussian_stage import GaussianStage

    steps = 4
    job = tmp_path / "job"
    # no periodic checkpoint before the signal: the one found afterwards is written because of the SIGTERM
    cfg = compose([*TINY_STAGE1, f"stage1.steps={steps}", "logger=none", "callbacks.checkpoint_every_n_steps=50"],
                  run_dir=job)
    original = GaussianStage.training_step
    fired = []

    def step_then_sigterm(self, batch, batch_idx):
        out = original(self, batch, batch_idx)
        if not fired:       # after the first step: like `scancel` / a preemption arriving mid-training
            fired.append(self.global_step)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(GaussianStage, "training_step", step_then_sigterm)
    with pytest.raises(SystemExit) as exited:
        run(cfg)
    assert exited.value.code == 143 and fired == [1]
    last = job / "stage1" / "ckpts" / "last.ckpt"
    assert ckpt_step(last) == 1                      # stopped right after the step it was in, and saved it
    assert not (job / "FAILED").exists() and not (job / "stage1" / "point_cloud.ply").exists()
    assert not JobState(job).is_done("stage1")

    monkeypatch.setattr(GaussianStage, "training_step", original)
    with caplog.at_level(logging.INFO):
        run(cfg)
    assert f"stage1: resuming from {last} (step 1)" in caplog.text
    assert ckpt_step(last) == steps
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]   # overwritten, never a last-v1.ckpt beside it
    assert_outputs_load(job)
    assert_no_temp_files(job)


# ------------------------------------------------------------------------------------------------ through launch.py
def kill_mid_stage_then_rerun(tmp_path: Path, overrides: list[str], sig: int, ckpt_glob: str, steps: int):
    """Start, kill with ``sig`` once ``ckpt_glob`` exists, re-run; returns (job dir, step at kill, re-run)."""
    root, cache = tmp_path / "outputs", tmp_path / "cache"
    proc = start(overrides, root, cache)
    last = wait_for(ckpt_glob, root, proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    job = only_job_dir(root)
    killed_at = ckpt_step(last)
    assert 0 < killed_at < steps, "the kill must land mid-stage"
    rerun = subprocess.run([sys.executable, "launch.py", *overrides, f"paths.output_root={root}"], cwd=ROOT,
                           env=launch_env(cache), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert ckpt_step(last) == steps
    log = (job / "job.log").read_text()
    assert f"resuming from {last} (step {killed_at})" in log
    assert "Traceback" not in rerun.stderr
    assert_no_temp_files(job)
    return job, killed_at, proc


def test_sigkill_mid_stage1_then_same_command_resumes(tmp_path):
    steps = 8
    job, _, killed = kill_mid_stage_then_rerun(tmp_path, [*TINY_STAGE1, f"stage1.steps={steps}"], signal.SIGKILL,
                                               "stage1/ckpts/last.ckpt", steps)
    assert killed.returncode == -signal.SIGKILL
    assert_outputs_load(job)
    assert layout(job) == STAGE1_LAYOUT


@pytest.mark.slow
def test_sigterm_mid_stage1_via_launch_exits_143_then_resumes(tmp_path):
    steps = 8
    job, _, killed = kill_mid_stage_then_rerun(tmp_path, [*TINY_STAGE1, f"stage1.steps={steps}"], signal.SIGTERM,
                                               "stage1/ckpts/last.ckpt", steps)
    assert killed.returncode == 143
    assert "re-run the same command to resume" in killed.stderr_path.read_text()
    assert_outputs_load(job)
    assert layout(job) == STAGE1_LAYOUT


@pytest.mark.slow
def test_sigkill_mid_stage2_then_same_command_resumes(tmp_path):
    from cg_lightning.mesh.mesh import Mesh

    steps = 6
    base = [*TINY_STAGE1, "stage1.steps=3", "mesh.resolution=32", "mesh.iso=0.2", "mesh.remesh=false",
            "mesh.max_faces=2000", "mesh.texture_size=64", "mesh.bake_render_size=32", f"stage2.steps={steps}",
            "stage2.ref_size=32", "stage2.views.resolution=32", "stage2.default_texture_size=64"]
    # stage 1 + mesh first (same job directory: `stages` is not part of it), then kill mid stage 2
    first = subprocess.run([sys.executable, "launch.py", *base, "stages=[stage1,mesh]",
                            f"paths.output_root={tmp_path / 'outputs'}"], cwd=ROOT, env=launch_env(tmp_path / "cache"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    with_stage2 = [*base, "stages=[stage1,mesh,stage2]"]
    job, _, killed = kill_mid_stage_then_rerun(tmp_path, with_stage2, signal.SIGKILL, "stage2/ckpts/last.ckpt", steps)
    assert killed.returncode == -signal.SIGKILL
    assert JobState(job).is_done("stage2") and (job / "DONE").is_file()
    for name in ("stage2/model.glb", "stage2/model.obj", "mesh/coarse.glb"):
        assert Mesh.load(job / name).f.shape[0] > 0
    assert {"stage2/model.glb", "stage2/model.obj", "stage2/ckpts/last.ckpt", "mesh/coarse.glb"} <= layout(job)


# ------------------------------------------------------------------------------------------------ kill anywhere
#: the whole pipeline at its smallest: 3 stage-1 steps, a 32^3 mesh, 4 stage-2 steps, export and evaluation
TINY_PIPELINE = [*(o for o in TINY_STAGE1 if not o.startswith("stages=")), "stage1.steps=3", "mesh.resolution=32", "mesh.iso=0.2", "mesh.remesh=false",
                 "mesh.max_faces=2000", "mesh.texture_size=128", "mesh.bake_render_size=32", "stage2.steps=4",
                 "stage2.ref_size=32", "stage2.views.resolution=32", "stage2.default_texture_size=64"]
#: files that differ between two runs of one job by design: logs, records of the invocation, lock, checkpoints
#: (they hold their own paths); metrics.json is compared key by key
_NOT_RESULTS = ("csv/", "wandb/", ".hydra/", "job.log", "cmd.txt", "config_resolved.yaml", "state.json",
                "provenance.json", "metrics.json", "DONE", ".lock", ".heartbeat")
#: where a job is killed: (name, what must exist or be logged first, seconds to wait after it)
KILL_POINTS = {
    "stage1": ("stage1/ckpts/last.ckpt", 0.0),
    "between stage1 and mesh": ("=== mesh ===", 0.0),
    "mesh": ("=== mesh ===", 1.5),
    "stage2": ("stage2/ckpts/last.ckpt", 0.0),
    "export": ("=== export ===", 0.5),
    "evaluate": ("=== evaluate ===", 0.5),
}


def result_files(job: Path) -> dict[str, str]:
    import hashlib

    return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(job.rglob("*"))
            if p.is_file() and not (rel := str(p.relative_to(job))).startswith(_NOT_RESULTS)
            and not rel.endswith(".ckpt")}


def run_to_the_end(overrides: list[str], root: Path, cache: Path) -> Path:
    res = subprocess.run([sys.executable, "launch.py", *overrides, f"paths.output_root={root}"], cwd=ROOT,
                         env=launch_env(cache), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return only_job_dir(root)


def kill_at(point: str, overrides: list[str], root: Path, cache: Path) -> None:
    """SIGKILL the job at ``point`` (see :data:`KILL_POINTS`)."""
    trigger, delay = KILL_POINTS[point]
    proc = start(overrides, root, cache)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if trigger.startswith("==="):
            logs = list(root.rglob("job.log")) if root.exists() else []
            if logs and trigger in logs[0].read_text(errors="replace"):
                break
        elif root.exists() and any(root.rglob(trigger)):
            break
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc={proc.returncode}) before the kill point {point!r}:\n"
                        f"{proc.stderr_path.read_text()[-3000:]}")
        time.sleep(0.05)
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=60)
    assert not (only_job_dir(root) / "DONE").exists(), f"the job finished before the kill point {point!r}"


def assert_resumes_like_uninterrupted(tmp_path: Path, points: list[str]) -> None:
    cache = tmp_path / "cache"
    reference = run_to_the_end(TINY_PIPELINE, tmp_path / "uninterrupted", cache)
    expected_files = result_files(reference)
    expected = json.loads((reference / "metrics.json").read_text())
    for point in points:
        root = tmp_path / point.replace(" ", "_")
        kill_at(point, TINY_PIPELINE, root, cache)
        job = run_to_the_end(TINY_PIPELINE, root, cache)
        assert result_files(job) == expected_files, f"killed during {point}: outputs differ"
        metrics = json.loads((job / "metrics.json").read_text())
        assert set(metrics) == set(expected), f"killed during {point}: metrics.json keys differ"
        for key, value in expected.items():
            if not key.startswith(("time/", "memory/", "job/")):
                assert metrics[key] == value, f"killed during {point}: {key} {metrics[key]} != {value}"
        assert metrics["job/attempts"] == 2 and expected["job/attempts"] == 1
        for step in ("input", "stage1", "mesh", "stage2", "export", "evaluate"):
            assert metrics[f"time/{step}_s"] > 0, step
        assert metrics["time/all_steps_s"] == pytest.approx(sum(metrics[f"time/{s}_s"] for s in
                                                                ("input", "stage1", "mesh", "stage2", "export",
                                                                 "evaluate")))
        provenance = json.loads((job / "provenance.json").read_text())
        assert [a["outcome"] for a in provenance["attempts"]] == ["running", "finished"]  # the kill left no end


def test_killed_during_mesh_or_stage2_resumes_bit_identically(tmp_path):
    """The short version (``make test``); the slow one kills at every stage and between stages."""
    assert_resumes_like_uninterrupted(tmp_path, ["mesh", "stage2"])


@pytest.mark.slow
def test_killed_anywhere_resumes_bit_identically(tmp_path):
    assert_resumes_like_uninterrupted(tmp_path, list(KILL_POINTS))


@pytest.mark.slow
def test_two_identical_commands_at_once_second_stops(tmp_path):
    """The second process exits 2 naming the first; the first finishes alone (one stage-1 section in job.log)."""
    root, cache = tmp_path / "outputs", tmp_path / "cache"
    overrides = [*TINY_STAGE1, "stage1.steps=6"]
    first = start(overrides, root, cache)
    wait_for("stage1/ckpts/last.ckpt", root, first)
    second = subprocess.run([sys.executable, "launch.py", *overrides, f"paths.output_root={root}"], cwd=ROOT,
                            env=launch_env(cache), capture_output=True, text=True, timeout=600)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by process {first.pid}" in second.stderr
    assert first.wait(timeout=600) == 0
    job = only_job_dir(root)
    assert (job / "job.log").read_text().count("=== stage1 ===") == 1
    assert_outputs_load(job)
