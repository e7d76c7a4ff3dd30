"""Runtime plumbing: atomic writes, job state, failure isolation, W&B mode/id, atomic checkpoints."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from cg_lightning.errors import InputImageError, OutputError
from cg_lightning.runtime.loggers import wandb_mode, wandb_run_id
from cg_lightning.runtime.state import JobState
from cg_lightning.runtime.task import job_guard
from cg_lightning.runtime.trainer import AtomicCheckpointIO
from cg_lightning.utils.atomic import atomic_open, atomic_path, write_text


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out" / "a.txt"
    write_text(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]  # no temp file left behind


def test_atomic_path_keeps_suffix_for_format_sniffing(tmp_path):
    with atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"data")
    assert (tmp_path / "x.png").read_bytes() == b"data"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputError, match="read-only"):
            write_text(ro / "a.txt", "x")
    finally:
        ro.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("code,message", [("ENOSPC", "Disk full"), ("EROFS", "read-only"), ("EACCES", "read-only")])
def test_write_failures_are_clear_errors(tmp_path, monkeypatch, code, message):
    import errno

    def fail(*_a, **_k):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr("cg_lightning.utils.atomic.os.replace", fail)
    with pytest.raises(OutputError, match=message):
        write_text(tmp_path / "a.txt", "x")
    assert not any(tmp_path.iterdir())  # the temp file is cleaned up


def test_job_state_survives_reload_and_corruption(tmp_path):
    state = JobState(tmp_path)
    state.mark_done("stage1", 12.5)
    again = JobState(tmp_path)
    assert again.is_done("stage1") and not again.is_done("stage2")
    assert again.timings == {"stage1": 12.5}
    (tmp_path / "state.json").write_text("{not json")
    assert not JobState(tmp_path).is_done("stage1")


def test_job_guard_single_run_reraises_and_marks_failed(tmp_path):
    with pytest.raises(InputImageError):
        with job_guard(tmp_path, continue_on_error=False):
            raise InputImageError("corrupt.png is not an image")
    failed = (tmp_path / "FAILED").read_text()
    assert "InputImageError (user error): corrupt.png is not an image" in failed
    assert not (tmp_path / "DONE").exists()


def test_job_guard_in_sweep_records_and_continues(tmp_path):
    with job_guard(tmp_path, continue_on_error=True):
        raise ValueError("boom")
    assert "ValueError (crash): boom" in (tmp_path / "FAILED").read_text()
    # the next attempt in the same directory clears the old marker and succeeds
    with job_guard(tmp_path, continue_on_error=True):
        pass
    assert not (tmp_path / "FAILED").exists() and (tmp_path / "DONE").exists()


def test_wandb_mode_auto(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    assert wandb_mode("offline") == "offline"


def test_wandb_run_id_is_stable_and_distinct(tmp_path):
    a = wandb_run_id(tmp_path / "cat" / "full" / "seed0", tmp_path)
    assert a == wandb_run_id(tmp_path / "cat" / "full" / "seed0", tmp_path)
    assert a != wandb_run_id(tmp_path / "cat" / "full" / "seed1", tmp_path)
    assert len(a) <= 64 and a.replace("-", "").isalnum()


def test_atomic_checkpoint_io_keeps_previous_checkpoint_on_failure(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(2)}, path)

    def crash(*_a, **_k):
        raise RuntimeError("killed during save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_atomic_outputs_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
