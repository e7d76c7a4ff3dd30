"""Failure isolation for one job (the lightning-hydra-template ``task_wrapper`` discipline).

- the exception and its traceback go to the job log, a ``FAILED`` file in the job directory says what went wrong;
- loggers are always closed (``wandb.finish`` in ``finally``) so multirun jobs never share a W&B run;
- in a multirun sweep a failing job does not stop the others: the error is recorded and the sweep continues;
- a single run re-raises, and ``launch.py`` prints user errors (:class:`CGError`) without a stack trace (the
  traceback of a user error goes to ``job.log`` and ``FAILED`` only, never to the console);
- an interruption (SIGTERM, Ctrl-C) is not a failure: no ``FAILED`` marker, a "re-run to resume" message and the
  conventional exit status (143 / 130), also inside a sweep (the whole process is being stopped);
- SIGTERM is graceful: inside a Lightning ``fit`` it is deferred to the end of the current step (Lightning stops
  there and :class:`~cg_lightning.runtime.trainer.SaveOnSigterm` writes ``last.ckpt``), elsewhere it interrupts at
  once; every output is written atomically, so nothing half-written is left either way. When another handler owns
  SIGTERM already (submitit on SLURM bypasses it and requeues on its own signal), it is left in charge;
- a disk-full / read-only file system anywhere in the job becomes one :class:`OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cg_lightning.errors import CGError, OutputError
from cg_lightning.runtime.loggers import finish_wandb
from cg_lightning.runtime.state import DONE_FILE, FAILED_FILE
from cg_lightning.utils.atomic import write_text

log = logging.getLogger("cg_lightning")

RESUME_HINT = "re-run the same command to resume from the last checkpoint"
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}
# atomic_path's temp files: ".<name>.<8 random chars><suffix of name>" (tempfile.mkstemp naming)
_TEMP_NAME = re.compile(r"\.(?P<dest>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?")
_SKIP_DIRS = {".hydra", "wandb", ".submitit"}


class JobInterrupted(BaseException):
    """SIGTERM outside a training loop. A BaseException so that no ``except Exception`` swallows it."""


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


def as_output_error(exc: BaseException) -> OutputError | None:
    """A disk-full / read-only / quota error raised by any writer (CSV logger, W&B, torch.save) as one clear error."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OutputError):
            return None  # already clear
        if isinstance(e, OSError) and e.errno in _OUTPUT_ERRNOS:
            where = f" while writing {e.filename}" if e.filename else ""
            if e.errno == errno.EROFS:
                return OutputError(f"Read-only file system{where}. Set paths.output_root to a writable location.")
            return OutputError(f"Disk full or over quota{where} ({e.strerror}). Free space or set paths.output_root "
                               f"elsewhere, then {RESUME_HINT}.")
    return None


# ------------------------------------------------------------------------------------------------ SIGTERM
class _SigtermState:
    received = False
    deferred = 0        # > 0 while a Lightning fit is running (it stops at the end of the step by itself)
    previous: Any = None
    owned_elsewhere = False   # someone else handles SIGTERM (e.g. submitit on SLURM bypasses it on purpose)


_SIGTERM = _SigtermState()


def _on_sigterm(signum: int, frame: Any) -> None:
    if _SIGTERM.owned_elsewhere:
        _SIGTERM.previous(signum, frame)   # submitit: preemption is handled through its own signal (USR2)
        return
    _SIGTERM.received = True
    if _SIGTERM.deferred == 0:
        raise JobInterrupted("SIGTERM")


@contextlib.contextmanager
def _sigterm_handler() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGTERM.received, _SIGTERM.deferred = False, 0
    _SIGTERM.previous = signal.getsignal(signal.SIGTERM)
    _SIGTERM.owned_elsewhere = callable(_SIGTERM.previous) and _SIGTERM.previous is not signal.default_int_handler
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, _SIGTERM.previous if _SIGTERM.previous is not None else signal.SIG_DFL)
        _SIGTERM.previous, _SIGTERM.owned_elsewhere = None, False


@contextlib.contextmanager
def defer_sigterm() -> Iterator[None]:
    """Around ``trainer.fit``: a SIGTERM only sets a flag (Lightning stops after the current step); if it came so late
    that the fit finished anyway, the job stops right after it."""
    _SIGTERM.deferred += 1
    try:
        yield
    finally:
        _SIGTERM.deferred -= 1
    if _SIGTERM.received and _SIGTERM.deferred == 0:
        raise JobInterrupted("SIGTERM")


