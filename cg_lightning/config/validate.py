"""Validation of a composed config before any work starts: every problem names the offending key.

Two checks Hydra cannot do at compose time:
- ``_target_`` nodes: keys are matched against the target's constructor signature, so ``stage1.stpes=10`` (added with
  ``+`` or written in a YAML) fails before training instead of deep inside ``instantiate``;
- value ranges of the top-level keys.
Components check their own ranges in ``__init__`` and raise :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cg_lightning.config.schema import ALL_STAGES
from cg_lightning.errors import ConfigError

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _import_target(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
    except ImportError:
        # nested attribute, e.g. package.module.Class.classmethod
        module_name, _, cls_name = module_name.rpartition(".")
        obj = getattr(importlib.import_module(module_name), cls_name)
    return getattr(obj, attr)


def _accepted_keys(target: Any) -> tuple[set[str], bool]:
    sig = inspect.signature(target)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    names = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, var_kw


def check_targets(node: Any, path: str = "") -> None:
    """Recursively check every ``_target_`` node's keys against its callable's signature."""
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None:
            try:
                fn = _import_target(str(target))
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"{path or '<root>'}._target_={target!r} cannot be imported: {exc}") from exc
            names, var_kw = _accepted_keys(fn)
            if not var_kw:
                for key in node.keys():
                    if key in _HYDRA_KEYS or key in names:
                        continue
                    hint = difflib.get_close_matches(str(key), sorted(names), n=1)
                    extra = f" Did you mean {path + '.' if path else ''}{hint[0]}?" if hint else ""
                    raise ConfigError(f"Unknown config key {path + '.' if path else ''}{key} for {target}.{extra}")
        for key in node.keys():
            if key == "hydra":
                continue
            check_targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_targets(node._get_node(i), f"{path}[{i}]")


def check_top_level(cfg: DictConfig) -> None:
    from dataclasses import fields

    from cg_lightning.config.schema import RunConfig

    known = {f.name for f in fields(RunConfig)} | {"hydra"}
    for key in cfg.keys():
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(f"Unknown top-level config key {key!r}." + (f" Did you mean {hint[0]!r}?" if hint else ""))
    bad = [s for s in cfg.stages if s not in ALL_STAGES]
    if bad:
        raise ConfigError(f"stages: unknown stage(s) {bad}; choose from {list(ALL_STAGES)}")
    if cfg.resume not in ("auto", "never"):
        raise ConfigError(f"resume={cfg.resume!r}; expected auto (continue from last.ckpt) or never")
    if not -90.0 < float(cfg.elevation) < 90.0:
        raise ConfigError(f"elevation={cfg.elevation} must lie in (-90, 90) degrees")
    if int(cfg.seed) < 0:
        raise ConfigError(f"seed={cfg.seed} must be >= 0")


def validate_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "image"):
        raise ConfigError("image is required: python launch.py +experiment=full image=path/to/image.png")
    check_top_level(cfg)
    check_targets(cfg)
