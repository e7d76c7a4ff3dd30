"""Step-scheduled scalars (loss weights, margins, render resolutions).

Every schedule is a pure function of ``(step, total_steps)`` so that a resumed run sees exactly the values an
uninterrupted run would have seen. ``step`` is the 0-based index of the current optimisation step; the training
progress follows DreamGaussian: ``r = min(1, (step + 1) / total_steps)`` (DG counts steps from 1 and uses
``s / iters``). Schedules are written in terms of ``r`` so a config keeps its meaning when the step count changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cg_lightning.errors import ConfigError


def step_ratio(step: int, total_steps: int) -> float:
    """DreamGaussian's training progress ``r`` in (0, 1] for the 0-based ``step``."""
    if total_steps <= 0:
        raise ConfigError(f"total_steps must be positive, got {total_steps}")
    return min(1.0, (step + 1) / total_steps)


@runtime_checkable
class Schedule(Protocol):
    """A scalar that depends on the training progress."""

    def __call__(self, step: int, total_steps: int) -> float: ...


def _check_window(begin: float, finish: float) -> None:
    if not 0.0 <= begin < finish:
        raise ConfigError(f"schedule window must satisfy 0 <= begin < finish, got begin={begin}, finish={finish}")


def _window_fraction(r: float, begin: float, finish: float) -> float:
    return min(1.0, max(0.0, (r - begin) / (finish - begin)))


class Constant:
    """Always ``value``."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def __call__(self, step: int, total_steps: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class LinearRamp:
    """``start`` until ``r = begin``, linear to ``end`` at ``r = finish``, then ``end``.

    With the defaults (begin 0, finish 1, start 0) this is DreamGaussian's ``end * r`` warm-up of the reference
    losses.
    """

    def __init__(self, start: float = 0.0, end: float = 1.0, begin: float = 0.0, finish: float = 1.0) -> None:
        _check_window(begin, finish)
        self.start, self.end, self.begin, self.finish = float(start), float(end), float(begin), float(finish)

    def __call__(self, step: int, total_steps: int) -> float:
        t = _window_fraction(step_ratio(step, total_steps), self.begin, self.finish)
        return self.start + (self.end - self.start) * t

    def __repr__(self) -> str:
        return f"LinearRamp({self.start} -> {self.end}, r in [{self.begin}, {self.finish}])"


class LogLinear:
    """Geometric interpolation from ``start`` to ``end`` (both > 0) over ``r`` in [begin, finish]."""

    def __init__(self, start: float, end: float, begin: float = 0.0, finish: float = 1.0) -> None:
        _check_window(begin, finish)
        if start <= 0 or end <= 0:
            raise ConfigError(f"LogLinear needs positive endpoints, got {start} and {end}")
        self.start, self.end, self.begin, self.finish = float(start), float(end), float(begin), float(finish)

    def __call__(self, step: int, total_steps: int) -> float:
        t = _window_fraction(step_ratio(step, total_steps), self.begin, self.finish)
        return math.exp((1.0 - t) * math.log(self.start) + t * math.log(self.end))

    def __repr__(self) -> str:
        return f"LogLinear({self.start} -> {self.end}, r in [{self.begin}, {self.finish}])"


class Piecewise:
    """``values[i]`` while ``r < boundaries[i]``; the last value after the last boundary.

    DreamGaussian's render resolution is ``Piecewise([128, 256, 512], [0.3, 0.6])``; ContrastiveGaussian's is
    ``Piecewise([512, 1024], [0.4])``.
    """

    def __init__(self, values: Sequence[float], boundaries: Sequence[float]) -> None:
        values, boundaries = [float(v) for v in values], [float(b) for b in boundaries]
        if len(values) != len(boundaries) + 1:
            raise ConfigError(f"Piecewise needs len(values) == len(boundaries) + 1, got {len(values)} values "
                              f"and {len(boundaries)} boundaries")
        if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:], strict=False)):
            raise ConfigError(f"Piecewise boundaries must be strictly increasing, got {boundaries}")
        self.values, self.boundaries = values, boundaries

    def __call__(self, step: int, total_steps: int) -> float:
        r = step_ratio(step, total_steps)
        for value, boundary in zip(self.values, self.boundaries, strict=False):
            if r < boundary:
                return value
        return self.values[-1]

    def __repr__(self) -> str:
        return f"Piecewise({self.values}, boundaries={self.boundaries})"


def as_schedule(value: float | int | Schedule) -> Schedule:
    """Accept a plain number (constant) or a schedule object, as a Hydra config may give either."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a number or a schedule, got the boolean {value}")
    if isinstance(value, int | float):
        return Constant(value)
    if callable(value):
        return value
    raise ConfigError(f"expected a number or a schedule, got {value!r}")
