"""PeakMemory: per-block CPU peaks (resettable high-water mark), nesting, GPU keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cg_lightning.evaluation.memory import GIB, PeakMemory, current_rss_bytes


def _touch(n_bytes: int) -> np.ndarray:
    a = np.ones(n_bytes, dtype=np.uint8)  # ones() writes every page, so it is resident
    return a


def test_peak_cpu_covers_a_temporary_allocation():
    base = current_rss_bytes()
    assert base is not None
    with PeakMemory(torch.device("cpu"), stage="stage1") as mem:
        buf = _touch(300 * 2**20)
        del buf
    out = mem.as_dict()
    assert set(out) == {"memory/stage1_peak_cpu_gb", "memory/stage1_peak_gpu_gb", "memory/stage1_peak_gpu_reserved_gb"}
    assert out["memory/stage1_peak_cpu_gb"] * GIB >= base + 280 * 2**20
    assert out["memory/stage1_peak_gpu_gb"] == 0.0
    assert mem.method in ("vmhwm", "sampled", "lifetime")


def test_a_later_block_does_not_inherit_an_earlier_peak():
    with PeakMemory("cpu") as first:
        buf = _touch(400 * 2**20)
        del buf
    with PeakMemory("cpu") as second:
        small = _touch(2**20)
        del small
    if second.method == "lifetime":
        pytest.skip("no resettable peak counter on this platform")
    assert second.peak_cpu_bytes < first.peak_cpu_bytes - 300 * 2**20


def test_nested_blocks_fold_into_the_outer_peak():
    with PeakMemory("cpu") as outer:
        with PeakMemory("cpu", stage="inner") as inner:
            buf = _touch(300 * 2**20)
            del buf
        after = _touch(2**20)
        del after
    assert outer.peak_cpu_bytes >= inner.peak_cpu_bytes
    assert set(inner.as_dict()) == {"memory/inner_peak_cpu_gb", "memory/inner_peak_gpu_gb",
                                    "memory/inner_peak_gpu_reserved_gb"}


def test_results_only_after_the_block():
    mem = PeakMemory("cpu")
    with pytest.raises(RuntimeError):
        mem.as_dict()


@pytest.mark.gpu
def test_peak_gpu_sees_a_temporary_cuda_tensor():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    with PeakMemory(dev) as mem:
        t = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
        del t
    assert mem.peak_gpu_gb >= 0.25 - 1e-6
    assert mem.peak_gpu_reserved_gb >= mem.peak_gpu_gb
    with PeakMemory(dev) as later:
        pass
    assert later.peak_gpu_gb < 0.25
