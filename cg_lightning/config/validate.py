"""Validation of a composed config before any work starts: every problem names the offending key.

Checks Hydra cannot do at compose time:
- ``_target_`` nodes: keys are matched against the target's constructor signature, so ``stage1.stpes=10`` (added with
  ``+`` or written in a YAML) fails before training instead of deep inside ``instantiate``; scalar values are checked
  against the parameter's annotation when it is ``int``, ``float`` or ``bool`` (optionally ``| None``), so
  ``stage1.steps=abc`` fails here too, and against the choices of a ``Literal[...]`` annotation;
- value ranges (:data:`RANGES`): the top-level keys, the plain ``mesh`` / ``evaluation`` / ``callbacks`` groups (no
  constructor to check them), and the stage/loss keys whose component is only built late in the run (a bad
  ``stage2.steps`` must not surface after an hour of stage 1).
Components also check their own ranges in ``__init__`` and raise :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
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


def _signature(target: Any) -> inspect.Signature:
    """The signature with string annotations evaluated when possible (``from __future__ import annotations``)."""
    try:
        return inspect.signature(target, eval_str=True)
    except Exception:  # noqa: BLE001 - e.g. a TYPE_CHECKING-only name: keys are still checked, types are not
        return inspect.signature(target)


def _accepted_keys(target: Any) -> tuple[set[str], bool]:
    sig = _signature(target)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    names = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, var_kw


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false"}


def _simple_type(annotation: Any) -> tuple[type, bool] | None:
    """``(int|float|bool, None allowed)`` for such an annotation (optionally ``X | None``); None for anything else."""
    if annotation in _TYPE_WORDS:
        return annotation, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in _TYPE_WORDS and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return None


def _is_a(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, int | float)
    return False


_ABSENT = object()


def _scalar(node: DictConfig, key: Any) -> Any:
    """The resolved scalar at ``node[key]``; ``_ABSENT`` for sub-configs, ``???`` and unresolvable interpolations."""
    if OmegaConf.is_missing(node, key):
        return _ABSENT
    try:
        value = node[key]
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run: not ours to judge
        return _ABSENT
    return _ABSENT if isinstance(value, DictConfig | ListConfig) else value


def _check_types(node: DictConfig, sig: inspect.Signature, path: str) -> None:
    for name, param in sig.parameters.items():
        if name not in node or isinstance(param.annotation, str):
            continue
        simple = _simple_type(param.annotation)
        value = _scalar(node, name)
        if value is not _ABSENT and typing.get_origin(param.annotation) is typing.Literal:
            allowed = typing.get_args(param.annotation)
            if value not in allowed:
                raise ConfigError(f"{path + '.' if path else ''}{name}={value!r}: expected one of "
                                  f"{', '.join(map(str, allowed))}")
            continue
        if simple is None or value is _ABSENT:
            continue
        kind, optional = simple
        if value is None and (optional or param.default is None):
            continue
        if not _is_a(value, kind):
            raise ConfigError(f"{path + '.' if path else ''}{name}={value!r}: expected {_TYPE_WORDS[kind]}"
                              + (" or null" if optional else ""))


def check_targets(node: Any, path: str = "") -> None:
    """Recursively check every ``_target_`` node's keys (and simple value types) against its callable's signature."""
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
            _check_types(node, _signature(fn), path)
        for key in node.keys():
            if key == "hydra":
                continue
            check_targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            check_targets(node._get_node(i), f"{path}[{i}]")


# ------------------------------------------------------------------------------------------------ value ranges
@dataclass(frozen=True)
class Range:
    """``kind`` (int or float) within ``[lo, hi]``; ``open_lo``/``open_hi`` exclude the bound; ``null`` allowed if
    ``optional``."""

    kind: type = float
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    optional: bool = False

    def describe(self) -> str:
        what = _TYPE_WORDS[self.kind]
        if self.lo is not None and self.hi is not None:
            bounds = f" in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"
        elif self.lo is not None:
            bounds = f" {'>' if self.open_lo else '>='} {self.lo:g}"
        elif self.hi is not None:
            bounds = f" {'<' if self.open_hi else '<='} {self.hi:g}"
        else:
            bounds = ""
        return what + bounds + (" (or null)" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if not _is_a(value, self.kind) or (self.kind is float and not math.isfinite(value)):
            return False
        if self.lo is not None and (value < self.lo or (self.open_lo and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.open_hi and value == self.hi)))


POSITIVE_INT = Range(int, 1)
COUNT = Range(int, 0)
POSITIVE = Range(float, 0, open_lo=True)
NON_NEGATIVE = Range(float, 0)
UNIT = Range(float, 0, 1)
COSINE = Range(float, -1, 1)
PIXELS = Range(int, 8)
FOVY = Range(float, 0, 180, open_lo=True, open_hi=True)
ELEVATION = Range(float, -90, 90, open_lo=True, open_hi=True)

#: dotted key -> allowed values; ``*`` matches any one key. Keys absent from the config are skipped, and so are
#: sub-configs (a schedule given instead of a number is checked by the schedule itself).
RANGES: dict[str, Range] = {
    "callbacks.checkpoint_every_n_steps": POSITIVE_INT,
    "callbacks.image_log_every_n_steps": COUNT,
    # stage 1 (GaussianStage, DensityController, ViewSampler)
    "stage1.steps": POSITIVE_INT,
    "stage1.ref_size": PIXELS,
    "stage1.num_points": POSITIVE_INT,
    "stage1.init_radius": POSITIVE,
    "stage1.sh_degree": Range(int, 0, 3),
    "stage1.lrs.*": NON_NEGATIVE,
    "stage1.xyz_lr_final": POSITIVE,
    "stage1.xyz_lr_steps": Range(int, 1, optional=True),
    "stage1.adam_eps": POSITIVE,
    "stage1.fovy": FOVY,
    "stage1.final_prune_min_opacity": UNIT,
    "stage1.final_prune_max_scale": POSITIVE,
    "stage1.max_consecutive_bad_steps": POSITIVE_INT,
    "stage1.image_log_every_n_steps": COUNT,
    "stage1.guidance_eval_strength": UNIT,
    "stage1.views.batch_size": POSITIVE_INT,
    "stage1.views.invert_bg_prob": UNIT,
    "stage1.views.radius": POSITIVE,
    "stage1.views.resolution": PIXELS,
    "stage1.views.resolution.values[*]": PIXELS,
    "stage1.density.grad_threshold": NON_NEGATIVE,
    "stage1.density.percent_dense": UNIT,
    "stage1.density.extent": POSITIVE,
    "stage1.density.densify_from": COUNT,
    "stage1.density.densify_until": COUNT,
    "stage1.density.interval": POSITIVE_INT,
    "stage1.density.opacity_reset_interval": POSITIVE_INT,
    "stage1.density.min_opacity": UNIT,
    "stage1.density.max_world_scale_frac": POSITIVE,
    "stage1.density.split_n": POSITIVE_INT,
    # stage-1 loss terms
    "loss.*.weight": NON_NEGATIVE,
    "loss.qa_triplet.threshold": UNIT,
    "loss.qa_triplet.margin_neg_only": NON_NEGATIVE,
    "loss.qa_triplet.margin_pos_only": NON_NEGATIVE,
    "loss.qa_triplet.margin_mixed": NON_NEGATIVE,
    "loss.qa_triplet.refine_strength": UNIT,
    "loss.qa_triplet.compare_size": Range(int, 8, optional=True),
    # prior
    "prior.guidance_scale": NON_NEGATIVE,
    # mesh extraction / bake (plain keys read by the mesh step)
    "mesh.resolution": Range(int, 2),
    "mesh.num_blocks": POSITIVE_INT,
    "mesh.opacity_threshold": UNIT,
    "mesh.iso": POSITIVE,
    "mesh.remesh_size": POSITIVE,
    "mesh.max_faces": Range(int),
    "mesh.texture_size": PIXELS,
    "mesh.bake_render_size": PIXELS,
    "mesh.view_cos_threshold": COSINE,
    "mesh.inpaint_dilation": COUNT,
    "mesh.cov_floor_voxels": NON_NEGATIVE,
    "mesh.cull_sigma": Range(float, 0, open_lo=True, optional=True),
    "mesh.uv_padding": COUNT,
    "mesh.bake_min_resolution": COUNT,
    # stage 2 (TextureStage is built only after stage 1 and the mesh)
    "stage2.steps": POSITIVE_INT,
    "stage2.texture_lr": POSITIVE,
    "stage2.geom_lr": POSITIVE,
    "stage2.default_texture_size": PIXELS,
    "stage2.ref_size": PIXELS,
    "stage2.fovy_deg": FOVY,
    "stage2.radius": POSITIVE,
    "stage2.ref_weight": NON_NEGATIVE,
    "stage2.refine_weight": NON_NEGATIVE,
    "stage2.strength": UNIT,
    "stage2.strength.start": UNIT,
    "stage2.strength.end": UNIT,
    "stage2.refine_steps": POSITIVE_INT,
    "stage2.ssaa_min": POSITIVE,
    "stage2.ssaa_max": POSITIVE,
    "stage2.viewcos_threshold": COSINE,
    "stage2.max_nonfinite_steps": POSITIVE_INT,
    "stage2.views.batch_size": POSITIVE_INT,
    "stage2.views.resolution": PIXELS,
    # evaluation + turntables
    "evaluation.views": POSITIVE_INT,
    "evaluation.elevation": ELEVATION,
    "evaluation.radius": POSITIVE,
    "evaluation.fovy": FOVY,
    "evaluation.size": PIXELS,
    "evaluation.turntable.frames": POSITIVE_INT,
    "evaluation.turntable.elevation": ELEVATION,
    "evaluation.turntable.radius": POSITIVE,
    "evaluation.turntable.fovy": FOVY,
    "evaluation.turntable.size": PIXELS,
    "evaluation.turntable.fps": POSITIVE,
}


def _expand(cfg: DictConfig, pattern: str) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for every key matching ``pattern`` (``*``: any key of a mapping / item of a list)."""
    found: list[tuple[str, Any]] = [("", cfg)]
    for part in pattern.replace("[*]", ".[*]").split("."):
        nxt: list[tuple[str, Any]] = []
        for path, node in found:
            if part in ("*", "[*]"):
                if isinstance(node, DictConfig):
                    keys = list(node.keys())
                elif isinstance(node, ListConfig) and part == "[*]":
                    keys = list(range(len(node)))
                else:
                    keys = []
            else:
                keys = [part] if isinstance(node, DictConfig) and part in node else []
            for key in keys:
                name = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
                if isinstance(node, DictConfig):
                    value = _scalar(node, key)
                    if value is _ABSENT and not OmegaConf.is_missing(node, key):
                        try:
                            value = node[key]  # a sub-config: walk into it
                        except Exception:  # noqa: BLE001
                            continue
                else:
                    value = node[key]
                nxt.append((name, value))
        found = nxt
    return [(path, value) for path, value in found if value is not _ABSENT]


