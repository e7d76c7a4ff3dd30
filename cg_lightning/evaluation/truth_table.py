"""The ground-truth ablation table: per object and overall, mean ± std over seeds of the truth metrics of each variant.

Why separate from Table I / II: those score against the input picture (LPIPS, CLIP); this one scores the result
against the true object (cg_lightning/evaluation/truth.py), which only oracle jobs have. The "result" of a job is its
final mesh, or the coarse mesh when the variant has no stage 2 (``no_refine``). The paper's Table II (real images,
LPIPS / CLIP) is shown beside it for the same variants.

Per object a cell is the mean ± sample std over that object's seeds. Overall ("all objects") a cell is the mean over
the seeds of the per-seed average over objects, ± the std of those per-seed averages: the spread due to the seed,
not the spread between objects. A variant of the ablation sweep (``full``, ``no_qa_triplet``, ``no_refine``,
``dreamgaussian``) without a finished job still gets its rows, saying why (QA-Triplet variants without the LPIPS-VGG
weights: "needs LPIPS-VGG weights"), so that a missing row is never mistaken for a dropped one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

#: (header, metric name in eval/truth_<what>_<metric>, decimals, higher is better)
COLUMNS = [("F-score 1 %", "fscore_1pct", 3, True), ("F-score 2 %", "fscore_2pct", 3, True),
           ("Chamfer", "chamfer", 4, False), ("normal cons.", "normal_consistency", 3, True),
           ("PSNR", "psnr", 2, True), ("masked PSNR", "masked_psnr", 2, True), ("SSIM", "ssim", 3, True)]
ORDER = ("full", "no_qa_triplet", "no_refine", "dreamgaussian", "no_sr", "paper", "oracle")
#: the variants of +sweep=oracle_ablations: each gets a row (or a reason why it has none) once one of them ran
ABLATION_VARIANTS = ("full", "no_qa_triplet", "no_refine", "dreamgaussian")
#: variants whose stage 1 uses QA-Triplet, i.e. needs the pretrained LPIPS-VGG backbone
QA_TRIPLET_VARIANTS = frozenset({"full", "no_refine", "paper", "no_sr"})
NEEDS_WEIGHTS = "needs LPIPS-VGG weights (`make install` or `make weights`)"


def result_metric(metrics: dict[str, float], name: str) -> float | None:
    """The job's result (final mesh, else coarse mesh) for one truth metric."""
    for what in ("final", "coarse"):
        v = metrics.get(f"eval/truth_{what}_{name}")
        if v is not None:
            return float(v)
    return None


def lpips_vgg_available() -> bool:
    """Whether the pretrained LPIPS-VGG backbone is on this machine (where ``make weights`` puts it)."""
    from cg_lightning.perceptual.lpips import _backbone_checkpoint

    return _backbone_checkpoint("vgg").is_file()


def _base(experiment: str) -> str:
    return experiment.split("[", 1)[0]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def _cell(values: Sequence[float], decimals: int) -> str:
    """``mean ± sample std`` (std 0 for one value), or — when there is none."""
    if not values:
        return "—"
    m, s = _mean_std(values)
    return f"{m:.{decimals}f} ± {s:.{decimals}f}"


def _overall(group: Sequence[Any], name: str) -> list[float]:
    """Per seed, the mean over objects of one metric (the values whose mean ± std the overall row shows)."""
    per_seed: dict[Any, list[float]] = defaultdict(list)
    for j in group:
        if (v := result_metric(j.metrics, name)) is not None:
            per_seed[j.seed].append(v)
    return [sum(vs) / len(vs) for _, vs in sorted(per_seed.items(), key=lambda kv: str(kv[0]))]


def _experiments(jobs) -> list[str]:
    names = {j.experiment for j in jobs}
    return sorted(names, key=lambda e: (ORDER.index(_base(e)) if _base(e) in ORDER else len(ORDER), e))


