"""Phase callbacks: backbone freezing / unfreezing, and checkpoints at a stable path per phase."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, ModelCheckpoint
from torch import nn
from torch.optim import Optimizer

from desertmind.errors import ConfigError


class BackboneFreeze(BaseFinetuning):
    """Freeze the backbone for the first ``unfreeze_at_epoch`` epochs, or the whole run if None.

    Unlike Lightning's ``BackboneFinetuning``, the backbone is always in the optimizer, in its
    own param group (``backbone``, at head LR x ``backbone_lr_mult`` of the module), so the
    optimizer's groups never change: a resume in the middle of a phase restores them as they
    were, and the LR the backbone trains at after unfreezing is the one its group was built with.

    While frozen:
      - single process: backbone parameters get ``requires_grad=False`` (no backward through it);
      - DDP (world size > 1): ``requires_grad`` is left alone, because DDP registers the
        parameters that need gradients when it wraps the model and would never synchronise ones
        unfrozen later (Lightning issue 20340); the backbone's gradients are dropped before each
        optimizer step instead, so its weights and optimizer state do not move;
      - BatchNorm layers of the backbone are kept in eval mode (running statistics frozen)
        unless ``train_bn`` is True.

    The module must expose the backbone as ``pl_module.backbone``.
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
            super().setup(trainer, pl_module, stage)  # calls freeze_before_training

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, self.is_frozen_at(0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing to restore: the param groups are fixed (see the class docstring)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finetune_function(pl_module, trainer.current_epoch, trainer.optimizers[0])

    def finetune_function(self, pl_module: L.LightningModule, epoch: int,
                          optimizer: Optimizer) -> None:
        self._apply(pl_module, self.is_frozen_at(epoch))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: object, batch_idx: int) -> None:
        # Lightning puts the whole model back in train mode after each validation.
        if self.frozen and not self.train_bn:
            for bn in _batchnorms(pl_module.backbone):
                bn.eval()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: Optimizer) -> None:
        if self.frozen and self._distributed:
            for p in pl_module.backbone.parameters():
                p.grad = None

    def _apply(self, pl_module: L.LightningModule, frozen: bool) -> None:
        self.frozen = frozen
        backbone = pl_module.backbone
        if not self._distributed:
            for p in backbone.parameters():
                p.requires_grad = not frozen
        for bn in _batchnorms(backbone):
            bn.train(pl_module.training and not (frozen and not self.train_bn))


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class PhaseCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose default folder is stable per phase: ``<save_dir>/<name>/checkpoints``.

    Lightning's default puts checkpoints under ``version_N``, so the next phase could not name
    the previous phase's best model. With ``dirpath`` unset, this resolves to the logger's
    ``save_dir`` and ``name`` (e.g. ``lightning_logs/phase1/checkpoints/best.ckpt``).
    """

    def resolve_dirpath(self, trainer: L.Trainer) -> None:
        """Fill in the default folder from the trainer's logger (before ``--ckpt_path last``
        is looked up, which happens before any callback's setup)."""
        if self.dirpath is None and trainer.logger is not None:
            logger = trainer.logger
            self.dirpath = str(Path(logger.save_dir or ".") / str(logger.name) / "checkpoints")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.resolve_dirpath(trainer)
        super().setup(trainer, pl_module, stage)


class LastCheckpoint(PhaseCheckpoint):
    """Owns ``last.ckpt``: rewritten after every validation and every ``every_n_train_steps``
    optimizer steps (0: only after validations).

    Lightning's ModelCheckpoint refreshes ``last.ckpt`` only when it also saved a new best, so
    after an epoch without improvement ``last.ckpt`` would lag behind and a resume would repeat
    work. A crash loses at most ``every_n_train_steps`` steps; ``--ckpt_path last`` resumes from
    here, in the middle of an epoch if need be.
    """

    def __init__(self, every_n_train_steps: int = 0) -> None:
        super().__init__(monitor=None, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps, every_n_epochs=0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if (not self._should_skip_saving_checkpoint(trainer)
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
