"""Atomic saves: a failure anywhere in save_pretrained leaves the previous checkpoint intact,
readable and bit-identical (or, for a new directory, nothing at all); a killed process is
detected on load and recoverable; under torch.distributed only rank 0 writes."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import CONFIG, WEIGHTS, file_bytes, save_tiny, staging_leftovers
from conftest import MODELS, model_outputs

import hf_rpg.api.checkpoint
import hf_rpg.format.atomic
from hf_rpg import RPGCheckpointError, RPGConfig, RPGModel, apply_rpg
from hf_rpg.format.atomic import BACKUP_DIR

BATCH = MODELS["bert_mlm"].batch(5)


class Injected(RuntimeError):
    """The failure a test injects."""


@pytest.fixture
def previous(tmp_path):
    """A directory holding a checkpoint plus a user's own files, and a newer model to save over it."""
    path = tmp_path / "ckpt"
    old = save_tiny(path)
    (path / "optimizer.pt").write_bytes(b"the trainer's optimizer state")
    new = save_tiny(tmp_path / "unused", seed=11)
    with torch.no_grad():
        new.rpg_rings["default"].mul_(2)
    return path, file_bytes(path), model_outputs(old, BATCH), new


def _assert_intact(path: Path, before: dict[str, bytes], outputs: torch.Tensor) -> None:
    assert file_bytes(path) == before
    assert torch.equal(model_outputs(RPGModel.from_pretrained(path), BATCH), outputs)
    assert not staging_leftovers(path.parent)


def _fail_on_call(monkeypatch, owner, name: str, call: int, error: BaseException) -> list[int]:
    """Make ``owner.name`` raise ``error`` on its ``call``-th call (1-based), not on the others."""
    real = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


WRITE_PHASE_FAILURES = [
    (hf_rpg.api.checkpoint, "save_file"),  # the weights file
    (hf_rpg.api.checkpoint, "_sha256"),
    (hf_rpg.api.checkpoint, "_write_model_config"),  # config.json
    (hf_rpg.api.checkpoint, "model_card_text"),  # README.md
    (hf_rpg.api.checkpoint, "format_metadata"),  # rpg_config.json
    (hf_rpg.format.atomic, "fsync_file"),
]


@pytest.mark.parametrize(("owner", "name"), WRITE_PHASE_FAILURES, ids=[n for _, n in WRITE_PHASE_FAILURES])
def test_a_failure_while_writing_leaves_the_previous_checkpoint(monkeypatch, previous, owner, name):
    path, before, outputs, new = previous
    _fail_on_call(monkeypatch, owner, name, 1, Injected("disk on fire"))
    with pytest.raises(Injected):
        new.save_pretrained(path)
    monkeypatch.undo()
    _assert_intact(path, before, outputs)


@pytest.mark.parametrize("call", [1, 2, 3, 4])
def test_a_failure_while_moving_files_into_place_is_rolled_back(monkeypatch, previous, call):
    """The four files are moved with os.replace; the n-th move fails: all are put back."""
    path, before, outputs, new = previous
    _fail_on_call(monkeypatch, os, "replace", call, OSError(28, "No space left on device"))
    with pytest.raises(RPGCheckpointError, match=r"could not save into .*No space left.*previous checkpoint there is"):
        new.save_pretrained(path)
    monkeypatch.undo()
    _assert_intact(path, before, outputs)


def test_ctrl_c_while_moving_files_is_rolled_back_and_propagates(monkeypatch, previous):
    path, before, outputs, new = previous
    _fail_on_call(monkeypatch, os, "replace", 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(path)
    monkeypatch.undo()
    _assert_intact(path, before, outputs)


def test_a_successful_save_replaces_all_files_and_keeps_the_users(previous):
    path, before, _, new = previous
    new.save_pretrained(path)
    after = file_bytes(path)
    assert after["optimizer.pt"] == before["optimizer.pt"]
    assert all(after[name] != before[name] for name in (CONFIG, WEIGHTS))
    assert torch.equal(model_outputs(RPGModel.from_pretrained(path), BATCH), model_outputs(new, BATCH))
    assert not staging_leftovers(path.parent)


def test_without_hard_links_the_backup_is_a_copy(monkeypatch, previous):
    path, before, outputs, new = previous
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(1, "no hard links here")))
    _fail_on_call(monkeypatch, os, "replace", 4, OSError(5, "I/O error"))
    with pytest.raises(RPGCheckpointError, match="previous checkpoint there is unchanged"):
        new.save_pretrained(path)
    monkeypatch.undo()
    _assert_intact(path, before, outputs)


