"""Table I / Table II from finished jobs: discovery, aggregation, Markdown/CSV/plot, optional W&B in and out.

A job is a directory ``.../<image-stem>/<experiment>/seed<N>[/<override-subdir>]`` holding ``metrics.json`` (done),
``FAILED`` (failed; first line = the error) or neither (incomplete: running, killed, or not started). Each table
row names the experiment that reproduces it (``experiments/paper_numbers.yaml``); its number is the mean over all
finished jobs of that experiment (images x seeds) ± the sample standard deviation of the per-seed means, with n =
the number of seeds, next to the paper's value.

Every job also says how it ran (device, scale: paper / custom / debug, launcher; :mod:`cg_lightning.runtime.job_info`):
a row whose jobs are not paper-scale GPU runs is marked ⚠ wherever it sits beside a paper number, and a figure that
does not apply (peak GPU memory of a CPU run) is "—", never 0.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cg_lightning.errors import CGError, ConfigError
from cg_lightning.utils.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

_SEED_DIR = re.compile(r"^seed(\d+)$")
_SKIP_DIRS = {".submitit", "wandb", "ckpts", "csv", ".hydra"}


@dataclass(frozen=True)
class Column:
    """One metric column: ``key`` in metrics.json, ``paper`` key in paper_numbers.yaml, display name, decimals."""

    name: str
    key: str
    title: str
    decimals: int


COLUMNS: dict[str, Column] = {c.name: c for c in (
    Column("lpips", "eval/lpips", "LPIPS ↓", 3),
    Column("clip_similarity", "eval/clip_similarity", "CLIP-sim ↑", 3),
    Column("time_s", "time/total_s", "Time (s)", 0),
    Column("stage1_s", "time/stage1_s", "Stage 1 (s)", 0),
    Column("stage2_s", "time/stage2_s", "Stage 2 (s)", 0),
    Column("peak_gpu_gb", "memory/peak_gpu_gb", "Peak GPU (GiB)", 2),
    Column("stage1_lpips", "eval/stage1_lpips", "Stage-1 LPIPS ↓", 3),
    Column("stage1_clip_similarity", "eval/stage1_clip_similarity", "Stage-1 CLIP-sim ↑", 3),
)}


# ---------------------------------------------------------------------------------------------- jobs
@dataclass
class JobRecord:
    path: str
    image: str
    experiment: str
    seed: int | None
    status: str                    # done | failed | incomplete
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    device: str = "unknown"        # e.g. "cuda (NVIDIA H200)", "cpu"
    device_kind: str = "unknown"   # cuda | cpu | unknown
    scale: str = "unknown"         # paper | custom | debug | unknown (runtime/job_info.py)
    launcher: str = ""
    threads: str = ""

    @property
    def comparable_with_paper(self) -> bool:
        """A paper-scale GPU run: the only kind whose numbers may stand beside the paper's unmarked."""
        return self.scale == "paper" and self.device_kind == "cuda"

    def describe_run(self, info: dict[str, Any]) -> None:
        for key in ("device", "device_kind", "scale", "launcher", "threads"):
            if info.get(key):
                setattr(self, key, str(info[key]))
        if self.device_kind == "cpu":   # peak GPU memory of a CPU run does not apply: "—", not 0
            self.metrics = {k: v for k, v in self.metrics.items() if "_gpu" not in k}


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


def _identity(job: Path) -> tuple[str, str, int, str] | None:
    """(image, experiment, seed, variant) from ``.../<image>/<experiment>/seed<N>[/<variant...>]``."""
    parts = job.resolve().parts
    for i in range(len(parts) - 1, 1, -1):
        m = _SEED_DIR.match(parts[i])
        if m:
            variant = "/".join(parts[i + 1:])
            experiment = parts[i - 1] + (f"[{variant}]" if variant else "")
            return parts[i - 2], experiment, int(m.group(1)), variant
    return None


