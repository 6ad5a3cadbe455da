"""Every image of a labelled split scored by a model, worst first, any one shown again.

Only the scores are kept (name, mean IoU and per-class IoU per image); an image, its ground
truth and its prediction are recomputed when asked for, so a split of any size fits in memory.
Predictions go through an :class:`~desertmind.models.evaluation.Evaluation`, as ``validate``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from desertmind.data.classes import NUM_CLASSES
from desertmind.data.dataset import OffroadDataset
from desertmind.models.confusion import batched_confusion, iou_from_confusion
from desertmind.models.evaluation import Evaluation


@dataclass(frozen=True)
class ImageScore:
    """One image of the split: its index in the dataset, its name, its mean IoU (the study's
    per-image rule; NaN when nothing in it is labelled) and each class's IoU in it (NaN for a
    class neither in its ground truth nor in its prediction)."""

    index: int
    name: str
    miou: float
    iou: tuple[float, ...] = ()


class SplitRanking:
    """A labelled split scored by ``evaluation`` (its network in eval mode, its options and
    any test-time adaptation it holds), lowest mean IoU first (``scores``).

    ``progress(done, total)`` is called after each batch while scoring.
    """

    def __init__(self, evaluation: Evaluation, dataset: OffroadDataset, *,
                 batch_size: int = 8,
                 progress: Callable[[int, int], None] | None = None) -> None:
        evaluation.network.eval()
        self.evaluation = evaluation
        self.dataset = dataset
        found: list[ImageScore] = []
        total = len(dataset)
        for start in range(0, total, batch_size):
            indices = range(start, min(start + batch_size, total))
            items = [dataset[i] for i in indices]
            preds = self._predict(torch.stack([it["image"] for it in items]))
            targets = torch.stack([it["mask"] for it in items]).long()
            iou = iou_from_confusion(batched_confusion(preds, targets, NUM_CLASSES))
            miou = iou.nanmean(-1)  # the study's per-image rule (training.metrics)
            found += [ImageScore(i, it["name"], float(m), tuple(float(v) for v in row))
                      for i, it, m, row in zip(indices, items, miou, iou, strict=True)]
            if progress is not None:
                progress(indices[-1] + 1, total)
        self.scores = sorted(found, key=lambda s: (np.isnan(s.miou), s.miou, s.name))

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        device = self.evaluation.network.mean.device
        return self.evaluation.labels(images.to(device).float()).cpu()

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (H, W, 3), ground truth and prediction (H, W train ids) of dataset item
        ``index``, at the evaluation size."""
        item = self.dataset[index]
        pred = self._predict(item["image"][None])[0]
        return (item["image"].permute(1, 2, 0).numpy(), item["mask"].numpy().astype(np.uint8),
                pred.numpy().astype(np.uint8))