def test_when_the_rollback_fails_too_the_previous_files_are_kept_and_named(monkeypatch, previous):
    path, before, outputs, new = previous
    real = os.replace
    calls = []

    def replace_once(*args):
        calls.append(args)
        if len(calls) > 1:  # the first move succeeds, every later one (moves and restores) fails
            raise OSError(30, "Read-only file system")
        return real(*args)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(RPGCheckpointError, match="restoring the previous files failed too") as info:
        new.save_pretrained(path)
    monkeypatch.undo()
    (staging,) = staging_leftovers(path.parent)
    assert str(staging / BACKUP_DIR) in str(info.value)
    with pytest.raises(RPGCheckpointError, match=r"does not match|records"):  # the mix never loads
        RPGModel.from_pretrained(path)
    for file in (staging / BACKUP_DIR).iterdir():  # the recovery the message describes
        os.replace(file, path / file.name)
    shutil.rmtree(staging)
    _assert_intact(path, before, outputs)


@pytest.mark.parametrize(("owner", "name"), [(hf_rpg.api.checkpoint, "save_file"), (os, "rename")])
def test_a_failed_first_save_leaves_no_directory(monkeypatch, tmp_path, owner, name):
    model = apply_rpg(MODELS["bert_mlm"].build(), RPGConfig(dof=0.1))
    _fail_on_call(monkeypatch, owner, name, 1, OSError(28, "No space left on device"))
    with pytest.raises(RPGCheckpointError, match="nothing was written there"):
        model.save_pretrained(tmp_path / "new" / "ckpt")
    assert (tmp_path / "new").is_dir()
    assert list((tmp_path / "new").iterdir()) == []


def test_a_new_directory_appears_complete_with_the_usual_permissions(tmp_path):
    save_tiny(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["README.md", "config.json", CONFIG, WEIGHTS]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0o700
    assert not staging_leftovers(tmp_path)


def test_saving_through_a_symlinked_directory(tmp_path):
    real = tmp_path / "disk" / "ckpt"
    model = save_tiny(real)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    model.save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert not staging_leftovers(tmp_path) and not staging_leftovers(real.parent)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a saving process mid-way")
def test_a_process_killed_while_moving_files_is_detected_and_recoverable(previous, tmp_path):
    """The one case the rollback cannot handle: the process dies between two moves."""
    path, before, outputs, new = previous
    pid = os.fork()
    if pid == 0:  # the child dies right after moving the new weights file into place
        try:
            real = os.replace

            def replace_then_die(*args):
                real(*args)
                os._exit(0)

            os.replace = replace_then_die
            new.save_pretrained(path)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert file_bytes(path)[WEIGHTS] != before[WEIGHTS] and file_bytes(path)[CONFIG] == before[CONFIG]
    (staging,) = staging_leftovers(path.parent)
    with pytest.raises(RPGCheckpointError, match=rf"interrupted and left '{re.escape(str(staging))}'") as info:
        RPGModel.from_pretrained(path)
    assert "SHA-256" in str(info.value) or "records" in str(info.value)

    # Either way out works: the previous files back, or the new ones forward.
    forward = tmp_path / "forward"
    shutil.copytree(path, forward)
    for file in staging.iterdir():
        if file.is_file():
            shutil.copy2(file, forward / file.name)
    assert torch.equal(model_outputs(RPGModel.from_pretrained(forward), BATCH), model_outputs(new, BATCH))
    for file in (staging / BACKUP_DIR).iterdir():
        os.replace(file, path / file.name)
    shutil.rmtree(staging)
    _assert_intact(path, before, outputs)


# ------------------------------------------------------------------------------- distributed


def test_only_rank_zero_writes_by_default(monkeypatch, tmp_path):
    model = apply_rpg(MODELS["bert_mlm"].build(), RPGConfig(dof=0.1))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    model.save_pretrained(tmp_path / "rank1")
    assert not (tmp_path / "rank1").exists()
    model.save_pretrained(tmp_path / "forced", is_main_process=True)  # an explicit choice wins
    assert (tmp_path / "forced" / CONFIG).exists()
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    model.save_pretrained(tmp_path / "rank0")
    assert (tmp_path / "rank0" / CONFIG).exists()


def _save_as_rank(rank: int, out: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same model on both ranks, as after a broadcast
        model = apply_rpg(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)), RPGConfig(dof=0.5))
        model.save_pretrained(out / f"saved_by_rank{rank}")
        model.save_pretrained(out / "shared")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(
    not (hasattr(os, "fork") and torch.distributed.is_available()), reason="needs os.fork and torch.distributed"
)
def test_two_process_gloo_group_writes_once(tmp_path):
    """A real process group of two ranks (forked: no second import of torch), default arguments."""
    pids = []
    for rank in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _save_as_rank(rank, tmp_path)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids] == [0, 0]
    assert (tmp_path / "saved_by_rank0" / CONFIG).exists()
    assert not (tmp_path / "saved_by_rank1").exists()
    assert sorted(os.listdir(tmp_path / "shared")) == ["README.md", CONFIG, WEIGHTS]
    assert not staging_leftovers(tmp_path)
