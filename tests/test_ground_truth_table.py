"""The ground-truth ablation table: mean ± std over seeds per object and overall, result = final else coarse mesh,
variants that could not run shown with the reason; and the sweep files that fill it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cg_lightning.evaluation.tables import JobRecord
from cg_lightning.evaluation.truth_table import NEEDS_WEIGHTS, result_metric, truth_table_markdown

ROOT = Path(__file__).resolve().parents[1]
#: metrics.json of a real `+experiment=oracle` job (box, perfect oracle, seed 0)
REAL_METRICS = json.loads((Path(__file__).parent / "fixtures" / "oracle_box_metrics.json").read_text())


def job(image, experiment, seed, chamfer, final=True, status="done", error=None):
    what = "final" if final else "coarse"
    metrics = {f"eval/truth_{what}_chamfer": chamfer, f"eval/truth_{what}_psnr": 20.0 + seed}
    if final:
        metrics["eval/truth_coarse_chamfer"] = 1.0  # never used when a final mesh exists
    return JobRecord(f"/x/{image}/{experiment}/seed{seed}", image, experiment, seed, status,
                     metrics=metrics if status == "done" else {}, error=error)


def row(md: str, start: str) -> list[str]:
    found = [line for line in md.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, md)
    return [c.strip() for c in found[0].strip("|").split("|")]


def test_table_rows_means_and_failures():
    exp = "no_qa_triplet[+debug=oracle_noisy]"
    jobs = [job("torus", exp, 0, 0.02), job("torus", exp, 1, 0.04), job("mug", exp, 0, 0.06),
            job("mug", exp, 1, 0.08),
            job("mug", "no_refine[+debug=oracle_noisy]", 0, 0.05, final=False),
            job("mug", "full[+debug=oracle_noisy]", 0, 0, status="failed", error="Missing weights: LPIPS-vgg")]
    assert result_metric(jobs[0].metrics, "chamfer") == 0.02
    assert result_metric(jobs[4].metrics, "chamfer") == 0.05  # no stage 2: the coarse mesh is the result
    md = truth_table_markdown(jobs, {"table2": {"rows": [{"experiment": "full", "lpips": 0.307,
                                                          "clip_similarity": 0.764}]}}, weights_available=True)
    torus = row(md, "| torus | no_qa_triplet | 2 |")
    assert torus[3:5] == ["—", "—"] and torus[5] == "0.0300 ± 0.0141" and torus[7] == "20.50 ± 0.71"
    # overall: per seed the mean over objects (0.04, 0.06), then mean ± std over the seeds
    overall = row(md, "| **all objects** | no_qa_triplet | 2 (2 objects) |")
    assert overall[5] == "0.0500 ± 0.0141"
    assert row(md, "| mug | no_refine | 1 |")[5] == "0.0500 ± 0.0000"
    # full has no finished job: its rows say why (here the weights exist, so its failure), on every object
    assert row(md, "| torus | full | 0 |")[3].startswith("not finished: Missing weights")
    assert row(md, "| **all objects** | full | 0 |")[-1] == "0.307 / 0.764"  # the paper's Table II beside it
    assert row(md, "| **all objects** | dreamgaussian | 0 |")[3] == "not run"
    assert "full[+debug=oracle_noisy]: Missing weights: LPIPS-vgg" in md
    assert "Job variants (override sub-directories): `[+debug=oracle_noisy]`" in md
    assert truth_table_markdown([job("a", "x", 0, 0, status="failed")]) is None


def test_outputs_tree_offline_sweep(tmp_path):
    """A fake outputs tree as +sweep=oracle_ablations_offline leaves it (real metrics.json files, one failed and
    one unfinished job): build_tables.py writes truth.md with the QA-Triplet rows marked as needing the weights."""
    out = tmp_path / "outputs"
    values = {}
    for obj in ("box_rgba", "mug_rgba"):
        for exp in ("no_qa_triplet", "dreamgaussian"):
            for seed in (0, 1):
                d = out / obj / exp / f"seed{seed}"
                d.mkdir(parents=True)
                if (obj, exp, seed) == ("mug_rgba", "dreamgaussian", 1):
                    (d / "FAILED").write_text("crash: RuntimeError: boom\nTraceback ...\n")
                    continue
                m = dict(REAL_METRICS)
                m["eval/truth_final_psnr"] = values[(obj, exp, seed)] = 20.0 + seed + (obj == "mug_rgba") * 2
                (d / "metrics.json").write_text(json.dumps(m))
                (d / "DONE").write_text("")
    (out / "box_rgba" / "no_qa_triplet" / "seed2").mkdir()
    (out / "box_rgba" / "no_qa_triplet" / "seed2" / "state.json").write_text("{}")  # still running
    res = subprocess.run([sys.executable, "experiments/build_tables.py", str(out), "--no-plot"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                            "TORCH_HOME": str(tmp_path / "th")})
    assert res.returncode == 0, res.stderr[-3000:]
    md = (out / "tables" / "truth.md").read_text()
    assert md in res.stdout
    cd = f"{REAL_METRICS['eval/truth_final_chamfer']:.4f} ± 0.0000"
    box = row(md, "| box | no_qa_triplet | 2 |")
    assert box[5] == cd and box[7] == "20.50 ± 0.71"
    assert row(md, "| mug | dreamgaussian | 1 |")[7] == "22.00 ± 0.00"
    assert row(md, "| **all objects** | no_qa_triplet | 2 (2 objects) |")[7] == "21.50 ± 0.71"
    # dreamgaussian: seed 0 averages box and mug (21.0), seed 1 has box only (21.0)
    assert row(md, "| **all objects** | dreamgaussian | 2 (2 objects) |")[7] == "21.00 ± 0.00"
    for obj in ("box", "mug", "**all objects**"):
        for variant in ("full", "no_refine"):
            assert row(md, f"| {obj} | {variant} | 0 |")[3] == NEEDS_WEIGHTS
    assert "dreamgaussian: crash: RuntimeError: boom" in md and "no_qa_triplet: incomplete" in md


def _sweep_jobs(sweep: str) -> tuple[list[list[str]], dict]:
    """The jobs a sweep file launches, expanded by Hydra's own parser and sweeper (a dry run), and its launcher."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    res = subprocess.run([sys.executable, "launch.py", f"+sweep={sweep}", "--cfg", "hydra"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    hydra = OmegaConf.create(res.stdout).hydra
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in hydra.sweeper.params.items()])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch], hydra.launcher


