"""EMA weights (the ``ema`` group: Lightning's EMAWeightAveraging): validation scores the
average, ``best.ckpt`` holds it and everything that reads a checkpoint uses it, a resume
restores it, and without the switch nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from desertmind.cli.main import main
from desertmind.models.trained import best_score, read_checkpoint
from tests.stand_in import TINY

EMA = ["--ema", "EMAWeightAveraging", "--ema.decay", "0.5"]


def _args(phase_args, root: Path, logs: Path, epochs: int = 2) -> list[str]:
    """Deterministic, 4 steps an epoch, one validation each, a step checkpoint every 3 steps."""
    return ["fit", *phase_args("phase1", root, logs), "--trainer.max_epochs", str(epochs),
            "--trainer.limit_train_batches", "1.0", "--trainer.deterministic", "true",
            "--trainer.enable_progress_bar", "false", "--early_stopping.patience", "5",
            "--last_checkpoint.every_n_train_steps", "3"]


def _model(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("model.")}


def test_validation_and_best_ckpt_are_the_average(synth_root: Path, tmp_path: Path, phase_args):
    logs = tmp_path / "logs"
    assert main([*_args(phase_args, synth_root, logs), *EMA]) == 0
    best = logs / "phase1" / "checkpoints" / "best.ckpt"
    ckpt = read_checkpoint(best)
    average, current = _model(ckpt["state_dict"]), _model(ckpt["current_model_state"])
    assert average.keys() == current.keys()
    assert any(not torch.equal(average[k], current[k]) for k in average)  # a real average
    # the score that chose best.ckpt is the score of the weights it holds: validate them
    out = tmp_path / "val"
    assert main(["validate", "--ckpt_path", str(best), "--out", str(out),
                 "--trainer.limit_val_batches", "2", "--trainer.accelerator", "cpu",
                 "--trainer.enable_progress_bar", "false"]) == 0
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["val/mIoU"] == pytest.approx(best_score(best)[1], abs=1e-6)
    # a next phase starts from the average too (init_from reads state_dict)
    from desertmind.training.checkpoints import load_weights
    from desertmind.training.module import SegmentationModule

    following = SegmentationModule(TINY)
    load_weights(following.model, best)
    assert all(torch.equal(following.model.state_dict()[k[len("model."):]], v)
               for k, v in average.items())


@pytest.mark.slow
def test_a_resume_restores_the_average(synth_root: Path, tmp_path: Path, phase_args):
    ref = tmp_path / "ref"
    assert main([*_args(phase_args, synth_root, ref), *EMA]) == 0
    logs = tmp_path / "resumed"
    assert main([*_args(phase_args, synth_root, logs, epochs=1), *EMA]) == 0
    assert main([*_args(phase_args, synth_root, logs), *EMA, "--ckpt_path", "last"]) == 0
    for name in ("best.ckpt", "last.ckpt"):
        want = read_checkpoint(ref / "phase1" / "checkpoints" / name)
        got = read_checkpoint(logs / "phase1" / "checkpoints" / name)
        assert got["global_step"] == want["global_step"] == 8
        for key in ("state_dict", "current_model_state"):
            assert all(torch.equal(got[key][k], want[key][k]) for k in _model(want[key])), (
                f"{name} {key} after a resume")


def test_without_the_switch_there_is_no_average(synth_root: Path, tmp_path: Path, phase_args,
                                                capsys):
    with pytest.raises(SystemExit):
        main([*_args(phase_args, synth_root, tmp_path), "--print_config"])
    assert "ema: null" in capsys.readouterr().out
    assert main([*_args(phase_args, synth_root, tmp_path, epochs=1)]) == 0
    ckpt = read_checkpoint(tmp_path / "phase1" / "checkpoints" / "best.ckpt")
    assert "current_model_state" not in ckpt and "averaging_state" not in ckpt