def sigterm_received() -> bool:
    return _SIGTERM.received


# ------------------------------------------------------------------------------------------------ logging
class _FileOnly(logging.Filter):
    """Drops records marked ``file_only`` (tracebacks of user errors) from console handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def _keep_tracebacks_off_consoles() -> None:
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) and not any(isinstance(f, _FileOnly) for f in handler.filters):
            handler.addFilter(_FileOnly())


# ------------------------------------------------------------------------------------------------ the directory
def is_job_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "config_resolved.yaml").is_file()


def remove_stale_temp_files(root: str | Path) -> list[Path]:
    """Delete temp files left by a kill during an atomic write (the real file is intact); returns what was removed.

    Nested job directories (a sweep's ``<job>/<override>=<value>`` sub-jobs, possibly running right now) are left alone.
    """
    root = Path(root)
    removed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not is_job_dir(here / d)]
        for name in filenames:
            m = _TEMP_NAME.fullmatch(name)
            if m and Path(m["dest"]).suffix == (m["suffix"] or ""):
                with contextlib.suppress(OSError):
                    (here / name).unlink()
                    removed.append(here / name)
    return removed


def _prepare_output_dir(out: Path) -> None:
    """Create the job directory and prove it is writable before any work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for marker in (FAILED_FILE, DONE_FILE):
            (out / marker).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create or write the output directory {out}: {exc.strerror}. "
                          f"Set paths.output_root to a writable location.") from exc
    probe = out / ".write_probe"
    write_text(probe, "ok\n")  # raises OutputError (read-only, disk full) with the path named
    probe.unlink(missing_ok=True)
    for path in remove_stale_temp_files(out):
        log.info("removed a temp file left by an interrupted write: %s", path)


@contextlib.contextmanager
def job_guard(output_dir: str | Path, *, continue_on_error: bool | None = None) -> Iterator[None]:
    """Run the body as one job; see the module docstring for what happens on failure and interruption."""
    out = Path(output_dir)
    _keep_tracebacks_off_consoles()
    _prepare_output_dir(out)
    started = time.time()
    keep_going = is_multirun() if continue_on_error is None else continue_on_error
    exit_code = 0
    try:
        with _sigterm_handler():
            yield
        write_text(out / DONE_FILE, f"finished in {time.time() - started:.1f} s\n")
    except (KeyboardInterrupt, SystemExit, JobInterrupted) as exc:
        # Lightning turns Ctrl-C into sys.exit(1) and stops after the step on SIGTERM with SIGTERMException(SystemExit)
        sigterm = isinstance(exc, JobInterrupted) or type(exc).__name__ == "SIGTERMException" or sigterm_received()
        if isinstance(exc, SystemExit) and not sigterm and exc.code in (0, None):
            raise  # a plain sys.exit(0): not ours to judge
        if sigterm:
            exit_code, why = 143, "SIGTERM"
        elif isinstance(exc, KeyboardInterrupt):
            exit_code, why = 130, "interrupt"
        else:   # e.g. Lightning's exit after Ctrl-C, submitit's exit after requeueing: keep their status
            exit_code, why = exc.code if isinstance(exc.code, int) else 1, f"exit status {exc.code}"
        log.warning("Interrupted (%s); %s. Outputs in %s", why, RESUME_HINT, out)
        print(f"\nInterrupted ({why}); {RESUME_HINT}.", file=sys.stderr)
        raise SystemExit(exit_code) from None
    except BaseException as exc:  # noqa: BLE001 - everything is recorded, then re-raised or swallowed
        exit_code = 1
        clear = as_output_error(exc)
        reported = clear or exc
        tb = traceback.format_exc()
        if isinstance(reported, CGError):
            # a single run re-raises and launch.py prints the message once: the console gets it from there
            log.error("Job failed: %s", describe_failure(reported), extra={"file_only": not keep_going})
            log.error("Traceback of the failure:\n%s", tb, extra={"file_only": True})
        else:
            log.error("Job failed: %s\n%s", describe_failure(reported), tb)
        try:
            write_text(out / FAILED_FILE, describe_failure(reported) + "\n\n" + tb)
        except Exception:  # noqa: BLE001 - e.g. the output dir itself is read-only: the log has it anyway
            pass
        if keep_going:
            log.error("Continuing the sweep; this job is marked FAILED in %s", out)
        elif clear is not None:
            raise clear from exc
        else:
            raise
    finally:
        finish_wandb(exit_code=exit_code)
        print(f"[cg_lightning] output directory: {out}", file=sys.stderr)
