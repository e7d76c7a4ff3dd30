"""Ground-truth metrics (Chamfer, F-score, normal consistency, PSNR / masked PSNR / SSIM) and their evaluate hook."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from cg_lightning.errors import MissingWeightsError
from cg_lightning.evaluation.render_memo import RenderMemo, camera_key
from cg_lightning.evaluation.truth import (
    appearance_metrics,
    fixed_views,
    geometry_metrics,
    mesh_render_fn,
    ssim,
    truth_metrics,
)
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.render.mesh import TorchMeshRasterizer

trimesh = pytest.importorskip("trimesh")
DATA = Path(__file__).resolve().parents[1] / "experiments" / "data"


def sphere(radius: float) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return Mesh(v=torch.as_tensor(s.vertices, dtype=torch.float32), f=torch.as_tensor(s.faces)).auto_normals()


def test_geometry_metrics_known_cases():
    truth = sphere(0.6)
    same = geometry_metrics(truth, truth)  # the default 20k samples
    assert same["chamfer"] < 0.008 and same["fscore_1pct"] > 0.97 and same["normal_consistency"] > 0.99
    # a sphere 0.03 larger: every point is 0.03 away (2.5 % of the size 1.2): the 1 % and 2 % F-scores collapse
    bigger = geometry_metrics(sphere(0.63), truth, samples=5000)
    assert bigger["chamfer"] == pytest.approx(0.03, abs=0.004)
    assert bigger["fscore_1pct"] < 0.05 and bigger["fscore_2pct"] < 0.2 and bigger["normal_consistency"] > 0.98
    # 0.003 larger (0.25 % of the size): inside both thresholds
    close = geometry_metrics(sphere(0.603), truth)
    assert close["fscore_1pct"] > 0.95 and close["fscore_2pct"] > 0.99
    # half the truth missing (a hemisphere): recall halves, precision stays
    v, f = truth.v, truth.f
    keep = (v[f].mean(1)[:, 1] > 0)
    half = Mesh(v=v, f=f[keep]).auto_normals()
    assert geometry_metrics(half, truth, samples=5000)["fscore_2pct"] == pytest.approx(2 * 0.5 / 1.5, abs=0.05)


def test_ssim_and_appearance():
    img = torch.rand(3, 32, 32)
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(img, torch.rand(3, 32, 32)) < 0.2
    torus = Mesh.load(DATA / "torus" / "model.glb")
    rast = TorchMeshRasterizer()
    views = fixed_views()
    assert len(views) == 16 and views[8] == (-30.0, 0.0)
    same = appearance_metrics(mesh_render_fn(torus, rast), mesh_render_fn(torus, rast), views[:2], size=48)
    assert same["psnr"] > 100 and same["ssim"] == pytest.approx(1.0)
    grey = Mesh(v=torus.v, f=torus.f, vn=torus.vn)  # same shape, no texture (0.5 grey)
    worse = appearance_metrics(mesh_render_fn(grey, rast), mesh_render_fn(torus, rast), views[:2], size=48)
    assert 5 < worse["masked_psnr"] < worse["psnr"] < 40 and worse["ssim"] < 0.99


def test_truth_metrics_keys():
    torus = Mesh.load(DATA / "torus" / "model.glb")
    out = truth_metrics(torus, coarse=torus, final=torus, size=32, views=fixed_views()[:1])
    for what in ("coarse", "final"):
        for k in ("chamfer", "fscore_1pct", "fscore_2pct", "normal_consistency", "psnr", "masked_psnr", "ssim"):
            assert f"eval/truth_{what}_{k}" in out
    assert out["eval/truth_final_fscore_1pct"] > 0.97 and out["eval/truth_final_psnr"] > 100


def test_truth_metrics_render_the_truth_once_and_match_unshared_figures():
    """One job's truth is rendered once for the three comparisons; sharing its renders and its surface samples
    changes no figure (the same deterministic renders, the same seeded points)."""
    from cg_lightning.evaluation.truth import TRUTH_SEEDS, geometry_metrics, surface_samples

    torus = Mesh.load(DATA / "torus" / "model.glb")
    grey = Mesh(v=torus.v * 1.02, f=torus.f, vn=torus.vn)   # another shape and colour than the truth
    views, rast = fixed_views()[:3], TorchMeshRasterizer()
    calls = []

    def counting(mesh, name):
        inner = mesh_render_fn(mesh, rast)

        def render(cam):
            calls.append(name)
            return inner(cam)

        return render

    memo = RenderMemo()
    out = truth_metrics(torus, coarse=grey, final=grey, size=24, views=views, samples=2000, memo=memo,
                        gaussians=counting(grey, "stage1"), gaussians_tag="g")
    assert len(memo) == 4 * len(views) and memo.misses == 4 * len(views) and memo.hits == 2 * len(views)
    assert calls == ["stage1"] * len(views)
    alone = appearance_metrics(mesh_render_fn(grey, rast), mesh_render_fn(torus, rast), views, size=24)
    for k, v in alone.items():
        assert out[f"eval/truth_final_{k}"] == v and out[f"eval/truth_coarse_{k}"] == v
        assert out[f"eval/truth_stage1_{k}"] == v
    shared = surface_samples(torus, 2000, TRUTH_SEEDS)
    assert geometry_metrics(grey, torus, 2000, truth_samples=shared) == geometry_metrics(grey, torus, 2000)
    assert out["eval/truth_final_chamfer"] == geometry_metrics(grey, torus, 2000)["chamfer"]
    with pytest.raises(ValueError, match="expected samples=1000"):
        geometry_metrics(grey, torus, 1000, truth_samples=shared)


def test_render_memo_reuses_only_identical_cameras_and_kept_views():
    """A 24-frame turntable at elevation 0 holds the 8 elevation-0 evaluation views, bit for bit; other cameras,
    other renderers (tags) and views outside ``keep`` are rendered afresh."""
    from cg_lightning.cameras import orbit
    from cg_lightning.io.video import turntable_cameras

    turntable = turntable_cameras(24, elevation_deg=0.0, radius=2.0, fovy_deg=49.1, size=32)
    evaluation = {camera_key(orbit(e, a, 2.0, 49.1, 32, 32)) for e, a in fixed_views()}
    assert sum(camera_key(c) in evaluation for c in turntable) == 8
    made = []

    def render(cam):
        made.append(cam)
        return torch.zeros(3, 32, 32), torch.zeros(1, 32, 32)

    memo = RenderMemo()
    export = memo.wrap("final", "torch", render, keep=evaluation)
    for cam in turntable:
        export(cam)
    assert len(memo) == 8 and len(made) == 24
    evaluate = memo.wrap("final", "torch", render)
    for e, a in fixed_views():
        evaluate(orbit(e, a, 2.0, 49.1, 32, 32))
    assert len(made) == 24 + 8 and memo.hits == 8          # only the elevation -30 views were rendered again
    memo.wrap("final", "nvdiffrast", render)(turntable[0])   # another renderer: no reuse
    memo.wrap("final", "torch", render)(orbit(0.0, 0.0, 2.0, 49.1, 33, 33))   # another size: no reuse
    assert len(made) == 24 + 8 + 2
    memo.forget()
    assert len(memo) == 0


def _ctx(tmp_path, prior_target: str, evaluation: dict, outputs: dict):
    from cg_lightning.priors.oracle import OraclePrior

    cfg = OmegaConf.create({"prior": {"_target_": prior_target}, "evaluation": evaluation,
                            "renderer": {"gaussian": "torch"}})
    metrics: dict = {}
    prior = OraclePrior(mesh_path=str(DATA / "torus" / "model.glb"))
    return SimpleNamespace(cfg=cfg, metrics=metrics, record=metrics.update, prior=lambda: prior,
                           find_output=lambda key: outputs.get(key), renders=RenderMemo()), metrics


def test_evaluate_hook_scores_oracle_jobs_and_skips_missing_perceptual_weights(tmp_path):
    from cg_lightning.steps.evaluate import perceptual_or_skipped, score_against_truth

    torus = DATA / "torus" / "model.glb"
    ctx, metrics = _ctx(tmp_path, "cg_lightning.priors.noisy_oracle.NoisyOraclePrior",
                        {"perceptual": "if_available", "truth": {"enabled": True, "samples": 4000, "size": 24}},
                        {"coarse_glb": torus, "model_glb": None})
    score_against_truth(ctx)
    assert metrics["eval/truth_coarse_fscore_1pct"] > 0.8 and "eval/truth_final_chamfer" not in metrics

    def missing():
        raise MissingWeightsError("LPIPS-vgg backbone (vgg16-397923af.pth)", ["/nowhere"], "make weights")

    assert perceptual_or_skipped(ctx, missing) == {}
    assert metrics["eval/perceptual_skipped"].startswith("weights missing: LPIPS-vgg")

    def wrapped():  # what hydra.utils.instantiate raises when the scorer's constructor fails
        try:
            missing()
        except MissingWeightsError as exc:
            raise RuntimeError("Error in call to target 'cg_lightning.perceptual.lpips.LPIPS'") from exc

    calls = []
    assert perceptual_or_skipped(ctx, lambda: calls.append(1)) == {} and not calls  # skipped once: not retried
    metrics.clear()
    assert perceptual_or_skipped(ctx, wrapped) == {} and "eval/perceptual_skipped" in metrics
    metrics.pop("eval/perceptual_skipped")
    with pytest.raises(ValueError):  # any other failure is not hidden
        perceptual_or_skipped(ctx, lambda: (_ for _ in ()).throw(ValueError("bug")))
    assert perceptual_or_skipped(ctx, lambda: {"eval/lpips": 0.1}) == {"eval/lpips": 0.1}
    ctx.cfg.evaluation.perceptual = "required"
    with pytest.raises(MissingWeightsError):
        perceptual_or_skipped(ctx, missing)
    # a prior without ground truth (any class without ground_truth_path): no truth metrics
    ctx2, metrics2 = _ctx(tmp_path, "cg_lightning.preprocess.superres.NoUpscale", {"truth": {"enabled": True}},
                          {"coarse_glb": torus})
    score_against_truth(ctx2)
    assert not any(k.startswith("eval/truth") for k in metrics2)


def test_oracle_presets_compose_with_every_ablation(compose):
    image = f"image={DATA / 'box' / 'box_rgba.png'}"
    for exp in ("full", "no_qa_triplet", "no_refine", "dreamgaussian", "oracle"):
        extra = [] if exp == "oracle" else ["+debug=oracle_noisy"]
        cfg = compose([f"+experiment={exp}", *extra, image])
        assert cfg.stage1.steps == 150 and cfg.stage1.ref_size == 128 and cfg.device == "cpu"
        assert cfg.superres._target_.endswith("NoUpscale") and cfg.evaluation.perceptual == "if_available"
        assert cfg.prior._target_.endswith("NoisyOraclePrior" if extra else "oracle.OraclePrior")
        assert ("qa_triplet" in cfg.loss) == (exp in ("full", "no_refine"))  # what distinguishes them stays
        assert cfg.stage1.views.batch_size == (1 if exp == "dreamgaussian" else 2)
        assert ("stage2" in cfg.stages) == (exp != "no_refine")
    paper = compose(["+experiment=oracle", "~debug", image])
    assert paper.stage1.ref_size == 1024 and paper.prior._target_.endswith("oracle.OraclePrior")
