"""Crash and resume, atomic checkpoints, NaN stops, determinism, provenance (DDP parity is in
test_ddp.py)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from desertmind.cli.main import main
from desertmind.data.datamodule import OffroadDataModule
from desertmind.errors import CheckpointError, NonFiniteLossError, NonFiniteStateError
from desertmind.models.trained import read_checkpoint
from desertmind.reports.report import load_report, markdown
from desertmind.training.checkpoints import AtomicCheckpointIO, LastCheckpoint, PhaseCheckpoint
from desertmind.training.module import SegmentationModule
from tests.stand_in import SUBPROCESS_ENV, TINY, kill_at

EXE = str(Path(sys.executable).with_name("desertmind"))
POLY = '{"class_path": "desertmind.training.schedulers.PolyLR", "init_args": {"power": 1.0}}'


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return {e.step: e.value for e in ea.Scalars(tag)} if tag in ea.Tags()["scalars"] else {}


def _resume_args(phase_args, root: Path, logs: Path) -> list[str]:
    """The real network: the killed run is its own process, the resume this one."""
    return [EXE, "fit", *phase_args("phase1", root, logs, arch=None),
            "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "1.0",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--last_checkpoint.every_n_train_steps", "3", "--model.scheduler", POLY]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_last(synth_root: Path, tmp_path: Path, phase_args):
    """A real kill -9 while training; that the resumed run then equals an uninterrupted one is
    test_a_resumed_run_ends_exactly_as_an_uninterrupted_one."""
    logs = tmp_path / "killed"
    last = logs / "phase1" / "checkpoints" / "last.ckpt"
    # 4 steps an epoch, last.ckpt every 3 steps and after each validation: kill -9 just
    # before step 7, in the middle of the second epoch, when last.ckpt is step 6's
    proc = subprocess.run([*_resume_args(phase_args, synth_root, logs), *kill_at(at_step=7)],
                          env=SUBPROCESS_ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed_at = read_checkpoint(last)["global_step"]  # still loadable after the kill
    assert killed_at == 6

    assert main([*_resume_args(phase_args, synth_root, logs)[1:], "--ckpt_path", "last"]) == 0
    # the uninterrupted run's length: 4 epochs x 4 steps, one validation per epoch
    assert read_checkpoint(last)["global_step"] == 16
    val = {**_scalars(logs / "phase1" / "version_0", "val/mIoU"),
           **_scalars(logs / "phase1" / "version_1", "val/mIoU")}
    assert len(val) == 4
    # the scheduler's state came back: after the resume the LR goes on down the same line
    resumed_lr = _scalars(logs / "phase1" / "version_1", "lr-AdamW/head")
    assert resumed_lr and min(resumed_lr) >= killed_at
    assert all(lr == pytest.approx(1e-3 * (1 - step / 16)) for step, lr in resumed_lr.items())


class CrashAt(L.Callback):
    """A crash just before the batch of global step ``step``: the run dies with what it has
    saved so far (``last.ckpt`` of that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def _decisions(checkpoint: dict) -> dict:
    """Early stopping's state and the best checkpoint's score, from a checkpoint."""
    calls = checkpoint["callbacks"]
    stop = next(v for k, v in calls.items() if k.startswith("EarlyStopping"))
    best = next(v for k, v in calls.items()
                if "'monitor': 'val/mIoU'" in k and "best_model_score" in v)
    return {**{k: str(v) for k, v in stop.items()}, "best": str(best["best_model_score"])}


def _exact_args(phase_args, root: Path, logs: Path) -> list[str]:
    """2 epochs x 4 batches, deterministic, augmented, 2 persistent workers, dropout in the
    head, a step checkpoint every 3 steps, early stopping with patience 1."""
    return ["fit", *phase_args("phase1", root, logs), "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "1.0", "--trainer.deterministic", "true",
            "--data.train_preset", "flip_color", "--data.num_workers", "2",
            "--trainer.enable_progress_bar", "false", "--early_stopping.patience", "1",
            "--last_checkpoint.every_n_train_steps", "3"]


@pytest.mark.slow
def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(synth_root: Path, tmp_path: Path,
                                                            phase_args):
    ref = tmp_path / "ref"
    assert main(_exact_args(phase_args, synth_root, ref)) == 0
    # step 3: a step-interval save in the middle of epoch 0; step 4: after epoch 0's validation
    for step in (3, 4):
        logs = tmp_path / f"crashed-{step}"
        crash = json.dumps({"class_path": f"{__name__}.CrashAt", "init_args": {"step": step}})
        with pytest.raises(RuntimeError, match=f"crash at step {step}"):
            main([*_exact_args(phase_args, synth_root, logs), "--trainer.callbacks+", crash])
        ckpts = logs / "phase1" / "checkpoints"
        assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == step
        # resumed where it crashed, in its own folder, as a user would
        assert main([*_exact_args(phase_args, synth_root, logs), "--ckpt_path", "last"]) == 0
        for name in ("best.ckpt", "last.ckpt"):
            want = read_checkpoint(ref / "phase1" / "checkpoints" / name)
            got = read_checkpoint(ckpts / name)
            assert (got["epoch"], got["global_step"]) == (want["epoch"], want["global_step"])
            assert all(torch.equal(got["state_dict"][k], want["state_dict"][k])
                       for k in want["state_dict"]), f"{name} after a resume at step {step}"
            # the same early-stopping decision and best score
            assert _decisions(got) == _decisions(want)


def test_atomic_checkpoint_survives_a_failed_write(tmp_path: Path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(10**6)}, "x": Boom()}, path)
    assert read_checkpoint(path)["epoch"] == 1  # the old file is whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left


