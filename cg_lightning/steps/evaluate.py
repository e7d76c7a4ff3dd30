"""Evaluation step: LPIPS (reference view) and CLIP similarity (8 azimuths) of the final mesh, plus timings."""

from __future__ import annotations

import json
import logging

from cg_lightning.runtime.context import JobContext
from cg_lightning.utils.atomic import write_text

log = logging.getLogger(__name__)


def scoring_reference(ctx: JobContext):
    """The image every variant is scored against: the preprocessed input *before* super-resolution.

    Scoring against the super-resolved image would hand the SR variants a different target than the baselines.
    """
    from cg_lightning.steps.inputs import read_png

    path = ctx.find_output("preprocessed")
    return read_png(path) if path is not None else ctx.reference_rgba


def run_evaluate(ctx: JobContext) -> None:
    from cg_lightning.evaluation.metrics import evaluate_gaussians, evaluate_mesh, release_eval_models
    from cg_lightning.mesh.mesh import Mesh

    ev = ctx.cfg.evaluation
    reference = scoring_reference(ctx)
    glb = ctx.find_output("model_glb") or ctx.find_output("coarse_glb")
    ply = ctx.find_output("gaussians_ply")
    if glb is not None:
        mesh = Mesh.load(glb)
        ctx.record(perceptual_or_skipped(ctx, lambda: evaluate_mesh(mesh, reference, cfg_eval=ev, device=ctx.device,
                                                                    elevation_deg=float(ctx.cfg.elevation))))
        ctx.record({"eval/scored_mesh": str(glb.relative_to(glb.parents[1]))})  # type: ignore[dict-item]
    if ply is not None:
        from cg_lightning.render.gaussian import build_gaussian_rasterizer
        from cg_lightning.steps.mesh import load_gaussians

        ctx.record(perceptual_or_skipped(ctx, lambda: evaluate_gaussians(
            load_gaussians(ctx), build_gaussian_rasterizer(ctx.cfg.renderer.gaussian), reference, cfg_eval=ev,
            device=ctx.device, elevation_deg=float(ctx.cfg.elevation))))
    score_against_truth(ctx)
    ctx.renders.forget()   # the kept renders are of no use after the last score
    release_eval_models()  # CLIP ViT-bigG must not stay in GPU memory for the next job of a sweep
    ctx.state.mark_done("evaluate")
    log.info("evaluate: %s", {k: v for k, v in ctx.metrics.items() if k.startswith("eval/")})


def perceptual_or_skipped(ctx: JobContext, score) -> dict:
    """LPIPS / CLIP scores from ``score()``; with ``evaluation.perceptual=if_available`` missing weights skip them
    (recorded as ``eval/perceptual_skipped``) instead of failing the job, ``off`` never computes them."""
    from cg_lightning.errors import ConfigError, MissingWeightsError

    mode = str(ctx.cfg.evaluation.get("perceptual", "required"))
    if mode not in ("required", "if_available", "off"):
        raise ConfigError(f"evaluation.perceptual={mode!r}; expected required, if_available or off")
    if mode == "off":
        ctx.record({"eval/perceptual_skipped": "evaluation.perceptual=off"})  # type: ignore[dict-item]
        return {}
    if mode == "if_available" and "eval/perceptual_skipped" in ctx.metrics:
        return {}  # already found missing for this job: do not try (and time out on) the download again
    if mode == "if_available":
        # the preflight's own check (file look-ups; the hub answer is remembered for the process): building a
        # scorer only to see it fail cost 2-3 s per job (LPIPS-VGG built, then its download attempted)
        from cg_lightning.preflight import check_evaluation

        missing_now = check_evaluation(ctx.cfg.evaluation)
        if missing_now:
            log.warning("evaluate: LPIPS / CLIP skipped, weights missing: %s", missing_now[0].what)
            ctx.record({"eval/perceptual_skipped": f"weights missing: {missing_now[0].what}"})  # type: ignore[dict-item]
            return {}
    try:
        return score()
    except Exception as exc:  # Hydra's instantiate wraps the MissingWeightsError of a scorer's constructor
        missing = exc
        while missing is not None and not isinstance(missing, MissingWeightsError):
            missing = missing.__cause__
        if mode == "required" or missing is None:
            raise
        log.warning("evaluate: LPIPS / CLIP skipped, weights missing: %s", missing.what)
        ctx.record({"eval/perceptual_skipped": f"weights missing: {missing.what}"})  # type: ignore[dict-item]
        return {}


