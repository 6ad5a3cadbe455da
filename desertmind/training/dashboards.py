"""TensorBoard callbacks: chart layout, HParams, confusion matrix and prediction grids.

All of them write through the run's TensorBoardLogger, on rank 0 only, and do nothing when
there is none. Images are bounded: a fixed handful of validation images, every N epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.plugins.hparams.summary_v2 import HParam, Metric, hparams_config_pb, hparams_pb
from torch.utils.tensorboard import SummaryWriter

from desertmind.data.classes import CLASS_NAMES
from desertmind.data.transforms import CROPPING_PRESETS
from desertmind.figures import confusion_matrix_figure, prediction_grid
from desertmind.models.evaluation import pretraining_saw
from desertmind.training.chain_logger import logged_step
from desertmind.training.metrics import MONITOR, followed_monitor, improves

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
    """Custom-scalar charts: one chart per class's IoU (a line per run in each, not 10 x runs
    lines in one), both mIoUs, train vs val loss."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        if writer is None:
            return
        writer.add_custom_scalars({
            "per-class IoU": {name: ["Multiline", [f"val/iou/{name}"]] for name in CLASS_NAMES},
            "mIoU": {
                "dataset level vs per image": ["Multiline", ["val/mIoU", "val/mIoU_per_image"]],
                "accuracy": ["Multiline", ["val/pixel_acc", "val/mean_acc"]],
            },
            "loss": {"train vs val": ["Multiline", ["train/loss_epoch", "val/loss"]]},
        })


