"""Import Lightning without the optional packages torchmetrics imports for metrics we never use.

Why: ``import lightning`` imports torchmetrics (Lightning's version checks and ``LightningModule`` need its
``Metric`` class), and ``torchmetrics/__init__`` imports every metric module, which import at module level each
optional package they find installed: torchvision (ARNIQA, DISTS, detection), transformers (BERTScore, CLIPScore),
scipy.signal (audio; imported by its ``__init__`` itself), matplotlib (plots). None of those metrics is used here. While torchmetrics itself is being
imported, its availability flags for these packages read False, so those modules skip the imports (the metrics that
need them would fail if called; nothing in this project calls them). Everything else is unchanged, and a package
that this project uses (torchvision for LPIPS, transformers for Zero-1-to-3 and CLIP) is simply imported later, by
the step that needs it. Measured on the 2-core machine: ``import lightning.pytorch`` 1.5-2.1 s less CPU.

``launch.py`` installs it first thing; ``CG_LEAN_IMPORTS=0`` switches it off (e.g. to use torchmetrics' image
metrics from a callback of your own).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading

#: optional packages torchmetrics imports at import time for metrics this project does not use
DEFERRED = frozenset({"torchvision", "transformers", "matplotlib", "scipy"})

_lock = threading.Lock()
_installed: list[importlib.abc.MetaPathFinder] = []


def _requirement_name(requirement: str | None) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement or "", maxsplit=1)[0].strip().lower()


class _TorchmetricsFinder(importlib.abc.MetaPathFinder):
    """Finds ``torchmetrics`` with the other finders and runs its ``__init__`` with the deferred flags False."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchmetrics" or "torchmetrics" in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _DeferringLoader(spec.loader)
        return spec


class _DeferringLoader(importlib.abc.Loader):
    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        import lightning_utilities.core.imports as availability

        original_bool, original_available = availability.RequirementCache.__bool__, availability.package_available

        def deferred_bool(cache) -> bool:
            if _requirement_name(getattr(cache, "requirement", None) or getattr(cache, "module", None)) in DEFERRED:
                return False    # not cached: after the import the flag reads the truth again
            return original_bool(cache)

        def deferred_available(name: str) -> bool:   # torchmetrics/__init__: `if package_available("scipy")`
            return False if _requirement_name(name) in DEFERRED else original_available(name)

        with _lock:
            availability.RequirementCache.__bool__ = deferred_bool
            availability.package_available = deferred_available
            try:
                self.inner.exec_module(module)
            finally:
                availability.RequirementCache.__bool__ = original_bool
                availability.package_available = original_available


def install() -> bool:
    """Put the finder in front of the import system (idempotent). False when switched off, when torchmetrics is
    already imported, or when lightning_utilities is missing (then nothing changes)."""
    if os.environ.get("CG_LEAN_IMPORTS", "1") == "0" or "torchmetrics" in sys.modules or _installed:
        return bool(_installed)
    if importlib.util.find_spec("lightning_utilities") is None:
        return False
    finder = _TorchmetricsFinder()
    sys.meta_path.insert(0, finder)
    _installed.append(finder)
    return True


def uninstall() -> None:
    """Remove the finder (tests)."""
    while _installed:
        finder = _installed.pop()
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