def _read_job(job: Path) -> JobRecord | None:
    from cg_lightning.runtime.job_info import describe_job_dir

    ident = _identity(job)
    if ident is None:
        log.warning("skipping %s: not a <image>/<experiment>/seed<N> job directory", job)
        return None
    image, experiment, seed, variant = ident
    failed, metrics_file = job / "FAILED", job / "metrics.json"
    if failed.is_file():
        text = failed.read_text(errors="replace").strip()
        first = text.splitlines()[0] if text else "FAILED (no message)"
        record = JobRecord(str(job), image, experiment, seed, "failed", error=first)
    elif metrics_file.is_file():
        try:
            data = json.loads(metrics_file.read_text())
            record = JobRecord(str(job), image, experiment, seed, "done", metrics=_numeric(data))
        except (json.JSONDecodeError, OSError) as exc:
            record = JobRecord(str(job), image, experiment, seed, "failed", error=f"unreadable metrics.json: {exc}")
    else:
        record = JobRecord(str(job), image, experiment, seed, "incomplete")
    record.describe_run(describe_job_dir(job, variant))
    return record


def discover_jobs(roots: Sequence[str | Path]) -> list[JobRecord]:
    """Every job directory under ``roots`` (a root may itself be a job directory)."""
    found: dict[Path, None] = {}
    markers = ("metrics.json", "FAILED", "config_resolved.yaml", "state.json")
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise CGError(f"results directory not found: {root}")
        for marker in markers:
            for hit in root.rglob(marker):
                if any(part in _SKIP_DIRS for part in hit.relative_to(root).parts[:-1]):
                    continue
                found[hit.parent.resolve()] = None
    jobs = [j for j in (_read_job(p) for p in sorted(found)) if j is not None]
    return jobs


def jobs_from_wandb(path: str, *, api: Any = None, filters: dict | None = None) -> list[JobRecord]:
    """Jobs from the W&B runs of ``entity/project`` (summary keys ``eval/*``, ``time/*``; config ``experiment_name``,
    ``image``, ``seed``). ``api`` is injectable for tests; by default ``wandb.Api()`` (needs a login)."""
    from cg_lightning.config.resolvers import image_stem

    if api is None:
        try:
            import wandb
        except ImportError as exc:
            raise CGError("--wandb needs the wandb package: pip install wandb") from exc
        api = wandb.Api()
    jobs = []
    for run in api.runs(path, filters=filters or {}):
        cfg = dict(run.config or {})
        if "experiment_name" not in cfg or "image" not in cfg:
            continue
        seed = cfg.get("seed")
        summary = dict(getattr(run.summary, "_json_dict", None) or run.summary or {})
        state = str(getattr(run, "state", "finished"))
        ref = getattr(run, "url", None) or f"wandb:{path}/{getattr(run, 'id', '?')}"
        job = cfg.get("job") if isinstance(cfg.get("job"), dict) else {}
        variant = str(job.get("variant") or "")
        record = JobRecord(ref, image_stem(str(cfg["image"])),
                           str(cfg["experiment_name"]) + (f"[{variant}]" if variant else ""),
                           int(seed) if seed is not None else None, "done", metrics=_numeric(summary))
        device = str(job.get("device") or "unknown")
        record.describe_run({"device": device, "device_kind": device if device in ("cuda", "cpu") else "unknown",
                             "scale": job.get("scale"), "launcher": (cfg.get("hydra_choices") or {}).get(
                                 "hydra/launcher", "")})
        if state in ("failed", "crashed", "killed"):
            error = summary.get("error") if isinstance(summary.get("error"), str) else None
            record.status, record.error, record.metrics = "failed", error or f"W&B run state: {state}", {}
        elif state == "running" or COLUMNS["lpips"].key not in record.metrics:
            record.status, record.metrics = "incomplete", {}
        jobs.append(record)
    return jobs


def merge_jobs(primary: Iterable[JobRecord], secondary: Iterable[JobRecord]) -> list[JobRecord]:
    """Union keyed by (image, experiment, seed); ``primary`` wins (local directories over W&B)."""
    merged = {(j.image, j.experiment, j.seed): j for j in secondary}
    merged.update({(j.image, j.experiment, j.seed): j for j in primary})
    return sorted(merged.values(), key=lambda j: (j.experiment, j.image, -1 if j.seed is None else j.seed))


# ---------------------------------------------------------------------------------------------- aggregation
@dataclass
class Stat:
    """Mean over the jobs, sample std of the per-seed means (None with one seed), n = seeds, and the job count."""

    mean: float
    std: float | None
    n: int
    n_jobs: int


