"""Looking inside a model: every image of a labelled split scored, worst first, any one shown.

Only the scores are kept (name and mean IoU per image); an image, its ground truth and its
prediction are recomputed when asked for, so a split of any size fits in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from desertmind import runs
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.dataset import OffroadDataset
from desertmind.inference.trained import load_module
from desertmind.reports.plots import prediction_grid
from desertmind.reports.report import RunSummary
from desertmind.training.metrics import per_image_miou
from desertmind.training.module import SegmentationModule


@dataclass(frozen=True)
class ImageScore:
    """One image of the split: its index in the dataset, its name and its mean IoU (the seed's
    per-image rule; NaN when nothing in it is labelled)."""

    index: int
    name: str
    miou: float


class SplitRanking:
    """A labelled split scored by a model, lowest mean IoU first (``scores``).

    ``progress(done, total)`` is called after each batch while scoring.
    """

    def __init__(self, module: SegmentationModule, dataset: OffroadDataset, batch_size: int = 8,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.module = module.eval()
        self.dataset = dataset
        found: list[ImageScore] = []
        total = len(dataset)
        for start in range(0, total, batch_size):
            indices = range(start, min(start + batch_size, total))
            items = [dataset[i] for i in indices]
            preds = self._predict(torch.stack([it["image"] for it in items]))
            targets = torch.stack([it["mask"] for it in items]).long()
            miou = per_image_miou(preds, targets, module.hparams.num_classes)
            found += [ImageScore(i, it["name"], float(m))
                      for i, it, m in zip(indices, items, miou, strict=True)]
            if progress is not None:
                progress(indices[-1] + 1, total)
        self.scores = sorted(found, key=lambda s: (np.isnan(s.miou), s.miou, s.name))

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(self.module.normalize(images)).argmax(1)

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (H, W, 3), ground truth and prediction (H, W train ids) of dataset item
        ``index``, at the evaluation size."""
        item = self.dataset[index]
        pred = self._predict(item["image"][None])[0]
        return (item["image"].permute(1, 2, 0).numpy(), item["mask"].numpy().astype(np.uint8),
                pred.numpy().astype(np.uint8))

    def grid(self, k: int = 4) -> Figure:
        """image | ground truth | prediction | error map for the ``k`` lowest-scoring images,
        each row titled with the image's name and mean IoU."""
        worst = self.scores[:k]
        shown = [self.render(s.index) for s in worst]
        return prediction_grid(*(list(column) for column in zip(*shown, strict=True)),
                               [f"{s.name}\nmIoU {s.miou:.3f}" for s in worst])


def load_best(run: RunSummary) -> tuple[SegmentationModule, OffroadDataModule]:
    """The run's best checkpoint (on the CPU, eval mode) and its data module, from its config."""
    ckpt, _ = runs.checkpoints_of_run(run.path)
    module = load_module(ckpt)
    data = dict(run.config.get("data") or {})
    data.update(num_workers=0, pin_memory=False, root=str(_find_root(run, data.get("root"))))
    dm = OffroadDataModule(**data)
    dm.setup("validate")
    return module, dm


def _find_root(run: RunSummary, root: str | None) -> Path:
    """A relative data root is relative to where training ran: the cwd or a run ancestor."""
    path = Path(root or "data/offroad")
    if path.is_absolute():
        return path
    for base in (Path.cwd(), *run.path.resolve().parents):
        if (base / path).is_dir():
            return base / path
    return path  # not found: the data module's error says where the data should be


def rank_run(run: RunSummary, batch_size: int = 8) -> SplitRanking:
    """Every validation image of the run, scored by its best model, lowest mean IoU first."""
    module, dm = load_best(run)
    return SplitRanking(module, dm.datasets["val"], batch_size)
