"""Baselines: Shap-E weights handling + job flow, external meshes (foreign frames, vertex colours), the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_models import single_thread
from omegaconf import OmegaConf
from PIL import Image

from cg_lightning.errors import InputImageError, MissingWeightsError
from cg_lightning.evaluation import baselines as B
from cg_lightning.evaluation.mesh_view import (
    ScorableMesh,
    _mask_box,
    fit_to_reference,
    load_scorable_mesh,
    yaw_rotation,
)
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.render.mesh import build_mesh_rasterizer

_threads = pytest.fixture(autouse=True)(single_thread)
ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box"
SIZE = 64


@pytest.fixture(scope="module")
def rast():
    return build_mesh_rasterizer("torch")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    from helpers.tiny_models import build_tiny_clip

    return str(build_tiny_clip(tmp_path_factory.mktemp("tiny_clip")))


@pytest.fixture(scope="module")
def cfg_eval(clip_dir):
    return OmegaConf.create({
        "lpips": {"_target_": "cg_lightning.perceptual.lpips.LPIPS", "net": "alex", "normalize": True,
                  "pretrained": False},
        "clip": {"_target_": "cg_lightning.perceptual.clip.CLIPImageEncoder", "model": clip_dir},
        "views": 2, "elevation": 0.0, "radius": 2.0, "fovy": 49.1, "size": SIZE, "clip_camera": None,
        "mesh_renderer": "torch"})


@pytest.fixture(scope="module")
def recenter():
    from cg_lightning.preprocess.background import BackgroundRemover

    return BackgroundRemover(size=SIZE * 2)  # RGBA inputs are only recentred: no rembg model needed


def box_with_vertex_colors() -> ScorableMesh:
    """The bundled box, coloured per vertex by position (no texture)."""
    mesh = Mesh.load(BOX / "model.glb")
    lo, hi = mesh.bounds()
    colors = ((mesh.v - lo) / (hi - lo)).clamp(0, 1) * 0.8 + 0.1
    return ScorableMesh(Mesh(v=mesh.v, f=mesh.f).auto_normals(), colors)


def save_rgba_of(sm: ScorableMesh, rast, path: Path, size: int = 128) -> Path:
    from cg_lightning.cameras import orbit

    premult, alpha = sm.render(orbit(0.0, 0.0, 2.0, 49.1, size, size), rast, bg_color=0.0)
    rgb = torch.where(alpha > 0, premult / alpha.clamp_min(1e-6), torch.zeros_like(premult)).clamp(0, 1)
    arr = (torch.cat([rgb, alpha], 0).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr, mode="RGBA").save(path)
    return path


# ---------------------------------------------------------------------------------------------- Shap-E weights
def test_shap_e_offline_without_cache_is_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    with pytest.raises(MissingWeightsError) as info:
        B.ShapEImageTo3D().setup("cpu")
    msg = str(info.value)
    assert "Shap-E" in msg and "openai/shap-e-img2img" in msg and "huggingface-cli download" in msg
    assert str(tmp_path / "empty_hub") in msg


def test_shap_e_local_folder_checks(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        B.ShapEImageTo3D(weights=str(tmp_path / "nope" / "shap-e")).setup("cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="model_index.json"):
        B.ShapEImageTo3D(weights=str(tmp_path / "empty")).setup("cpu")


class _StubShapEPipe:
    """Stands in for the 1.5 GB ShapEImg2ImgPipeline: returns a known mesh in Shap-E's frame and colour space,
    with the attributes of diffusers' ``MeshDecoderOutput`` (verts, faces, vertex_channels)."""

    def __init__(self, sm: ScorableMesh) -> None:
        from types import SimpleNamespace

        ours = sm.mesh.v
        shap_e_frame = torch.stack([-ours[:, 0], ours[:, 2], ours[:, 1]], dim=1)   # inverse of the y-up turn
        c = sm.vertex_colors
        linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        self.output = SimpleNamespace(verts=shap_e_frame, faces=sm.mesh.f,
                                        vertex_channels={k: linear[:, i] for i, k in enumerate("RGB")})
        self.calls: list[dict] = []

    def __call__(self, image, **kwargs):
        self.calls.append({"image": image, **kwargs})

        class Out:
            images = [self.output]
        return Out()


