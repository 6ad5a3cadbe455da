"""A tiny stand-in for a real network (torchgeo's trainer tests swap SMP for a 1x1 conv;
Lightning's use ``BoringModel``): 1x1 convolutions under the real torchvision wrapper, so the
whole network contract, a BatchNorm in the encoder and an optional aux head, in a few hundred
parameters; tests of callbacks, the CLI and reliability train in milliseconds. Tests whose
subject is a network itself use the real ones. Also the kill switch of the kill -9 tests."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from torch import nn

from desertmind.models import registry
from desertmind.models.deeplabv3 import TorchvisionDeepLabV3
from desertmind.models.registry import Network


class _TinyBackbone(nn.Module):
    """A conv + BatchNorm + ReLU in torchvision's backbone form (``{"out", "aux"}``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(images)
        return {"out": features, "aux": features}


def tiny_network(*, aux: bool = False, input_scaling: str = "imagenet") -> TorchvisionDeepLabV3:
    """1x1 convolutions under the real torchvision wrapper: an encoder (conv + BatchNorm +
    ReLU), a head and maybe an aux head."""
    parts = SimpleNamespace(backbone=_TinyBackbone(), classifier=nn.Conv2d(8, 10, 1),
                            aux_classifier=nn.Conv2d(8, 10, 1) if aux else None)
    return TorchvisionDeepLabV3(parts, input_scaling=input_scaling)


def _build_tiny(backbone: str, *, aux_loss: bool = False,
                input_scaling: str = "imagenet") -> TorchvisionDeepLabV3:
    return tiny_network(aux=aux_loss, input_scaling=input_scaling)


#: the stand-in as an architecture of the registry, so the module, a checkpoint read back
#: and the CLI build it by name: tests pass it visibly (``network=TINY``, ``--model.network.arch
#: tiny``) and everything else gets the real networks
registry.register("tiny", _build_tiny)
TINY = Network(arch="tiny")


class KillSelf(L.Callback):
    """``kill -9`` of its own process at a chosen point, for tests that a real kill loses
    nothing (run in a subprocess through ``--trainer.callbacks+=``): just before the training
    batch of global step ``at_step``, or after predict batch ``at_predict_batch`` (before the
    prediction writer, which comes later in the callback list, saves that batch)."""

    def __init__(self, at_step: int | None = None, at_predict_batch: int | None = None) -> None:
        self.at_step = at_step
        self.at_predict_batch = at_predict_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if batch_idx == self.at_predict_batch:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_at(**where: int) -> list[str]:
    """The command-line arguments that add :class:`KillSelf` to a run."""
    spec = {"class_path": "tests.stand_in.KillSelf", "init_args": where}
    return [f"--trainer.callbacks+={json.dumps(spec)}"]


class Pause(L.Callback):
    """Sleep at the end of every training epoch, so a test can look at a run while it runs."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import time

        time.sleep(self.seconds)


#: the environment a subprocess needs to import ``tests.stand_in``
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1",
                  "PYTHONPATH": os.pathsep.join(
                      [str(Path(__file__).resolve().parents[1]),
                       *filter(None, [os.environ.get("PYTHONPATH")])])}


class SaveEncoderAtFirstStep(L.Callback):
    """Save the network's encoder state (``torch.save``) to ``path`` just before the first
    training step: what a phase really starts from, after setup loaded its ``init_from``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            torch.save({k: v.detach().cpu().clone()
                        for k, v in pl_module.model.encoder.state_dict().items()}, self.path)
