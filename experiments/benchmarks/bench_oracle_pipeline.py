"""The whole pipeline against ground truth: ``+experiment=oracle`` per object, with the perfect and the imperfect oracle.

Runs ``launch.py`` (the real entry point) at the CPU size of ``+experiment=oracle`` (conf/debug/oracle.yaml) and
prints, per object and oracle, the ground-truth figures the evaluate step wrote into metrics.json
(cg_lightning/evaluation/truth.py): novel-view PSNR at 16 fixed views of the stage-1 Gaussians, of the coarse
(baked) mesh and of the final (stage-2) mesh, Chamfer distance and F-score at 1 % of the coarse and final meshes,
and the wall time per stage. With the perfect oracle the final PSNR should beat the coarse one on every object.

    python experiments/benchmarks/bench_oracle_pipeline.py                       # box, torus; both oracles
    python experiments/benchmarks/bench_oracle_pipeline.py --objects mug --oracles oracle_noisy --out /tmp/bench
    python experiments/benchmarks/bench_oracle_pipeline.py --from-outputs outputs/bench_oracle   # print only

Finished jobs in ``--out`` are reused (the pipeline skips them), so a second call only prints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "experiments" / "data"

COLUMNS = [("stage1 PSNR", "eval/truth_stage1_psnr", ".2f"), ("coarse PSNR", "eval/truth_coarse_psnr", ".2f"),
           ("final PSNR", "eval/truth_final_psnr", ".2f"), ("coarse CD", "eval/truth_coarse_chamfer", ".4f"),
           ("final CD", "eval/truth_final_chamfer", ".4f"), ("coarse F1%", "eval/truth_coarse_fscore_1pct", ".3f"),
           ("final F1%", "eval/truth_final_fscore_1pct", ".3f"), ("st1 s", "time/stage1_s", ".0f"),
           ("mesh s", "time/mesh_s", ".0f"), ("st2 s", "time/stage2_s", ".0f")]


def run_job(name: str, oracle: str, out_root: Path, extra: list[str]) -> tuple[dict, float]:
    """Run (or reuse) one job; returns its metrics.json and the wall time of this call."""
    image = DATA / name / f"{name}_rgba.png"
    cmd = [sys.executable, "launch.py", "+experiment=oracle", f"image={image}", f"prior={oracle}",
           f"paths.output_root={out_root / oracle}", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{name} / {oracle}: pipeline failed (exit {res.returncode})\n{res.stderr[-3000:]}")
    return find_metrics(out_root / oracle, name), wall


def find_metrics(root: Path, name: str) -> dict:
    found = sorted(p for p in root.rglob("metrics.json") if p.relative_to(root).parts[0].startswith(f"{name}_rgba"))
    if not found:
        raise SystemExit(f"no metrics.json for {name} under {root}")
    return json.loads(found[0].read_text())


def format_rows(rows: list[tuple[str, str, dict]]) -> str:
    head = f"{'object':8} {'oracle':13}" + "".join(f" {c:>11}" for c, _, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, oracle, m in rows:
        cells = "".join(f" {format(m[k], fmt) if isinstance(m.get(k), int | float) else '-':>11}"
                        for _, k, fmt in COLUMNS)
        lines.append(f"{name:8} {oracle:13}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", default=["box", "torus"])
    parser.add_argument("--oracles", nargs="+", default=["oracle", "oracle_noisy"], choices=["oracle", "oracle_noisy"])
    parser.add_argument("--out", default=None, help="output root (default: a temporary folder)")
    parser.add_argument("--from-outputs", default=None, help="only print the figures of finished jobs under this root")
    parser.add_argument("overrides", nargs="*", help="extra launch.py overrides, e.g. stage1.steps=300")
    args = parser.parse_args()
    rows = []
    if args.from_outputs:
        root = Path(args.from_outputs)
        rows = [(n, o, find_metrics(root / o, n)) for n in args.objects for o in args.oracles]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out_root = Path(args.out) if args.out else Path(tmp)
            for name in args.objects:
                for oracle in args.oracles:
                    metrics, wall = run_job(name, oracle, out_root, args.overrides)
                    print(f"{name} / {oracle}: {wall:.0f} s wall", flush=True)
                    rows.append((name, oracle, metrics))
    print("oracle pipeline (+experiment=oracle, CPU size), ground-truth figures at 16 fixed views; CD = Chamfer "
          "distance (world units, objects span ~1.2), F1% = F-score at 1 % of the object size")
    print(format_rows(rows))
    perfect = [(n, m) for n, o, m in rows if o == "oracle"]
    worse = [n for n, m in perfect if m.get("eval/truth_final_psnr", 0) <= m.get("eval/truth_coarse_psnr", 0)]
    if perfect:
        print("perfect oracle: final PSNR > coarse PSNR on every object" if not worse
              else f"perfect oracle: stage 2 does NOT raise PSNR on {worse}")


if __name__ == "__main__":
    main()
