"""Errors a user can act on.

Every failure that is the user's to fix (a bad image, missing weights, a wrong config value) is raised as a
subclass of :class:`CGError`. ``launch.py`` prints these as one readable message instead of a stack trace.
"""

from __future__ import annotations


class CGError(Exception):
    """Base class of all user-facing errors of cg_lightning."""


class InputImageError(CGError):
    """The input image is missing, unreadable or unusable (e.g. empty mask after background removal)."""


class ConfigError(CGError):
    """A configuration value is invalid (names the offending key)."""


class MissingWeightsError(CGError):
    """Model weights are not available locally and cannot be downloaded.

    The message always says *what* is missing, *where* we looked, and *how* to get it.
    """

    def __init__(self, what: str, looked_in: str | list[str], how_to_get: str) -> None:
        places = [looked_in] if isinstance(looked_in, str) else list(looked_in)
        self.what, self.looked_in, self.how_to_get = what, places, how_to_get
        lines = [f"Missing weights: {what}", "Looked in:"] + [f"  - {p}" for p in places]
        lines += [f"How to get them: {how_to_get}"]
        super().__init__("\n".join(lines))


class WrongWeightsError(CGError):
    """A weight file exists but does not fit the expected architecture."""


class NonFiniteError(CGError):
    """A loss or a parameter became NaN/inf and training cannot continue safely."""


class OutputError(CGError):
    """The output directory cannot be written (read-only, disk full, ...)."""


class PreflightError(CGError):
    """Weights or backends the composed config needs are missing; ``missing`` lists every one of them."""

    def __init__(self, message: str, missing: list) -> None:
        self.missing = list(missing)
        super().__init__(message)
