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
    torus = next(line for line in lines if line.startswith(f"| torus | {exp} | 2 |"))
    assert "0.0300 ± 0.0141" in torus and "20.50 ± 0.71" in torus
    overall = next(line for line in lines if line.startswith(f"| **all objects** | {exp} | 3 |"))
    assert "0.0400 ± 0.0200" in overall
    assert any(line.startswith("| mug | no_refine") and "0.0500 ± 0.0000" in line for line in lines)
    assert "full[+debug=oracle_noisy]: Missing weights: LPIPS-vgg" in md and "full 0.307 / 0.764" in md
    assert truth_table_markdown([job("a", "x", 0, 0, status="failed")]) is None
