"""A real 2-process DDP fit on the CPU (gloo), launched the way a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from desertmind.training.checkpoints import read_checkpoint
from desertmind.training.module import SegmentationModule


def test_ddp_fit_on_two_cpu_processes(synth_root: Path, tmp_path: Path, phase_args, part_keys):
    """The head-only phase under DDP: completes, logs once, and the backbone does not move."""
    start = tmp_path / "start.ckpt"
    state = SegmentationModule(weights="none").state_dict()
    torch.save({"state_dict": state}, start)
    logs = tmp_path / "logs"
    exe = Path(sys.executable).with_name("desertmind")
    cmd = [str(exe), "fit", *phase_args("phase2_1_head", synth_root, logs),
           "--model.init_from", str(start), "--trainer.strategy", "ddp",
           "--trainer.devices", "2", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    versions = sorted((logs / "phase2_1_head").glob("version_*"))
    assert len(versions) == 1  # rank 0 alone writes logs
    events = EventAccumulator(str(versions[0]))
    events.Reload()
    values = [e.value for e in events.Scalars("val/mIoU")]
    assert len(values) == 1 and 0.0 <= values[0] <= 1.0
    best = read_checkpoint(logs / "phase2_1_head" / "checkpoints" / "best.ckpt")["state_dict"]
    keys = part_keys()
    assert keys["encoder"] and all(torch.equal(state[k], best[k]) for k in keys["encoder"])
    assert any(not torch.equal(state[k], best[k]) for k in keys["head"])
