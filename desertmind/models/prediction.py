"""The one prediction path: a network's class scores and maps for evaluation, with flip and
multi-scale TTA, sliding windows and class restriction.

Everything that scores a network calls these functions through one
:class:`~desertmind.models.evaluation.Evaluation` (the network, its :class:`EvalOptions` and
any test-time adaptation), so the same checkpoint and options give the same masks everywhere.
Options are per call: nothing is written into a model to change them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from desertmind.data.classes import CLASS_NAMES
from desertmind.data.imageio import MAX_PIXELS_ENV, max_pixels
from desertmind.errors import ConfigError
from desertmind.models.adaptation import shift_scores
from desertmind.models.network import SegmentationNetwork

#: ``model.evaluation.class_priors``: the posteriors as trained, or re-weighted by the target
#: images' class priors estimated with EM (:mod:`desertmind.models.adaptation`)
CLASS_PRIORS = ("train", "em")

#: the smallest sliding window: below it a 960x540 image needs thousands of forward passes
MIN_WINDOW = 16


def check_window(size: int | None) -> int | None:
    """``size`` if it is a usable sliding window (None: whole images), else a
    :class:`ConfigError`; the CLI, the module and the viewer refuse with this one message."""
    if size is None:
        return None
    if size < MIN_WINDOW:
        raise ConfigError(f"model.evaluation.sliding_window={size}: a window is at least "
                          f"{MIN_WINDOW} pixels (null: whole images)")
    return int(size)


@dataclass(frozen=True)
class EvalOptions:
    """How a trained network predicts at evaluation (``model.evaluation``); checked on creation.

    Args:
        tta_scales: softmax averaged over these input scales (e.g. [0.75, 1.0, 1.25]).
        tta_flip: also average over horizontal flips.
        sliding_window: predict in overlapping square windows of this size (large images);
            None: whole images.
        predict_classes: restrict the argmax to these class names (others are never
            predicted); None allows all.
        adapt_bn: test and predict first recompute the network's BatchNorm statistics from
            the images they are given (AdaBN), and put the trained ones back afterwards.
        class_priors: ``train`` (the posteriors as trained) or ``em``: test and predict first
            estimate the class priors of the images they are given (Saerens et al.'s EM)
            and re-weight every posterior by them, so classes absent there fade without a
            list of them.

    ``adapt_bn`` and ``class_priors: em`` use the evaluated images (never their masks): such
    an evaluation is transductive and says so. Validation during ``fit`` uses neither.
    """

    tta_scales: list[float] | None = None
    tta_flip: bool = False
    sliding_window: int | None = None
    predict_classes: list[str] | None = None
    adapt_bn: bool = False
    class_priors: str = "train"

    def __post_init__(self) -> None:
        scales = self.tta_scales
        if scales is not None and (not scales or any(x <= 0 for x in scales)):
            raise ConfigError(f"model.evaluation.tta_scales={scales}: every scale must be > 0, "
                              "e.g. [0.75, 1.0, 1.25]")
        check_window(self.sliding_window)
        classes = self.predict_classes
        if classes is not None and not classes:
            raise ConfigError("model.evaluation.predict_classes: [] would allow no class; "
                              "list the classes to keep, or null for all")
        if self.class_priors not in CLASS_PRIORS:
            raise ConfigError(f"model.evaluation.class_priors={self.class_priors!r}: one of "
                              f"{', '.join(CLASS_PRIORS)}")
        unknown = sorted(set(classes or []) - set(CLASS_NAMES))
        if unknown:
            raise ConfigError(f"predict_classes: unknown class(es) {unknown}; choose from "
                              f"{list(CLASS_NAMES)}")

    @property
    def uses_tta(self) -> bool:
        """Whether scores are TTA probabilities rather than the network's logits."""
        return bool(self.tta_flip or self.sliding_window
                    or (self.tta_scales and list(self.tta_scales) != [1.0]))

    @property
    def adapts(self) -> bool:
        """Whether test and predict adapt to the evaluated images first (transductive)."""
        return self.adapt_bn or self.class_priors == "em"

    @property
    def allowed(self) -> list[int] | None:
        """Train ids the argmax may pick (None: all)."""
        return ([CLASS_NAMES.index(n) for n in self.predict_classes]
                if self.predict_classes else None)


def check_scaled(height: int, width: int, scale: float) -> None:
    """Refuse a TTA scale that leaves a ``height`` x ``width`` image no pixel on a side, or
    makes it larger than the pixel limit every reader obeys."""
    h, w = int(height * scale), int(width * scale)
    if min(h, w) < 1 or h * w > max_pixels():
        raise ConfigError(f"model.evaluation.tta_scales: {scale} makes a {width}x{height} image "
                          f"{w}x{h}; a scale must leave at least one pixel a side and "
                          f"at most {max_pixels() / 1e6:.0f} MP ({MAX_PIXELS_ENV}), e.g. "
                          "[0.75, 1.0, 1.25]")


def _starts(length: int, size: int, stride: int) -> list[int]:
    return list(range(0, length - size, stride)) + [length - size]


def window_count(height: int, width: int, size: int, stride: int | None = None) -> int:
    """How many forward passes :func:`sliding_window` makes over one ``height`` x ``width``
    image (what a request costs, known before any of them runs)."""
    stride = stride or max(1, size * 2 // 3)
    return (len(_starts(height, min(size, height), stride))
            * len(_starts(width, min(size, width), stride)))


def sliding_window(network: SegmentationNetwork, images: torch.Tensor, size: int,
                   stride: int | None = None) -> torch.Tensor:
    """Logits from overlapping ``size`` x ``size`` windows, averaged where they overlap.

    A window is clamped to the image (as MMSegmentation's slide inference does): a side shorter
    than ``size`` is taken whole, so an absurd window costs one pass over the image, never a
    canvas of the window's size (100000 pixels square would be 120 GB).
    """
    stride = stride or max(1, size * 2 // 3)
    n, _, h, w = images.shape
    sh, sw = min(size, h), min(size, w)
    total = counts = None
    for y in _starts(h, sh, stride):
        for x0 in _starts(w, sw, stride):
            logits = network(images[..., y:y + sh, x0:x0 + sw]).float()
            if total is None:
                total = logits.new_zeros((n, logits.shape[1], h, w))
                counts = logits.new_zeros((1, 1, h, w))
            total[..., y:y + sh, x0:x0 + sw] += logits
            counts[..., y:y + sh, x0:x0 + sw] += 1
    return total / counts


def tta_probs(network: SegmentationNetwork, images: torch.Tensor,
              scales: Sequence[float] = (1.0,), flip: bool = False,
              window: int | None = None) -> torch.Tensor:
    """Class probabilities (N, C, H, W) averaged over scales and horizontal flips."""
    h, w = images.shape[-2:]
    total, count = None, 0
    for scale in scales:
        check_scaled(h, w, scale)
        x = images if scale == 1.0 else F.interpolate(
            images, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            logits = sliding_window(network, xi, window) if window else network(xi)
            logits = logits.float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
            count += 1
    return total / count


def predict_scores(network: SegmentationNetwork, images: torch.Tensor,
                   options: EvalOptions, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Class scores (N, C, H, W) for RGB 0-255 images: TTA probabilities when ``options``
    ask for TTA, else the logits (same argmax, one forward pass); re-weighted by the class
    prior ratio ``exp(shift)`` when given (:func:`~desertmind.models.adaptation.prior_shift`)."""
    if not options.uses_tta:
        return shift_scores(network(images), shift, probabilities=False)
    probs = tta_probs(network, images, options.tta_scales or [1.0], options.tta_flip,
                      options.sliding_window)
    return shift_scores(probs, shift, probabilities=True)


def class_probabilities(network: SegmentationNetwork, images: torch.Tensor,
                        options: EvalOptions) -> torch.Tensor:
    """Class probabilities (N, C, H, W) under ``options``: TTA's averaged probabilities, or
    the softmax of the logits (what EM class priors are estimated from)."""
    scores = predict_scores(network, images, options).float()
    return scores if options.uses_tta else scores.softmax(1)


def restrict(scores: torch.Tensor, classes: Sequence[int] | None) -> torch.Tensor:
    """Scores with every class outside ``classes`` set to -inf, so argmax never picks one."""
    if classes is None:
        return scores
    keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
    keep[list(classes)] = True
    return scores.masked_fill(~keep.view(1, -1, 1, 1), float("-inf"))


def labels_of(scores: torch.Tensor, options: EvalOptions) -> torch.Tensor:
    """Train ids (N, H, W) of scores, restricted to ``options.predict_classes``."""
    return restrict(scores, options.allowed).argmax(dim=1)


@torch.no_grad()
def predict_maps(network: SegmentationNetwork, images: torch.Tensor,
                 sizes: Sequence[tuple[int, int]], options: EvalOptions,
                 shift: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Class-id maps (uint8, on the CPU), one per image at its size in ``sizes``.

    Scores are resized first and restricted after: restricting first would put -inf into the
    bilinear resize, whose NaNs argmax would pick.
    """
    return [labels for labels, _ in _resized(network, images, sizes, options, shift, False)]


def predict_confidence(network: SegmentationNetwork, images: torch.Tensor,
                       sizes: Sequence[tuple[int, int]], options: EvalOptions,
                       shift: torch.Tensor | None = None) -> list[tuple[torch.Tensor,
                                                                        torch.Tensor]]:
    """(class-id map, confidence) per image: the confidence is the probability of the class
    predicted (the largest softmax value, among the allowed classes), float32 in [0, 1]."""
    return list(_resized(network, images, sizes, options, shift, True))


def _resized(network, images, sizes, options, shift, confidence: bool):
    scores = predict_scores(network, images, options, shift)
    for i, (h, w) in enumerate(sizes):
        s = scores[i:i + 1]
        if s.shape[-2:] != (h, w):
            s = F.interpolate(s.float(), size=(h, w), mode="bilinear", align_corners=False)
        labels = labels_of(s, options)[0].to(torch.uint8).cpu()
        if not confidence:
            yield labels, None
            continue
        allowed = restrict(s.float(), options.allowed)
        if options.uses_tta:  # averaged probabilities: renormalised over the allowed classes
            probs = allowed.clamp_min(0).nan_to_num(0.0)
            probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
        else:
            probs = allowed.softmax(1)
        yield labels, probs.amax(1)[0].cpu()