def _object_label(image: str) -> str:
    return image.removesuffix("_rgba")


def _why_missing(variant: str, jobs: Sequence[Any], weights_available: bool) -> str:
    """Why a variant has no finished job: the weights, its failures, or that it was not run."""
    if variant in QA_TRIPLET_VARIANTS and not weights_available:
        return NEEDS_WEIGHTS
    errors = sorted({(j.error or j.status).splitlines()[0][:80] for j in jobs if _base(j.experiment) == variant})
    return ("not finished: " + "; ".join(errors)) if errors else "not run"


def truth_table_markdown(jobs: Sequence[Any], paper: dict | None = None,
                         weights_available: bool | Callable[[], bool] = lpips_vgg_available) -> str | None:
    """Markdown of the table (None when no job has ground-truth metrics). ``jobs``: tables.JobRecord-like;
    ``weights_available``: whether LPIPS-VGG is here (a bool, or a function asked only when a row is missing)."""
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
    missing = [v for v in ABLATION_VARIANTS if v not in bases] if bases & set(ABLATION_VARIANTS) else []
    reasons = {}
    if missing:
        available = weights_available() if callable(weights_available) else bool(weights_available)
        reasons = {v: _why_missing(v, jobs, available) for v in missing}
    rows_order = sorted([*experiments, *missing],
                        key=lambda e: (ORDER.index(_base(e)) if _base(e) in ORDER else len(ORDER), e))
    paper_rows = {r["experiment"]: r for r in (paper or {}).get("table2", {}).get("rows", [])}
    head = ("| object | variant | seeds | " + " | ".join(f"{h} {'↑' if up else '↓'}" for h, _, _, up in COLUMNS)
            + " | paper Table II: LPIPS ↓ / CLIP ↑ |")
    lines = ["### Ground-truth ablation table (mean ± std over seeds)", "", head,
             "|" + "---|" * (4 + len(COLUMNS))]
    for obj in [*objects, "all objects"]:
        overall = obj == "all objects"
        for exp in rows_order:
            label = f"**{obj}**" if overall else _object_label(obj)
            name = _base(exp) if short else exp
            ref = paper_rows.get(_base(exp)) if overall else None
            paper_cell = f"{ref['lpips']:.3f} / {ref['clip_similarity']:.3f}" if ref else ""
            if exp in reasons:
                cells = [reasons[exp]] + ["—"] * (len(COLUMNS) - 1)
                lines.append(f"| {label} | {name} | 0 | " + " | ".join(cells) + f" | {paper_cell} |")
                continue
            group = [j for j in done if j.experiment == exp] if overall else by.get((obj, exp), [])
            if not group:
                continue
            if overall:
                cells = [_cell(_overall(group, metric), decimals) for _, metric, decimals, _ in COLUMNS]
                n_obj = len({j.image for j in group})
                seeds = f"{len({j.seed for j in group})} ({n_obj} object{'s' if n_obj != 1 else ''})"
            else:
                cells = [_cell([v for j in group if (v := result_metric(j.metrics, metric)) is not None], decimals)
                         for _, metric, decimals, _ in COLUMNS]
                seeds = str(len(group))
            lines.append(f"| {label} | {name} | {seeds} | " + " | ".join(cells) + f" | {paper_cell} |")
    notes = []
    if suffixes:
        notes.append("Job variants (override sub-directories): " + ", ".join(f"`{x}`" for x in suffixes))
    notes.append("Result = the final mesh (the coarse one for `no_refine`). Overall: mean over seeds of the "
                 "per-seed average over objects, ± the std of those averages. The paper's Table II is LPIPS / CLIP "
                 "on real images, not comparable number for number: only the ranking of variants is.")
    failed = sorted({(j.experiment, (j.error or j.status).splitlines()[0][:120]) for j in jobs if j.status != "done"})
    if failed:
        notes.append("Not finished (no row above): " + "; ".join(f"{e}: {why}" for e, why in failed))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
