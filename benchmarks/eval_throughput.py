"""Validation metric cost: desertmind's torchmetrics accumulation vs the study's per-image loop.

Both score the same predictions and targets (random class maps at 960x540 with ignored
pixels, already on the device). The study's loop builds a boolean mask per class and per image
and calls ``.item()`` for every intersection and union; ours builds every image's confusion
matrix with one batched bincount and sums them into torchmetrics JaccardIndex's state. Prints
JSON with images/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import machine, time_per_call

from desertmind.training.metrics import SegmentationMetrics


def study_loop(preds: torch.Tensor, targets: torch.Tensor, num_classes: int = 10) -> float:
    """The study's evaluation: per image, per class, boolean masks and .item() calls."""
    scores = []
    for p, t in zip(preds, targets, strict=True):
        ious = []
        for c in range(num_classes):
            pc, tc = p == c, t == c
            inter = (pc & tc).sum().item()
            union = (pc | tc).sum().item()
            if union > 0:
                ious.append(inter / union)
        scores.append(sum(ious) / len(ious))
    return sum(scores) / len(scores)


def ours(preds: torch.Tensor, targets: torch.Tensor, batch: int) -> float:
    metrics = SegmentationMetrics().to(preds.device)
    for i in range(0, len(preds), batch):
        metrics.update(preds[i:i + batch], targets[i:i + batch])
    return float(metrics.compute()["mIoU_per_image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--height", type=int, default=540)
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (args.images, args.height, args.width), generator=g)
    targets[:, :8] = 255
    preds = torch.where(torch.rand(targets.shape, generator=g) < 0.7, targets.clamp(max=9),
                        torch.randint(0, 10, targets.shape, generator=g))
    preds, targets = preds.to(device), targets.to(device)
    # the study ignores nothing: give it the same labelled pixels only
    valid = targets != 255
    study_t = torch.where(valid, targets, torch.full_like(targets, -1))
    study_p = torch.where(valid, preds, torch.full_like(preds, -1))
    t_ours = time_per_call(lambda: ours(preds, targets, args.batch), device, 1, 3)
    t_study = time_per_call(lambda: study_loop(study_p, study_t), device, 1, 3)
    same = abs(ours(preds, targets, args.batch) - study_loop(study_p, study_t)) < 1e-6
    print(json.dumps({
        "benchmark": "eval_throughput",
        "machine": machine(),
        "device": str(device),
        "images": f"{args.images} at {args.width}x{args.height}",
        "ours_images_per_s": round(args.images / t_ours, 1),
        "study_images_per_s": round(args.images / t_study, 1),
        "ratio_ours_over_study": round(t_study / t_ours, 2),
        "same_per_image_mIoU": same,
    }, indent=1))


if __name__ == "__main__":
    main()
