"""OmegaConf resolvers used by the config tree (namespaced ``cg.*``)."""

from __future__ import annotations

import re
from pathlib import PurePath

from omegaconf import OmegaConf

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def image_stem(path: str) -> str:
    """``/data/cat_rgba.png`` -> ``cat_rgba``: the per-image directory name."""
    stem = PurePath(str(path)).stem
    return _UNSAFE.sub("_", stem) or "image"


def override_subdir(override_dirname: str) -> str:
    """Extra path level for overrides that change results, so sweeps over them never share a directory.

    Hydra's ``override_dirname`` (with path-like keys excluded in ``conf/hydra/default.yaml``) becomes
    ``/<sanitised>``; no such overrides -> ``""`` (the plain ``<stem>/<experiment>/seed<seed>`` layout).
    """
    if not override_dirname:
        return ""
    return "/" + _UNSAFE.sub("_", override_dirname.replace("/", "_"))[:200]


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("cg.stem", image_stem, replace=True)
    OmegaConf.register_new_resolver("cg.subdir", override_subdir, replace=True)
