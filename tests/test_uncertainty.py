"""Bootstrap intervals and paired verdicts, against a reference bootstrap on known data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desertmind.errors import ReportError
from desertmind.models.confusion import batched_confusion
from desertmind.reports.uncertainty import (
    GAIN,
    REGRESSION,
    SAME,
    dataset_miou,
    miou_interval,
    paired_change,
    paired_change_over_seeds,
)
from desertmind.training.metrics import SegmentationMetrics

C = 10


def _images(n: int = 120, seed: int = 0) -> np.ndarray:
    """Per-image confusion matrices of varied quality: most pixels right, some confused."""
    rng = np.random.default_rng(seed)
    cms = rng.integers(0, 400, (n, C, C))
    cms[:, np.arange(C), np.arange(C)] += rng.integers(500, 6000, (n, C))
    cms[rng.random((n, C)) < 0.2] = 0  # classes absent from some images
    return cms


def _reference(cms: np.ndarray, resamples: int = 4000, seed: int = 1) -> tuple[float, float]:
    """A plain percentile bootstrap written out: draw images, sum, score, take percentiles."""
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        idx = rng.integers(0, len(cms), len(cms))
        stats.append(dataset_miou(cms[idx].sum(0)))
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def test_dataset_miou_is_the_logged_metric():
    torch.manual_seed(0)
    target = torch.randint(0, C, (6, 20, 30))
    preds = torch.where(torch.rand(6, 20, 30) < 0.7, target, torch.randint(0, C, (6, 20, 30)))
    target[0, :5] = 255  # ignored pixels
    metric = SegmentationMetrics()
    metric.update(preds, target)
    cms = batched_confusion(preds, target, C).numpy()
    assert dataset_miou(cms.sum(0)) == pytest.approx(float(metric.compute()["mIoU"]), abs=1e-6)


def test_interval_matches_a_reference_bootstrap():
    cms = _images()
    ours = miou_interval(cms)
    low, high = _reference(cms)
    width = high - low
    assert width > 0.005  # a real spread, so the comparison means something
    assert ours.value == pytest.approx(dataset_miou(cms.sum(0)))
    assert ours.low < ours.value < ours.high
    assert ours.low == pytest.approx(low, abs=0.1 * width)
    assert ours.high == pytest.approx(high, abs=0.1 * width)


def test_identical_images_leave_no_uncertainty():
    cms = np.repeat(_images(1), 50, axis=0)  # every image the same: every resample the same
    result = miou_interval(cms)
    assert result.low == pytest.approx(result.value) and result.high == pytest.approx(result.value)


def _moved(cms: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Move ``pixels[i]`` pixels of every class of image i from one wrong column onto the
    diagonal (positive: better) or back (negative: worse), at most what both cells hold, so a
    move and its opposite on the same image have the same size; each row keeps its total."""
    out = cms.copy()
    for c in range(C):
        wrong = (c + 1) % C
        size = np.minimum(np.abs(pixels), np.minimum(out[:, c, c], out[:, c, wrong]))
        step = np.sign(pixels) * size
        out[:, c, c] += step
        out[:, c, wrong] -= step
    return out


def test_a_real_difference_is_significant_both_ways():
    cms = _images()
    better = _moved(cms, np.full(len(cms), 60))
    gain = paired_change(better, cms)
    assert gain.value > 0 and gain.low > 0 and gain.verdict == GAIN
    loss = paired_change(cms, better)
    assert loss.value == pytest.approx(-gain.value) and loss.high < 0
    assert loss.verdict == REGRESSION


def test_a_zero_difference_is_not_significant():
    cms = _images()
    assert paired_change(cms, cms.copy()).verdict == SAME  # the same predictions
    # images in identical pairs; one of each pair gets better, the other worse by the same
    # pixels: single images change a lot, the summed matrix not at all
    twins = np.repeat(_images(60), 2, axis=0)
    signs = np.where(np.arange(len(twins)) % 2 == 0, 1, -1)
    noisy = _moved(twins, signs * 300)
    assert (noisy.sum(0) == twins.sum(0)).all()
    assert (noisy != twins).any(axis=(1, 2)).all()
    change = paired_change(noisy, twins)
    assert change.value == pytest.approx(0, abs=1e-12)
    assert change.low < 0 < change.high and change.verdict == SAME


def test_paired_change_needs_the_same_images():
    with pytest.raises(ReportError, match="same images"):
        paired_change(_images(10), _images(12))
    with pytest.raises(ReportError, match="images >= 2"):
        miou_interval(_images(1))


