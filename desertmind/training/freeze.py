"""Freezing the encoder for part or all of a phase, through the network contract."""

from __future__ import annotations

import lightning as L
from torch.optim import Optimizer

from desertmind.errors import ConfigError


class BackboneFreeze(L.Callback):
    """Freeze the encoder for the first ``unfreeze_at_epoch`` epochs, or the whole run if None.

    A plain Callback rather than Lightning's ``BaseFinetuning``: the encoder is always in the
    optimizer, in its own param group (``backbone``, at head LR x ``backbone_lr_mult`` of the
    module), so the optimizer's groups never change and there is nothing to add or restore. A
    resume in the middle of a phase gets the groups back as they were, and the LR the encoder
    trains at after unfreezing is the one its group was built with. Whether it is frozen
    depends only on the epoch, so a resumed run recomputes it at the next epoch start.

    Freezing itself is the network's (:meth:`~desertmind.models.SegmentationNetwork.
    set_encoder_frozen`: no gradients, and the encoder's BatchNorm statistics held unless
    ``train_bn``, kept so through every ``model.train()``); this callback only decides when,
    and under DDP (world size > 1) leaves ``requires_grad`` alone, because DDP registers the
    parameters that need gradients when it wraps the model and would never synchronise ones
    unfrozen later (Lightning issue 20340): the encoder's gradients are dropped before each
    optimizer step instead, so its weights and optimizer state do not move.

    The module must expose its :class:`~desertmind.models.SegmentationNetwork` as
    ``pl_module.model``.

    Args:
        unfreeze_at_epoch: the first epoch the encoder trains; 0 never freezes it, None
            freezes it for the whole run (head-only fine-tuning).
        train_bn: a frozen encoder's BatchNorm layers still update their running statistics.

    Hooks:
        setup (fit): applies the state of epoch 0 before the optimizer is built.
        on_train_epoch_start: applies the state of the epoch about to run.
        on_before_optimizer_step: under DDP, drops the frozen encoder's gradients.
    """

    def __init__(self, unfreeze_at_epoch: int | None = None, train_bn: bool = False) -> None:
        super().__init__()
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
            raise ConfigError(f"unfreeze_at_epoch must be >= 0 or None, got {unfreeze_at_epoch}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.train_bn = train_bn
        self.frozen = False
        self._distributed = False

    def is_frozen_at(self, epoch: int) -> bool:
        return self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._distributed = trainer.world_size > 1
        if stage == "fit":
            self._apply(pl_module, self.is_frozen_at(0))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, self.is_frozen_at(trainer.current_epoch))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: Optimizer) -> None:
        if self.frozen and self._distributed:
            for p in pl_module.model.encoder.parameters():
                p.grad = None

    def _apply(self, pl_module: L.LightningModule, frozen: bool) -> None:
        self.frozen = frozen
        pl_module.model.set_encoder_frozen(frozen, train_bn=self.train_bn,
                                           keep_requires_grad=self._distributed)
