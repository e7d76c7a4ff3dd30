"""The ground-truth ablation table: mean ± std over seeds per object and overall, result = final else coarse mesh."""

from __future__ import annotations

from cg_lightning.evaluation.tables import JobRecord
from cg_lightning.evaluation.truth_table import result_metric, truth_table_markdown


def job(image, experiment, seed, chamfer, final=True, status="done", error=None):
    what = "final" if final else "coarse"
    metrics = {f"eval/truth_{what}_chamfer": chamfer, f"eval/truth_{what}_psnr": 20.0 + seed}
    if final:
        metrics["eval/truth_coarse_chamfer"] = 1.0  # never used when a final mesh exists
    return JobRecord(f"/x/{image}/{experiment}/seed{seed}", image, experiment, seed, status,
                     metrics=metrics if status == "done" else {}, error=error)


def test_table_rows_means_and_failures():
    exp = "no_qa_triplet[+debug=oracle_noisy]"
    jobs = [job("torus", exp, 0, 0.02), job("torus", exp, 1, 0.04), job("mug", exp, 0, 0.06),
            job("mug", "no_refine[+debug=oracle_noisy]", 0, 0.05, final=False),
            job("mug", "full[+debug=oracle_noisy]", 0, 0, status="failed", error="Missing weights: LPIPS-vgg")]
    assert result_metric(jobs[0].metrics, "chamfer") == 0.02
    assert result_metric(jobs[3].metrics, "chamfer") == 0.05  # no stage 2: the coarse mesh is the result
    md = truth_table_markdown(jobs, {"table2": {"rows": [{"experiment": "full", "lpips": 0.307,
                                                          "clip_similarity": 0.764}]}})
    lines = md.splitlines()
    torus = next(line for line in lines if line.startswith("| torus | no_qa_triplet | 2 |"))
    assert "0.0300 ± 0.0141" in torus and "20.50 ± 0.71" in torus
    overall = next(line for line in lines if line.startswith("| **all objects** | no_qa_triplet | 3 |"))
    assert "0.0400 ± 0.0200" in overall
    assert any(line.startswith("| mug | no_refine") and "0.0500 ± 0.0000" in line for line in lines)
    assert "full[+debug=oracle_noisy]: Missing weights: LPIPS-vgg" in md and "full 0.307 / 0.764" in md
    assert "Job variants (override sub-directories): `[+debug=oracle_noisy]`" in md
    assert truth_table_markdown([job("a", "x", 0, 0, status="failed")]) is None


def test_oracle_ablation_sweep_grid():
    """The sweep file: the Table II variants that mean something at CPU size, the noisy preset, 2 seeds, 5 cases."""
    from pathlib import Path

    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1]
    params = OmegaConf.load(root / "conf" / "sweep" / "oracle_ablations.yaml").hydra.sweeper.params
    assert list(params) == ["+experiment", "+debug", "seed", "image"]  # +debug after +experiment: the preset wins
    assert params["+experiment"].split(",") == ["full", "no_qa_triplet", "no_refine", "dreamgaussian"]
    assert params["+debug"] == "oracle_noisy" and params.seed == "0,1"
    images = [s.strip() for s in params.image.split(",")]
    assert [Path(i).parent.name for i in images] == ["box", "sphere", "torus", "table", "mug"]
    for image in images:
        assert (root / image).is_file() and (root / image).with_name("model.glb").is_file()
