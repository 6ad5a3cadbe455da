"""Segmentation metrics accumulated over a whole evaluation set (torchmetrics, DDP-synchronised).

Headline ``mIoU`` is dataset-level: intersections and unions are summed over every pixel of the
set (one confusion matrix), then IoU is averaged over the classes that occur in the set, in the
target or in the prediction. A class absent from both has no IoU (NaN) and is excluded from the
mean instead of being scored 0.

``mIoU_per_image`` is the study's definition, kept so our numbers can be compared with its
published ones: for each image, the mean IoU over the classes present in that image (target or
prediction), then the mean over images. It is not the standard and is usually lower.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from desertmind.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from desertmind.errors import DatasetError
from desertmind.models.confusion import batched_confusion, iou_from_confusion, miou_from_confusion

#: the metric every phase selects its best checkpoint and stops early on, unless its config's
#: ``checkpoint.monitor`` (which early stopping and a plateau scheduler follow) says otherwise
MONITOR = "val/mIoU"


def followed_monitor(trainer) -> tuple[str, str]:
    """The metric and mode (``max``/``min``) the run's best checkpoint follows, else
    (:data:`MONITOR`, ``max``): what every "best epoch" of a run (its saved per-image
    confusions, the HParams best, the report) is chosen by, so they all name one epoch."""
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        if getattr(callback, "monitor", None):
            return callback.monitor, callback.mode
    return MONITOR, "max"


def improves(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` is better than ``best`` (None: nothing yet) under ``mode``."""
    return best is None or (value > best if mode == "max" else value < best)


class SegmentationMetrics(MulticlassJaccardIndex):
    """torchmetrics JaccardIndex's state and synchronisation, and what its confusion matrix gives.

    ``update`` takes class-index predictions (N, H, W) and builds every image's confusion
    matrix with one bincount: their sum feeds JaccardIndex's own ``confmat`` state (so its
    DDP synchronisation is torchmetrics'; the IoU rule is :func:`iou_from_confusion`, the same
    for the headline, the per-image mean and the report), and each image's mean IoU feeds
    the study's per-image definition. ``compute()`` returns a dict: ``iou`` (per class, NaN
    where absent), ``mIoU``, ``mIoU_per_image``, ``pixel_acc`` (correct labelled pixels /
    labelled pixels), ``mean_acc`` (recall averaged over the classes present in the target) and
    ``confmat`` (rows: target, columns: prediction).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_classes=num_classes, average="none", ignore_index=ignore_index,
                         zero_division=float("nan"), validate_args=False)
        self.add_state("image_miou_sum", torch.tensor(0.0, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        cms = batched_confusion(preds, target, self.num_classes, self.ignore_index)
        self.confmat += cms.sum(0)
        per_image = miou_from_confusion(cms)
        counted = ~torch.isnan(per_image)
        self.image_miou_sum += per_image[counted].sum()
        self.images += counted.sum()

    def compute(self) -> dict[str, Tensor]:  # states are already synchronised in here
        iou = iou_from_confusion(self.confmat).float()  # what JaccardIndex gives, NaN if absent
        cm = self.confmat.double()
        diag, rows = cm.diagonal(), cm.sum(1)
        in_target = rows > 0
        nan = torch.tensor(float("nan"), dtype=torch.float32, device=iou.device)
        return {
            "iou": iou,
            "mIoU": iou.nanmean(),
            "mIoU_per_image": (self.image_miou_sum / self.images).float()
            if self.images > 0 else nan,
            "pixel_acc": (diag.sum() / cm.sum()).float() if cm.sum() > 0 else nan,
            "mean_acc": (diag[in_target] / rows[in_target]).mean().float()
            if in_target.any() else nan,
            "confmat": self.confmat.clone(),
        }


class ClassShares(Metric):
    """The mean predicted probability of each class over every pixel seen (summed across
    processes): on the source validation split, the class priors the network's posteriors
    imply, which EM class priors start from (:mod:`desertmind.models.adaptation`)."""

    full_state_update = False

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(num_classes, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("pixels", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: Tensor) -> None:
        """``probs``: (N, C, H, W) class probabilities."""
        self.sums += probs.detach().double().sum((0, 2, 3))
        self.pixels += probs.shape[0] * probs.shape[2] * probs.shape[3]

    def compute(self) -> Tensor:
        return (self.sums / self.pixels.clamp_min(1)).float()


class StageMetrics(torch.nn.Module):
    """The metrics of one evaluation stage (``val``, ``test``): :class:`SegmentationMetrics`
    of the predictions and, with a class restriction, of the same scores' argmax over all
    classes (``<stage>/mIoU_all_classes``, logged beside the restricted figure so neither is
    read for the other)."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.metrics = SegmentationMetrics(NUM_CLASSES)
        self.all_classes = SegmentationMetrics(NUM_CLASSES)
        self.restricted = False

    def update(self, preds: Tensor, scores: Tensor, target: Tensor, restricted: bool) -> None:
        self.metrics.update(preds, target)
        self.restricted = restricted
        if restricted:
            self.all_classes.update(scores.argmax(1), target)

    def compute(self, complete: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(what to log, by its name; the computed metrics on the CPU, for dashboards), and a
        reset for the next epoch. A ``complete`` pass (not Lightning's sanity check) without
        one labelled pixel is refused: its mIoU would be NaN, and a best checkpoint chosen on
        it meaningless."""
        stage, m = self.stage, self.metrics.compute()
        if complete and int(m["confmat"].sum()) == 0:
            self.metrics.reset()
            raise DatasetError(
                f"the {stage} split has not one labelled pixel (every mask value is unknown or "
                "ignored), so its scores would be NaN; check its Segmentation/ masks against "
                "the class table (desertmind check-data ROOT)")
        values = {f"{stage}/mIoU": m["mIoU"], f"{stage}/mIoU_per_image": m["mIoU_per_image"],
                  f"{stage}/pixel_acc": m["pixel_acc"], f"{stage}/mean_acc": m["mean_acc"]}
        for name, iou in zip(CLASS_NAMES, m["iou"], strict=True):
            if not torch.isnan(iou):  # absent from target and prediction: no IoU to log
                values[f"{stage}/iou/{name}"] = iou
        if self.restricted:
            values[f"{stage}/mIoU_all_classes"] = self.all_classes.compute()["mIoU"]
        self.metrics.reset()
        self.all_classes.reset()
        return values, {k: v.detach().cpu() for k, v in m.items()}
