"""``desertmind pretrain``: LightningCLI over :class:`PretrainModule` and
:class:`UnlabelledDataModule`, one command (no fit / validate subcommands: pretraining only
fits).

It takes the phases' overlays (``-c configs/demo.yaml``: the network, optimizer LR, image and
crop size, batch size, logs folder) and writes
``<save_dir>/<name>/checkpoints/pretrained.ckpt`` after every epoch (atomically), the file a
phase starts from with ``--model.init_from``; ``--ckpt_path`` resumes an interrupted run.
"""

from __future__ import annotations

import sys

import lightning as L
from jsonargparse import ActionYesNo
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from desertmind.cli.lightning import _Parser, _quiet_lightning_notices, resolve_precision
from desertmind.errors import ConfigError
from desertmind.pretraining.data import UnlabelledDataModule
from desertmind.pretraining.module import PretrainModule
from desertmind.training.assembly import without_lr_monitor
from desertmind.training.checkpoints import AtomicCheckpointIO, PhaseCheckpoint
from desertmind.training.progress import ProgressLines
from desertmind.training.provenance import Provenance

CHECKPOINT_NAME = "pretrained"


class PretrainCLI(LightningCLI):
    """See the module doc. ``run=False``: :func:`run` fits the instantiated classes."""

    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(PretrainModule, UnlabelledDataModule, run=False, args=args,
                         auto_configure_optimizers=False, parser_class=_Parser,
                         parser_kwargs={"command": "pretrain"},
                         save_config_kwargs={"overwrite": True})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PhaseCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": None, "checkpoint.filename": CHECKPOINT_NAME,
                             "checkpoint.save_top_k": 1, "checkpoint.every_n_epochs": 1,
                             "checkpoint.enable_version_counter": False})
        parser.add_argument("--ckpt_path", default=None,
                            help="resume an interrupted pretraining from its checkpoint")
        parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                            help="start again over an earlier pretraining's checkpoint")
        parser.link_arguments("overwrite", "checkpoint.overwrite")

    def before_instantiate_classes(self) -> None:
        if self.config.trainer.precision is None:
            self.config.trainer.precision = resolve_precision(self.config.trainer.accelerator)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        config = self.config_init
        trainer_config = {**config.get("trainer", {}), **kwargs}
        user = trainer_config.pop("callbacks", None) or []
        user = list(user) if isinstance(user, list | tuple) else [user]
        logger = trainer_config.get("logger") is not False
        if not logger:
            user = without_lr_monitor(user, "pretrain")
        callbacks = [*user, Provenance(), config.checkpoint]
        if (trainer_config.get("enable_progress_bar", True) is not False
                and not sys.stdout.isatty()
                and not any(isinstance(c, ProgressBar) for c in callbacks)):
            callbacks.append(ProgressLines())
        if self.save_config_callback and not trainer_config.get("fast_dev_run") and logger:
            callbacks.append(self.save_config_callback(self.parser, self.config,
                                                       **self.save_config_kwargs))
        return self.trainer_class(**{**trainer_config, "callbacks": callbacks,
                                     "plugins": [AtomicCheckpointIO()]})


def run(argv: list[str]) -> int:
    """``desertmind pretrain ARGS``: parse, check the images, fit, and say where the encoder
    is."""
    try:
        import lightly  # noqa: F401 - an optional extra
    except ImportError as e:
        raise ConfigError("desertmind pretrain needs lightly: pip install "
                          "'desertmind[pretrain]'") from e
    cli = PretrainCLI(args=argv)
    _quiet_lightning_notices()
    cli.datamodule.folders()  # a missing or empty folder: one line, before any run folder
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config.get("ckpt_path"))
    path = cli.config_init.checkpoint.best_model_path
    if cli.trainer.is_global_zero and path:
        print(f"desertmind pretrain: the pretrained encoder is in {path}; start a phase from "
              f"it: desertmind fit -c configs/phase1.yaml --model.init_from {path}")
    return 0
