"""A real 2-process DDP fit on the CPU (gloo), launched the way a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from desertmind.cli.main import main
from desertmind.models.trained import read_checkpoint
from desertmind.runs import VAL_IMAGES_FILE
from desertmind.training.module import SegmentationModule


@pytest.mark.slow
def test_ddp_fit_on_two_cpu_processes(data_copy: Path, tmp_path: Path, phase_args, part_keys,
                                      capsys):
    """The head-only phase under DDP: completes, logs once, the backbone does not move, and its
    validation scores every image exactly once, as a single process scores the same weights."""
    # 3 validation images on 2 processes: a padding sampler would score one image twice
    for sub in ("Color_Images", "Segmentation"):
        sorted((data_copy / "val" / sub).iterdir())[-1].unlink()
    start = tmp_path / "start.ckpt"
    state = SegmentationModule().state_dict()  # DDP's processes build the real network
    torch.save({"state_dict": state}, start)
    logs = tmp_path / "logs"
    exe = Path(sys.executable).with_name("desertmind")
    cmd = [str(exe), "fit", *phase_args("phase2_1_head", data_copy, logs, arch="deeplabv3"),
           "--model.init_from", str(start), "--trainer.strategy", "ddp",
           "--trainer.devices", "2", "--trainer.enable_progress_bar", "false",
           "--data.eval_batch_size", "1", "--trainer.limit_val_batches", "1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    versions = sorted((logs / "phase2_1_head").glob("version_*"))
    assert len(versions) == 1  # rank 0 alone writes logs
    events = EventAccumulator(str(versions[0]))
    events.Reload()
    values = [e.value for e in events.Scalars("val/mIoU")]
    assert len(values) == 1 and 0.0 <= values[0] <= 1.0
    prov = json.loads((versions[0] / "provenance.json").read_text())
    assert prov["device"]["world_size"] == 2
    with np.load(versions[0] / VAL_IMAGES_FILE) as kept:  # gathered from both ranks
        assert sorted(kept["names"]) == sorted(
            p.stem for p in (data_copy / "val" / "Color_Images").iterdir())
    best_ckpt = logs / "phase2_1_head" / "checkpoints" / "best.ckpt"
    best = read_checkpoint(best_ckpt)["state_dict"]
    keys = part_keys("deeplabv3")
    assert keys["encoder"] and all(torch.equal(state[k], best[k]) for k in keys["encoder"])
    assert any(not torch.equal(state[k], best[k]) for k in keys["head"])
    # the same weights validated by one process give the same score
    out = tmp_path / "single"
    assert main(["validate", "--ckpt_path", str(best_ckpt), "--data.root", str(data_copy),
                 "--data.eval_batch_size", "1", "--trainer.accelerator", "cpu",
                 "--trainer.enable_progress_bar", "false", "--out", str(out),
                 "--trainer.logger", "false", "--trainer.default_root_dir", str(out)]) == 0
    single = json.loads((out / "metrics.json").read_text())["val/mIoU"]
    assert single == pytest.approx(values[0], abs=1e-6)


@pytest.mark.slow
def test_test_time_adaptation_under_ddp_adapts_every_process_to_all_the_images(
        phase1_run, synth_root: Path, tmp_path: Path):
    """AdaBN and EM class priors in a 2-process test: every process adapts to the whole split
    (statistics gathered from both), so the score is the single process's: exactly for AdaBN
    with one image a batch (the same batches either way), closely for EM (each process samples
    its own pixels)."""
    ckpt, _, _ = phase1_run
    exe = Path(sys.executable).with_name("desertmind")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    results = {}
    for adapt in (["--model.evaluation.adapt_bn", "true"],
                  ["--model.evaluation.adapt_bn", "true", "--model.evaluation.class_priors",
                   "em"]):
        key = len(adapt)
        for devices, strategy in ((2, "ddp"), (1, "auto")):
            out = tmp_path / f"{key}-{devices}"
            # a class of tests.stand_in imports it: its network is registered in every process
            pause = {"class_path": "tests.stand_in.Pause", "init_args": {"seconds": 0.0}}
            done = subprocess.run(
                [str(exe), "test", f"--trainer.callbacks+={json.dumps(pause)}",
                 "--ckpt_path", str(ckpt), "--data.root",
                 str(synth_root), "--data.test_dir", "val", "--data.eval_batch_size", "1",
                 "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
                 "--trainer.strategy", strategy, "--trainer.enable_progress_bar", "false",
                 "--out", str(out), *adapt], capture_output=True, text=True, timeout=300,
                env=env, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
            results[key, devices] = json.loads((out / "metrics.json").read_text())
    bn_ddp, bn_one = results[2, 2], results[2, 1]
    assert bn_ddp["test/mIoU"] == pytest.approx(bn_one["test/mIoU"], abs=1e-6)
    assert bn_ddp["adaptation"]["images"] == bn_one["adaptation"]["images"] == 4
    em_ddp, em_one = results[4, 2], results[4, 1]
    for name, value in em_one["adaptation"]["class_priors"].items():
        assert em_ddp["adaptation"]["class_priors"][name] == pytest.approx(value, abs=0.05)