def test_shap_e_generate_converts_frame_and_colours():
    sm = box_with_vertex_colors()
    model = B.ShapEImageTo3D(weights="unused/unused", steps=7, guidance_scale=2.5)
    model.pipe, model.device = _StubShapEPipe(sm), torch.device("cpu")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (255, 0, 0, 255)
    out = model.generate(rgba, seed=3)
    assert torch.allclose(out.mesh.v, sm.mesh.v, atol=1e-6)
    assert torch.allclose(out.vertex_colors, sm.vertex_colors, atol=1e-5)
    call = model.pipe.calls[0]
    assert call["num_inference_steps"] == 7 and call["guidance_scale"] == 2.5 and call["output_type"] == "mesh"
    img = np.asarray(call["image"])
    assert img.shape == (8, 8, 3) and tuple(img[0, 0]) == (255, 255, 255) and tuple(img[3, 3]) == (255, 0, 0)


@pytest.mark.slow
def test_shap_e_loads_a_local_pipeline_folder(tmp_path):
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEImg2ImgPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    d = 16  # the prior's latent is (sum of renderer param rows) x d_latent
    pipe = ShapEImg2ImgPipeline(
        prior=PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=d, num_embeddings=32,
                               embedding_proj_dim=16, time_embed_dim=4 * d, num_layers=1, clip_embed_dim=2 * d,
                               additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
                               embedding_proj_norm_type="layer", encoder_hid_proj_type=None, added_emb_type=None),
        image_encoder=CLIPVisionModel(CLIPVisionConfig(hidden_size=16, image_size=32, intermediate_size=24,
                                                       num_attention_heads=2, num_hidden_layers=1, patch_size=8)),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        scheduler=HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                        use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0),
        shap_e_renderer=ShapERenderer(param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=d, d_hidden=8,
                                      n_output=12, background=(255.0, 255.0, 255.0)))
    pipe.save_pretrained(tmp_path / "tiny_shap_e")
    model = B.ShapEImageTo3D(weights=str(tmp_path / "tiny_shap_e"))
    model.setup("cpu")
    assert type(model.pipe).__name__ == "ShapEImg2ImgPipeline" and model.pipe.prior.dtype == torch.float32


