"""Peak CPU and GPU memory of a block of code (the paper's "< 10 GB" claim is a peak-memory number).

Why several CPU methods: the process-lifetime peak (``getrusage``) cannot be reset, so it would charge stage 2 with
stage 1's peak. On Linux the kernel's high-water mark ``VmHWM`` can be reset by writing ``5`` to
``/proc/self/clear_refs``; that gives an exact per-block peak. Where that is not allowed we sample the RSS with
psutil in a background thread, and as a last resort report the lifetime peak (an upper bound).

GPU: ``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved`` (the caching allocator's pool, closer
to what ``nvidia-smi`` shows). Both counters are process-global, so nested trackers fold the running peak into the
outer ones before an inner tracker resets the counters; an outer block's peak therefore includes its inner blocks.
Units: GiB (2**30 bytes), reported under keys ending in ``_gb``.
"""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

import torch

GIB = float(2**30)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

# trackers currently inside their ``with`` block (innermost last)
_ACTIVE: list[PeakMemory] = []


def current_rss_bytes() -> int | None:
    """Resident set size of this process now, or None when it cannot be read."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        return None


def _read_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter; False when not possible (non-Linux, restricted /proc)."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _read_hwm_bytes() is not None


def lifetime_peak_rss_bytes() -> int:
    """Peak RSS since the process started (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class _RssSampler(threading.Thread):
    """Polls the RSS every ``interval`` seconds and keeps the maximum (fallback when VmHWM cannot be reset)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True, name="PeakMemorySampler")
        self.interval = interval
        self.peak = current_rss_bytes() or 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            rss = current_rss_bytes()
            if rss is not None:
                self.peak = max(self.peak, rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5.0)
        rss = current_rss_bytes()
        return max(self.peak, rss or 0)


class PeakMemory:
    """Context manager measuring the peak CPU RSS and peak CUDA memory of its block.

    >>> with PeakMemory(torch.device("cpu"), stage="stage1") as mem:
    ...     work()
    >>> mem.as_dict()   # {"memory/stage1_peak_cpu_gb": ..., "memory/stage1_peak_gpu_gb": ..., ...}

    ``device``: the CUDA device to watch; None watches the current CUDA device when CUDA is available; a CPU device
    (or no CUDA) reports 0.0 for the GPU keys. ``stage`` namespaces the keys.
    ``method`` says how the CPU peak was obtained: ``vmhwm`` (exact), ``sampled`` or ``lifetime`` (upper bound).
    """

    def __init__(self, device: torch.device | str | None = None, *, stage: str | None = None,
                 sample_interval: float = 0.05) -> None:
        self.device = torch.device(device) if device is not None else None
        self.stage = stage
        self.sample_interval = sample_interval
        self.method: str = "none"
        self.peak_cpu_bytes: int = 0
        self.peak_gpu_bytes: int = 0
        self.peak_gpu_reserved_bytes: int = 0
        self._sampler: _RssSampler | None = None
        self._done = False

    # ------------------------------------------------------------------ CUDA helpers
    def _cuda_device(self) -> torch.device | None:
        if not torch.cuda.is_available():
            return None
        if self.device is not None and self.device.type == "cuda":
            return self.device
        if self.device is None:
            return torch.device("cuda", torch.cuda.current_device())
        return None

    # ------------------------------------------------------------------ folding (nesting support)
    def _fold_current(self) -> None:
        """Take the counters' current peaks into this tracker's running maxima."""
        if self.method == "vmhwm":
            hwm = _read_hwm_bytes()
            if hwm is not None:
                self.peak_cpu_bytes = max(self.peak_cpu_bytes, hwm)
        elif self.method == "sampled" and self._sampler is not None:
            self.peak_cpu_bytes = max(self.peak_cpu_bytes, self._sampler.peak)
        dev = self._cuda_device()
        if dev is not None:
            self.peak_gpu_bytes = max(self.peak_gpu_bytes, int(torch.cuda.max_memory_allocated(dev)))
            self.peak_gpu_reserved_bytes = max(self.peak_gpu_reserved_bytes,
                                               int(torch.cuda.max_memory_reserved(dev)))

    @staticmethod
    def _fold_all_active() -> None:
        for tracker in _ACTIVE:
            tracker._fold_current()

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> PeakMemory:
        self._fold_all_active()  # outer trackers keep what happened before we reset the counters
        if _reset_hwm():
            self.method = "vmhwm"
        else:
            try:
                import psutil  # noqa: F401

                self._sampler = _RssSampler(self.sample_interval)
                self._sampler.start()
                self.method = "sampled"
            except ImportError:
                self.method = "lifetime"
        dev = self._cuda_device()
        if dev is not None:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        _ACTIVE.append(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        dev = self._cuda_device()
        if dev is not None:
            torch.cuda.synchronize(dev)
        if self._sampler is not None:
            self.peak_cpu_bytes = max(self.peak_cpu_bytes, self._sampler.stop())
        if self.method == "lifetime":
            self.peak_cpu_bytes = lifetime_peak_rss_bytes()
        self._fold_all_active()  # ourselves and every outer tracker see this block's peak
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._done = True

    # ------------------------------------------------------------------ results
    @property
    def peak_cpu_gb(self) -> float:
        return self.peak_cpu_bytes / GIB

    @property
    def peak_gpu_gb(self) -> float:
        return self.peak_gpu_bytes / GIB

    @property
    def peak_gpu_reserved_gb(self) -> float:
        return self.peak_gpu_reserved_bytes / GIB

    def as_dict(self) -> dict[str, float]:
        """``memory/[<stage>_]peak_cpu_gb``, ``..._peak_gpu_gb`` and ``..._peak_gpu_reserved_gb``."""
        if not self._done:
            raise RuntimeError("PeakMemory.as_dict() is only available after the `with` block has finished")
        p = f"memory/{self.stage}_" if self.stage else "memory/"
        return {f"{p}peak_cpu_gb": round(self.peak_cpu_gb, 4),
                f"{p}peak_gpu_gb": round(self.peak_gpu_gb, 4),
                f"{p}peak_gpu_reserved_gb": round(self.peak_gpu_reserved_gb, 4)}
