"""Looking inside a finished run: its best model on its validation images, worst first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from desertmind import runs
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.transforms import normalize
from desertmind.reports.plots import prediction_grid
from desertmind.reports.report import RunSummary
from desertmind.training.metrics import per_image_miou
from desertmind.training.module import SegmentationModule


@dataclass
class ImageScore:
    """One validation image with its prediction and its mean IoU (the seed's per-image rule)."""

    name: str
    miou: float
    image: np.ndarray
    target: np.ndarray
    pred: np.ndarray


def load_best(run: RunSummary) -> tuple[SegmentationModule, OffroadDataModule]:
    """The run's best checkpoint (on the CPU, eval mode) and its data module, from its config."""
    ckpt, _ = runs.checkpoints_of_run(run.path)
    # the checkpoint holds every weight: do not fetch pretrained ones again
    module = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu", weights="none")
    data = dict(run.config.get("data") or {})
    data.update(num_workers=0, pin_memory=False, root=str(_find_root(run, data.get("root"))))
    dm = OffroadDataModule(**data)
    dm.setup("validate")
    return module.eval(), dm


def _find_root(run: RunSummary, root: str | None) -> Path:
    """A relative data root is relative to where training ran: the cwd or a run ancestor."""
    path = Path(root or "data/offroad")
    if path.is_absolute():
        return path
    for base in (Path.cwd(), *run.path.resolve().parents):
        if (base / path).is_dir():
            return base / path
    return path  # not found: the data module's error says where the data should be


def score_images(run: RunSummary, batch_size: int = 8) -> list[ImageScore]:
    """Every validation image of the run, scored by its best model, lowest mean IoU first."""
    module, dm = load_best(run)
    dataset = dm.datasets["val"]
    scores: list[ImageScore] = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([it["image"] for it in items])
            targets = torch.stack([it["mask"] for it in items]).long()
            preds = module(normalize(images)).argmax(1)
            miou = per_image_miou(preds, targets, module.hparams.num_classes)
            for it, img, t, p, m in zip(items, images, targets, preds, miou, strict=True):
                scores.append(ImageScore(it["name"], float(m), img.permute(1, 2, 0).numpy(),
                                         t.numpy().astype(np.uint8), p.numpy().astype(np.uint8)))
    return sorted(scores, key=lambda s: (np.isnan(s.miou), s.miou))


def worst_images_grid(scores: list[ImageScore], k: int = 4) -> np.ndarray:
    """image | ground truth | prediction | error map for the ``k`` lowest-scoring images."""
    worst = scores[:k]
    return prediction_grid([s.image for s in worst], [s.target for s in worst],
                           [s.pred for s in worst])