def check_ranges(cfg: DictConfig, ranges: dict[str, Range] | None = None) -> None:
    """Every configured value covered by :data:`RANGES` lies in its range (sub-configs such as schedules skipped)."""
    for pattern, rule in (RANGES if ranges is None else ranges).items():
        for path, value in _expand(cfg, pattern):
            if isinstance(value, DictConfig | ListConfig):
                continue
            if not rule.accepts(value):
                raise ConfigError(f"{path}={value!r} is invalid: expected {rule.describe()}")
    mesh = cfg.get("mesh")
    if isinstance(mesh, DictConfig) and "resolution" in mesh and "num_blocks" in mesh:
        if int(mesh.resolution) % int(mesh.num_blocks) != 0:
            raise ConfigError(f"mesh.resolution={mesh.resolution} must be divisible by mesh.num_blocks="
                              f"{mesh.num_blocks}")
    if isinstance(mesh, DictConfig):
        _check_mesh_choices(mesh)
    stage2 = cfg.get("stage2")
    if isinstance(stage2, DictConfig) and isinstance(stage2.get("ssaa_min"), int | float) \
            and isinstance(stage2.get("ssaa_max"), int | float) and stage2.ssaa_min > stage2.ssaa_max:
        raise ConfigError(f"stage2.ssaa_min={stage2.ssaa_min} must be <= stage2.ssaa_max={stage2.ssaa_max}")


