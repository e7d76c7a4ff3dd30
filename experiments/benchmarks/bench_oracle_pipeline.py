"""The whole pipeline against ground truth: ``+experiment=oracle`` per object, with the perfect and the imperfect oracle.

Runs ``launch.py`` (the real entry point) at the CPU size of ``+experiment=oracle`` (conf/debug/oracle.yaml) and
prints, per object and oracle, the ground-truth figures the evaluate step wrote into metrics.json
(cg_lightning/evaluation/truth.py): novel-view PSNR and masked PSNR at 16 fixed views of the stage-1 Gaussians, of
the coarse (baked) mesh and of the final (stage-2) mesh, Chamfer distance and F-score at 1 % of the coarse and final
meshes, the time per stage, and whether stage 2 raised PSNR (final > coarse). With the perfect oracle it should, on
every object.

    python experiments/benchmarks/bench_oracle_pipeline.py                       # box, torus; both oracles
    python experiments/benchmarks/bench_oracle_pipeline.py --objects mug --oracles oracle_noisy --out /tmp/bench
    python experiments/benchmarks/bench_oracle_pipeline.py --from-outputs /tmp/o_box outputs/oracle_ablations

``--from-outputs`` only prints: each argument is a finished job directory or a folder searched for them (any
experiment run against an oracle prior); the object and the oracle are read from the job's config_resolved.yaml.
Finished jobs in ``--out`` are reused (the pipeline skips them), so a second call only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "experiments" / "data"

COLUMNS = [("st1 PSNR", "eval/truth_stage1_psnr", ".2f"), ("st1 mPSNR", "eval/truth_stage1_masked_psnr", ".2f"),
           ("coarse PSNR", "eval/truth_coarse_psnr", ".2f"), ("final PSNR", "eval/truth_final_psnr", ".2f"),
           ("final mPSNR", "eval/truth_final_masked_psnr", ".2f"), ("coarse CD", "eval/truth_coarse_chamfer", ".4f"),
           ("final CD", "eval/truth_final_chamfer", ".4f"), ("coarse F1%", "eval/truth_coarse_fscore_1pct", ".3f"),
           ("final F1%", "eval/truth_final_fscore_1pct", ".3f"), ("st1 s", "time/stage1_s", ".0f"),
           ("mesh s", "time/mesh_s", ".0f"), ("st2 s", "time/stage2_s", ".0f"), ("all s", "time/all_steps_s", ".0f")]
#: prior class -> oracle name (config_resolved.yaml ``prior._target_``)
ORACLES = {"NoisyOraclePrior": "oracle_noisy", "OraclePrior": "oracle"}


def run_job(name: str, oracle: str, out_root: Path, extra: list[str]) -> tuple[Path, float]:
    """Run (or reuse) one job; returns its directory and the wall time of this call."""
    image = DATA / name / f"{name}_rgba.png"
    cmd = [sys.executable, "launch.py", "+experiment=oracle", f"image={image}", f"prior={oracle}",
           f"paths.output_root={out_root / oracle}", "logger=none", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{name} / {oracle}: pipeline failed (exit {res.returncode})\n{res.stderr[-3000:]}")
    found = sorted((out_root / oracle).rglob("metrics.json"))
    mine = [p.parent for p in found if p.relative_to(out_root / oracle).parts[0].startswith(f"{name}_rgba")]
    if not mine:
        raise SystemExit(f"no metrics.json for {name} under {out_root / oracle}")
    return mine[0], wall


def describe_job(job: Path) -> tuple[str, str, str, dict] | None:
    """(object, oracle, experiment, metrics) of a finished job run against an oracle prior; None for other jobs."""
    from omegaconf import OmegaConf

    metrics_file, config_file = job / "metrics.json", job / "config_resolved.yaml"
    if not metrics_file.is_file() or not config_file.is_file():
        return None
    cfg = OmegaConf.load(config_file)
    target = str(OmegaConf.select(cfg, "prior._target_", default="")).rsplit(".", 1)[-1]
    if target not in ORACLES:
        return None
    name = Path(str(cfg.get("image", job.name))).stem.removesuffix("_rgba")
    return name, ORACLES[target], str(cfg.get("experiment_name", "?")), json.loads(metrics_file.read_text())


def finished_jobs(paths: list[str]) -> list[tuple[str, str, str, dict]]:
    """Every oracle job in ``paths`` (job directories or folders holding them), sorted by object and oracle."""
    rows = []
    for p in map(Path, paths):
        if not p.exists():
            raise SystemExit(f"--from-outputs: {p} does not exist")
        jobs = [p] if (p / "metrics.json").is_file() else sorted(m.parent for m in p.rglob("metrics.json"))
        rows += [r for r in map(describe_job, jobs) if r is not None]
    if not rows:
        raise SystemExit(f"--from-outputs: no finished oracle job (metrics.json + config_resolved.yaml) in {paths}")
    return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


def format_rows(rows: list[tuple[str, str, str, dict]]) -> str:
    head = f"{'object':8} {'oracle':13} {'experiment':14}" + "".join(f" {c:>11}" for c, _, _ in COLUMNS) + "  stage 2"
    lines = [head, "-" * len(head)]
    for name, oracle, experiment, m in rows:
        cells = "".join(f" {format(m[k], fmt) if isinstance(m.get(k), int | float) else '-':>11}"
                        for _, k, fmt in COLUMNS)
        lines.append(f"{name:8} {oracle:13} {experiment:14}{cells}  {stage2_verdict(m)}")
    return "\n".join(lines)


def stage2_verdict(m: dict) -> str:
    coarse, final = m.get("eval/truth_coarse_psnr"), m.get("eval/truth_final_psnr")
    if "eval/truth_final_psnr" not in m or coarse is None:
        return "no stage 2"
    return f"{'raises' if final > coarse else 'LOWERS'} PSNR by {abs(final - coarse):.2f} dB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", default=["box", "torus"])
    parser.add_argument("--oracles", nargs="+", default=["oracle", "oracle_noisy"], choices=["oracle", "oracle_noisy"])
    parser.add_argument("--out", default=None, help="output root (default: a temporary folder)")
    parser.add_argument("--from-outputs", nargs="+", default=None, metavar="DIR",
                        help="only print the figures of finished oracle jobs (job directories or folders of them)")
    parser.add_argument("overrides", nargs="*", help="extra launch.py overrides, e.g. stage1.steps=300")
    args = parser.parse_args()
    if args.from_outputs:
        rows = finished_jobs(args.from_outputs)
    else:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            out_root = Path(args.out) if args.out else Path(tmp)
            for name in args.objects:
                for oracle in args.oracles:
                    job, wall = run_job(name, oracle, out_root, args.overrides)
                    print(f"{name} / {oracle}: {wall:.0f} s wall", flush=True)
                    rows.append(describe_job(job))
    print("oracle pipeline, ground-truth figures at 16 fixed views (mPSNR = masked PSNR); CD = Chamfer distance "
          "(world units, objects span ~1.2), F1% = F-score at 1 % of the object size; times in s (wall, per stage)")
    print(format_rows(rows))
    perfect = [(n, m) for n, o, _, m in rows if o == "oracle" and "eval/truth_final_psnr" in m]
    worse = sorted({n for n, m in perfect if m["eval/truth_final_psnr"] <= m.get("eval/truth_coarse_psnr", 0)})
    if perfect:
        print("perfect oracle: final PSNR > coarse PSNR on every object" if not worse
              else f"perfect oracle: stage 2 does NOT raise PSNR on {', '.join(worse)}")


if __name__ == "__main__":
    main()
