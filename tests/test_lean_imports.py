"""launch.py imports Lightning without torchmetrics' optional packages (runtime/lean_imports.py), and nothing else
changes: the packages are importable and usable afterwards, torchmetrics' flags read the truth again."""

import subprocess
import sys

import pytest

CHECK = """
import sys
from cg_lightning.runtime import lean_imports
assert lean_imports.install() is {on}
import lightning.pytorch
from torchmetrics import Metric, MetricCollection
skipped = sorted(m for m in ("torchvision", "transformers", "matplotlib", "scipy.signal") if m in sys.modules)
print("loaded:", skipped)
import torchmetrics.utilities.imports as flags
assert bool(flags._TORCHVISION_AVAILABLE) and bool(flags._TRANSFORMERS_AVAILABLE), "flags must read the truth again"
import torch
from torchvision.utils import make_grid   # what the stages use later still works
assert make_grid(torch.zeros(2, 3, 4, 4), nrow=2).shape == (3, 8, 14)
"""


def _run(on: bool, env_off: bool = False) -> str:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if env_off:
        env["CG_LEAN_IMPORTS"] = "0"
    out = subprocess.run([sys.executable, "-c", CHECK.format(on=on)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_lightning_imports_without_torchmetrics_optional_packages():
    assert "loaded: []" in _run(on=True)


@pytest.mark.slow
def test_switched_off_by_environment():
    loaded = _run(on=False, env_off=True)
    assert "torchvision" in loaded and "transformers" in loaded   # torchmetrics' own behaviour
