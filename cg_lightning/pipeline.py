"""Orchestration only: input -> stage 1 -> mesh -> stage 2 -> export -> evaluate, for one job.

Each step lives in :mod:`cg_lightning.steps`; this module wires them to the job context, the failure guard and
the loggers. ``run(cfg)`` is what ``launch.py`` calls for every (multirun) job.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cg_lightning.config.validate import validate_config
from cg_lightning.errors import CGError, MissingWeightsError, WrongWeightsError
from cg_lightning.runtime.task import job_guard

WEIGHTS_HINT = ("`make weights` (or `python -m cg_lightning.weights`) fetches every default model into the cache; "
                "a local path must hold the same files (see README, Weights)")

log = logging.getLogger("cg_lightning")


def _steps():
    from cg_lightning.steps.evaluate import run_evaluate
    from cg_lightning.steps.export import run_export
    from cg_lightning.steps.gaussian import run_stage1
    from cg_lightning.steps.mesh import run_mesh
    from cg_lightning.steps.texture import run_stage2

    return {"stage1": run_stage1, "mesh": run_mesh, "stage2": run_stage2, "export": run_export,
            "evaluate": run_evaluate}


def _record_invocation(cfg: DictConfig, output_dir: Path) -> None:
    from cg_lightning.utils.atomic import write_text

    write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_text(output_dir / "cmd.txt", " ".join(shlex.quote(a) for a in sys.argv) + "\n")


def run(cfg: DictConfig) -> dict[str, float] | None:
    """Run one job; returns its metrics (None when the job failed inside a sweep)."""
    output_dir = Path(cfg.paths.output_dir)
    result: dict[str, float] | None = None
    with job_guard(output_dir):
        validate_config(cfg)
        _record_invocation(cfg, output_dir)
        try:
            result = _run_steps(cfg, output_dir)
        except (MissingWeightsError, WrongWeightsError) as exc:
            if "make weights" in str(exc):
                raise
            raise with_weights_hint(exc) from exc
    return result


def with_weights_hint(exc: MissingWeightsError | WrongWeightsError) -> CGError:
    """The same error, also saying how to get the expected weights (every weights error must name the fix)."""
    if isinstance(exc, MissingWeightsError):
        return MissingWeightsError(exc.what, exc.looked_in, f"{exc.how_to_get}. {WEIGHTS_HINT}")
    return WrongWeightsError(f"{exc}\nExpected weights: {WEIGHTS_HINT}.")


def _run_steps(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    from lightning.pytorch import seed_everything

    from cg_lightning.evaluation.memory import PeakMemory
    from cg_lightning.runtime.context import JobContext
    from cg_lightning.runtime.device import resolve_device
    from cg_lightning.runtime.layout import JobLayout
    from cg_lightning.runtime.loggers import JobLoggers
    from cg_lightning.runtime.state import JobState
    from cg_lightning.steps.evaluate import write_metrics
    from cg_lightning.steps.inputs import prepare_reference

    seed_everything(int(cfg.seed), workers=True, verbose=False)
    state = JobState(output_dir)
    layout = JobLayout(output_dir)
    if layout.metrics.is_file() and all(state.is_done(s) for s in ("input", *cfg.stages)):
        # a re-run sweep skips finished jobs entirely (no W&B run is reopened, nothing is rewritten)
        log.info("job already finished (%s); delete state.json to redo it", layout.metrics)
        return json.loads(layout.metrics.read_text())
    ctx = JobContext(cfg=cfg, layout=layout, device=resolve_device(cfg.device),
                     loggers=JobLoggers(cfg, output_dir), state=state)
    try:
        t0 = time.perf_counter()
        prepare_reference(ctx)
        if not state.is_done("input"):
            state.mark_done("input", time.perf_counter() - t0)
        steps = _steps()
        with PeakMemory(ctx.device) as job_memory:
            for name in cfg.stages:
                log.info("=== %s ===", name)
                finished_before = state.is_done(name)
                with PeakMemory(ctx.device, stage=name) as stage_memory:
                    steps[name](ctx)
                if not finished_before:  # a skipped stage's peak would say nothing about that stage
                    ctx.record(stage_memory.as_dict())
        ctx.record(job_memory.as_dict())
        write_metrics(ctx)
    finally:
        ctx.loggers.close()
    return ctx.metrics
