"""Table builder: synthetic job directories (incl. a FAILED and an incomplete one) -> Markdown/CSV/plot numbers."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest

from cg_lightning.evaluation import tables as T

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper_numbers.yaml"


def _job(root: Path, image: str, exp: str, seed: int, metrics: dict | None = None, failed: str | None = None,
         subdir: str | None = None, device: str = "cuda:0", prior: str = "Zero123Prior") -> Path:
    """A job directory as the pipeline leaves it (config, provenance, metrics or FAILED); GPU, paper scale by default."""
    d = root / image / exp / f"seed{seed}"
    if subdir:
        d = d / subdir
    d.mkdir(parents=True)
    (d / "config_resolved.yaml").write_text(f"experiment_name: {exp}\ndevice: auto\n"
                                            f"prior: {{_target_: cg_lightning.priors.x.{prior}}}\n")
    (d / "provenance.json").write_text(json.dumps({"device": device, "torch_threads": 8, "device_name": (
        "NVIDIA H200" if device.startswith("cuda") else "cpu (AMD EPYC)")}))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (d / "FAILED").write_text(failed + "\n\nTraceback (most recent call last):\n  ...\n")
    return d


def _metrics(lp: float, cs: float, t: float) -> dict:
    return {"eval/lpips": lp, "eval/clip_similarity": cs, "time/total_s": t, "time/stage1_s": t / 2,
            "eval/scored_mesh": "stage2/model.glb", "memory/peak_gpu_gb": 7.5}


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "outputs"
    # full: 2 images x 2 seeds ; dreamgaussian: 2 images x 1 seed + 1 FAILED ; no_sr: 1 job ; shap_e: 1 job
    _job(root, "anya_rgba", "full", 0, _metrics(0.30, 0.80, 80.0))
    _job(root, "anya_rgba", "full", 1, _metrics(0.32, 0.78, 82.0))
    _job(root, "zelda_rgba", "full", 0, _metrics(0.28, 0.76, 78.0))
    _job(root, "zelda_rgba", "full", 1, _metrics(0.34, 0.74, 84.0))
    _job(root, "anya_rgba", "dreamgaussian", 0, _metrics(0.40, 0.60, 60.0))
    _job(root, "zelda_rgba", "dreamgaussian", 0, _metrics(0.42, 0.62, 62.0))
    _job(root, "zelda_rgba", "dreamgaussian", 1, failed="MissingWeightsError (user error): Missing weights: zero123")
    _job(root, "anya_rgba", "dreamgaussian", 2)  # incomplete (no metrics, no FAILED)
    _job(root, "anya_rgba", "no_sr", 0, _metrics(0.35, 0.70, 75.0))
    _job(root, "anya_rgba", "shap_e", 0, {"eval/lpips": 0.6, "eval/clip_similarity": 0.5, "time/total_s": 20.0})
    _job(root, "anya_rgba", "external_myway", 0, {"eval/lpips": 0.5, "eval/clip_similarity": 0.55})
    _job(root, "anya_rgba", "full", 0, _metrics(0.9, 0.1, 1.0), subdir="stage1.iters=10")
    (root / ".submitit" / "123").mkdir(parents=True)
    (root / ".submitit" / "123" / "metrics.json").write_text("{}")  # never a job
    return root


def test_discover_jobs_statuses_and_identity(results):
    jobs = T.discover_jobs([results])
    by = {(j.image, j.experiment, j.seed): j for j in jobs}
    assert len(jobs) == 12
    assert by[("zelda_rgba", "dreamgaussian", 1)].status == "failed"
    assert by[("zelda_rgba", "dreamgaussian", 1)].error.startswith("MissingWeightsError (user error)")
    assert by[("anya_rgba", "dreamgaussian", 2)].status == "incomplete"
    assert by[("anya_rgba", "full[stage1.iters=10]", 0)].metrics["eval/lpips"] == 0.9
    # strings in metrics.json are ignored, numbers kept
    full0 = by[("anya_rgba", "full", 0)]
    assert "eval/scored_mesh" not in full0.metrics and full0.metrics["time/total_s"] == 80.0


def test_aggregate_mean_std(results):
    agg = T.aggregate(T.discover_jobs([results]))
    full = agg["full"]
    lp = full.stats["eval/lpips"]
    vals = [0.30, 0.32, 0.28, 0.34]
    mean = sum(vals) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3)
    assert lp.n_jobs == 4 and lp.mean == pytest.approx(mean)
    # ± is the spread over seeds: per-seed means (0.30+0.28)/2 and (0.32+0.34)/2, n = 2 seeds
    assert lp.n == 2 and lp.std == pytest.approx(math.sqrt(2 * 0.02 ** 2)) and lp.std != pytest.approx(std)
    assert full.comparable_with_paper and full.devices == {"cuda (NVIDIA H200)": 4} and full.scales == {"paper": 4}
    assert full.images == ["anya_rgba", "zelda_rgba"] and full.seeds == [0, 1]
    dg = agg["dreamgaussian"]
    assert dg.n_jobs == 2 and dg.n_failed == 1 and dg.n_incomplete == 1
    assert dg.stats["eval/clip_similarity"].mean == pytest.approx(0.61)
    # restricting to common images
    agg_a = T.aggregate(T.discover_jobs([results]), images={"anya_rgba"})
    assert agg_a["full"].stats["eval/lpips"].mean == pytest.approx(0.31)


def test_report_files_markdown_and_csv(results, tmp_path):
    paper = T.load_paper_numbers(PAPER)
    out = tmp_path / "tables"
    T.build_report(T.discover_jobs([results]), paper, out)
    for name in ("tables.md", "table1.csv", "table2.csv", "other.csv", "jobs.csv", "failed.csv", "table1.png",
                 "table2.png"):
        assert (out / name).is_file(), name
    assert (out / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = {r["experiment"]: r for r in csv.DictReader(io.StringIO((out / "table1.csv").read_text()))}
    assert float(rows["full"]["lpips_mean"]) == pytest.approx(0.31)
    assert float(rows["full"]["lpips_paper"]) == pytest.approx(0.307)
    assert float(rows["full"]["clip_similarity_mean"]) == pytest.approx(0.77)
    assert float(rows["full"]["time_s_mean"]) == pytest.approx(81.0)
    assert float(rows["full"]["peak_gpu_gb_mean"]) == pytest.approx(7.5)  # extra column, present in the data
    assert int(rows["full"]["n_jobs"]) == 4 and int(rows["full"]["n_images"]) == 2
    assert float(rows["shap_e"]["time_s_mean"]) == pytest.approx(20.0)
    assert float(rows["shap_e"]["time_s_paper"]) == 27
    assert rows["external_one2345"]["lpips_mean"] == "" and int(rows["external_one2345"]["n_jobs"]) == 0
    assert int(rows["dreamgaussian"]["n_failed"]) == 1

    t2 = {r["experiment"]: r for r in csv.DictReader(io.StringIO((out / "table2.csv").read_text()))}
    assert float(t2["no_sr"]["lpips_mean"]) == pytest.approx(0.35) and float(t2["no_sr"]["lpips_paper"]) == 0.343
    assert "time_s_mean" not in t2["no_sr"]  # Table II has no time column in the paper

    other = {r["experiment"] for r in csv.DictReader(io.StringIO((out / "other.csv").read_text()))}
    assert other == {"external_myway", "full[stage1.iters=10]"}

    md = (out / "tables.md").read_text()
    assert "| Ours | `full` | Optimization-based | 0.310 ± 0.028 (n=2) | 0.307 | 0.770 ± 0.014 (n=2) | 0.764 |" in md
    assert "| w/o Super-resolution | `no_sr` | 0.350 (n=1) | 0.343 | 0.700 (n=1) | 0.691 |" in md
    table1_md = md.split("### Table I")[1].split("### ")[0]
    assert "cuda (NVIDIA H200) ×4; paper |" in table1_md and "⚠" not in table1_md   # paper-scale GPU: unmarked
    assert "| ⚠ 0.900 (n=1) |" in md and "×1; custom |" in md                      # the override variant is
    assert "## Failed jobs" in md and "MissingWeightsError (user error): Missing weights: zero123" in md
    assert "seed 2" in md  # the incomplete job is listed
    failed = list(csv.DictReader(io.StringIO((out / "failed.csv").read_text())))
    assert {(r["experiment"], r["status"]) for r in failed} == {("dreamgaussian", "failed"),
                                                                ("dreamgaussian", "incomplete")}


def test_common_images_restricts_each_table(results, tmp_path):
    paper = T.load_paper_numbers(PAPER)
    report = T.build_report(T.discover_jobs([results]), paper, tmp_path / "t", which=("2",), common_only=True,
                            plot=False)
    t2 = {r["experiment"]: r for r in csv.DictReader(io.StringIO((tmp_path / "t" / "table2.csv").read_text()))}
    # no_sr only has anya -> full is averaged over anya's two seeds only
    assert float(t2["full"]["lpips_mean"]) == pytest.approx(0.31) and int(t2["full"]["n_images"]) == 1
    assert [t.name for t in report.tables] == ["table2", "other"]


def test_wandb_runs_are_mapped_and_local_jobs_win():
    class Summary(dict):
        @property
        def _json_dict(self):
            return dict(self)

    class Run:
        def __init__(self, i, cfg, summary, state="finished"):
            self.id, self.config, self.summary, self.state, self.url = i, cfg, Summary(summary), state, f"u/{i}"

    class Api:
        def runs(self, path, filters=None):
            assert path == "me/proj"
            return [Run("a", {"experiment_name": "full", "image": "imgs/anya_rgba.png", "seed": 0},
                        {"eval/lpips": 0.2, "eval/clip_similarity": 0.9, "_step": 3}),
                    Run("b", {"experiment_name": "full", "image": "imgs/zelda_rgba.png", "seed": 0}, {}, "crashed"),
                    Run("c", {"experiment_name": "no_sr", "image": "imgs/anya_rgba.png", "seed": 0}, {}, "running"),
                    Run("d", {"other": 1}, {})]

    jobs = T.jobs_from_wandb("me/proj", api=Api())
    by = {(j.image, j.experiment): j for j in jobs}
    assert len(jobs) == 3
    assert by[("anya_rgba", "full")].status == "done" and by[("anya_rgba", "full")].metrics["eval/lpips"] == 0.2
    assert by[("zelda_rgba", "full")].status == "failed" and "crashed" in by[("zelda_rgba", "full")].error
    assert by[("anya_rgba", "no_sr")].status == "incomplete"
    local = [T.JobRecord("/x", "anya_rgba", "full", 0, "done", {"eval/lpips": 0.5})]
    merged = T.merge_jobs(local, jobs)
    assert len(merged) == 3
    assert next(j for j in merged if j.image == "anya_rgba" and j.experiment == "full").metrics["eval/lpips"] == 0.5


def _load_cli(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_writes_tables_and_logs_to_wandb_offline(results, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = _load_cli("build_tables")
    out = tmp_path / "cli"
    rc = cli.main([str(results), "--out", str(out), "--table", "1", "--wandb-log", "cg-test"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "### Table I:" in printed and "### Table II:" not in printed and "logged to W&B" in printed
    assert (out / "table1.csv").is_file() and not (out / "table2.csv").exists()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run written"


def test_cli_without_finished_jobs_returns_1(tmp_path):
    cli = _load_cli("build_tables")
    root = tmp_path / "empty"
    _job(root, "anya_rgba", "full", 0, failed="RuntimeError (crash): boom")
    assert cli.main([str(root), "--no-plot"]) == 1
    assert "RuntimeError (crash): boom" in (root / "tables" / "tables.md").read_text()


def test_image_list_matches_the_table1_sweep():
    import yaml

    names = [ln.strip() for ln in (ROOT / "experiments" / "images.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert len(names) == 14 and len(set(names)) == 14
    sweep = yaml.safe_load((ROOT / "conf" / "sweep" / "table1.yaml").read_text())
    images = [p.strip() for p in sweep["hydra"]["sweeper"]["params"]["image"].split(",")]
    assert images == [f"experiments/images/{n}_rgba.png" for n in names]


def test_paper_numbers_file_is_the_paper():
    paper = T.load_paper_numbers(PAPER)
    t1 = {r["experiment"]: r for r in paper["table1"]["rows"]}
    assert (t1["full"]["lpips"], t1["full"]["clip_similarity"], t1["full"]["time_s"]) == (0.307, 0.764, 80)
    assert (t1["dreamgaussian"]["lpips"], t1["dreamgaussian"]["clip_similarity"]) == (0.389, 0.653)
    assert (t1["shap_e"]["lpips"], t1["shap_e"]["clip_similarity"], t1["shap_e"]["time_s"]) == (0.590, 0.496, 27)
    t2 = {r["experiment"]: (r["lpips"], r["clip_similarity"]) for r in paper["table2"]["rows"]}
    assert t2 == {"no_sr": (0.343, 0.691), "no_qa_triplet": (0.337, 0.708), "no_refine": (0.404, 0.573),
                  "full": (0.307, 0.764)}


def test_cpu_and_debug_runs_are_marked_and_gpu_memory_does_not_apply(tmp_path):
    root = tmp_path / "outputs"
    _job(root, "anya_rgba", "full", 0, _metrics(0.30, 0.80, 80.0))
    _job(root, "anya_rgba", "dreamgaussian", 0, _metrics(0.5, 0.5, 900.0), device="cpu", prior="TinyZero123Prior")
    jobs = T.discover_jobs([root])
    dg = next(j for j in jobs if j.experiment == "dreamgaussian")
    assert (dg.device, dg.device_kind, dg.scale, dg.threads) == ("cpu", "cpu", "debug", "8")
    assert "memory/peak_gpu_gb" not in dg.metrics            # a CPU run has no peak GPU memory: "—", not 0.00
    report = T.build_report(jobs, T.load_paper_numbers(PAPER), tmp_path / "t", which=("1",), plot=False)
    md = (tmp_path / "t" / "tables.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| DreamGaussian |"))
    assert "⚠ 0.500 (n=1) | 0.389 |" in row and row.endswith("| cpu ×1; debug |")
    assert "| — |" in row                                      # Peak GPU column of the CPU row
    assert "⚠ = not comparable with the paper's numbers" in md
    full_row = next(line for line in md.splitlines() if line.startswith("| Ours |"))
    assert "⚠" not in full_row and "7.50 (n=1)" in full_row
    rows = {r["experiment"]: r for r in csv.DictReader(io.StringIO((tmp_path / "t" / "table1.csv").read_text()))}
    assert rows["dreamgaussian"]["comparable_with_paper"] == "False" and rows["dreamgaussian"]["scales"] == "debug"
    assert rows["dreamgaussian"]["peak_gpu_gb_mean"] == "" and rows["full"]["comparable_with_paper"] == "True"
    jobs_rows = list(csv.DictReader(io.StringIO((tmp_path / "t" / "jobs.csv").read_text())))
    assert {(r["experiment"], r["device"], r["scale"]) for r in jobs_rows} == {
        ("full", "cuda (NVIDIA H200)", "paper"), ("dreamgaussian", "cpu", "debug")}
    assert report.tables[0].name == "table1"


def test_table2_uses_common_images_by_default(results, tmp_path):
    paper = T.load_paper_numbers(PAPER)
    T.build_report(T.discover_jobs([results]), paper, tmp_path / "d", plot=False)
    t1 = {r["experiment"]: r for r in csv.DictReader(io.StringIO((tmp_path / "d" / "table1.csv").read_text()))}
    t2 = {r["experiment"]: r for r in csv.DictReader(io.StringIO((tmp_path / "d" / "table2.csv").read_text()))}
    assert int(t1["full"]["n_images"]) == 2                            # Table I: every finished image
    assert int(t2["full"]["n_images"]) == 1 and float(t2["full"]["lpips_mean"]) == pytest.approx(0.31)
    assert "table2: restricted to the 1 image(s)" in (tmp_path / "d" / "tables.md").read_text()
    T.build_report(T.discover_jobs([results]), paper, tmp_path / "a", plot=False, common_only=False)
    t2 = {r["experiment"]: r for r in csv.DictReader(io.StringIO((tmp_path / "a" / "table2.csv").read_text()))}
    assert int(t2["full"]["n_images"]) == 2
