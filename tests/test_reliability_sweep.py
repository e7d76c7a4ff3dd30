"""A real multirun sweep in which some jobs get a corrupt image: the others finish, the bad ones are marked FAILED
with their error, the sweep's summary lists them (exit status 1), and the table builder reports them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from cg_lightning.runtime.hydra_callbacks import failed_jobs, finished_jobs

ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box" / "box_rgba.png"
CALLBACK = "++hydra.callbacks.cg._target_=cg_lightning.runtime.hydra_callbacks.JobCallbacks"


def _build_tables_cli():
    spec = importlib.util.spec_from_file_location("build_tables", ROOT / "experiments" / "build_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_with_corrupt_images_finishes_the_other_jobs_and_reports_the_failures(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    corrupt = images / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))    # a PNG signature, then noise
    empty = images / "empty.png"
    empty.write_bytes(b"")
    root = tmp_path / "outputs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", CG_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    # the corrupt image comes first: the good job must still run after it; stages=[] keeps the good job cheap
    # (input preparation + metrics.json) - what matters here is the sweep machinery, not the stages
    res = subprocess.run([sys.executable, "launch.py", "-m", "+experiment=smoke", f"image={corrupt},{BOX},{empty}",
                          "stages=[]", "preprocess=none", "logger=none", f"paths.output_root={root}", CALLBACK],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]        # finished, but not everything succeeded
    assert "Sweep finished: 1 job(s) done, 2 FAILED." in res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout  # user errors: message only

    def job_of(stem: str) -> Path:   # <stem>/smoke/seed0/<overrides that change results>
        (hydra_dir,) = (root / stem).rglob(".hydra")
        return hydra_dir.parent

    good = job_of("box_rgba")
    assert (good / "DONE").is_file() and (good / "metrics.json").is_file() and not (good / "FAILED").exists()
    for stem in ("corrupt", "empty"):
        job = job_of(stem)
        failed = (job / "FAILED").read_text()
        assert failed.startswith("InputImageError (user error): "), failed
        assert str(images / f"{stem}.png") in failed.splitlines()[0]
        assert "Traceback" in failed and not (job / "DONE").exists()
        assert f"FAILED {job}: InputImageError" in res.stderr

    # the table builder sees the same three jobs
    out = tmp_path / "tables"
    assert _build_tables_cli().main([str(root), "--out", str(out), "--no-plot"]) == 0
    report = (out / "tables.md").read_text()
    failures = report[report.index("## Failed jobs"):]
    assert failures.count("InputImageError (user error)") == 2 and "corrupt" in failures and "empty" in failures
    jobs_csv = (out / "jobs.csv").read_text()
    assert jobs_csv.count(",failed,") == 2 and jobs_csv.count(",done,") == 1


def test_summary_only_counts_jobs_of_this_sweep(tmp_path):
    old, new, nested = tmp_path / "a" / "smoke" / "seed0", tmp_path / "b" / "smoke" / "seed0", None
    for job in (old, new):
        (job / ".hydra").mkdir(parents=True)
        (job / "config_resolved.yaml").write_text("x: 1\n")
    (old / "FAILED").write_text("InputImageError (user error): from last week\n")
    past = time.time() - 3600
    os.utime(old / "FAILED", (past, past))
    nested = new / "mesh.resolution=64"          # a sub-job directory inside a job directory
    (nested / ".hydra").mkdir(parents=True)
    (nested / "FAILED").write_text("ConfigError (user error): today\n\nTraceback ...\n")
    (new / "DONE").write_text("finished\n")
    (new / "stage1").mkdir()
    (new / "stage1" / "FAILED").write_text("not a job marker\n")   # inside a job's output folders: ignored
    since = time.time() - 60
    assert failed_jobs(tmp_path, since) == [(nested, "ConfigError (user error): today")]
    assert finished_jobs(tmp_path, since) == 1
    assert len(failed_jobs(tmp_path)) == 2