class HParamsSummary(L.Callback):
    """The run's key hyperparameters with its best val/mIoU, for TensorBoard's HParams tab:
    val/mIoU at the best epoch by the metric the best checkpoint follows (the epoch
    ``best.ckpt`` holds).

    The hyperparameters are written once at the start of training, those that tell phases
    apart first (:func:`key_hparams`), booleans as booleans; ``hp/best_val_mIoU`` is declared
    then and written after every validation as the best so far (never a placeholder value
    before the first one), and survives a resume.
    """

    def __init__(self) -> None:
        self.best: float | None = None  # val/mIoU at the best epoch
        self.best_monitored: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        if writer is None:
            return
        params = key_hparams(trainer, pl_module)
        # tensorboard's own protos: the columns in this order, the metric declared, no value
        writer.file_writer.add_summary(hparams_config_pb(
            hparams=[HParam(k) for k in params], metrics=[Metric(BEST_METRIC)]))
        # the run's name as TensorBoard's trial id: its HParams rows say which phase they are
        writer.file_writer.add_summary(hparams_pb(params, trial_id=run_name(trainer)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor, mode = followed_monitor(trainer)
        value = trainer.callback_metrics.get(monitor)
        if trainer.sanity_checking or value is None or torch.isnan(value):
            return
        if improves(float(value), self.best_monitored, mode):  # a new best epoch
            self.best_monitored = float(value)
            self.best = float(trainer.callback_metrics.get(MONITOR, value))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({BEST_METRIC: self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_monitored": self.best_monitored}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_monitored = state_dict.get("best_monitored", self.best)


def run_name(trainer: L.Trainer) -> str | None:
    """``<phase>/version_<n>``: the TensorBoard run of this training, as its folders name it."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            version = logger.version
            return f"{logger.name}/{version if isinstance(version, str) else f'version_{version}'}"
    return None


def key_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The hyperparameters that tell phases and ablations apart, as flat scalars.

    TensorBoard's HParams tab lists hyperparameters by name and shows the first few, so what
    the phases change (loss, starting point, LRs, freezing, augmentation, class weights) is
    named ``change/...`` and the rest ``setup/...``. Booleans stay booleans and LRs numbers;
    integers become text (TensorBoard would print 4 as 4.0000); None becomes ``none``."""
    hp = dict(pl_module.hparams)
    net = dict(hp.get("network") or {})
    dm = trainer.datamodule
    data = dict(dm.hparams) if dm is not None else {}
    groups = {g.get("name"): g["lr"] for g in (trainer.optimizers[0].param_groups
                                               if trainer.optimizers else [])}
    freeze = next((cb for cb in trainer.callbacks if hasattr(cb, "unfreeze_at_epoch")), None)
    schedulers = trainer.lr_scheduler_configs
    change = {
        "loss": hp.get("loss"),
        "init_from": hp.get("init_from"),
        "lr_head": groups.get("head"),
        "lr_backbone": groups.get("backbone"),
        "unfreeze_at_epoch": freeze.unfreeze_at_epoch if freeze is not None else None,
        "train_preset": data.get("train_preset"),
        "domain_randomise": data.get("domain_randomise"),
        # only the presets that crop use it
        "crop_size": (data.get("crop_size") if data.get("train_preset") in CROPPING_PRESETS
                      else None),
        "class_weighting": data.get("class_weighting"),
        "scheduler": type(schedulers[0].scheduler).__name__ if schedulers else "none",
    }
    pretraining = getattr(getattr(pl_module, "evaluation", None), "pretraining", None)
    val_folder = (Path(dm.root) / dm.hparams.val_dir if dm is not None and hasattr(dm, "root")
                  and dm.hparams.get("val_dir") else None)
    setup = {
        **{k: net.get(k) for k in ("arch", "backbone", "weights", "aux_weight", "freeze_bn",
                                   "input_scaling")},
        "optimizer": type(trainer.optimizers[0]).__name__ if trainer.optimizers else None,
        "batch_size": data.get("batch_size"),
        "image_size": data.get("image_size"),
        "max_epochs": trainer.max_epochs,
        "precision": str(trainer.precision),
        # the self-supervised pretraining the encoder started from
        "pretrained_from": pretraining.get("checkpoint") if pretraining else None,
        # trained with the unlabelled target images (transfer or self-training), or validated
        # on images its pretraining read
        "transductive": bool(getattr(pl_module, "target_use", None)
                             or (dm is not None and hasattr(dm, "target_use")
                                 and dm.target_use())
                             or pretraining_saw(pretraining, val_folder)),
    }
    return {f"{group}/{k}": _scalar(v) for group, values in (("change", change),
                                                              ("setup", setup))
            for k, v in values.items()}


def _scalar(value: Any) -> bool | float | str:
    if isinstance(value, bool | float | str):
        return value
    return "none" if value is None else str(value)


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
        writer.add_figure("val/confusion_matrix", fig, logged_step(trainer), close=True)


class PredictionGrid(L.Callback):
    """image | ground truth | prediction | error map for a fixed set of validation images, with
    column titles, the images' names and a legend of the class colours.

    The images are ``num_images`` evenly spaced samples of the validation set, the same every
    time, drawn every ``every_n_epochs`` epochs. They are predicted as validation scores them
    (the module's ``evaluation`` options: TTA, class restriction).
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
        preds = pl_module.evaluation.labels(images.to(pl_module.device).float()).cpu().numpy()
        fig = prediction_grid([im.permute(1, 2, 0).numpy() for im in images],
                              [it["mask"].numpy() for it in items], list(preds),
                              [it["name"] for it in items])
        writer.add_figure("val/predictions", fig, logged_step(trainer), close=True)


class MetricsTable(L.Callback):
    """An evaluation's metrics as one markdown table in TensorBoard's text tab: a ``validate``
    or ``test`` run logs each metric once, which TensorBoard draws as a chart of one point
    apiece; the table reads at a glance (headline first, classes in order)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._table(trainer, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._table(trainer, "test")

    def _table(self, trainer: L.Trainer, stage: str) -> None:
        from desertmind.inference.evaluation_writer import ordered_metrics

        logger = trainer.logger
        metrics = ordered_metrics({k: float(v) for k, v in trainer.callback_metrics.items()
                                   if k.startswith(f"{stage}/")})
        if not trainer.is_global_zero or not isinstance(logger, TensorBoardLogger) or not metrics:
            return
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
        logger.experiment.add_text(f"{stage}/summary", f"| metric | value |\n|---|---:|\n{rows}",
                                   trainer.global_step)