@pytest.mark.parametrize("sweep,variants", [
    ("oracle_ablations", ["full", "no_qa_triplet", "no_refine", "dreamgaussian"]),
    ("oracle_ablations_offline", ["no_qa_triplet", "dreamgaussian"])])
def test_oracle_ablation_sweep_grids(sweep, variants):
    """The Table II variants that mean something at CPU size (offline: those without QA-Triplet), the noisy
    preset after the experiment, 2 seeds, 5 cases; 2 jobs at a time with joblib."""
    jobs, launcher = _sweep_jobs(sweep)
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2
    assert len(jobs) == len(variants) * 2 * 5
    as_dicts = [dict(o.split("=", 1) for o in j) for j in jobs]
    assert all(list(d) == ["+experiment", "+debug", "seed", "image"] for d in as_dicts)  # the preset wins
    assert sorted({d["+experiment"] for d in as_dicts}) == sorted(variants)
    assert {d["+debug"] for d in as_dicts} == {"oracle_noisy"} and {d["seed"] for d in as_dicts} == {"0", "1"}
    images = sorted({d["image"] for d in as_dicts})
    assert [Path(i).parent.name for i in images] == ["box", "mug", "sphere", "table", "torus"]
    for image in images:
        assert (ROOT / image).is_file() and (ROOT / image).with_name("model.glb").is_file()
