"""Evaluation-time inference: flip and multi-scale TTA, sliding windows, class restriction."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from desertmind.errors import ConfigError

Forward = Callable[[torch.Tensor], torch.Tensor]  # normalised images -> logits, same size

#: the smallest sliding window: below it a 960x540 image needs thousands of forward passes
MIN_WINDOW = 16


def check_window(size: int | None) -> int | None:
    """``size`` if it is a usable sliding window (None: whole images), else a
    :class:`ConfigError`; the CLI, the module and the viewer refuse with this one message."""
    if size is None:
        return None
    if size < MIN_WINDOW:
        raise ConfigError(f"model.sliding_window={size}: a window is at least {MIN_WINDOW} "
                          "pixels (null: whole images)")
    return int(size)


def _starts(length: int, size: int, stride: int) -> list[int]:
    return list(range(0, length - size, stride)) + [length - size]


def window_count(height: int, width: int, size: int, stride: int | None = None) -> int:
    """How many forward passes :func:`sliding_window` makes over one ``height`` x ``width``
    image (what a request costs, known before any of them runs)."""
    stride = stride or max(1, size * 2 // 3)
    hh, ww = max(height, size), max(width, size)
    return len(_starts(hh, size, stride)) * len(_starts(ww, size, stride))


def sliding_window(forward: Forward, images: torch.Tensor, size: int,
                   stride: int | None = None) -> torch.Tensor:
    """Logits from overlapping ``size`` x ``size`` windows, averaged where they overlap.

    Images smaller than a window are padded (and the padding cropped off the result).
    """
    stride = stride or max(1, size * 2 // 3)
    n, _, h, w = images.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    x = F.pad(images, (0, pw, 0, ph)) if ph or pw else images
    hh, ww = x.shape[-2:]
    ys, xs = _starts(hh, size, stride), _starts(ww, size, stride)
    total = counts = None
    for y in ys:
        for x0 in xs:
            logits = forward(x[..., y:y + size, x0:x0 + size]).float()
            if total is None:
                total = logits.new_zeros((n, logits.shape[1], hh, ww))
                counts = logits.new_zeros((1, 1, hh, ww))
            total[..., y:y + size, x0:x0 + size] += logits
            counts[..., y:y + size, x0:x0 + size] += 1
    return (total / counts)[..., :h, :w]


def predict_probs(forward: Forward, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                  flip: bool = False, window: int | None = None) -> torch.Tensor:
    """Class probabilities (N, C, H, W) averaged over scales and horizontal flips."""
    h, w = images.shape[-2:]
    total, count = None, 0
    for scale in scales:
        x = images if scale == 1.0 else F.interpolate(
            images, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            logits = sliding_window(forward, xi, window) if window else forward(xi)
            logits = logits.float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
            count += 1
    return total / count


def restrict(scores: torch.Tensor, classes: Sequence[int] | None) -> torch.Tensor:
    """Scores with every class outside ``classes`` set to -inf, so argmax never picks one."""
    if classes is None:
        return scores
    keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
    keep[list(classes)] = True
    return scores.masked_fill(~keep.view(1, -1, 1, 1), float("-inf"))
