"""Which pipeline stages of a job are finished, kept in ``<output_dir>/state.json``.

Each stage writes its outputs atomically, then records itself here, so a re-run (or SLURM requeue) skips finished
stages and resumes the unfinished one from its ``last.ckpt``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cg_lightning.utils.atomic import write_text

STATE_FILE = "state.json"
FAILED_FILE = "FAILED"
DONE_FILE = "DONE"


class JobState:
    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / STATE_FILE
        self._data: dict = {"completed": [], "timings": {}}
        if self.path.exists():
            try:
                self._data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, OSError):
                # an unreadable state only means we redo work; outputs themselves are never trusted half-written
                self._data = {"completed": [], "timings": {}}

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
        return dict(self._data.get("timings", {}))

    def _save(self) -> None:
        write_text(self.path, json.dumps(self._data, indent=2))
