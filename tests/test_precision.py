"""The GPU paths' dtype logic, run on the CPU: every precision through the whole phase chain
with channels_last, and the one combination that cannot train refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from desertmind.cli.main import main
from desertmind.models.trained import read_checkpoint

PHASES = ("phase1", "phase2_1_head", "phase2_2_backbone", "phase3")


# 16-mixed is not here: Lightning runs it as bf16-mixed on a CPU (its GradScaler needs CUDA)
@pytest.mark.parametrize(("precision", "dtype", "extra"), [
    ("bf16-mixed", torch.float32, []),
    pytest.param("bf16-true", torch.bfloat16, [], marks=pytest.mark.slow),
    pytest.param("16-true", torch.float16, ["--model.optimizer.init_args.eps", "1e-4"],
                 marks=pytest.mark.slow),
])
def test_the_phase_chain_trains_under_each_precision(synth_root: Path, tmp_path: Path,
                                                     phase_args, precision: str,
                                                     dtype: torch.dtype, extra: list[str]):
    # phase 3 adds weighted CE + Dice, phase 2.x load the previous phase's weights
    previous = None
    for phase in PHASES:
        args = ["fit", *phase_args(phase, synth_root, tmp_path), "--trainer.precision",
                precision, "--speed.channels_last", "true", *extra]
        if previous:
            args += ["--model.init_from", str(previous)]
        assert main(args) == 0, phase
        saved = yaml.safe_load((tmp_path / phase / "version_0" / "config.yaml").read_text())
        assert saved["trainer"]["precision"] == precision
        previous = tmp_path / phase / "checkpoints" / "best.ckpt"
        weights = read_checkpoint(previous)["state_dict"]
        floats = [v for v in weights.values() if v.is_floating_point()]
        assert all(torch.isfinite(v).all() for v in floats)
        # true precisions keep the weights in their dtype; mixed ones keep float32 weights
        assert {v.dtype for v in floats} == {dtype}
