"""Metrics against a plain numpy reference: absent classes and ignored pixels included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desertmind.models.confusion import batched_confusion, iou_from_confusion
from desertmind.training.metrics import SegmentationMetrics


def _batches(seed: int = 0, n_batches: int = 3):
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        target = rng.choice([0, 1, 2, 4, 9], size=(2, 6, 7))  # 3, 5-8 never in the target
        preds = rng.choice([0, 1, 2, 3, 9], size=(2, 6, 7))  # 3 only in the prediction
        target[rng.random(target.shape) < 0.1] = 255
        yield torch.from_numpy(preds), torch.from_numpy(target)


def _reference(batches, c: int = 10):
    cm = np.zeros((c, c), np.int64)
    per_image = []
    for preds, target in batches:
        for p, t in zip(preds.numpy(), target.numpy(), strict=True):
            v = t != 255
            m = np.zeros((c, c), np.int64)
            np.add.at(m, (t[v], p[v]), 1)
            cm += m
            inter, union = np.diag(m), m.sum(0) + m.sum(1) - np.diag(m)
            per_image.append(np.mean(inter[union > 0] / union[union > 0]))
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    present = union > 0
    iou = np.where(present, inter / np.maximum(union, 1), np.nan)
    rows = cm.sum(1)
    return {"iou": iou, "mIoU": np.nanmean(iou), "pixel_acc": inter.sum() / cm.sum(),
            "mean_acc": np.mean(inter[rows > 0] / rows[rows > 0]),
            "per_image": np.mean(per_image)}


def test_dataset_level_metrics_match_numpy():
    metric = SegmentationMetrics()
    for preds, target in _batches():
        metric.update(preds, target)
    got, ref = metric.compute(), _reference(_batches())
    np.testing.assert_allclose(got["iou"].numpy(), ref["iou"], rtol=1e-6)
    for key in ("mIoU", "pixel_acc", "mean_acc"):
        assert got[key].item() == pytest.approx(ref[key], rel=1e-6)
    assert got["mIoU_per_image"].item() == pytest.approx(ref["per_image"], rel=1e-6)


def test_classes_absent_from_target_and_prediction_are_excluded_not_zero():
    metric = SegmentationMetrics()
    for preds, target in _batches():
        metric.update(preds, target)
    got = metric.compute()
    assert torch.isnan(got["iou"][[5, 6, 7, 8]]).all()
    assert got["iou"][3] == 0  # predicted but never true: a real 0
    assert got["mIoU"] == pytest.approx(got["iou"][[0, 1, 2, 3, 4, 9]].mean().item())


def test_per_image_definition_differs_from_dataset_level():
    # image 1 is perfect on a tiny class, image 2 misses a big one: the two definitions disagree
    t = torch.tensor([[[0, 0, 0, 1]], [[0, 0, 0, 0]]])
    p = torch.tensor([[[0, 0, 0, 1]], [[0, 0, 1, 1]]])
    metric = SegmentationMetrics()
    metric.update(p, t)
    assert iou_from_confusion(batched_confusion(p, t)).nanmean(-1).tolist() == pytest.approx(
        [1.0, 0.25])
    assert metric.compute()["mIoU_per_image"].item() == pytest.approx((1.0 + 0.25) / 2)
    assert metric.compute()["mIoU"].item() == pytest.approx((5 / 7 + 1 / 3) / 2)
