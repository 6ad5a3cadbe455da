"""How sure a val mIoU is: bootstrap intervals over validation images, and paired verdicts.

A run's dataset-level mIoU comes from the validation images' confusion matrices summed. Which
317 images were drawn is chance, so the figure has sampling error: resampling the images with
replacement (``scipy.stats.bootstrap``, percentile method) and recomputing the mIoU from the
resampled sum gives its 95% interval. Two runs scored on the same images are compared
*paired*: each resample draws the same images for both, so what the images share (a hard image
is hard for both) cancels, and the interval of the difference is much narrower than the two
intervals side by side would suggest. A change is a significant gain when that interval lies
above zero, a significant regression when it lies below, and no significant change otherwise.

One training run per arm says nothing of how much a change depends on the training seed:
with several seeds per arm, :func:`paired_change_over_seeds` resamples the seeds as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import bootstrap

from desertmind.errors import ReportError
from desertmind.models.confusion import miou_from_confusion

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0  # fixed: the same runs always get the same intervals
GAIN, SAME, REGRESSION = "significant gain", "no significant change", "significant regression"


def dataset_miou(cms: np.ndarray) -> np.ndarray:
    """mIoU of confusion matrices (..., C, C), by the rule of ``val/mIoU``
    (:func:`~desertmind.models.confusion.miou_from_confusion`); 0 where no class occurs."""
    miou = miou_from_confusion(torch.from_numpy(np.asarray(cms, dtype=np.float64))).numpy()
    return np.nan_to_num(miou, nan=0.0)


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap interval."""

    value: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        """For a difference: which side of zero the whole interval lies on."""
        return GAIN if self.low > 0 else REGRESSION if self.high < 0 else SAME


def _bootstrap(statistic, images: int) -> tuple[float, float]:
    # the data are image indices; the statistic sums the resampled images' matrices
    result = bootstrap((np.arange(images),), statistic, n_resamples=RESAMPLES,
                       confidence_level=LEVEL, method="percentile", vectorized=True,
                       batch=100, rng=np.random.default_rng(SEED))
    low, high = result.confidence_interval
    return float(low), float(high)


def miou_interval(cms: np.ndarray) -> Interval:
    """The dataset-level mIoU of per-image confusion matrices (N, C, C) and its interval."""
    cms = _per_image(cms)
    low, high = _bootstrap(lambda idx, axis=-1: dataset_miou(cms[idx].sum(-3)), len(cms))
    return Interval(float(dataset_miou(cms.sum(0))), low, high)


def paired_change(cms: np.ndarray, parent: np.ndarray) -> Interval:
    """mIoU of ``cms`` minus that of ``parent``, the same images in the same order, with the
    paired interval of the difference."""
    cms, parent = _per_image(cms), _per_image(parent)
    if cms.shape != parent.shape:
        raise ReportError(f"paired comparison needs the same images: {len(cms)} against "
                          f"{len(parent)}")

    def diff(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return dataset_miou(cms[idx].sum(-3)) - dataset_miou(parent[idx].sum(-3))

    low, high = _bootstrap(diff, len(cms))
    return Interval(float(dataset_miou(cms.sum(0)) - dataset_miou(parent.sum(0))), low, high)


def paired_change_over_seeds(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Interval:
    """The mean over training seeds of a change's paired mIoU difference, with a two-level
    bootstrap interval: each resample draws seeds with replacement, then, within each drawn
    seed, its images with replacement (the same images for both arms). It covers which seeds
    were run as well as which images were drawn; with one seed it is :func:`paired_change`'s.

    ``pairs``: per seed, (changed, baseline) per-image confusion matrices of the same images.
    """
    pairs = [(_per_image(a), _per_image(b)) for a, b in pairs]
    if not pairs:
        raise ReportError("a change over seeds needs at least one seed's pair of evaluations")
    for a, b in pairs:
        if a.shape != b.shape:
            raise ReportError(f"paired comparison needs the same images: {len(a)} against "
                              f"{len(b)}")
    if len(pairs) == 1:
        return paired_change(*pairs[0])

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(dataset_miou(a.sum(0)) - dataset_miou(b.sum(0)))

    rng = np.random.default_rng(SEED)
    draws = np.empty(RESAMPLES)
    for r in range(RESAMPLES):
        total = 0.0
        for s in rng.integers(len(pairs), size=len(pairs)):
            a, b = pairs[s]
            idx = rng.integers(len(a), size=len(a))
            total += diff(a[idx], b[idx])
        draws[r] = total / len(pairs)
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(float(np.mean([diff(a, b) for a, b in pairs])), float(low), float(high))


def _per_image(cms: np.ndarray) -> np.ndarray:
    cms = np.asarray(cms, dtype=np.int64)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2] or len(cms) < 2:
        raise ReportError(f"per-image confusion matrices must be (images >= 2, C, C), got "
                          f"{cms.shape}")
    return cms
