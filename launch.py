"""Entry point: ``python launch.py +experiment=full image=path/to/image.png``.

Heavy imports (torch, models) happen inside the pipeline, so ``--help``, ``--cfg job`` and
``--info defaults-tree`` stay fast. User errors (bad image, missing weights, bad config value) are printed as one
message; the full traceback is in the job log.
"""

import sys

import hydra
from omegaconf import DictConfig

import cg_lightning.config  # noqa: F401  (registers resolvers and schemas before Hydra composes)
from cg_lightning.errors import CGError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from cg_lightning.pipeline import run

    try:
        metrics = run(cfg)
    except CGError as exc:
        print(f"\nError: {exc}\n", file=sys.stderr)
        sys.exit(2)
    # returned for sweepers that optimise a metric (e.g. Optuna): lower LPIPS is better
    return None if not metrics else metrics.get("eval/lpips")


if __name__ == "__main__":
    main()