@dataclass
class ExperimentSummary:
    experiment: str
    stats: dict[str, Stat]
    n_jobs: int
    images: list[str]
    seeds: list[int]
    n_failed: int
    n_incomplete: int
    devices: dict[str, int] = field(default_factory=dict)   # finished jobs per device label
    scales: dict[str, int] = field(default_factory=dict)    # finished jobs per scale
    comparable_with_paper: bool = True                      # every finished job a paper-scale GPU run

    def run_cell(self) -> str:
        """``cuda (NVIDIA H200) ×4, paper`` - how the row's jobs ran."""
        devices = ", ".join(f"{d} ×{n}" for d, n in sorted(self.devices.items()))
        return f"{devices or '—'}; {'/'.join(sorted(self.scales)) or '—'}"


def _stat(pairs: list[tuple[int | None, float]]) -> Stat:
    """``pairs`` = (seed, value) of each finished job."""
    values = [v for _, v in pairs]
    by_seed: dict[int | None, list[float]] = {}
    for seed, value in pairs:
        by_seed.setdefault(seed, []).append(value)
    seed_means = [sum(v) / len(v) for v in by_seed.values()]
    k = len(seed_means)
    centre = sum(seed_means) / k
    std = math.sqrt(sum((m - centre) ** 2 for m in seed_means) / (k - 1)) if k > 1 else None
    return Stat(sum(values) / len(values), std, k, len(values))


def aggregate(jobs: Iterable[JobRecord], images: set[str] | None = None) -> dict[str, ExperimentSummary]:
    """Per experiment: mean/std over finished jobs of every numeric metric (restricted to ``images`` if given)."""
    by_exp: dict[str, list[JobRecord]] = {}
    for j in jobs:
        if images is not None and j.image not in images:
            continue
        by_exp.setdefault(j.experiment, []).append(j)
    out = {}
    for exp, js in sorted(by_exp.items()):
        done = [j for j in js if j.status == "done"]
        keys = sorted({k for j in done for k in j.metrics})
        stats = {k: _stat([(j.seed, j.metrics[k]) for j in done if k in j.metrics]) for k in keys}
        devices: dict[str, int] = {}
        scales: dict[str, int] = {}
        for j in done:
            devices[j.device] = devices.get(j.device, 0) + 1
            scales[j.scale] = scales.get(j.scale, 0) + 1
        out[exp] = ExperimentSummary(
            experiment=exp, stats=stats, n_jobs=len(done), images=sorted({j.image for j in done}),
            seeds=sorted({j.seed for j in done if j.seed is not None}),
            n_failed=sum(j.status == "failed" for j in js), n_incomplete=sum(j.status == "incomplete" for j in js),
            devices=devices, scales=scales, comparable_with_paper=all(j.comparable_with_paper for j in done))
    return out


def common_images(jobs: Iterable[JobRecord], experiments: Iterable[str]) -> set[str]:
    """Images finished by every one of ``experiments`` that has any finished job."""
    sets = []
    jobs = list(jobs)
    for exp in experiments:
        s = {j.image for j in jobs if j.experiment == exp and j.status == "done"}
        if s:
            sets.append(s)
    return set.intersection(*sets) if sets else set()


# ---------------------------------------------------------------------------------------------- tables
def load_paper_numbers(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"paper numbers file not found: {p}")
    data = yaml.safe_load(p.read_text())
    for name in ("table1", "table2"):
        rows = (data.get(name) or {}).get("rows")
        if not rows:
            raise ConfigError(f"{p}: {name}.rows is missing")
        for row in rows:
            if "label" not in row or "experiment" not in row:
                raise ConfigError(f"{p}: every {name} row needs label and experiment, got {row}")
    return data


@dataclass
class Table:
    name: str                      # table1 | table2 | other
    title: str
    columns: list[Column]          # metric columns (ours vs paper)
    rows: list[dict[str, Any]]     # label, type, experiment, summary (ExperimentSummary | None), paper {col: value}


def _paper_columns(spec_rows: list[dict]) -> list[Column]:
    names = [c for c in ("lpips", "clip_similarity", "time_s") if any(c in r for r in spec_rows)]
    return [COLUMNS[n] for n in names]


