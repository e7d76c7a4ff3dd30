"""What a job has done so far, kept in ``<output_dir>/state.json``: finished stages, their metrics, time, attempts.

Each stage writes its outputs atomically, then records itself here, so a re-run (or SLURM requeue) skips finished
stages and resumes the unfinished one from its ``last.ckpt``. The metrics a stage recorded are kept with it, so the
``metrics.json`` of a resumed job is the same complete set an uninterrupted run writes; the seconds spent in each
stage are summed over every attempt (an attempt killed with SIGKILL counts up to its stage's last checkpoint).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from cg_lightning.utils.atomic import write_text

STATE_FILE = "state.json"
HEARTBEAT_FILE = ".heartbeat"
FAILED_FILE = "FAILED"
DONE_FILE = "DONE"


def _empty() -> dict[str, Any]:
    return {"completed": [], "timings": {}, "seconds": {}, "metrics": {}, "attempts": 0, "running": None}


class JobState:
    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / STATE_FILE
        self._data: dict = _empty()
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
                if not isinstance(loaded, dict):
                    raise ValueError("not a mapping")
                self._data.update(loaded)
            except (ValueError, OSError):
                # an unreadable state only means we redo work; outputs themselves are never trusted half-written
                self._data = _empty()

    def is_done(self, stage: str) -> bool:
        return stage in self._data.get("completed", [])

    def mark_done(self, stage: str, seconds: float | None = None) -> None:
        if stage not in self._data["completed"]:
            self._data["completed"].append(stage)
        if seconds is not None:
            self._data.setdefault("timings", {})[stage] = seconds
        self._data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._save()

    def forget(self, stage: str) -> None:
        if stage in self._data["completed"]:
            self._data["completed"].remove(stage)
            self._save()

    @property
    def timings(self) -> dict[str, float]:
        """Wall time of the attempt that finished each stage (see :attr:`seconds` for all attempts together)."""
        return dict(self._data.get("timings", {}))

    # ------------------------------------------------------------------------------------------ attempts and time
    @property
    def attempts(self) -> int:
        return int(self._data.get("attempts", 0))

    def begin_attempt(self) -> int:
        """Count a new attempt; time of a previous attempt killed mid-stage (SIGKILL) is added up to its last sign
        of life (its :class:`Heartbeat` or the stage's ``last.ckpt``, whichever is newer)."""
        running = self._data.get("running")
        if running:
            signs = [self.output_dir / str(running["stage"]) / "ckpts" / "last.ckpt", self.output_dir / HEARTBEAT_FILE]
            last_sign_of_life = max([float(running["started"])] + [p.stat().st_mtime for p in signs if p.exists()])
            self._add_seconds(str(running["stage"]), max(0.0, last_sign_of_life - float(running["started"])))
            self._data["running"] = None
        self._data["attempts"] = self.attempts + 1
        self._save()
        return self.attempts

    def begin_stage(self, stage: str) -> None:
        self._data["running"] = {"stage": stage, "started": time.time()}
        self._save()

    def end_stage(self, stage: str, seconds: float) -> None:
        """The stage stopped (finished, failed or interrupted) after ``seconds`` of this attempt."""
        self._add_seconds(stage, seconds)
        self._data["running"] = None
        self._save()

    def _add_seconds(self, stage: str, seconds: float) -> None:
        totals = self._data.setdefault("seconds", {})
        totals[stage] = float(totals.get(stage, 0.0)) + float(seconds)

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds spent in each stage, summed over every attempt."""
        return {k: float(v) for k, v in self._data.get("seconds", {}).items()}

    # ------------------------------------------------------------------------------------------------ metrics
    def save_metrics(self, stage: str, metrics: dict[str, Any]) -> None:
        if metrics:
            self._data.setdefault("metrics", {}).setdefault(stage, {}).update(metrics)
            self._save()

    def metrics(self) -> dict[str, Any]:
        """Every metric recorded by a finished stage, merged (stage order)."""
        merged: dict[str, Any] = {}
        for values in self._data.get("metrics", {}).values():
            merged.update(values)
        return merged

    def _save(self) -> None:
        write_text(self.path, json.dumps(self._data, indent=2))


class Heartbeat:
    """Touches ``<job>/.heartbeat`` every ``interval`` seconds while a job runs: after a SIGKILL, the next attempt
    knows until when the killed one was still working (its time then counts in ``time/*_s``)."""

    def __init__(self, output_dir: str | Path, interval: float = 2.0) -> None:
        self.path = Path(output_dir) / HEARTBEAT_FILE
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cg-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.path.touch()
            except OSError:
                pass   # a full disk is reported by the job's own writes

    def __enter__(self) -> Heartbeat:
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