def _check_mesh_choices(mesh: DictConfig) -> None:
    """The mesh step's string options and the bake's mip bound, checked before stage 1 rather than after it."""
    from cg_lightning.mesh.bake import BLEND_MODES, INPAINT_MODES, TEXEL_MAPPINGS
    from cg_lightning.mesh.uv import SEAM_NORMALS

    for key, allowed in (("bake_blend", BLEND_MODES), ("bake_texel_mapping", TEXEL_MAPPINGS),
                         ("inpaint", INPAINT_MODES), ("seam_normals", SEAM_NORMALS)):
        if key in mesh and mesh[key] not in allowed:
            raise ConfigError(f"mesh.{key}={mesh[key]!r} is invalid: expected one of {', '.join(allowed)}")
    if "texture_size" in mesh and "bake_min_resolution" in mesh and \
            int(mesh.texture_size) <= int(mesh.bake_min_resolution):
        raise ConfigError(f"mesh.texture_size={mesh.texture_size} must be larger than mesh.bake_min_resolution="
                          f"{mesh.bake_min_resolution} (the mip splat writes no level otherwise)")


#: groups read key by key by the pipeline (no constructor to reject a typo): their keys must be those of the
#: group's ``default.yaml``
PLAIN_GROUPS = ("mesh", "evaluation")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _check_known_keys(node: DictConfig, reference: DictConfig, path: str) -> None:
    for key in node.keys():
        if key not in reference:
            hint = difflib.get_close_matches(str(key), [str(k) for k in reference.keys()], n=1)
            raise ConfigError(f"Unknown config key {path}.{key}." + (f" Did you mean {path}.{hint[0]}?" if hint else "")
                              + f" Known keys: {', '.join(str(k) for k in reference.keys())}")
        sub, ref = node._get_node(key), reference._get_node(key)
        if isinstance(sub, DictConfig) and isinstance(ref, DictConfig) and "_target_" not in ref:
            _check_known_keys(sub, ref, f"{path}.{key}")


def check_plain_groups(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> None:
    """Unknown keys in ``mesh`` / ``evaluation`` (e.g. ``+mesh.resolutoin=256``) would be silently ignored."""
    for group in PLAIN_GROUPS:
        default = conf_dir / group / "default.yaml"
        node = cfg.get(group)
        if isinstance(node, DictConfig) and default.is_file():  # an installed package has no conf/ next to it
            _check_known_keys(node, OmegaConf.load(default), group)


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
    if cfg.get("on_mismatch", "error") not in ("error", "new"):
        raise ConfigError(f"on_mismatch={cfg.on_mismatch!r}; expected error (stop when the job directory holds "
                          f"another config's job) or new (run in a fresh directory)")
    if not -90.0 < float(cfg.elevation) < 90.0:
        raise ConfigError(f"elevation={cfg.elevation} must lie in (-90, 90) degrees")
    if int(cfg.seed) < 0:
        raise ConfigError(f"seed={cfg.seed} must be >= 0")


def validate_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "image"):
        raise ConfigError("image is required: python launch.py +experiment=full image=path/to/image.png")
    check_top_level(cfg)
    check_targets(cfg)
    check_plain_groups(cfg)
    check_ranges(cfg)
