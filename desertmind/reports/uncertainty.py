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
with several seeds per arm, :func:`paired_change_over_seeds` resamples the seeds as well, in
the way the seeds' images were drawn (the same images for every seed, or each its own).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from scipy.stats import bootstrap

from desertmind.errors import ReportError
from desertmind.models.confusion import iou_from_confusion, miou_from_confusion

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0  # fixed: the same runs always get the same intervals
Design = Literal["crossed", "nested"]
DESIGNS: tuple[str, ...] = get_args(Design)
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


def class_iou_intervals(cms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's IoU interval (low, high: arrays of C, NaN where the class never occurs)
    from per-image confusion matrices (N, C, C): the images resampled, the IoU of each
    resample's summed matrix, its percentiles."""
    cms = _per_image(cms)
    counts = np.random.default_rng(SEED).multinomial(
        len(cms), np.full(len(cms), 1 / len(cms)), size=RESAMPLES).astype(np.float64)
    summed = np.einsum("rn,nc->rc", counts, cms.reshape(len(cms), -1).astype(np.float64))
    ious = iou_from_confusion(torch.from_numpy(summed.reshape(-1, *cms.shape[1:]))).numpy()
    alpha = (1 - LEVEL) / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every resample
        low, high = np.nanquantile(ious, [alpha, 1 - alpha], axis=0)
    return low, high


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


def paired_change_over_seeds(pairs: list[tuple[np.ndarray, np.ndarray]], *,
                             design: Design) -> Interval:
    """The mean over training seeds of a change's paired mIoU difference, with a two-level
    bootstrap interval that covers which seeds were run as well as which images were drawn.

    ``pairs``: per seed, (changed, baseline) per-image confusion matrices of the same images.
    ``design`` says how the seeds' images relate, and so what one replicate resamples:

    - ``"crossed"``: every seed was scored on the same images (``make phases SEEDS=...``: one
      val split). One image resample per replicate, applied to every seed, then the seeds
      with replacement. Resampling each seed's images on its own would count the same images'
      luck once per seed: with ten copies of one run, an interval sqrt(10) too narrow.
    - ``"nested"``: each seed has its own images (``benchmarks/domain_gap.py`` generates a
      desert per seed). The seeds with replacement, and within each its own images.

    Resampling k seeds with replacement keeps only (k-1)/k of their spread (a third lost at 3
    seeds), so each replicate's per-seed changes are moved away from their mean by
    sqrt(k/(k-1)) first. Replicates come from two generators, one for images and one for seeds,
    so identical copies of one pair give exactly the interval of that pair alone. In the slow
    tier's simulation (a known true change, 300 studies) the crossed intervals cover it at least
    92% of the time with 3 and 5 seeds; the old per-seed resampling covered 80-85%.
    """
    if design not in DESIGNS:
        raise ReportError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    pairs = [(_per_image(a), _per_image(b)) for a, b in pairs]
    if not pairs:
        raise ReportError("a change over seeds needs at least one seed's pair of evaluations")
    for a, b in pairs:
        if a.shape != b.shape:
            raise ReportError(f"paired comparison needs the same images: {len(a)} against "
                              f"{len(b)}")
    if design == "crossed" and len({a.shape for a, _ in pairs}) > 1:
        raise ReportError("a crossed design scores every seed on the same images, but the "
                          f"seeds have {sorted({len(a) for a, _ in pairs})} images")
    images_rng, seeds_rng = (np.random.default_rng([SEED, k]) for k in (0, 1))

    def counts(n: int) -> np.ndarray:  # (RESAMPLES, n): how often each image was drawn
        return images_rng.multinomial(n, np.full(n, 1 / n), size=RESAMPLES).astype(np.float64)

    shared = counts(len(pairs[0][0])) if design == "crossed" else None
    diffs = np.empty((len(pairs), RESAMPLES))  # per seed, per replicate
    for s, (a, b) in enumerate(pairs):
        weights = shared if shared is not None else counts(len(a))
        flat = np.stack([a, b]).reshape(2, len(a), -1).astype(np.float64)
        summed = np.einsum("rn,anc->arc", weights, flat).reshape(2, RESAMPLES, *a.shape[1:])
        diffs[s] = dataset_miou(summed[0]) - dataset_miou(summed[1])
    if len(pairs) > 1:  # resampling k seeds keeps (k-1)/k of their variance: give it back
        centre = diffs.mean(0)
        diffs = centre + np.sqrt(len(pairs) / (len(pairs) - 1)) * (diffs - centre)
    drawn = seeds_rng.integers(len(pairs), size=(RESAMPLES, len(pairs)))
    draws = diffs[drawn, np.arange(RESAMPLES)[:, None]].mean(1)
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    value = np.mean([dataset_miou(a.sum(0)) - dataset_miou(b.sum(0)) for a, b in pairs])
    return Interval(float(value), float(low), float(high))


def _per_image(cms: np.ndarray) -> np.ndarray:
    cms = np.asarray(cms, dtype=np.int64)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2] or len(cms) < 2:
        raise ReportError(f"per-image confusion matrices must be (images >= 2, C, C), got "
                          f"{cms.shape}")
    return cms
