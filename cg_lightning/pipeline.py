"""Orchestration only: input -> stage 1 -> mesh -> stage 2 -> export -> evaluate, for one job.

Each step lives in :mod:`cg_lightning.steps`; this module wires them to the job context, the failure guard and
the loggers. ``run(cfg)`` is what ``launch.py`` calls for every (multirun) job, in this order:

1. the config is validated before anything in the job directory is touched (a directory Hydra just created for an
   invalid config is removed again);
2. the job directory's lock is taken (:mod:`cg_lightning.runtime.lock`): a second process stops with a message;
3. the job's identity (input content + result-affecting config, :mod:`cg_lightning.runtime.identity`) is compared
   with the directory's ``job.json``: another identity stops the run with the differences listed (exit 2), unless
   ``on_mismatch=new`` (then Hydra already chose a fresh ``<dir>-<identity hash>``);
4. a finished job with this identity is returned as it is, nothing rewritten;
5. otherwise the job runs (or resumes) inside :func:`~cg_lightning.runtime.task.job_guard`; each step starts from an
   RNG state derived from ``(seed, step)``, so a resumed job computes what an uninterrupted one computes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cg_lightning.config.validate import validate_config
from cg_lightning.errors import CGError, ConfigError, MissingWeightsError, WrongWeightsError
from cg_lightning.runtime.task import JobInterrupted, is_multirun, job_guard

WEIGHTS_HINT = ("`make weights` (or `python -m cg_lightning.weights`) fetches every default model into the cache; "
                "a local path must hold the same files (see README, Weights)")

log = logging.getLogger("cg_lightning")


class JobMismatchError(CGError):
    """The job directory holds a job with another identity (input file or result-affecting config)."""


def _steps():
    from cg_lightning.steps.evaluate import run_evaluate
    from cg_lightning.steps.export import run_export
    from cg_lightning.steps.gaussian import run_stage1
    from cg_lightning.steps.inputs import prepare_reference
    from cg_lightning.steps.mesh import run_mesh
    from cg_lightning.steps.texture import run_stage2

    return {"input": prepare_reference, "stage1": run_stage1, "mesh": run_mesh, "stage2": run_stage2,
            "export": run_export, "evaluate": run_evaluate}


# ------------------------------------------------------------------------------------------------ entry
def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one job; returns its metrics (None when the job failed or was refused inside a sweep)."""
    from cg_lightning.runtime.lock import JobLock, JobLockedError

    output_dir = Path(cfg.paths.output_dir)
    try:
        validate_config(cfg)
    except ConfigError as exc:
        discard_fresh_dir(output_dir, cfg)
        return _refuse(exc, output_dir)
    try:
        with JobLock(output_dir):
            identity = check_identity(cfg, output_dir)
            finished = finished_metrics(cfg, output_dir)
            if finished is not None:
                # a re-run (sweep) skips finished jobs entirely: no W&B run reopened, nothing rewritten
                log.info("job already finished (%s); delete state.json to redo it", output_dir / "metrics.json")
                return finished
            return _run_job(cfg, output_dir, identity)
    except (JobLockedError, JobMismatchError) as exc:
        return _refuse(exc, output_dir)


def _refuse(exc: CGError, output_dir: Path) -> None:
    """A job that must not touch its directory: a single run stops (launch.py prints it, exit 2); a sweep says so
    on the console and goes on (the sweep summary lists it)."""
    if not is_multirun():
        raise exc
    from cg_lightning.runtime import hydra_callbacks

    print(f"\nError: {exc}\n", file=sys.stderr)
    hydra_callbacks.REFUSED_JOBS.append((output_dir, str(exc).splitlines()[0]))
    return None


def with_weights_hint(exc: MissingWeightsError | WrongWeightsError) -> CGError:
    """The same error, also saying how to get the expected weights (every weights error must name the fix)."""
    if isinstance(exc, MissingWeightsError):
        return MissingWeightsError(exc.what, exc.looked_in, f"{exc.how_to_get}. {WEIGHTS_HINT}")
    return WrongWeightsError(f"{exc}\nExpected weights: {WEIGHTS_HINT}.")