def test_a_full_disk_while_checkpointing_is_named_and_keeps_the_old_file(tmp_path: Path,
                                                                          monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint .* MiB free"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class _PoisonAt(L.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            with torch.no_grad():
                next(pl_module.model.head_parameters()).fill_(float("nan"))


def test_nan_loss_stops_naming_the_step_and_keeps_checkpoints(synth_root: Path, tmp_path: Path):
    ckpt_dir = tmp_path / "ckpt"
    checkpoint = PhaseCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/mIoU",
                                 mode="max", save_last=True)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        callbacks=[checkpoint, _PoisonAt(1, 1)],
                        plugins=[AtomicCheckpointIO()], accelerator="cpu")
    module = SegmentationModule(TINY)
    dm = OffroadDataModule(str(synth_root), batch_size=2, num_workers=0, image_size=(32, 48))
    with pytest.raises(NonFiniteLossError, match="NaN or infinite at global step 3 .epoch 1, "
                       "batch 1") as e:
        trainer.fit(module, dm)
    # advice that can be followed: a resume would restore the old learning rate
    assert "--model.init_from" in str(e.value) and "--model.optimizer.init_args.lr" in str(e.value)
    for name in ("best.ckpt", "last.ckpt"):
        state = read_checkpoint(ckpt_dir / name)
        assert state["global_step"] == 2  # the end of epoch 0: nothing after the bad step
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values()
                   if v.is_floating_point())


class _OverflowStatsAt(L.Callback):
    """What a learning rate that blows up does first: a BatchNorm running variance overflows
    while the loss, normalised with the batch's own statistics, is still finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            bn = next(m for m in pl_module.model.modules()
                      if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))


def test_non_finite_batchnorm_statistics_are_never_checkpointed(synth_root: Path,
                                                                tmp_path: Path):
    ckpt_dir = tmp_path / "ckpt"
    best = PhaseCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/mIoU",
                           mode="max")
    last = LastCheckpoint(every_n_train_steps=1)
    last.dirpath = str(ckpt_dir)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        callbacks=[best, last,
                                   _OverflowStatsAt(3)],
                        plugins=[AtomicCheckpointIO()], accelerator="cpu")
    module = SegmentationModule(TINY)
    dm = OffroadDataModule(str(synth_root), batch_size=2, num_workers=0, image_size=(32, 48))
    with pytest.raises(NonFiniteStateError, match=r"global step 3 .epoch 1.*running_var.*"
                       "1 of them BatchNorm running statistics.*before writing a checkpoint"):
        trainer.fit(module, dm)
    saved = read_checkpoint(ckpt_dir / "last.ckpt")
    assert saved["global_step"] == 2  # the step before; nothing was written after the overflow
    for state in (saved, read_checkpoint(ckpt_dir / "best.ckpt")):
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values()
                   if v.is_floating_point())


def test_every_run_records_its_provenance(synth_root: Path, tmp_path: Path, phase_args):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    logs = tmp_path / "logs"
    args = ["fit", *phase_args("phase1", root, logs),
            "--trainer.enable_progress_bar", "false"]
    assert main(args) == 0
    run_dir = logs / "phase1" / "version_0"
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert (run_dir / prov["config"]).is_file()
    for lib in ("torch", "torchvision", "lightning", "desertmind"):
        assert prov["versions"][lib] == version(lib)
    assert set(prov["git"]) == {"commit", "dirty"}
    assert prov["dataset"]["images_per_split"] == {"train": 8, "val": 4}
    # the fingerprint follows the files: change one and it changes
    (runs,), _ = load_report(logs)
    assert prov["dataset"]["sha256"][:12] in markdown([runs], [])
    mask = next((root / "val" / "Segmentation").iterdir())
    mask.write_bytes(mask.read_bytes() + b"\0")
    assert main([*args, "--trainer.max_epochs", "1", "--overwrite"]) == 0
    prov2 = json.loads((logs / "phase1" / "version_1" / "provenance.json").read_text())
    assert prov2["dataset"]["sha256"] != prov["dataset"]["sha256"]
