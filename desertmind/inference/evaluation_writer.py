"""The files of one evaluation: what ``validate`` / ``test --out DIR`` leaves to act on.

- ``metrics.json``: every metric the run logged, by its name (``test/mIoU``,
  ``test/iou/Rocks``, ...), plus ``images`` (how many were scored) and ``checkpoint``; whether
  the scores used the evaluated images themselves (``transductive``, with ``training`` and
  ``test_time`` saying how, and ``adaptation``: what test-time adaptation did, the estimated
  class priors included); and ``predict_classes``: with a class list, ``<stage>/mIoU`` is
  over the restricted argmax and ``<stage>/mIoU_all_classes`` beside it is not;
- ``per_image.csv``: per image, its mean IoU (over the classes present in it), pixel accuracy
  and the IoU of each class present in it (blank where absent), worst image first;
- ``confusion.csv`` and ``confusion.png``: the dataset's confusion matrix (rows: ground truth,
  columns: prediction), as pixel counts and row-normalised.

Each file is written atomically (:mod:`desertmind.files`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from desertmind.data.classes import CLASS_NAMES, NUM_CLASSES
from desertmind.figures import confusion_matrix_figure, save
from desertmind.files import write_json, write_text
from desertmind.models.confusion import batched_confusion, iou_from_confusion

METRICS_FILE = "metrics.json"
#: what metrics.json lists first, in this order (the rest follow: per-class IoU in the class
#: table's order, then anything else alphabetically)
HEADLINE = ("mIoU", "mIoU_per_image", "pixel_acc", "mean_acc", "loss")


def ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A stage's metrics headline first, per-class IoU in class order, 6 significant digits
    (a float's 16 say more than the data do)."""
    def rank(key: str) -> tuple:
        stage, _, name = key.partition("/")
        if name in HEADLINE:
            return (0, HEADLINE.index(name), key)
        if name.startswith("iou/") and name[4:] in CLASS_NAMES:
            return (1, CLASS_NAMES.index(name[4:]), key)
        return (2, 0, key)

    return {k: float(f"{metrics[k]:.6g}") for k in sorted(metrics, key=rank)}
PER_IMAGE_FILE = "per_image.csv"
CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion.png"


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def per_image_csv(names: list[str], cms: torch.Tensor) -> str:
    """The per-image table of confusion matrices (N, C, C), lowest mean IoU first."""
    iou = iou_from_confusion(cms)
    miou = iou.nanmean(-1)
    labelled = cms.sum((-2, -1))
    acc = cms.diagonal(dim1=-2, dim2=-1).sum(-1).double() / labelled.clamp(min=1)
    order = sorted(range(len(names)), key=lambda i: (math.isnan(miou[i]), float(miou[i]),
                                                     names[i]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "mIoU", "pixel_acc", *(f"iou/{c}" for c in CLASS_NAMES)])
    for i in order:
        writer.writerow([names[i], _cell(float(miou[i])),
                         _cell(float(acc[i]) if labelled[i] > 0 else math.nan),
                         *(_cell(float(v)) for v in iou[i])])
    return buf.getvalue()


def confusion_csv(confmat: torch.Tensor) -> str:
    """The confusion matrix as pixel counts with class names on both axes."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["ground truth \\ prediction", *CLASS_NAMES])
    for name, row in zip(CLASS_NAMES, confmat.tolist(), strict=True):
        writer.writerow([name, *row])
    return buf.getvalue()


class PerImageConfusion(L.Callback):
    """Keeps one 10x10 confusion matrix per image of the current validation / test pass (from
    the predictions the module's validation / test step returns), gathered from every process
    under DDP by :meth:`_gathered`."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._cms: list[torch.Tensor] = []

    def _start(self) -> None:
        self._names, self._cms = [], []

    def _collect(self, trainer: L.Trainer, outputs: Any, batch: dict) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict) or "preds" not in outputs:
            return
        self._cms.append(batched_confusion(outputs["preds"], batch["mask"], NUM_CLASSES).cpu())
        self._names.extend(batch["name"])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        self._collect(trainer, outputs, batch)

    def _gathered(self, trainer: L.Trainer) -> tuple[list[str], torch.Tensor]:
        cms = (torch.cat(self._cms) if self._cms
               else torch.zeros(0, NUM_CLASSES, NUM_CLASSES, dtype=torch.long))
        names = list(self._names)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            parts: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(parts, (names, cms))
            names = [n for part_names, _ in parts for n in part_names]
            cms = torch.cat([part_cms for _, part_cms in parts])
        return names, cms


class EvaluationWriter(PerImageConfusion):
    """Writes the files of the module doc into ``out_dir`` at the end of ``validate``/``test``."""

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        self._collect(trainer, outputs, batch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        names, cms = self._gathered(trainer)  # every rank takes part in the gather
        if not trainer.is_global_zero:
            return
        confmat = cms.sum(0)
        metrics = ordered_metrics({k: float(v) for k, v in trainer.callback_metrics.items()})
        evaluation = getattr(trainer.lightning_module, "evaluation", None)
        write_json(self.out_dir / METRICS_FILE, {
            **metrics, "images": len(names),
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            # transductive or not, how, and what adaptation did; <stage>/mIoU is over the
            # predict_classes' argmax when set (mIoU_all_classes is not)
            **(evaluation.record(evaluated_folder(trainer)) if evaluation is not None
               else {})})
        write_text(self.out_dir / PER_IMAGE_FILE, per_image_csv(names, cms))
        write_text(self.out_dir / CONFUSION_CSV, confusion_csv(confmat))
        save(confusion_matrix_figure(confmat.numpy(), f"confusion matrix ({len(names)} images)"),
             self.out_dir / CONFUSION_PNG)


def evaluated_folder(trainer: L.Trainer) -> Path | None:
    """The split folder the running validate or test reads (None: not a dataset split)."""
    dm = trainer.datamodule
    hp = getattr(dm, "hparams", {})
    split = hp.get("test_dir") if trainer.testing else hp.get("val_dir")
    root = getattr(dm, "root", None)
    return Path(root) / split if root is not None and split else None