def build_table(name: str, spec: dict, summaries: dict[str, ExperimentSummary]) -> Table:
    rows_spec = list(spec["rows"])
    cols = _paper_columns(rows_spec)
    extra = [COLUMNS[c] for c in spec.get("extra_columns", []) if c in COLUMNS]
    if extra and any(c.key in s.stats for s in summaries.values() for c in extra):
        cols += [c for c in extra if c not in cols]
    rows = []
    for r in rows_spec:
        rows.append({"label": r["label"], "type": r.get("type", ""), "experiment": r["experiment"],
                     "summary": summaries.get(r["experiment"]),
                     "paper": {c.name: r.get(c.name) for c in cols if r.get(c.name) is not None}})
    return Table(name, spec.get("title", name), cols, rows)


def build_other_table(summaries: dict[str, ExperimentSummary], known: set[str]) -> Table | None:
    """Experiments found in the results that no paper row names (smoke runs, other externals, custom variants)."""
    extra = [e for e in summaries if e not in known]
    if not extra:
        return None
    rows = [{"label": e.replace("external_", "external:", 1) if e.startswith("external_") else e, "type": "",
             "experiment": e, "summary": summaries[e], "paper": {}} for e in extra]
    return Table("other", "Other experiments found in the results", [COLUMNS["lpips"], COLUMNS["clip_similarity"],
                                                                       COLUMNS["time_s"]], rows)


def _fmt(v: float | None, decimals: int) -> str:
    if v is None:
        return "—"
    return f"{v:.{decimals}f}"


def _fmt_stat(s: Stat | None, decimals: int) -> str:
    if s is None:
        return "—"
    spread = f" ± {s.std:.{decimals}f}" if s.std is not None else ""
    return f"{s.mean:.{decimals}f}{spread} (n={s.n})"


def _jobs_cell(s: ExperimentSummary | None) -> str:
    if s is None:
        return "0"
    cell = f"{s.n_jobs} ({len(s.images)} img × {max(1, len(s.seeds))} seed)"
    if s.n_failed:
        cell += f", {s.n_failed} failed"
    if s.n_incomplete:
        cell += f", {s.n_incomplete} incomplete"
    return cell


def to_markdown(table: Table) -> str:
    """One row per paper row; a metric gets an "(ours)" and, when the paper reports it, a "(paper)" column."""
    with_paper = {c.name for c in table.columns if any(c.name in r["paper"] for r in table.rows)}
    head = ["Method", "Experiment"] + (["Type"] if any(r["type"] for r in table.rows) else [])
    for c in table.columns:
        head += [f"{c.title} (ours)"] + ([f"{c.title} (paper)"] if c.name in with_paper else [])
    head += ["Jobs", "Ran on; scale"]
    lines = [f"### {table.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marked = False
    for r in table.rows:
        s: ExperimentSummary | None = r["summary"]
        mark = "⚠ " if s is not None and not s.comparable_with_paper else ""
        marked |= bool(mark)
        cells = [r["label"], f"`{r['experiment']}`"] + ([r["type"]] if "Type" in head else [])
        for c in table.columns:
            st = s.stats.get(c.key) if s else None
            cells.append((mark if st is not None else "") + _fmt_stat(st, c.decimals))
            if c.name in with_paper:
                cells.append(_fmt(r["paper"].get(c.name), c.decimals))
        cells += [_jobs_cell(s), s.run_cell() if s else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ours = mean over finished jobs (images × seeds) ± sample std of the per-seed means, n = seeds; "
                 "— = no result, not reported, or does not apply (e.g. peak GPU memory of a CPU run).")
    if marked:
        lines.append("")
        lines.append("⚠ = not comparable with the paper's numbers: some of the row's jobs ran on a CPU or at debug / "
                     "custom scale (see the last column; the paper used full-size runs on an RTX 4090).")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["table", "label", "experiment", "type", "n_jobs", "n_images", "n_seeds", "n_failed", "n_incomplete",
              "devices", "scales", "comparable_with_paper"]
    for c in table.columns:
        header += [f"{c.name}_mean", f"{c.name}_std", f"{c.name}_n", f"{c.name}_paper"]
    w.writerow(header)
    for r in table.rows:
        s: ExperimentSummary | None = r["summary"]
        row = [table.name, r["label"], r["experiment"], r["type"], s.n_jobs if s else 0,
               len(s.images) if s else 0, len(s.seeds) if s else 0, s.n_failed if s else 0,
               s.n_incomplete if s else 0,
               "; ".join(f"{d} x{n}" for d, n in sorted(s.devices.items())) if s else "",
               "/".join(sorted(s.scales)) if s else "", "" if not s or not s.n_jobs else s.comparable_with_paper]
        for c in table.columns:
            st = s.stats.get(c.key) if s else None
            paper = r["paper"].get(c.name)
            row += ["" if st is None else repr(st.mean), "" if st is None or st.std is None else repr(st.std),
                    0 if st is None else st.n, "" if paper is None else paper]
        w.writerow(row)
    return buf.getvalue()


def jobs_csv(jobs: Sequence[JobRecord]) -> str:
    """One row per job (every metric column that any job has), for per-image inspection."""
    keys = sorted({k for j in jobs for k in j.metrics})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "experiment", "seed", "status", "device", "scale", "launcher", "threads", "error", "path"]
               + keys)
    for j in jobs:
        w.writerow([j.image, j.experiment, "" if j.seed is None else j.seed, j.status, j.device, j.scale,
                    j.launcher, j.threads, j.error or "", j.path]
                   + ["" if k not in j.metrics else repr(j.metrics[k]) for k in keys])
    return buf.getvalue()


