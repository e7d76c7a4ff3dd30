"""A job directory's results always belong to its input file and its config (issue 12).

Each test starts from one way this used to fail silently: a same-stem input or a debug run returning another job's
results, a long override suffix colliding, a bad value deleting a finished job's ``DONE``, two processes writing one
job. Jobs here run only the input step (``stages=[]``): the identity, lock and reuse logic is all in front of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import open_dict, read_write
from PIL import Image

from cg_lightning.config.resolvers import MAX_COMPONENT_BYTES, image_stem, override_subdir
from cg_lightning.errors import ConfigError
from cg_lightning.runtime.identity import identity_hash, job_identity, read_job_record
from cg_lightning.runtime.lock import JobLock, JobLockedError

ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box" / "box_rgba.png"
#: the cheapest job: tiny debug preset, input step only, no logger
BASE = ["+experiment=full", "+debug=tiny", "preprocess=none", "stages=[]", "logger=none"]


def job_cfg(compose, overrides: list[str]):
    """The composed config with its output dir where Hydra would put it (``hydra.run.dir`` resolved)."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose(overrides)
    run_dir = Path(str(cfg.hydra.run.dir))
    with read_write(cfg.hydra), read_write(cfg.hydra.runtime), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_job(cfg):
    from cg_lightning.pipeline import run

    return run(cfg)


