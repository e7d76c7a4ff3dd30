"""The ground-truth ablation table: per object and overall, mean ± std over seeds of the truth metrics of each variant.

Why separate from Table I / II: those score against the input picture (LPIPS, CLIP); this one scores the result
against the true object (cg_lightning/evaluation/truth.py), which only oracle jobs have. The "result" of a job is its
final mesh, or the coarse mesh when the variant has no stage 2 (``no_refine``). The paper's Table II (real images,
LPIPS / CLIP) is printed beside it for the same variants.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

#: (header, metric name in eval/truth_<what>_<metric>, decimals, higher is better)
COLUMNS = [("F-score 1 %", "fscore_1pct", 3, True), ("F-score 2 %", "fscore_2pct", 3, True),
           ("Chamfer", "chamfer", 4, False), ("normal cons.", "normal_consistency", 3, True),
           ("PSNR", "psnr", 2, True), ("masked PSNR", "masked_psnr", 2, True), ("SSIM", "ssim", 3, True)]
ORDER = ("full", "no_qa_triplet", "no_refine", "dreamgaussian", "no_sr", "paper", "oracle")


def result_metric(metrics: dict[str, float], name: str) -> float | None:
    """The job's result (final mesh, else coarse mesh) for one truth metric."""
    for what in ("final", "coarse"):
        v = metrics.get(f"eval/truth_{what}_{name}")
        if v is not None:
            return float(v)
    return None


def _base(experiment: str) -> str:
    return experiment.split("[", 1)[0]


def _cell(values: Sequence[float], decimals: int) -> str:
    """``mean ± sample std`` (std 0 for one value), or — when there is none."""
    if not values:
        return "—"
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{m:.{decimals}f} ± {s:.{decimals}f}"


def _experiments(jobs) -> list[str]:
    names = {j.experiment for j in jobs}
    return sorted(names, key=lambda e: (ORDER.index(_base(e)) if _base(e) in ORDER else len(ORDER), e))


def truth_table_markdown(jobs: Sequence[Any], paper: dict | None = None) -> str | None:
    """Markdown of the table (None when no job has ground-truth metrics). ``jobs``: tables.JobRecord-like."""
    done = [j for j in jobs if j.status == "done" and result_metric(j.metrics, "chamfer") is not None]
    if not done:
        return None
    experiments = _experiments(done)
    objects = sorted({j.image for j in done})
    by: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for j in done:
        by[(j.image, j.experiment)].append(j)
    bases = {_base(e) for e in experiments}
    short = len(bases) == len(experiments)  # one variant directory per experiment: show the plain names
    suffixes = sorted({e[len(_base(e)):] for e in experiments if e != _base(e)}) if short else []
    head = "| object | variant | seeds | " + " | ".join(f"{h} {'↑' if up else '↓'}" for h, _, _, up in COLUMNS) + " |"
    lines = ["### Ground-truth ablation table (mean ± std over seeds)", "", head,
             "|" + "---|" * (3 + len(COLUMNS))]
    for obj in [*objects, "all objects"]:
        for exp in experiments:
            group = [j for j in done if j.experiment == exp] if obj == "all objects" else by.get((obj, exp), [])
            if not group:
                continue
            cells = []
            for _, name, decimals, _ in COLUMNS:
                cells.append(_cell([v for j in group if (v := result_metric(j.metrics, name)) is not None], decimals))
            label = f"**{obj}**" if obj == "all objects" else obj
            lines.append(f"| {label} | {_base(exp) if short else exp} | {len(group)} | " + " | ".join(cells) + " |")
    if suffixes:
        lines += ["", "Job variants (override sub-directories): " + ", ".join(f"`{x}`" for x in suffixes)]
    failed = sorted({(j.experiment, (j.error or j.status)[:120]) for j in jobs if j.status != "done"})
    if failed:
        lines += ["", "Not finished (no row above): " + "; ".join(f"{e}: {why}" for e, why in failed)]
    rows = (paper or {}).get("table2", {}).get("rows", [])
    if rows:
        lines += ["", "Beside it, the paper's Table II (real images, LPIPS ↓ / CLIP similarity ↑): "
                  + "; ".join(f"{r['experiment']} {r['lpips']:.3f} / {r['clip_similarity']:.3f}" for r in rows)]
    return "\n".join(lines) + "\n"
