"""Build Table I / Table II (Markdown, CSV, bar plots) from job directories and/or W&B, beside the paper's numbers.

  python experiments/build_tables.py outputs/                       # both tables -> outputs/tables/
  python experiments/build_tables.py outputs/ --table 2 --out results/
  python experiments/build_tables.py --wandb me/cg_lightning         # read the runs' summaries from W&B
  python experiments/build_tables.py outputs/ --wandb-log me/cg_lightning   # also into the sweep's W&B run

Writes tables.md (both tables, failed/incomplete jobs), table1.csv, table2.csv, other.csv (experiments no paper row
names), jobs.csv (one row per job, with its device / scale / launcher), failed.csv and table{1,2}.png, and truth.md
(the ground-truth ablation table of oracle jobs, cg_lightning/evaluation/truth_table.py). Table II is
averaged over the images every row finished (--all-images to turn that off). Rows whose jobs are not paper-scale GPU
runs are marked. Exit status 0 even when some jobs failed; 1 when no finished job was found at all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="*", help="directories holding <image>/<experiment>/seed<N>/ job dirs")
    p.add_argument("--out", default=None, help="output folder (default: <first root>/tables, or ./tables)")
    p.add_argument("--table", choices=["1", "2", "all"], default="all")
    p.add_argument("--paper", default=str(HERE / "paper_numbers.yaml"), help="paper numbers + row definitions")
    images = p.add_mutually_exclusive_group()
    images.add_argument("--common-images", action="store_true",
                        help="average every table only over images finished by every row that has results "
                             "(default: Table II only)")
    images.add_argument("--all-images", action="store_true",
                        help="average every row over all its finished images, Table II included")
    p.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT", help="also read runs from W&B (needs login)")
    p.add_argument("--wandb-group", default=None, help="only W&B runs of this group")
    p.add_argument("--wandb-log", default=None, metavar="[ENTITY/]PROJECT",
                   help="log the tables into the W&B run of the sweep (group sweep:<name>)")
    p.add_argument("--no-plot", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from cg_lightning.errors import CGError
    from cg_lightning.evaluation import tables as T

    if not args.roots and not args.wandb:
        print("Error: give at least one results directory or --wandb ENTITY/PROJECT", file=sys.stderr)
        return 2
    try:
        paper = T.load_paper_numbers(args.paper)
        jobs = T.discover_jobs(args.roots) if args.roots else []
        if args.wandb:
            filters = {"group": args.wandb_group} if args.wandb_group else None
            jobs = T.merge_jobs(jobs, T.jobs_from_wandb(args.wandb, filters=filters))
        out = Path(args.out) if args.out else (Path(args.roots[0]) / "tables" if args.roots else Path("tables"))
        which = ("1", "2") if args.table == "all" else (args.table,)
        common = True if args.common_images else (False if args.all_images else None)
        report = T.build_report(jobs, paper, out, which=which, common_only=common, plot=not args.no_plot)
        from cg_lightning.evaluation.truth_table import truth_table_markdown

        truth_md = truth_table_markdown(jobs, paper)  # oracle jobs: the ground-truth ablation table
        if truth_md:
            (out / "truth.md").write_text(truth_md)
        if args.wandb_log:
            entity, _, project = args.wandb_log.rpartition("/")
            where = T.log_report_to_wandb(report, project, entity=entity or None, roots=args.roots, options={
                "table": args.table, "images": {True: "common", False: "all", None: "common for Table II"}[common],
                "wandb_source": args.wandb, "wandb_group": args.wandb_group})
            print(f"logged to W&B ({where})")
    except CGError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print((out / "tables.md").read_text())
    if truth_md:
        print(truth_md)
    print("written:", ", ".join(str(p) for p in report.files.values()))
    return 0 if any(j.status == "done" for j in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
