"""Entry point: ``python launch.py +experiment=full image=path/to/image.png``.

Heavy imports (torch, models) happen inside the pipeline, so ``--help``, ``--cfg job`` and
``--info defaults-tree`` stay fast. Every mistake that is the user's to fix (no or an unreadable ``image``, a path
Hydra cannot parse, missing weights or backends, a bad config value, a full or read-only disk) is printed once as
one paragraph with exit status 2; tracebacks go to the job log only. Before any work, the preflight
(:mod:`cg_lightning.preflight`) checks that every weight and backend the composed config needs is there.
"""

import atexit
import gc
import os
import sys

import hydra
from omegaconf import DictConfig

import cg_lightning.config  # noqa: F401  (registers resolvers and schemas before Hydra composes)
from cg_lightning.cli_errors import check_overrides, explain, print_error, quiet_logging_errors
from cg_lightning.errors import CGError
from cg_lightning.runtime import lean_imports


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from cg_lightning.pipeline import run

    quiet_logging_errors()   # a disk filling mid-run: one warning, not a traceback per log line
    try:
        if not preflight_passes(cfg):
            return None
        metrics = run(cfg)
    except CGError as exc:
        print_error(exc)
        sys.exit(2)
    except OSError as exc:
        error = explain(exc)
        if error is None:
            raise
        print_error(error)
        sys.exit(2)
    # returned for sweepers that optimise a metric (e.g. Optuna): lower LPIPS is better
    return None if not metrics else metrics.get("eval/lpips")


def preflight_passes(cfg: DictConfig) -> bool:
    """Single run: raise what is missing (printed by ``main``). Sweep: this job is marked FAILED with the list and
    the sweep goes on (an unreadable image is left to the job itself, which marks it FAILED the usual way)."""
    from cg_lightning.preflight import preflight
    from cg_lightning.runtime.task import is_multirun

    if not is_multirun():
        preflight(cfg)
        return True
    from pathlib import Path

    from cg_lightning.errors import PreflightError
    from cg_lightning.runtime.state import FAILED_FILE
    from cg_lightning.utils.atomic import write_text

    try:
        preflight(cfg, image_errors=False)
    except PreflightError as exc:
        print_error(exc)
        write_text(Path(cfg.paths.output_dir) / FAILED_FILE, f"PreflightError (user error): {exc}\n")
        return False
    return True


def cli(argv: list[str]) -> None:
    """Run ``main`` as Hydra would, but explain the failures Hydra raises before our code runs."""
    # Registered first, so it runs last at exit: the garbage collector then skips the millions of objects
    # torch, Lightning and diffusers left behind (the exit-time collection took 3-4 s of a CPU smoke run).
    atexit.register(gc.freeze)
    # torchmetrics (imported by Lightning) skips importing torchvision / transformers / scipy.signal / matplotlib for
    # metrics we never use: ~3 s of CPU per process (cg_lightning/runtime/lean_imports.py; CG_LEAN_IMPORTS=0: off)
    lean_imports.install()
    user_wants_traces = os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
    try:
        check_overrides(argv)
    except CGError as exc:
        print_error(exc)
        sys.exit(2)
    # Hydra re-raises instead of printing its own (sometimes 90-line) report, so that we can explain the error
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - explained below, or reported the way Hydra would
        error = explain(exc)
        if error is not None and not user_wants_traces:
            print_error(error)
            sys.exit(2)
        if user_wants_traces:
            raise
        _report_like_hydra(exc)
        sys.exit(1)


def _report_like_hydra(exc: Exception) -> None:
    """Hydra's own compact report of an error we do not explain (e.g. an unknown config key)."""
    import traceback

    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, CompactHydraException):
        print(str(exc), file=sys.stderr)
        if isinstance(exc.__cause__, OmegaConfBaseException):
            print(str(exc.__cause__), file=sys.stderr)
    else:
        traceback.print_exception(exc)
    print("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)


if __name__ == "__main__":
    cli(sys.argv[1:])