def test_over_seeds_a_change_that_depends_on_the_seed_is_not_significant():
    """Three seeds whose images agree within each seed, but one seed gains and two lose:
    within every seed the change is clear; over seeds it is not, and the mean is theirs."""
    seeds = [_images(40, seed=s) for s in range(3)]
    shifts = [150, -60, -60]
    pairs = [(_moved(cms, np.full(len(cms), k)), cms) for cms, k in zip(seeds, shifts,
                                                                       strict=True)]
    singles = [paired_change(a, b) for a, b in pairs]
    assert [c.verdict for c in singles] == [GAIN, REGRESSION, REGRESSION]
    over = paired_change_over_seeds(pairs, design="nested")
    assert over.value == pytest.approx(np.mean([c.value for c in singles]))
    assert over.low < 0 < over.high and over.verdict == SAME
    # the same gain in every seed stays significant, and one seed is the plain paired change
    steady = [(_moved(cms, np.full(len(cms), 60)), cms) for cms in seeds]
    assert paired_change_over_seeds(steady, design="nested").verdict == GAIN
    one, alone = paired_change_over_seeds(steady[:1], design="nested"), paired_change(*steady[0])
    assert one.value == pytest.approx(alone.value)  # one seed: the plain paired bootstrap
    assert one.low == pytest.approx(alone.low, abs=0.01)
    assert one.high == pytest.approx(alone.high, abs=0.01)
    with pytest.raises(ReportError, match="same images"):
        paired_change_over_seeds([(_images(10), _images(12))], design="nested")
    with pytest.raises(ReportError, match="crossed design"):
        paired_change_over_seeds([(_images(10), _images(10)), (_images(12), _images(12))],
                                 design="crossed")


@pytest.mark.parametrize("design", ["crossed", "nested"])
def test_copies_of_one_seed_are_not_more_evidence_when_seeds_share_images(design: str):
    """Ten copies of one (run, parent) pair: on shared images (crossed), nothing new was
    learnt, so the interval is that of one copy; independent resampling per copy (the old
    routine, and the nested design's rule) narrows it by about sqrt(10)."""
    base = _images(40, seed=7)
    noise = np.random.default_rng(3).integers(-200, 200, len(base))
    pair = (_moved(base, noise + 20), base)
    one = paired_change_over_seeds([pair], design=design)
    ten = paired_change_over_seeds([pair] * 10, design=design)
    width = lambda c: c.high - c.low  # noqa: E731
    assert ten.value == pytest.approx(one.value)
    if design == "crossed":
        assert (ten.low, ten.high) == (one.low, one.high)
    else:
        assert width(ten) < 0.5 * width(one)


def _study(rng: np.random.Generator, hard: np.ndarray, response: np.ndarray,
           gain: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """One seed's (changed, baseline) per-image matrices of 3 classes: an image's accuracy
    logit is its hardness, plus for the changed arm the change's mean gain and its response on
    that image (shared by every seed), plus a seed effect per arm and a little noise."""
    pixels = 1000
    arms = []
    for logit in (1 + gain + hard + response + rng.normal(0, 0.08), 1 + hard + rng.normal(0, 0.08)):
        right = np.round(pixels / (1 + np.exp(-(logit + rng.normal(0, 0.1, len(hard))))))
        cms = np.zeros((len(hard), 3, 3), np.int64)
        for c in range(3):
            cms[:, c, c], cms[:, c, (c + 1) % 3] = right, pixels - right
        arms.append(cms)
    return arms[0], arms[1]


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [3, 5])
def test_crossed_intervals_cover_the_true_change(seeds: int):
    """Simulated studies whose seeds share their images: the true change (the mean over seeds
    of the population's dataset-level change, from 40000 images x 300 seeds) lies inside the
    nominal 95% crossed interval at least 92% of the time."""
    rng = np.random.default_rng(0)
    hard, response = rng.normal(0, 0.6, 40000), rng.normal(0, 0.5, 40000)
    truth = np.mean([dataset_miou(a.sum(0)) - dataset_miou(b.sum(0))
                     for a, b in (_study(rng, hard, response) for _ in range(300))])
    covered, studies = 0, 300
    for _ in range(studies):
        images = rng.integers(len(hard), size=60)  # one val split, scored by every seed
        pairs = [_study(rng, hard[images], response[images]) for _ in range(seeds)]
        change = paired_change_over_seeds(pairs, design="crossed")
        covered += change.low <= truth <= change.high
    assert covered / studies >= 0.92


def test_per_class_intervals_contain_the_iou_and_match_a_plain_bootstrap():
    from desertmind.models.confusion import iou_from_confusion
    from desertmind.reports.uncertainty import class_iou_intervals

    cms = _images(80, seed=4)
    low, high = class_iou_intervals(cms)
    iou = iou_from_confusion(torch.from_numpy(cms.sum(0))).numpy()
    assert (low <= iou + 1e-12).all() and (iou <= high + 1e-12).all() and (high > low).all()
    rng = np.random.default_rng(2)  # a plain bootstrap written out, for class 0
    draws = [iou_from_confusion(torch.from_numpy(cms[rng.integers(0, 80, 80)].sum(0)))[0]
             for _ in range(2000)]
    ref = np.percentile(draws, [2.5, 97.5])
    width = ref[1] - ref[0]
    assert low[0] == pytest.approx(ref[0], abs=0.15 * width)
    assert high[0] == pytest.approx(ref[1], abs=0.15 * width)
