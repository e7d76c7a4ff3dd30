"""Read a W&B run back from its local transaction log (``run-<id>.wandb``), with no server and no login.

Why: a reviewer (and the tests) must be able to see exactly what a job sent to W&B - run id, name, group, tags,
config, every history row with its step metrics, the media files, the summary and the exit code - from the offline
files alone. The wandb package (>= 0.19) no longer ships a Python reader of its log, so this is one: the file is a
LevelDB-style log (7-byte header ``:W&B`` + magic 0xBEE1 + version 0, then 32 KiB blocks of CRC32-checked chunks)
of ``wandb_internal_pb2.Record`` protobufs, which the wandb package does ship.

  python -m cg_lightning.runtime.wandb_records outputs/box/full/seed0/wandb     # print what the job's run holds
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cg_lightning.errors import CGError

_BLOCK = 32768
_HEADER = 7
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _checksum(kind: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF


def iter_raw_records(path: str | Path) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file, in order (a torn tail from a killed writer is ignored)."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER:
        raise CGError(f"{path} is not a W&B transaction log (too short)")
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise CGError(f"{path} is not a W&B transaction log (header {ident!r} {magic:#x} v{version})")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:      # the writer pads a block tail too small for a chunk header
            pos += left_in_block
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER, pos + _HEADER + length
        if kind == 0 and length == 0 or end > len(data):
            break                        # zero padding at the end or a torn last write
        chunk = data[start:end]
        if _checksum(kind, chunk) != crc:
            raise CGError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos = end
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def iter_records(path: str | Path) -> Iterator[Any]:
    """``wandb_internal_pb2.Record`` messages of a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    for raw in iter_raw_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        yield record


def _value(item: Any) -> Any:
    return json.loads(item.value_json) if item.value_json else None


def _put(target: dict[str, Any], item: Any, value: Any) -> None:
    """Store an item under its key; wandb flattens nested values (media dicts) into ``nested_key`` paths."""
    path = list(item.nested_key) or [item.key]
    for part in path[:-1]:
        node = target.get(part)
        if not isinstance(node, dict):
            node = target[part] = {}
        target = node
    target[path[-1]] = value


def _drop(target: dict[str, Any], item: Any) -> None:
    path = list(item.nested_key) or [item.key]
    for part in path[:-1]:
        target = target.get(part) if isinstance(target.get(part), dict) else {}
    target.pop(path[-1], None)


