"""Segmentation metrics accumulated over a whole evaluation set (torchmetrics, DDP-synchronised).

Headline ``mIoU`` is dataset-level: intersections and unions are summed over every pixel of the
set (one confusion matrix), then IoU is averaged over the classes that occur in the set, in the
target or in the prediction. A class absent from both has no IoU (NaN) and is excluded from the
mean instead of being scored 0.

``mIoU_per_image`` is the seed's definition, kept so our numbers can be compared with its
published ones: for each image, the mean IoU over the classes present in that image (target or
prediction), then the mean over images. It is not the standard and is usually lower.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from desertmind.classes import IGNORE_INDEX, NUM_CLASSES


class SegmentationMetrics(MulticlassJaccardIndex):
    """torchmetrics JaccardIndex per class, plus what the same confusion matrix gives for free.

    ``compute()`` returns a dict: ``iou`` (per class, NaN where absent), ``mIoU``,
    ``pixel_acc`` (correct labelled pixels / labelled pixels), ``mean_acc`` (recall averaged
    over the classes present in the target) and ``confmat`` (rows: target, columns:
    prediction). ``update`` takes class-index predictions (N, H, W).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_classes=num_classes, average="none", ignore_index=ignore_index,
                         zero_division=float("nan"), validate_args=False)

    def compute(self) -> dict[str, Tensor]:  # states are already synchronised in here
        iou = super().compute().float()
        cm = self.confmat.double()
        diag = cm.diagonal()
        rows, cols = cm.sum(1), cm.sum(0)
        present = (rows + cols) > 0
        iou = torch.where(present, iou, torch.full_like(iou, float("nan")))
        in_target = rows > 0
        nan = torch.tensor(float("nan"), dtype=torch.float32, device=iou.device)
        return {
            "iou": iou,
            "mIoU": iou[present].mean() if present.any() else nan,
            "pixel_acc": (diag.sum() / cm.sum()).float() if cm.sum() > 0 else nan,
            "mean_acc": (diag[in_target] / rows[in_target]).mean().float()
            if in_target.any() else nan,
            "confmat": self.confmat.clone(),
        }


def per_image_miou(preds: Tensor, target: Tensor, num_classes: int = NUM_CLASSES,
                   ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(N,) mean IoU of each image over the classes present in it (NaN: nothing labelled).

    One batched bincount builds every image's confusion matrix at once.
    """
    n, c = preds.shape[0], num_classes
    valid = target != ignore_index
    image = torch.arange(n, device=preds.device).view(n, 1, 1).expand_as(target)
    index = (image * c * c + target.long() * c + preds.long())[valid]
    cm = torch.bincount(index, minlength=n * c * c).view(n, c, c)
    inter = cm.diagonal(dim1=1, dim2=2)
    union = cm.sum(1) + cm.sum(2) - inter
    present = union > 0
    iou = inter.double() / union.clamp(min=1)
    per_image = (iou * present).sum(1) / present.sum(1).clamp(min=1)
    return torch.where(present.any(1), per_image, torch.full_like(per_image, float("nan")))


class PerImageMeanIoU(Metric):
    """The seed's mIoU: mean over images of the mean IoU of the classes present in each image.

    Images without a labelled pixel are not counted.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        per_image = per_image_miou(preds, target, self.num_classes, self.ignore_index)
        counted = ~torch.isnan(per_image)
        self.total += per_image[counted].sum()
        self.images += counted.sum()

    def compute(self) -> Tensor:
        if self.images == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.images).float()