def failures_markdown(jobs: Sequence[JobRecord]) -> str:
    failed = [j for j in jobs if j.status == "failed"]
    incomplete = [j for j in jobs if j.status == "incomplete"]
    lines = ["## Failed jobs", ""]
    if not failed:
        lines.append("None.")
    else:
        lines += ["| Experiment | Image | Seed | Error | Job directory |", "|---|---|---|---|---|"]
        for j in failed:
            err = (j.error or "").replace("|", "\\|")[:300]
            lines.append(f"| `{j.experiment}` | {j.image} | {j.seed} | {err} | `{j.path}` |")
    lines += ["", "## Incomplete jobs (no metrics.json, no FAILED: still running, killed, or requeued)", ""]
    if not incomplete:
        lines.append("None.")
    else:
        lines += [f"- `{j.experiment}` / {j.image} / seed {j.seed}: `{j.path}`" for j in incomplete]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plot
def bar_plot(table: Table, path: str | Path) -> Path | None:
    """Grouped bars (ours with std error bars vs paper) for each metric column; None when nothing to plot."""
    cols = [c for c in table.columns if c.name in ("lpips", "clip_similarity", "time_s")]
    if not cols or not any(r["summary"] for r in table.rows):
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # * = not a paper-scale GPU run (CPU, debug or custom scale): never to be read against the paper's bar
    labels = [r["label"] + ("*" if r["summary"] and r["summary"].n_jobs and not r["summary"].comparable_with_paper
                             else "") for r in table.rows]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.8), squeeze=False)
    x = list(range(len(labels)))
    width = 0.38
    for ax, c in zip(axes[0], cols, strict=False):
        ours = [(r["summary"].stats.get(c.key) if r["summary"] else None) for r in table.rows]
        paper = [r["paper"].get(c.name) for r in table.rows]
        ax.bar([i - width / 2 for i in x], [s.mean if s else math.nan for s in ours], width,
               yerr=[s.std if s and s.std is not None else 0.0 for s in ours], label="ours", color="#4C72B0",
               capsize=3)
        ax.bar([i + width / 2 for i in x], [p if p is not None else math.nan for p in paper], width, label="paper",
               color="#DD8452")
        for i, (s, p) in enumerate(zip(ours, paper, strict=False)):
            for dx, missing in ((-width / 2, s is None), (width / 2, p is None)):
                if missing:
                    ax.text(i + dx, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90,
                            transform=ax.get_xaxis_transform())
        ax.set_title(c.title)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        if c.name == "time_s":
            ax.set_yscale("log")  # 27 s (Shap-E) ... 1800 s (Zero-1-to-3*)
    axes[0][0].legend(fontsize=8)
    if any(lb.endswith("*") for lb in labels):
        fig.text(0.01, 0.01, "* ran on a CPU or at debug / custom scale: not comparable with the paper", fontsize=7)
    fig.suptitle(table.title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------- report
@dataclass
class Report:
    tables: list[Table]
    jobs: list[JobRecord]
    files: dict[str, Path]


def build_report(jobs: Sequence[JobRecord], paper: dict, out_dir: str | Path, *, which: Sequence[str] = ("1", "2"),
                 common_only: bool | None = None, plot: bool = True) -> Report:
    """Write ``tables.md``, ``table{1,2}.csv`` (+ ``other.csv``), ``jobs.csv``, ``failed.csv``, ``table{1,2}.png``.

    ``common_only``: average each table only over the images every row with results finished. None (default):
    Table II only (an ablation compares variants, so on one image set), True: every table, False: none.
    """
    out = Path(out_dir)
    jobs = list(jobs)
    specs = [(f"table{w}", paper[f"table{w}"]) for w in which]
    known = {r["experiment"] for _, spec in (("table1", paper["table1"]), ("table2", paper["table2"]))
             for r in spec["rows"]}
    tables: list[Table] = []
    notes: list[str] = []
    for name, spec in specs:
        images = None
        if common_only or (common_only is None and name == "table2"):
            images = common_images(jobs, [r["experiment"] for r in spec["rows"]])
            notes.append(f"{name}: restricted to the {len(images)} image(s) finished by every row with results.")
        tables.append(build_table(name, spec, aggregate(jobs, images)))
    other = build_other_table(aggregate(jobs), known)
    if other is not None:
        tables.append(other)
    files: dict[str, Path] = {}
    md = ["# Results", "", f"Paper numbers: {paper.get('source', 'ContrastiveGaussian paper')}.",
          f"Jobs found: {len(jobs)} ({sum(j.status == 'done' for j in jobs)} done, "
          f"{sum(j.status == 'failed' for j in jobs)} failed, {sum(j.status == 'incomplete' for j in jobs)} "
          "incomplete).", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    for t in tables:
        md.append(to_markdown(t))
        files[f"{t.name}.csv"] = out / f"{t.name}.csv"
        write_text(files[f"{t.name}.csv"], to_csv(t))
        if plot and t.name != "other":
            png = bar_plot(t, out / f"{t.name}.png")
            if png is not None:
                files[f"{t.name}.png"] = png
                md.append(f"![{t.title}]({png.name})\n")
    md.append(failures_markdown(jobs))
    files["tables.md"] = out / "tables.md"
    write_text(files["tables.md"], "\n".join(md))
    files["jobs.csv"] = out / "jobs.csv"
    write_text(files["jobs.csv"], jobs_csv(jobs))
    failed = [j for j in jobs if j.status != "done"]
    files["failed.csv"] = out / "failed.csv"
    write_text(files["failed.csv"], jobs_csv(failed))
    return Report(tables, jobs, files)


def sweep_info(roots: Sequence[str | Path]) -> dict[str, Any]:
    """What produced the results: the Hydra sweep(s) whose ``multirun.yaml`` sits in a results root (sweep name from
    ``+sweep=``, its overrides and sweeper params), else just the roots."""
    import yaml

    sweeps = []
    for root in roots:
        path = Path(root) / "multirun.yaml"
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        hydra = data.get("hydra") or {}
        choices = (hydra.get("runtime") or {}).get("choices") or {}
        sweeps.append({"dir": str(Path(root).resolve()), "sweep": choices.get("sweep"),
                       "overrides": list((hydra.get("overrides") or {}).get("task") or []),
                       "params": dict((hydra.get("sweeper") or {}).get("params") or {}),
                       "launcher": choices.get("hydra/launcher")})
    names = sorted({str(s["sweep"]) for s in sweeps if s.get("sweep")})
    name = "+".join(names) if names else ("+".join(sorted(Path(r).resolve().name for r in roots)) or "results")
    return {"name": name, "sweeps": sweeps, "roots": [str(Path(r).resolve()) for r in roots]}


def _thumbnail(job: JobRecord) -> Any:
    import wandb
    from PIL import Image

    path = Path(job.path) / "input" / "preprocessed_rgba.png"
    if not path.is_file():
        return None
    with Image.open(path) as im:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, im).convert("RGB")
    rgb.thumbnail((96, 96))
    return wandb.Image(rgb)


def jobs_wandb_table(jobs: Sequence[JobRecord]):
    """One row per job: who it is, how it ran, its input thumbnail, every metric, the error of a failed one."""
    import wandb

    keys = sorted({k for j in jobs for k in j.metrics})
    columns = ["image", "experiment", "seed", "status", "device", "scale", "launcher", "input", "error", "path", *keys]
    data = [[j.image, j.experiment, j.seed, j.status, j.device, j.scale, j.launcher, _thumbnail(j), j.error or "",
             j.path, *(j.metrics.get(k) for k in keys)] for j in jobs]
    return wandb.Table(columns=columns, data=data)


def _table_wandb(table: Table):
    import wandb

    rows = list(csv.reader(to_csv(table).strip().splitlines()))
    return wandb.Table(columns=rows[0], data=rows[1:])


def _bar_charts(table: Table) -> dict[str, Any]:
    """``<table>/<metric>``: a W&B bar chart of ours (mean) next to the paper, one bar per method."""
    import wandb

    charts: dict[str, Any] = {}
    for c in table.columns:
        if c.name not in ("lpips", "clip_similarity", "time_s"):
            continue
        data = []
        for r in table.rows:
            s: ExperimentSummary | None = r["summary"]
            st = s.stats.get(c.key) if s else None
            if st is not None:
                flag = "" if s.comparable_with_paper else " *"
                data.append([f"{r['label']} (ours{flag})", st.mean])
            if r["paper"].get(c.name) is not None:
                data.append([f"{r['label']} (paper)", float(r["paper"][c.name])])
        if data:
            t = wandb.Table(columns=["method", c.name], data=data)
            charts[f"{table.name}/{c.name}"] = wandb.plot.bar(
                t, "method", c.name, title=f"{table.title}: {c.title} (* = CPU / debug / custom scale)")
    return charts


def _git_state() -> dict[str, Any]:
    try:
        from cg_lightning.runtime.provenance import git_state
    except ImportError:
        from cg_lightning.runtime.loggers import _minimal_provenance

        return _minimal_provenance("cpu")["git"]
    return git_state()


def log_report_to_wandb(report: Report, project: str, *, entity: str | None = None, mode: str = "auto",
                        roots: Sequence[str | Path] = (), options: dict[str, Any] | None = None) -> str:
    """Log the report into the W&B run of the sweep that produced the results (see README "Reviewing results in
    W&B"): a stable id per results root(s), group/tags ``sweep:<name>``, the sweep's overrides and the git state in
    the config; history: the per-job table (thumbnails, every metric), each table as a W&B Table with bar charts and
    its plot, the failed and incomplete jobs. Returns the run's directory."""
    try:
        import wandb
    except ImportError as exc:
        raise CGError("--wandb-log needs the wandb package: pip install wandb") from exc
    import hashlib

    from cg_lightning.runtime.loggers import wandb_mode

    out_dir = report.files["tables.md"].parent
    info = sweep_info(roots)
    run_id = "tables-" + hashlib.sha1("\n".join([project, *sorted(info["roots"])]).encode()).hexdigest()[:12]
    config = {"sweep": info, "tables": dict(options or {}), "git": _git_state(),
              "jobs": {"total": len(report.jobs), "done": sum(j.status == "done" for j in report.jobs),
                       "failed": sum(j.status == "failed" for j in report.jobs),
                       "incomplete": sum(j.status == "incomplete" for j in report.jobs)}}
    run = wandb.init(project=project, entity=entity, id=run_id, name=f"tables: {info['name']}",
                     group=f"sweep:{info['name']}", job_type="tables", tags=["tables", f"sweep:{info['name']}"],
                     config=config, dir=str(out_dir), mode=wandb_mode(mode), resume="allow",
                     reinit="finish_previous", allow_val_change=True)
    try:
        payload: dict[str, Any] = {"jobs": jobs_wandb_table(report.jobs)}
        for t in report.tables:
            payload[f"{t.name}/table"] = _table_wandb(t)
            payload.update(_bar_charts(t))
            png = report.files.get(f"{t.name}.png")
            if png is not None:
                payload[f"{t.name}/plot"] = wandb.Image(str(png))
        payload["failed_jobs"] = jobs_wandb_table([j for j in report.jobs if j.status != "done"])
        run.log(payload)
        run.summary.update({f"jobs/{k}": v for k, v in config["jobs"].items()})
        return str(run.dir)
    finally:
        run.finish()
