"""Failure isolation for one job (the lightning-hydra-template ``task_wrapper`` discipline).

- the exception and its traceback go to the job log, a ``FAILED`` file in the job directory says what went wrong;
- loggers are always closed (``wandb.finish`` in ``finally``) so multirun jobs never share a W&B run;
- in a multirun sweep a failing job does not stop the others: the error is recorded and the sweep continues;
- a single run re-raises, and ``launch.py`` prints user errors (:class:`CGError`) without a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from cg_lightning.errors import CGError
from cg_lightning.runtime.loggers import finish_wandb
from cg_lightning.runtime.state import DONE_FILE, FAILED_FILE
from cg_lightning.utils.atomic import write_text

log = logging.getLogger("cg_lightning")


class JobFailed(Exception):
    """Raised instead of the original error for a single run whose cause was already reported."""


def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside Hydra (tests, Python API): behave like a single run
        return False


def describe_failure(exc: BaseException) -> str:
    kind = "user error" if isinstance(exc, CGError) else "crash"
    return f"{type(exc).__name__} ({kind}): {exc}"


@contextlib.contextmanager
def job_guard(output_dir: str | Path, *, continue_on_error: bool | None = None) -> Iterator[None]:
    """Run the body as one job; see the module docstring for what happens on failure."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / FAILED_FILE).unlink(missing_ok=True)
    (out / DONE_FILE).unlink(missing_ok=True)
    started = time.time()
    keep_going = is_multirun() if continue_on_error is None else continue_on_error
    exit_code = 0
    try:
        yield
        write_text(out / DONE_FILE, f"finished in {time.time() - started:.1f} s\n")
    except KeyboardInterrupt:
        exit_code = 130
        log.warning("Interrupted; re-run the same command to resume from the last checkpoint.")
        raise
    except BaseException as exc:  # noqa: BLE001 - everything is recorded, then re-raised or swallowed
        exit_code = 1
        log.error("Job failed: %s\n%s", describe_failure(exc), traceback.format_exc())
        try:
            write_text(out / FAILED_FILE, describe_failure(exc) + "\n\n" + traceback.format_exc())
        except Exception:  # noqa: BLE001 - e.g. the output dir itself is read-only: the log has it anyway
            pass
        if keep_going:
            log.error("Continuing the sweep; this job is marked FAILED in %s", out)
        else:
            raise
    finally:
        finish_wandb(exit_code=exit_code)
        print(f"[cg_lightning] output directory: {out}", file=sys.stderr)