def snapshot(job: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file of a job but its lock and log."""
    return {str(p.relative_to(job)): (p.stat().st_mtime_ns, p.stat().st_size) for p in job.rglob("*")
            if p.is_file() and p.name not in (".lock", "job.log")}


def image_copy(tmp_path: Path, name: str, fmt: str | None = None) -> Path:
    path = tmp_path / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(BOX) as im:
        im.save(path, format=fmt)
    return path


def launch(*args: str, root: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               CG_CACHE=str(root.parent / "cache"))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "launch.py", *args, f"paths.output_root={root}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ names
def test_same_stem_other_file_gets_its_own_job(compose, tmp_path):
    tiff, webp = image_copy(tmp_path, "box.tiff"), image_copy(tmp_path, "box.webp", "WEBP")
    first = job_cfg(compose, [*BASE, f"image={tiff}"])
    run_job(first)
    first_dir = Path(first.paths.output_dir)
    before = snapshot(first_dir)

    second = job_cfg(compose, [*BASE, f"image={webp}"])
    second_dir = Path(second.paths.output_dir)
    assert second_dir != first_dir, "a second file with the same stem must not reuse the first one's job"
    assert second_dir.parts[-4] == f"box-{job_identity(second)['input_sha256'][:8]}"
    run_job(second)
    assert snapshot(first_dir) == before   # nothing of the first job was rewritten
    assert read_job_record(second_dir)["identity"]["input_sha256"] == job_identity(second)["input_sha256"]
    assert read_job_record(first_dir)["identity"]["input_sha256"] == job_identity(first)["input_sha256"]
    # each finds its own job again, whatever the order
    assert Path(job_cfg(compose, [*BASE, f"image={tiff}"]).paths.output_dir) == first_dir
    assert Path(job_cfg(compose, [*BASE, f"image={webp}"]).paths.output_dir) == second_dir


def test_non_ascii_stems_stay_readable_and_distinct():
    assert image_stem("/data/日本.png") == "日本"
    assert image_stem("/data/中国.png") == "中国"
    assert image_stem("/data/a b.png") == "a_b"
    assert image_stem("/data/...png") == "image"          # never "..": no way out of the output root
    long = image_stem("/data/" + "é" * 200 + ".png")
    assert len(long.encode()) <= MAX_COMPONENT_BYTES and long != image_stem("/data/" + "é" * 199 + "e.png")


def test_long_or_unsafe_override_suffixes_never_collide():
    a = "stage1.steps=300," + ",".join(f"stage1.lrs.k{i}=0.{i}" for i in range(40))
    b = a.replace("stage1.steps=300", "stage1.steps=50")
    assert override_subdir(a) != override_subdir(b)
    for sub in (override_subdir(a), override_subdir(b)):
        assert len(sub.lstrip("/").encode()) <= MAX_COMPONENT_BYTES
    assert override_subdir("mesh.resolution=64") == "/mesh.resolution=64"   # short safe names stay as they are
    # two overrides that sanitise alike stay apart
    assert override_subdir("prior.model=/a/b") != override_subdir("prior.model=_a_b")
    assert override_subdir("") == ""


def test_debug_run_never_passes_as_real(compose, tmp_path):
    """Debug and real jobs share a directory name (the table builder marks debug jobs), never an identity: the
    next test shows the real run refusing the debug job's results."""
    debug = job_cfg(compose, ["+experiment=full", "+debug=tiny", f"image={BOX}"])
    debug_dir, debug_id = Path(debug.paths.output_dir), identity_hash(job_identity(debug))
    real = job_cfg(compose, ["+experiment=full", f"image={BOX}"])
    assert debug_dir == Path(real.paths.output_dir)
    assert debug_id != identity_hash(job_identity(real))


def test_finished_job_of_another_config_is_refused_untouched(compose, tmp_path):
    """Even forced into the same directory, a real run does not take a debug job's results."""
    from cg_lightning.pipeline import JobMismatchError

    job = tmp_path / "same"
    debug = compose([*BASE, f"image={BOX}"], run_dir=job)
    run_job(debug)
    before = snapshot(job)
    real = compose(["+experiment=full", f"image={BOX}", "preprocess=none", "stages=[]", "logger=none"], run_dir=job)
    with pytest.raises(JobMismatchError, match="on_mismatch=new") as refused:
        run_job(real)
    assert re.search(r"^  [\w.\[\]]+: \S.* -> \S.*$", str(refused.value), re.M)  # the differences are listed
    assert snapshot(job) == before and (job / "DONE").is_file()


# ------------------------------------------------------------------------------------------------ reuse
def test_skip_of_a_finished_job_rewrites_nothing(compose, tmp_path):
    cfg = job_cfg(compose, [*BASE, f"image={BOX}"])
    metrics = run_job(cfg)
    job = Path(cfg.paths.output_dir)
    before = snapshot(job)
    time.sleep(0.01)
    assert run_job(cfg) == metrics
    assert snapshot(job) == before


def test_identity_ignores_only_keys_that_do_not_change_results(compose):
    base = job_identity(compose([*BASE, f"image={BOX}"]))
    same = ["logger=csv", "resume=never", "stages=[stage1]", "device=cpu", "callbacks.checkpoint_every_n_steps=7",
            "tags=[x]", "trainer.enable_progress_bar=false", "on_mismatch=new"]
    for override in same:
        assert job_identity(compose([*BASE, f"image={BOX}", override])) == base, override
    for override in ("seed=1", "stage1.steps=7", "elevation=-30", "mesh.resolution=40", "renderer.gaussian=gsplat"):
        assert identity_hash(job_identity(compose([*BASE, f"image={BOX}", override]))) != identity_hash(base), \
            override


def test_job_json_and_provenance_json(compose, tmp_path):
    cfg = job_cfg(compose, [*BASE, f"image={BOX}"])
    run_job(cfg)
    job = Path(cfg.paths.output_dir)
    record = json.loads((job / "job.json").read_text())
    assert record["identity_hash"] == identity_hash(job_identity(cfg))
    assert record["identity"]["config"]["experiment_name"] == "full" and "logger" not in record["identity"]["config"]
    prov = json.loads((job / "provenance.json").read_text())
    for key in ("git", "device", "device_name", "cuda", "cpu_model", "torch_threads", "host", "start_time",
                "end_time"):
        assert key in prov, key
    assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    for package in ("torch", "diffusers", "lightning", "gsplat", "diff_gaussian_rasterization", "nvdiffrast"):
        assert prov["versions"][package], package      # a version or "not installed"
    assert [a["outcome"] for a in prov["attempts"]] == ["finished"]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["job/attempts"] == 1 and metrics["time/input_s"] > 0
    assert json.loads((job.parents[2] / "input.json").read_text())["sha256"] == record["identity"]["input_sha256"]


# ------------------------------------------------------------------------------------------------ bad values
def test_invalid_value_never_touches_a_finished_job(compose, tmp_path):
    cfg = job_cfg(compose, [*BASE, f"image={BOX}"])
    run_job(cfg)
    job = Path(cfg.paths.output_dir)
    before = snapshot(job)
    bad = job_cfg(compose, [*BASE, f"image={BOX}", "resume=sometimes"])
    assert Path(bad.paths.output_dir) == job
    with pytest.raises(ConfigError, match="resume"):
        run_job(bad)
    assert (job / "DONE").is_file() and not (job / "FAILED").exists()
    assert snapshot(job) == before


def test_invalid_value_leaves_no_directory(tmp_path):
    root = tmp_path / "outputs"
    single = launch(*BASE, f"image={BOX}", "stage1.steps=abc", root=root)
    assert single.returncode == 2 and "stage1.steps" in single.stderr and "Traceback" not in single.stderr
    swept = launch("-m", *BASE, f"image={BOX}", "stage1.steps=abc,-3", root=root)
    assert "stage1.steps" in swept.stderr and swept.returncode != 0
    jobs = [p for p in root.rglob("*") if p.is_dir()] if root.exists() else []
    assert jobs == [], f"junk directories left: {jobs}"


# ------------------------------------------------------------------------------------------------ lock
def test_second_process_on_a_running_job_stops_with_a_message(compose, tmp_path):
    cfg = job_cfg(compose, [*BASE, f"image={BOX}"])
    job = Path(cfg.paths.output_dir)
    with JobLock(job):
        with pytest.raises(JobLockedError, match=f"in use by process {os.getpid()}"):
            run_job(cfg)
    assert not (job / "state.json").exists()        # nothing was written by the refused run
    run_job(cfg)                                     # released: the job runs
    assert (job / "DONE").is_file()


def test_lock_of_a_killed_process_is_free(tmp_path):
    job = tmp_path / "job"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cg_lightning.runtime.lock import JobLock\n"
                               f"JobLock({str(job)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobLockedError, match=f"process {holder.pid}"):
            JobLock(job).acquire()
    finally:
        holder.kill()
        holder.wait()
    with JobLock(job):          # the kernel released it with the process (kill -9): never stale
        pass


def test_lock_fallback_detects_a_stale_holder(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(*_a, **_k):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    job = tmp_path / "job"
    job.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (job / ".lock.pid").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "x"}))
    with JobLock(job):
        with pytest.raises(JobLockedError, match=f"process {os.getpid()}"):
            JobLock(job).acquire()
    assert not (job / ".lock.pid").exists()


# ------------------------------------------------------------------------------------------------ mismatch
def test_mismatch_exits_2_or_runs_fresh_with_on_mismatch_new(tmp_path):
    root = tmp_path / "outputs"
    args = [*BASE, f"image={BOX}"]
    assert launch(*args, root=root).returncode == 0
    (job,) = [p.parent for p in root.rglob("job.json")]
    record = json.loads((job / "job.json").read_text())     # as if the job had been made with elevation=10
    record["identity"]["config"]["elevation"] = 10.0
    record["identity_hash"] = identity_hash(record["identity"])
    (job / "job.json").write_text(json.dumps(record))
    before = snapshot(job)

    refused = launch(*args, root=root)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "elevation: 10.0 -> 0.0" in refused.stderr and "on_mismatch=new" in refused.stderr
    assert snapshot(job) == before

    fresh = launch(*args, "on_mismatch=new", root=root)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert snapshot(job) == before
    (new_job,) = [p.parent for p in root.rglob("job.json") if p.parent != job]
    assert new_job.name.startswith(job.name + "-") and (new_job / "DONE").is_file()
