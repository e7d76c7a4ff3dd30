"""One process per job directory: an exclusive lock held for the whole job.

Two identical commands started at once (a double submit, a sweep relaunched while the first still runs) would
otherwise both train in the same directory, resume from each other's checkpoints and interleave their logs.

The lock is an OS file lock (``flock``) on ``<job>/.lock``: the kernel releases it when the process ends, however
it ends (also ``kill -9``), so it cannot go stale. The file holds the holder's pid, host and start time for the
message the second process prints. Where ``flock`` is not supported (some network file systems), an exclusively
created ``.lock.pid`` file is used instead; it is stale, and taken over, when its pid no longer runs on this host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cg_lightning.errors import CGError

LOCK_FILE = ".lock"
FALLBACK_LOCK_FILE = ".lock.pid"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}


class JobLockedError(CGError):
    """Another process runs this job right now."""


def _holder_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _describe(raw: str, job_dir: Path) -> str:
    try:
        info = json.loads(raw)
        who = f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (ValueError, KeyError, TypeError):
        who = "another process"
    return (f"{job_dir} is in use by {who}. Wait for it to finish (then re-run to reuse or resume the job), or stop "
            f"it first; two processes must never write one job.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobLock:
    """``with JobLock(job_dir):`` holds the job; raises :class:`JobLockedError` when another process holds it."""

    def __init__(self, job_dir: str | Path) -> None:
        self.job_dir = Path(job_dir)
        self._fd: int | None = None
        self._fallback: Path | None = None

    def acquire(self) -> None:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        path = self.job_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raw = os.pread(fd, 4096, 0).decode(errors="replace")
                os.close(fd)
                raise JobLockedError(_describe(raw, self.job_dir)) from None
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                self._acquire_fallback()
                return
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text().encode(), 0)
        self._fd = fd

    def _acquire_fallback(self) -> None:
        path = self.job_dir / FALLBACK_LOCK_FILE
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raw = path.read_text(errors="replace") if path.exists() else ""
                if self._stale(raw):
                    path.unlink(missing_ok=True)
                    continue
                raise JobLockedError(_describe(raw, self.job_dir)) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(_holder_text())
            self._fallback = path
            return
        raise JobLockedError(_describe(path.read_text(errors="replace"), self.job_dir))

    @staticmethod
    def _stale(raw: str) -> bool:
        try:
            info = json.loads(raw)
            return info["host"] == socket.gethostname() and not _pid_alive(int(info["pid"]))
        except (ValueError, KeyError, TypeError):
            return False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._fallback is not None:
            self._fallback.unlink(missing_ok=True)
            self._fallback = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def job_lock(job_dir: str | Path) -> Iterator[JobLock]:
    with JobLock(job_dir) as lock:
        yield lock