def test_run_shap_e_writes_a_scored_job(tmp_path, rast, cfg_eval, recenter):
    sm = box_with_vertex_colors()
    image = save_rgba_of(sm, rast, tmp_path / "vcbox_rgba.png")
    model = B.ShapEImageTo3D(weights="unused/unused")
    model.pipe, model.device = _StubShapEPipe(sm), torch.device("cpu")
    out, metrics = B.run_shap_e(image, output_root=tmp_path / "outputs", cfg_eval=cfg_eval, device="cpu",
                                preprocess=recenter, model=model, rasterizer=rast)
    assert out == tmp_path / "outputs" / "vcbox_rgba" / "shap_e" / "seed0"
    for name in ("metrics.json", "DONE", "input/preprocessed_rgba.png", "mesh/aligned.glb", "mesh/shap_e_raw.glb"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("eval/lpips", "eval/clip_similarity", "time/total_s", "time/generate_s", "memory/peak_cpu_gb",
                "align/scale"):
        assert isinstance(saved[key], float), key
    assert saved["time/total_s"] == pytest.approx(saved["time/input_s"] + saved["time/generate_s"])
    assert saved["eval/lpips"] < 0.05            # the stub returns the true object: aligned, it matches the input
    assert saved["baseline/method"] == "shap_e"
    back = load_scorable_mesh(out / "mesh" / "aligned.glb")      # vertex colours survive the glb round trip
    assert back.vertex_colors is not None and back.mesh.num_vertices == sm.mesh.num_vertices


# ---------------------------------------------------------------------------------------------- external meshes
def test_silhouette_fit_recovers_scale_and_offset(rast):
    from cg_lightning.cameras import orbit

    sm = box_with_vertex_colors()
    cam = orbit(0.0, 0.0, 2.0, 49.1, SIZE, SIZE)
    premult, alpha = sm.render(cam, rast, bg_color=0.0)
    ref = (torch.cat([premult, alpha], 0).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    moved = sm.transformed(scale=0.4, translation=torch.tensor([0.3, -0.2, 0.1]))
    fitted, info = fit_to_reference(moved, ref, rast, elevation_deg=0.0, size=SIZE)
    got, want = _mask_box(fitted.render(cam, rast)[1]), _mask_box(alpha)
    assert all(abs(g - w) < 3.0 / SIZE for g, w in zip(got, want, strict=False))
    assert 2.0 < info["align/scale"] < 3.0


def test_untextured_mesh_is_refused(tmp_path):
    import trimesh

    path = tmp_path / "plain.ply"
    trimesh.creation.box().export(path)
    with pytest.raises(InputImageError, match="neither a texture image nor vertex colours"):
        load_scorable_mesh(path)


def test_external_textured_mesh_in_a_blender_frame(tmp_path, rast, cfg_eval, recenter):
    from cg_lightning.mesh.export import write_glb

    box = Mesh.load(BOX / "model.glb")
    v = box.v
    foreign = torch.stack([v[:, 0], -v[:, 2], v[:, 1]], dim=1) * 3.0 + torch.tensor([5.0, 1.0, -2.0])  # z up, -y front
    path = write_glb(Mesh(v=foreign, f=box.f, vt=box.vt, albedo=box.albedo).auto_normals(), tmp_path / "m.glb")
    image = BOX / "box_rgba.png"
    kw = dict(output_root=tmp_path / "outputs", cfg_eval=cfg_eval, device="cpu", preprocess=recenter,
              rasterizer=rast)
    out, right = B.score_external_mesh(path, image, name="blenderish", time_s=45.0,
                                       alignment=B.Alignment(front="-y", up="+z"), **kw)
    assert out == tmp_path / "outputs" / "box_rgba" / "external_blenderish" / "seed0"
    assert right["time/total_s"] == 45.0 and right["baseline/method"] == "external:blenderish"
    _, wrong = B.score_external_mesh(path, image, name="as_is", **kw)
    assert right["eval/lpips"] < 0.08 and wrong["eval/lpips"] > right["eval/lpips"] + 0.02
    assert "time/total_s" not in wrong


@pytest.mark.slow
def test_external_auto_yaw_finds_the_front(tmp_path, rast, cfg_eval, recenter):
    from cg_lightning.mesh.export import write_glb

    box = ScorableMesh(Mesh.load(BOX / "model.glb"))
    kw = dict(output_root=tmp_path / "outputs", cfg_eval=cfg_eval, device="cpu", preprocess=recenter,
              rasterizer=rast)
    _, plain = B.score_external_mesh(write_glb(box.mesh, tmp_path / "plain.glb"), BOX / "box_rgba.png", name="plain",
                                     **kw)
    turned = box.transformed(linear=yaw_rotation(90.0))  # its front now faces +x
    _, auto = B.score_external_mesh(write_glb(turned.mesh, tmp_path / "turned.glb"), BOX / "box_rgba.png",
                                    name="turned", alignment=B.Alignment(auto_yaw=True), **kw)
    assert auto["align/yaw_deg"] == 270.0
    assert auto["eval/lpips"] == pytest.approx(plain["eval/lpips"], abs=0.01)


def _load_cli(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_external_vertex_coloured_ply_and_missing_mesh(tmp_path, rast, clip_dir):
    import trimesh

    sm = box_with_vertex_colors()
    image = save_rgba_of(sm, rast, tmp_path / "vc_rgba.png")
    mesh_dir = tmp_path / "meshes" / "vc"
    mesh_dir.mkdir(parents=True)
    colors = (sm.vertex_colors.numpy() * 255 + 0.5).astype(np.uint8)
    trimesh.Trimesh(sm.mesh.v.numpy(), sm.mesh.f.numpy(), vertex_colors=colors, process=False).export(
        mesh_dir / "mesh.ply")
    cli = _load_cli("run_baseline")
    overrides = ["device=cpu", "renderer=torch", "evaluation.size=64", "evaluation.views=2",
                 "evaluation.lpips.net=alex", "+evaluation.lpips.pretrained=false",
                 f"evaluation.clip.model={clip_dir}", "evaluation.clip.dtype=fp32"]
    rc = cli.main(["external", "--name", "vc", "--mesh", str(tmp_path / "meshes" / "{name}" / "mesh.ply"),
                   "--image", str(image), str(tmp_path / "missing_rgba.png"), "--output-root",
                   str(tmp_path / "out"), *overrides])
    assert rc == 1  # one of the two images does not exist
    job = tmp_path / "out" / "vc_rgba" / "external_vc" / "seed0"
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["eval/lpips"] < 0.05 and (job / "DONE").is_file()
    failed = tmp_path / "out" / "missing_rgba" / "external_vc" / "seed0" / "FAILED"
    assert failed.is_file() and "InputImageError" in failed.read_text()