def truth_scoring_enabled(ctx: JobContext) -> bool:
    """Does this job get ground-truth metrics (a prior that knows the true mesh, ``evaluation.truth.enabled``)?"""
    from hydra.utils import get_class

    truth_cfg = ctx.cfg.evaluation.get("truth") or {}
    target = (ctx.cfg.get("prior") or {}).get("_target_")
    return bool(target) and hasattr(get_class(target), "ground_truth_path") and bool(truth_cfg.get("enabled", True))


def truth_view_keys(ctx: JobContext) -> frozenset:
    """Camera keys of the ground-truth evaluation views (empty when the job has no truth metrics): the export step
    keeps its turntable frames at these cameras for :func:`score_against_truth`."""
    if "evaluate" not in (ctx.cfg.get("stages") or []) or not truth_scoring_enabled(ctx):
        return frozenset()
    from cg_lightning.cameras import orbit
    from cg_lightning.evaluation.render_memo import camera_key
    from cg_lightning.evaluation.truth import fixed_views

    size = int((ctx.cfg.evaluation.get("truth") or {}).get("size", 256))
    return frozenset(camera_key(orbit(e, a, 2.0, 49.1, size, size)) for e, a in fixed_views())


def score_against_truth(ctx: JobContext) -> None:
    """Ground-truth metrics (cg_lightning/evaluation/truth.py) when the prior knows the true mesh."""
    if not truth_scoring_enabled(ctx):
        return
    truth_cfg = ctx.cfg.evaluation.get("truth") or {}
    truth_path = ctx.prior().ground_truth_path
    from cg_lightning.evaluation.truth import renderer_tag, truth_metrics
    from cg_lightning.mesh.mesh import Mesh
    from cg_lightning.render.mesh import build_mesh_rasterizer
    from cg_lightning.steps.export import gaussian_view_fn

    coarse, final, ply = (ctx.find_output(k) for k in ("coarse_glb", "model_glb", "gaussians_ply"))
    gaussians, gaussians_tag = None, None
    if ply is not None:
        from cg_lightning.render.gaussian import build_gaussian_rasterizer
        from cg_lightning.steps.mesh import load_gaussians

        rasterizer = build_gaussian_rasterizer(ctx.cfg.renderer.gaussian, ctx.cfg.get("experiment_name"))
        gaussians = gaussian_view_fn(ctx, load_gaussians(ctx), rasterizer)
        gaussians_tag = renderer_tag(rasterizer, ctx.device)
    ctx.record(truth_metrics(Mesh.load(truth_path()), coarse=Mesh.load(coarse) if coarse else None,
                             final=Mesh.load(final) if final else None, gaussians=gaussians,
                             rasterizer=build_mesh_rasterizer("torch"), samples=int(truth_cfg.get("samples", 20000)),
                             size=int(truth_cfg.get("size", 256)), memo=ctx.renders, gaussians_tag=gaussians_tag))
    log.info("evaluate: renders of this job's views: %d made, %d reused (export frames, the truth shared)",
             ctx.renders.misses, ctx.renders.hits)


#: the steps whose time is the generation time of Table I (``time/total_s``); export and evaluate come after
GENERATION_STEPS = ("input", "stage1", "mesh", "stage2")


def write_metrics(ctx: JobContext) -> None:
    """``metrics.json`` (what the table builder reads) and the W&B run summary.

    Times are those of every attempt together (``state.json``): ``time/<step>_s`` per step, ``time/total_s`` the
    generation time (input to stage 2), ``time/all_steps_s`` every step; ``job/attempts`` counts the attempts."""
    seconds = ctx.state.seconds
    ctx.record({f"time/{k}_s": v for k, v in seconds.items()})
    ctx.record({"time/total_s": sum(v for k, v in seconds.items() if k in GENERATION_STEPS),
                "time/all_steps_s": sum(seconds.values()), "job/attempts": ctx.state.attempts})
    write_text(ctx.layout.metrics, json.dumps(ctx.metrics, indent=2, sort_keys=True))
    ctx.loggers.log_summary({k: v for k, v in ctx.metrics.items() if isinstance(v, int | float)})