# ------------------------------------------------------------------------------------------------ identity
def discard_fresh_dir(output_dir: Path, cfg: DictConfig) -> None:
    """Remove the directory Hydra created for this job if nothing but ``job.log`` is in it (and its parents that
    became empty, up to ``paths.output_root``): an invalid config leaves no junk directory behind. (Every job that
    got as far as running has a ``job.json`` or ``.hydra/`` beside its log.)"""
    try:
        entries = list(output_dir.iterdir())
    except OSError:
        return
    if any(p.name != "job.log" for p in entries):
        return
    root = Path(str(cfg.paths.output_root)).resolve() if cfg.get("paths") else None
    with contextlib.suppress(OSError):
        for p in entries:
            p.unlink()
        here = output_dir.resolve()
        while here != root and root in here.parents:
            here.rmdir()   # fails (and stops) at the first parent that holds other jobs
            here = here.parent


def _mismatch_message(output_dir: Path, differences: list[str], why: str) -> str:
    lines = "\n".join(f"  {d}" for d in differences)
    return (f"{output_dir} holds {why}:\n{lines}\nIts results are not those of this command. Re-run with "
            f"on_mismatch=new to run this job in a fresh directory beside it, or delete {output_dir} to redo it.")


def check_identity(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """This job's identity, after checking it against the directory's ``job.json`` (raises
    :class:`JobMismatchError`); None when the input cannot be read (the input step then reports it)."""
    from cg_lightning.runtime.identity import (
        JOB_FILE,
        identity_differences,
        identity_hash,
        job_identity,
        read_job_record,
    )
    from cg_lightning.runtime.state import DONE_FILE, STATE_FILE

    try:
        identity = job_identity(cfg)
    except OSError:
        return None
    record = read_job_record(output_dir)
    if record is None:
        if any((output_dir / name).exists() for name in (STATE_FILE, DONE_FILE, "metrics.json")):
            raise JobMismatchError(_mismatch_message(
                output_dir, [f"no readable {JOB_FILE} (made by an older version?)"], "a job whose identity is unknown"))
        return identity
    if record.get("identity_hash") != identity_hash(identity):
        differences = identity_differences(record.get("identity", {}), identity)
        why = ("the results of another input file" if record.get("identity", {}).get("input_sha256")
               != identity["input_sha256"] else "a job with another config")
        raise JobMismatchError(_mismatch_message(output_dir, differences or ["(identity hash differs)"], why))
    return identity


def finished_metrics(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    from cg_lightning.runtime.layout import JobLayout
    from cg_lightning.runtime.state import DONE_FILE, JobState

    layout, state = JobLayout(output_dir), JobState(output_dir)
    if not (layout.metrics.is_file() and (output_dir / DONE_FILE).is_file()
            and all(state.is_done(s) for s in ("input", *cfg.stages))):
        return None
    try:
        return json.loads(layout.metrics.read_text())
    except (OSError, ValueError):
        return None


def _claim(cfg: DictConfig, output_dir: Path, identity: dict[str, Any] | None) -> None:
    """``job.json`` of a new job and ``<stem>/input.json`` (which input owns the stem directory)."""
    from cg_lightning.config.resolvers import STEM_OWNER_FILE
    from cg_lightning.runtime.identity import read_job_record, write_job_record
    from cg_lightning.utils.atomic import write_text

    if identity is None:
        return
    if read_job_record(output_dir) is None:
        write_job_record(output_dir, identity, cfg.image)
    try:
        rel = output_dir.resolve().relative_to(Path(str(cfg.paths.output_root)).resolve())
    except (ValueError, OSError):
        return
    if len(rel.parts) >= 3:
        owner = Path(str(cfg.paths.output_root)) / rel.parts[0] / STEM_OWNER_FILE
        if not owner.exists():
            write_text(owner, json.dumps({"sha256": identity["input_sha256"],
                                          "image": str(Path(str(cfg.image)).resolve())}, indent=2) + "\n")


def _record_invocation(cfg: DictConfig, output_dir: Path) -> None:
    """``config_resolved.yaml``, ``cmd.txt`` and ``.hydra/`` (Hydra's own copy is switched off: a refused or skipped
    run must not rewrite the records of the job in the directory)."""
    from cg_lightning.utils.atomic import write_text

    write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_text(output_dir / "cmd.txt", " ".join(shlex.quote(a) for a in sys.argv) + "\n")
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_root = HydraConfig.instance().cfg
    task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    write_text(output_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(task))
    write_text(output_dir / ".hydra" / "hydra.yaml", OmegaConf.to_yaml(hydra_root))
    write_text(output_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(hydra_root.hydra.overrides.task))


# ------------------------------------------------------------------------------------------------ the job
def _run_job(cfg: DictConfig, output_dir: Path, identity: dict[str, Any] | None) -> dict[str, Any] | None:
    from cg_lightning.runtime.device import configure_cpu_threads, resolve_device
    from cg_lightning.runtime.provenance import ProvenanceFile, collect_provenance
    from cg_lightning.runtime.state import Heartbeat, JobState

    result: dict[str, Any] | None = None
    with job_guard(output_dir):
        _claim(cfg, output_dir, identity)
        _record_invocation(cfg, output_dir)
        state = JobState(output_dir)
        state.begin_attempt()
        device = resolve_device(cfg.device)
        configure_cpu_threads()  # OMP_NUM_THREADS, else usable CPUs / jobs the launcher runs at once
        provenance = ProvenanceFile(output_dir)
        provenance.begin(collect_provenance(device))
        outcome = "failed"
        try:
            with Heartbeat(output_dir):
                result = _run_steps(cfg, output_dir, state, device)
            outcome = "finished"
        except (MissingWeightsError, WrongWeightsError) as exc:
            if "make weights" in str(exc):
                raise
            raise with_weights_hint(exc) from exc
        except (KeyboardInterrupt, SystemExit, JobInterrupted):
            outcome = "interrupted"
            raise
        finally:
            provenance.end(outcome)
    return result


def _run_steps(cfg: DictConfig, output_dir: Path, state, device) -> dict[str, Any]:
    from cg_lightning.evaluation.memory import PeakMemory
    from cg_lightning.runtime.context import JobContext
    from cg_lightning.runtime.layout import JobLayout
    from cg_lightning.runtime.loggers import JobLoggers
    from cg_lightning.steps.evaluate import write_metrics

    ctx = JobContext(cfg=cfg, layout=JobLayout(output_dir), device=device, loggers=JobLoggers(cfg, output_dir),
                     state=state, metrics=state.metrics())
    try:
        steps = _steps()
        with PeakMemory(ctx.device) as job_memory:
            for name in ("input", *cfg.stages):
                run_step(ctx, name, steps[name])
        peaks = job_memory.as_dict()
        persisted = state.metrics()
        ctx.record({k: max(v, persisted[k]) if isinstance(persisted.get(k), int | float) else v
                    for k, v in peaks.items()})
        state.save_metrics("job", peaks)
        write_metrics(ctx)
    finally:
        ctx.loggers.close()
    return ctx.metrics


def run_step(ctx, name: str, step) -> None:
    """One step from an RNG state derived from ``(seed, name)``; its time (this attempt) and, when it ran, its
    metrics and peak memory go to ``state.json``."""
    from cg_lightning.evaluation.memory import PeakMemory
    from cg_lightning.runtime.seeding import seed_all

    state = ctx.state
    finished_before = state.is_done(name)
    if name != "input":
        log.info("=== %s ===", name)
    seed_all(int(ctx.cfg.seed), "pipeline", name)
    before = dict(ctx.metrics)
    if not finished_before:
        state.begin_stage(name)
    t0 = time.perf_counter()
    try:
        with PeakMemory(ctx.device, stage=name) if name != "input" else contextlib.nullcontext() as stage_memory:
            step(ctx)
    finally:
        if not finished_before:
            state.end_stage(name, time.perf_counter() - t0)
    if finished_before:
        return
    if name == "input":
        state.mark_done("input", time.perf_counter() - t0)
    else:   # a skipped stage's peak would say nothing about that stage
        ctx.record(stage_memory.as_dict())
    state.save_metrics(name, {k: v for k, v in ctx.metrics.items() if k not in before or before[k] != v})