@dataclass
class OfflineRun:
    """Everything one W&B run recorded locally (all ``.wandb`` files of one run id, in time order)."""

    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)     # one dict per wandb.log call (with _step)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)           # define_metric: name or glob -> step metric
    files: list[str] = field(default_factory=list)
    # logged artifacts (a wandb.Table with media is one): name, type, entries {path in artifact: staged local file}
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    git: dict[str, str] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------ queries
    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]

    def steps_of(self, key: str, step_metric: str | None = None) -> list[Any]:
        """The values of ``step_metric`` (default: the metric defined for ``key``) in the rows that hold ``key``."""
        metric = step_metric or self.step_metric_of(key)
        return [row.get(metric) for row in self.rows_with(key)]

    def step_metric_of(self, key: str) -> str:
        """The x-axis W&B plots ``key`` against (exact ``define_metric`` first, then globs, else ``_step``)."""
        import fnmatch

        if key in self.metrics and self.metrics[key]:
            return self.metrics[key]
        for pattern, step in self.metrics.items():
            if any(ch in pattern for ch in "*?[") and step and fnmatch.fnmatchcase(key, pattern):
                return step
        return "_step"

    def media_keys(self) -> list[str]:
        """History keys whose values are media (image, video, 3-D object, table), in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.history:
            for key, value in row.items():
                if isinstance(value, dict) and "_type" in value:
                    seen.setdefault(key, None)
        return list(seen)

    def table(self, key: str) -> dict[str, Any]:
        """The content of the ``wandb.Table`` logged under ``key`` (columns, data with media as dicts), from the
        artifact wandb stages for it (the copy in the run's media folder holds placeholders for media cells)."""
        import json as _json

        name = key.replace("/", "")
        for artifact in reversed(self.artifacts):
            if artifact["type"] == "run_table" and artifact["name"].startswith(f"run-{self.id}-{name}"):
                local = artifact["entries"].get(f"{key}.table.json")
                if local:
                    return _json.loads(Path(local).read_text())
        raise KeyError(f"no table artifact for {key!r} in run {self.id}")

    def describe(self) -> str:
        """A readable dump: identity, history keys with their steps, media with their steps, summary."""
        lines = [f"run {self.id}  name={self.name!r}  group={self.group!r}  job_type={self.job_type!r}",
                 f"tags: {', '.join(self.tags)}", f"exit code: {self.exit_code}",
                 f"config keys: {', '.join(sorted(self.config))}", "define_metric: " + ", ".join(
                     f"{k} -> {v}" for k, v in sorted(self.metrics.items()) if v)]
        media = set(self.media_keys())
        keys = sorted({k for row in self.history for k in row if not k.startswith("_")} - media)
        lines.append(f"history ({len(self.history)} rows), scalar keys with the steps they were logged at:")
        for key in keys:
            metric = self.step_metric_of(key)
            lines.append(f"  {key} @ {metric}: {_compact(self.steps_of(key))}")
        lines.append("media with their steps:")
        for key in self.media_keys():
            metric = self.step_metric_of(key)
            kinds = sorted({row[key].get("_type") for row in self.rows_with(key)})
            lines.append(f"  {key} [{', '.join(kinds)}] @ {metric}: {_compact(self.steps_of(key))}")
        lines.append("summary:")
        for key in sorted(self.summary):
            value = self.summary[key]
            if isinstance(value, dict) and "_type" in value:
                value = f"<{value['_type']}>"
            lines.append(f"  {key} = {value}")
        return "\n".join(lines)


def _compact(values: list[Any]) -> str:
    if len(values) > 12:
        return f"{values[:5]} ... {values[-5:]} ({len(values)} rows)"
    return str(values)


def _apply(run: OfflineRun, record: Any) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "run":
        r = record.run
        run.id, run.project = r.run_id or run.id, r.project or run.project
        run.name = r.display_name or run.name
        run.group, run.job_type = r.run_group or run.group, r.job_type or run.job_type
        if r.tags:
            run.tags = list(r.tags)
        for item in r.config.update:
            _put(run.config, item, _value(item))
        if r.git.remote_url or r.git.commit:
            run.git = {"remote_url": r.git.remote_url, "commit": r.git.commit}
    elif kind == "config":
        for item in record.config.update:
            _put(run.config, item, _value(item))
        for item in record.config.remove:
            _drop(run.config, item)
    elif kind == "history":
        row: dict[str, Any] = {}
        for item in record.history.item:
            _put(row, item, _value(item))
        run.history.append(row)
    elif kind == "summary":
        for item in record.summary.update:
            _put(run.summary, item, _value(item))
        for item in record.summary.remove:
            _drop(run.summary, item)
    elif kind == "metric":
        m = record.metric
        name = m.name or m.glob_name
        if name:
            run.metrics[name] = m.step_metric
    elif kind == "files":
        run.files += [f.path for f in record.files.files]
    elif kind == "artifact":
        a = record.artifact
        run.artifacts.append({"name": a.name, "type": a.type,
                              "entries": {e.path: e.local_path for e in a.manifest.contents}})
    elif kind == "exit":
        run.exit_code = int(record.exit.exit_code)


def run_files(where: str | Path) -> list[Path]:
    """``.wandb`` files under ``where`` (a job dir, its ``wandb/`` dir, a run dir or one file)."""
    p = Path(where)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise CGError(f"no W&B files at {p}")
    return sorted(p.rglob("*.wandb"), key=lambda f: (f.stat().st_mtime, str(f)))


def _records_when_complete(path: Path, wait_s: float) -> list[Any]:
    """The records of ``path``; with ``wait_s`` > 0, wait up to that long for its exit record (the wandb service
    writes the log in the background and may still be flushing a run that was just finished)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        records = list(iter_records(path))
        if wait_s <= 0 or any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_runs(where: str | Path, wait_s: float = 0.0) -> dict[str, OfflineRun]:
    """Every run under ``where`` by id; several files of one id (a resumed run) are merged in time order.
    ``wait_s``: how long to wait for runs that are still being written to finish (see above)."""
    runs: dict[str, OfflineRun] = {}
    for path in run_files(where):
        records = _records_when_complete(path, wait_s)
        run_id = next((r.run.run_id for r in records if r.WhichOneof("record_type") == "run"), path.stem[4:])
        run = runs.setdefault(run_id, OfflineRun(id=run_id))
        run.sources.append(path)
        for record in records:
            _apply(run, record)
    return runs


def read_run(where: str | Path, wait_s: float = 0.0) -> OfflineRun:
    """The single run under ``where`` (a job directory holds exactly one)."""
    runs = read_runs(where, wait_s)
    if len(runs) != 1:
        raise CGError(f"expected one W&B run under {where}, found {len(runs)}: {sorted(runs)}")
    return next(iter(runs.values()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        for where in args:
            for run in read_runs(where).values():
                print(run.describe())
                print()
    except CGError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
