"""Speed and memory switches that change how the network runs, never what it computes (config
group ``speed`` of the CLI; a plain-Python user adds the callback)."""

from __future__ import annotations

import lightning as L
import torch


class Speedups(L.Callback):
    """Speed and memory switches, applied in ``setup`` for every stage; all off by default.

    Gradient checkpointing lets a ViT-B or -L at 540x960 train in far less memory per step:
    ``benchmarks/foundation.py`` measured a quarter of the step's memory for 1.2-1.3x its time
    (ViT-B + DPT, CPU; docs/foundation.md), and ``make gpu-check`` measures it on a GPU.

    Args:
        channels_last: NHWC memory format for the network and its input (faster
            convolutions on recent GPUs).
        compile: ``torch.compile`` the network in place (its ``state_dict`` keys stay the
            same, so checkpoints are unchanged).
        grad_checkpointing: recompute the encoder's activations in the backward pass instead
            of keeping them (timm's ``set_grad_checkpointing``).
    """

    def __init__(self, channels_last: bool = False, compile: bool = False,
                 grad_checkpointing: bool = False) -> None:
        self.channels_last = channels_last
        self.compile = compile
        self.grad_checkpointing = grad_checkpointing
        self._applied = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._applied:
            return
        self._applied = True
        apply_speedups(pl_module.model, channels_last=self.channels_last, compile=self.compile,
                       grad_checkpointing=self.grad_checkpointing)


def apply_speedups(network: torch.nn.Module, *, channels_last: bool = False,
                   compile: bool = False, grad_checkpointing: bool = False) -> None:
    """Put ``network`` (a :class:`~desertmind.models.SegmentationNetwork`) in NHWC, checkpoint
    its encoder's activations and/or compile it, in place."""
    if grad_checkpointing:
        network.set_grad_checkpointing(True)
    if channels_last:
        network.to(memory_format=torch.channels_last)
        network.channels_last = True
    if compile:
        network.compile()
