"""Two "nodes" on this machine with torchrun (rendezvous on 127.0.0.1, gloo, CPU): what a
SLURM or torchrun job across machines does, rehearsed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from desertmind.cli.main import main
from desertmind.models.trained import read_checkpoint
from tests.stand_in import SUBPROCESS_ENV

#: the same tiny phase everywhere: no augmentation, so the order of images is the only
#: randomness, and BatchNorm frozen (its running statistics, not the batch's: SyncBatchNorm,
#: which would make two ranks' batches of 2 one batch of 4, is GPU-only), so two ranks of
#: batch 2 compute what one process computes with a batch of 4; plain SGD, because Adam turns
#: the float noise of a near-zero gradient (summed in another order) into a step of +-lr
SAME = ["--data.train_preset", "none", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "1.0", "--trainer.limit_val_batches", "1.0",
        "--trainer.enable_progress_bar", "false", "--data.cache", "disk",
        "--model.network.freeze_bn", "true", "--model.optimizer", "torch.optim.SGD",
        "--model.optimizer.init_args.lr", "0.05"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    pause = {"class_path": "tests.stand_in.Pause", "init_args": {"seconds": 0.0}}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "desertmind", "fit", *args, "--trainer.num_nodes", "2", "--trainer.devices", "1",
         "--trainer.strategy", "ddp",
         f"--trainer.callbacks+={json.dumps(pause)}"],  # imports the stand-in network
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=SUBPROCESS_ENV,
        cwd=cwd) for rank in (0, 1)]
    return [subprocess.CompletedProcess(n.args, n.wait(timeout=600), n.stdout.read(), "")
            for n in nodes]


@pytest.mark.slow  # two torchrun launchers, four processes
def test_two_nodes_train_as_one_batch_write_once_and_resume(synth_root: Path, tmp_path: Path,
                                                            phase_args):
    logs = tmp_path / "logs"
    args = [*phase_args("phase1", synth_root, logs), *SAME, "--data.batch_size", "2",
            "--data.cache_dir", str(tmp_path / "cache")]
    runs = _two_nodes(args, tmp_path)
    assert [r.returncode for r in runs] == [0, 0], runs[0].stdout[-3000:] + runs[1].stdout[-3000:]
    phase = logs / "phase1"
    assert len(list(phase.glob("version_*"))) == 1  # one run, logged once
    (version,) = phase.glob("version_*")
    assert len(list(version.glob("events.out.tfevents.*"))) == 1
    assert json.loads((version / "provenance.json").read_text())["device"]["world_size"] == 2
    assert sorted(p.name for p in (phase / "checkpoints").glob("*.ckpt")) == ["best.ckpt",
                                                                             "last.ckpt"]
    caches = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(caches) == 2  # train and val, each built once (no leftover temporary folder)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    two = read_checkpoint(phase / "checkpoints" / "last.ckpt")["state_dict"]

    # one process, the same global batch of 4: the same weights within float tolerance
    single = tmp_path / "single"
    assert main(["fit", *phase_args("phase1", synth_root, single), *SAME,
                 "--data.batch_size", "4", "--data.cache_dir", str(tmp_path / "cache")]) == 0
    one_ckpt = read_checkpoint(single / "phase1" / "checkpoints" / "last.ckpt")
    two_ckpt = read_checkpoint(phase / "checkpoints" / "last.ckpt")
    assert one_ckpt["global_step"] == two_ckpt["global_step"]
    assert one_ckpt["OffroadDataModule"] == two_ckpt["OffroadDataModule"]  # one training order
    one = one_ckpt["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key].float(), one[key].float(), atol=1e-5, rtol=1e-4,
                                   msg=lambda m, key=key: f"{key}: {m}")

    # the two-node run resumes from its last.ckpt
    more = _two_nodes([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"], tmp_path)
    assert [r.returncode for r in more] == [0, 0], more[0].stdout[-3000:]
    assert read_checkpoint(phase / "checkpoints" / "last.ckpt")["epoch"] == 2
