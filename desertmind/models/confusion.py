"""Confusion matrices and the one IoU rule, for every score desertmind reports.

The module's metrics (:mod:`desertmind.training.metrics`), the per-image table of an
evaluation, the viewer's ranking of a split and the report's bootstrap all count pixels with
:func:`batched_confusion` and turn counts into IoU with :func:`iou_from_confusion`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from desertmind.data.classes import IGNORE_INDEX, NUM_CLASSES


def batched_confusion(preds: Tensor, target: Tensor, num_classes: int = NUM_CLASSES,
                      ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(N, C, C) confusion matrix of each image (rows: target, columns: prediction).

    One bincount for the whole batch in int32 index arithmetic. Each image owns a block of
    ``(max target + 1) x C`` bins, so ignored pixels (target 255) fall into rows that are sliced
    off afterwards: no mask, no gather, no copy of the batch.
    """
    n, c = preds.shape[0], num_classes
    rows = max(ignore_index, c - 1) + 1
    block = rows * c
    offset = (torch.arange(n, device=preds.device, dtype=torch.int32) * block).view(n, 1, 1)
    index = target.to(torch.int32) * c + preds.to(torch.int32) + offset
    counts = torch.bincount(index.flatten(), minlength=n * block)
    return counts.view(n, rows, c)[:, :c, :]


def iou_from_confusion(cms: Tensor) -> Tensor:
    """Per-class IoU (float64) of confusion matrices (..., C, C); NaN for a class absent from
    both target and prediction. The one IoU rule: the headline, the per-image mean and the
    report's bootstrap all use it."""
    inter = cms.diagonal(dim1=-2, dim2=-1).double()
    union = cms.sum(-1) + cms.sum(-2) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, torch.nan))


def miou_from_confusion(cms: Tensor) -> Tensor:
    """mIoU of confusion matrices (..., C, C): IoU averaged over the classes present in the
    target or the prediction; NaN where none is."""
    return iou_from_confusion(cms).nanmean(-1)
