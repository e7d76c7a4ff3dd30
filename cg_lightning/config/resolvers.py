"""OmegaConf resolvers used by the config tree (namespaced ``cg.*``), above all the job directory's name.

A job directory is ``<stem>/<experiment>/seed<seed>[/<overrides>]`` below ``paths.output_root``: readable, and never
shared by two jobs that are not the same job (see :mod:`cg_lightning.runtime.identity`):

- the stem keeps non-ASCII letters (``日本.png`` -> ``日本``); other characters become ``_``;
- a stem directory belongs to one input file (its content hash is in ``<stem>/input.json``); another file with the
  same stem (``box.tiff`` after ``box.webp``, ``a/box.png`` after ``b/box.png``, ``a b.png`` after ``a_b.png``) gets
  ``<stem>-<first 8 hex of its sha256>`` instead;
- an override suffix that had to be changed to be a safe directory name, or is too long, ends in ``-<hash>`` of the
  full overrides, so two different override sets never share a directory;
- ``on_mismatch=new``: when the directory holds a job with another identity (config changed), the job runs in
  ``<dir>-<identity hash>`` instead (and finds it again on the next identical run).

The resolver only reads (``input.json``, ``job.json``); the job writes them once it holds the directory's lock.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePath
from typing import Any

from omegaconf import OmegaConf

_UNSAFE = re.compile(r"[^\w.=,+-]+")   # \w is Unicode-aware: letters of any script stay readable
MAX_COMPONENT_BYTES = 120               # well below the 255-byte limit of common file systems
STEM_OWNER_FILE = "input.json"


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _fit(name: str, original: str) -> str:
    """``name`` cut to :data:`MAX_COMPONENT_BYTES` with ``-<hash of original>`` when cut or changed."""
    if name == original and len(name.encode()) <= MAX_COMPONENT_BYTES:
        return name
    suffix = "-" + _short_hash(original)
    room = MAX_COMPONENT_BYTES - len(suffix)
    cut = name.encode()[:room].decode(errors="ignore")
    return cut + suffix


def safe_component(text: str) -> str:
    """A readable, safe single path component (no separators, no leading dots)."""
    cleaned = _UNSAFE.sub("_", str(text)).lstrip(".")
    return cleaned or "_"


def image_stem(path: str) -> str:
    """``/data/cat_rgba.png`` -> ``cat_rgba``: the readable per-image directory name (not yet made unique)."""
    stem = PurePath(str(path)).stem
    cleaned = _UNSAFE.sub("_", stem).lstrip(".")
    if not cleaned:
        return "image"
    return cleaned if len(cleaned.encode()) <= MAX_COMPONENT_BYTES else _fit(cleaned, stem)


def override_subdir(override_dirname: str) -> str:
    """Extra path level for overrides that change results, so sweeps over them never share a directory.

    Hydra's ``override_dirname`` (keys that do not change results excluded in ``conf/hydra/default.yaml``) becomes
    ``/<override_dirname>``, or ``/<sanitised, cut>-<hash>`` when it is not a safe, short directory name as it is;
    no such overrides -> ``""`` (the plain ``<stem>/<experiment>/seed<seed>`` layout).
    """
    if not override_dirname:
        return ""
    return "/" + _fit(safe_component(override_dirname.replace("/", "_")), override_dirname)


def _input_sha256(image: str) -> str | None:
    from cg_lightning.runtime.identity import file_sha256

    try:
        return file_sha256(image)
    except OSError:
        return None   # missing / unreadable: the job reports it clearly


def owned_stem(image: str, output_root: str) -> str:
    """The stem directory of this input: ``<stem>``, or ``<stem>-<sha8>`` when ``<stem>`` holds another file's jobs."""
    stem = image_stem(image)
    sha = _input_sha256(image)
    if sha is None:
        return stem
    try:
        owner = json.loads((Path(output_root) / stem / STEM_OWNER_FILE).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return stem
    return stem if owner in (None, sha) else f"{stem}-{sha[:8]}"


def job_subpath(image: str, experiment: str, seed: Any, override_dirname: str, output_root: str,
                on_mismatch: str = "error", *, _root_: Any = None) -> str:
    """The job directory relative to ``paths.output_root`` (see the module docstring)."""
    rel = f"{owned_stem(image, output_root)}/{safe_component(experiment)}/seed{seed}{override_subdir(override_dirname)}"
    if on_mismatch == "new" and _root_ is not None:
        rel = _fresh_if_mismatch(rel, output_root, _root_)
    return rel


def _fresh_if_mismatch(rel: str, output_root: str, root_cfg: Any) -> str:
    from cg_lightning.runtime.identity import identity_hash, job_identity, read_job_record

    recorded = read_job_record(Path(output_root) / rel)
    if recorded is None:
        return rel
    try:
        mine = identity_hash(job_identity(root_cfg))
    except OSError:
        return rel
    return rel if recorded.get("identity_hash") == mine else f"{rel}-{mine[:8]}"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("cg.stem", image_stem, replace=True)
    OmegaConf.register_new_resolver("cg.subdir", override_subdir, replace=True)
    OmegaConf.register_new_resolver("cg.job", job_subpath, replace=True)
