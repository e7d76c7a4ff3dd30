"""Atomic file writes: a reader never sees a half-written output, even if the process is killed.

Write to a temporary file in the destination directory, fsync, then ``os.replace`` (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cg_lightning.errors import OutputError


def _default_mode() -> int:
    """Permissions a plain ``open()`` would give (mkstemp's 0600 would hide outputs from collaborators)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _raise_output_error(path: Path, exc: OSError) -> None:
    if exc.errno == errno.ENOSPC:
        raise OutputError(f"Disk full while writing {path}. Free space or set paths.output_root elsewhere.") from exc
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        raise OutputError(f"Cannot write {path}: the directory is read-only ({exc.strerror}).") from exc
    raise exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Use it with libraries that only accept a file name (trimesh, imageio, torch.save). ``suffix`` defaults to the
    destination's suffix so that format sniffing by extension keeps working.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix if suffix is not None else dest.suffix,
                                        dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        _raise_output_error(dest, exc)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _raise_output_error(dest, exc)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """``open()`` replacement whose result appears at ``path`` only when the block finishes without error."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as fh:
            yield fh


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
