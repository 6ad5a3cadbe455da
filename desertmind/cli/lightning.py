"""LightningCLI subclass: the phase callbacks as config groups, and precision ``auto``."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from desertmind.data.datamodule import OffroadDataModule
from desertmind.errors import ConfigError
from desertmind.inference.writer import PredictionWriter
from desertmind.training.checkpoints import AtomicCheckpointIO, LastCheckpoint, PhaseCheckpoint
from desertmind.training.freeze import BackboneFreeze
from desertmind.training.metrics import MONITOR
from desertmind.training.module import SegmentationModule
from desertmind.training.provenance import Provenance


def resolve_precision(accelerator: str | None = "auto") -> str:
    """``bf16-mixed`` on a GPU with bf16, ``16-mixed`` on other CUDA GPUs, else ``32-true``."""
    if accelerator not in (None, "auto", "gpu", "cuda") or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


SCHEDULERS_HINT = (
    "model.scheduler takes a class_path: desertmind.training.schedulers.PolyLR (per step), "
    "torch.optim.lr_scheduler.CosineAnnealingLR, torch.optim.lr_scheduler.ReduceLROnPlateau "
    "(mode: max), torch.optim.lr_scheduler.StepLR or any other torch.optim.lr_scheduler class")


class _Parser(LightningArgumentParser):
    """Adds the valid choices to jsonargparse's message for a scheduler it cannot import."""

    def error(self, message: str, *args, **kwargs):
        if "lr_scheduler" in message or "scheduler" in message.lower():
            message = f"{message}\n  {SCHEDULERS_HINT}"
        return super().error(message, *args, **kwargs)


class DesertMindCLI(LightningCLI):
    """``desertmind fit|validate|test|predict``.

    The checkpoint, early-stopping and backbone-freezing callbacks are config groups of their
    own (``checkpoint``, ``last_checkpoint``, ``early_stopping``, ``freeze``), so a phase
    config changes one value with a dotted key (``early_stopping.patience: 2``) instead of
    repeating the callback list. Every run also writes ``provenance.json`` beside its logs.
    ``trainer.precision`` left null means auto (:func:`resolve_precision`). Optimizer and
    scheduler are arguments of the model, which builds its own param groups, so LightningCLI's
    automatic ``--optimizer`` (one group for every parameter) is switched off.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", {"callbacks": [Provenance()]})
        kwargs.setdefault("parser_class", _Parser)
        super().__init__(SegmentationModule, OffroadDataModule,
                         auto_configure_optimizers=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PhaseCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR, "checkpoint.mode": "max",
            "checkpoint.filename": "best", "checkpoint.save_last": False,
            "checkpoint.save_top_k": 1, "checkpoint.auto_insert_metric_name": False,
            "checkpoint.enable_version_counter": False,
        })
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        # decide right after validation, before the checkpoint callback (always last) saves
        # last.ckpt, so the checkpoint records whether early stopping fired
        parser.set_defaults({"early_stopping.monitor": MONITOR, "early_stopping.mode": "max",
                             "early_stopping.check_on_train_epoch_end": False})
        parser.add_lightning_class_args(BackboneFreeze, "freeze")
        parser.set_defaults({"freeze.unfreeze_at_epoch": 0})
        parser.add_argument("--out", default=None,
                            help="predict: folder for raw/, color/ and overlay/ PNGs")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """The trainer, with atomic checkpoint writing unless a config names its own
        CheckpointIO plugin: every run gets it, whatever its config file."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = config.get("trainer", {}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def before_fit(self) -> None:
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, PhaseCheckpoint):
                callback.resolve_dirpath(self.trainer)

    def before_predict(self) -> None:
        out = self.config.predict.out
        if not out:
            raise ConfigError("predict needs --out FOLDER for the predicted masks")
        self.trainer.callbacks.append(PredictionWriter(out))
        # the writer saves every batch; keeping all predictions in memory too would not scale
        self.config_init.predict.return_predictions = False

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            config.trainer.precision = resolve_precision(config.trainer.accelerator)
