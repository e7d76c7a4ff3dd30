"""Wall and CPU time of the CPU oracle preset (``+experiment=oracle``) per bundled object and per stage.

Runs ``launch.py`` (the real entry point, one process per object, ``OMP_NUM_THREADS=1`` unless set) and reads the
job's ``metrics.json`` (``time/*_s``: per stage) and its ground-truth metrics. With ``--baseline FILE`` it prints
the ratio of each figure to that earlier run (< 1 = faster now); ``--save-baseline FILE`` stores this run's
figures for the next comparison (run it in a worktree of the previous commit to get one).

    python experiments/benchmarks/bench_cpu_pipeline.py                                   # every bundled object
    python experiments/benchmarks/bench_cpu_pipeline.py --objects box --save-baseline /tmp/cpu_base.json
    python experiments/benchmarks/bench_cpu_pipeline.py --objects box --baseline /tmp/cpu_base.json

Timings on a shared machine are noisy: the process CPU time (user + sys of the job) is printed beside the wall
time, with the load average before the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "experiments" / "data"
STAGES = ("input", "stage1", "mesh", "stage2", "export", "evaluate", "total")
QUALITY_WORDS = ("chamfer", "psnr")  # ground-truth metrics (evaluation.truth) whose key holds one of these


def bundled_objects() -> list[str]:
    return sorted(p.parent.name for p in DATA.glob("*/*_rgba.png") if p.stem == f"{p.parent.name}_rgba")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_object(name: str, out_root: Path, extra: list[str]) -> dict:
    image = DATA / name / f"{name}_rgba.png"
    cmd = [sys.executable, "launch.py", "+experiment=oracle", f"image={image}", f"paths.output_root={out_root}",
           "logger=none", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    env.setdefault("OMP_NUM_THREADS", "1")
    load = os.getloadavg()[0]
    c0, t0 = children_cpu(), time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if res.returncode != 0:
        raise SystemExit(f"{name}: pipeline failed (exit {res.returncode})\n{res.stderr[-3000:]}")
    metrics = json.loads(next(out_root.rglob("metrics.json")).read_text())
    row = {"wall_s": wall, "cpu_s": cpu, "load": load}
    for stage in STAGES:
        if f"time/{stage}_s" in metrics:
            row[f"{stage}_s"] = float(metrics[f"time/{stage}_s"])
    row.update({k: float(v) for k, v in sorted(metrics.items())
                if any(w in k.lower() for w in QUALITY_WORDS) and isinstance(v, int | float)})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", default=None, help="bundled objects (default: all)")
    parser.add_argument("--baseline", type=Path, help="JSON from an earlier --save-baseline: print ratios to it")
    parser.add_argument("--save-baseline", type=Path, help="write this run's figures here (JSON)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job, e.g. mesh=cpu")
    args = parser.parse_args()
    objects = args.objects or bundled_objects()
    base = json.loads(args.baseline.read_text()) if args.baseline else {}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in objects:
            results[name] = run_object(name, Path(tmp) / name, args.overrides)
            row, ref = results[name], base.get(name, {})
            cells = []
            for key, value in row.items():
                ratio = f" ({value / ref[key]:.2f}x)" if ref.get(key) else ""
                cells.append(f"{key}={value:.4g}{ratio}")
            print(f"{name:10} " + "  ".join(cells), flush=True)
    print("(x = this run / baseline; *_s stage wall times from metrics.json; cpu_s = user+sys of the job; "
          "load = 1-min load average before the job)")
    if args.save_baseline:
        args.save_baseline.write_text(json.dumps(results, indent=1))
        print(f"baseline written to {args.save_baseline}")


if __name__ == "__main__":
    main()
