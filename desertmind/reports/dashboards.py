"""TensorBoard callbacks: chart layout, HParams, confusion matrix and prediction grids.

All of them write through the run's TensorBoardLogger, on rank 0 only, and do nothing when
there is none. Images are bounded: a fixed handful of validation images, every N epochs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from desertmind.data.classes import CLASS_NAMES
from desertmind.reports.plots import confusion_matrix_figure, prediction_grid

BEST_METRIC = "hp/best_val_mIoU"


def _writer(trainer: L.Trainer) -> SummaryWriter | None:
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    return not trainer.sanity_checking and (trainer.current_epoch + 1) % every_n_epochs == 0


class ScalarLayout(L.Callback):
    """Custom-scalar charts: all per-class IoUs in one chart, both mIoUs, train vs val loss."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        if writer is None:
            return
        writer.add_custom_scalars({
            "per-class IoU": {
                "val": ["Multiline", [f"val/iou/{name}" for name in CLASS_NAMES]],
            },
            "mIoU": {
                "dataset level vs per image": ["Multiline", ["val/mIoU", "val/mIoU_per_image"]],
                "accuracy": ["Multiline", ["val/pixel_acc", "val/mean_acc"]],
            },
            "loss": {"train vs val": ["Multiline", ["train/loss_epoch", "val/loss"]]},
        })


class HParamsSummary(L.Callback):
    """The run's key hyperparameters with its best val/mIoU, for TensorBoard's HParams tab.

    The hyperparameters are written once at the start of training; ``hp/best_val_mIoU`` is
    updated after every validation (and survives a resume).
    """

    def __init__(self, monitor: str = "val/mIoU") -> None:
        self.monitor = monitor
        self.best: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(key_hparams(trainer, pl_module),
                                       {BEST_METRIC: self.best or 0.0})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or torch.isnan(value):
            return
        self.best = max(self.best or float("-inf"), float(value))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({BEST_METRIC: self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def key_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The hyperparameters that tell phases and ablations apart, as flat scalars."""
    hp = dict(pl_module.hparams)
    out: dict[str, Any] = {k: hp.get(k) for k in (
        "backbone", "weights", "loss", "aux_loss", "backbone_lr_mult", "init_from")}
    opt = trainer.optimizers[0] if trainer.optimizers else None
    if opt is not None:
        out["optimizer"] = type(opt).__name__
        out["lr_head"] = next((g["lr"] for g in opt.param_groups if g.get("name") == "head"), None)
    schedulers = trainer.lr_scheduler_configs
    out["scheduler"] = type(schedulers[0].scheduler).__name__ if schedulers else "none"
    dm = trainer.datamodule
    if dm is not None:
        for k in ("batch_size", "image_size", "train_preset", "crop_size", "class_weighting"):
            out[k] = dm.hparams.get(k)
    for cb in trainer.callbacks:
        if hasattr(cb, "unfreeze_at_epoch"):
            out["unfreeze_at_epoch"] = cb.unfreeze_at_epoch
    out["max_epochs"] = trainer.max_epochs
    out["precision"] = str(trainer.precision)
    return {k: ("none" if v is None else v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in out.items()}


class ConfusionMatrixImage(L.Callback):
    """The validation confusion matrix (row-normalised, class names) every N epochs."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        last = getattr(pl_module, "last_eval", {}).get("val")
        if writer is None or last is None or not _due(trainer, self.every_n_epochs):
            return
        fig = confusion_matrix_figure(last["confmat"].numpy(),
                                      f"validation, epoch {trainer.current_epoch}")
        writer.add_figure("val/confusion_matrix", fig, trainer.global_step, close=True)


class PredictionGrid(L.Callback):
    """image | ground truth | prediction | error map for a fixed set of validation images.

    The images are ``num_images`` evenly spaced samples of the validation set, the same every
    time, drawn every ``every_n_epochs`` epochs.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1) -> None:
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        dataset = getattr(trainer.datamodule, "datasets", {}).get("val")
        if writer is None or dataset is None or not _due(trainer, self.every_n_epochs):
            return
        picks = np.unique(np.linspace(0, len(dataset) - 1, self.num_images).round().astype(int))
        items = [dataset[int(i)] for i in picks]
        images = torch.stack([it["image"] for it in items])
        with torch.no_grad():
            logits = pl_module(pl_module.normalize(images.to(pl_module.device)))
        preds = logits.argmax(1).cpu().numpy()
        grid = prediction_grid([im.permute(1, 2, 0).numpy() for im in images],
                               [it["mask"].numpy() for it in items], list(preds))
        writer.add_image("val/predictions", grid, trainer.global_step, dataformats="HWC")
