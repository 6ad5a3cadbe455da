"""Segmentation losses by name: ``ce``, ``weighted_ce``, ``dice`` and weighted sums of them.

A loss spec is a sum of terms, each an optional coefficient and a name, e.g. ``"ce"`` or
``"weighted_ce + 0.5 dice"`` (the study's phase 3). Pixels equal to the ignore index never
contribute.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from desertmind.data.classes import IGNORE_INDEX
from desertmind.errors import ConfigError

LOSSES = ("ce", "weighted_ce", "dice", "study_dice")
_TERM = re.compile(r"^\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*?\s*)?([a-z_]+)\s*$")


class SoftDiceLoss(nn.Module):
    """Multi-class soft Dice: ``1 - mean_c (2 sum(p_c t_c) + eps) / (sum(p_c) + sum(t_c) + eps)``.

    Probabilities are the softmax over classes, computed in float32. Ignored pixels are
    removed from both sums. The mean runs over the classes present in the batch's target, so
    classes that are absent do not reward predicting nothing; ``all_classes`` averages over
    every class instead (the study's ``study_dice``: eps 1e-6, an absent class scores about 1
    when nothing is predicted for it and about 0 when anything is).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, eps: float = 1.0,
                 all_classes: bool = False) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.eps = eps
        self.all_classes = all_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.float().softmax(dim=1) * valid
        onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), num_classes)
        onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        card = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.eps) / (card + self.eps)
        if self.all_classes:
            return 1.0 - dice.mean()
        present = onehot.sum(dims) > 0
        if not present.any():
            return probs.sum() * 0.0  # nothing labelled: zero loss that keeps the graph
        return 1.0 - dice[present].mean()


class CrossEntropy(nn.Module):
    """Cross-entropy with optional class weights held in a non-persistent buffer.

    The weights are derived from the data, so they stay out of checkpoints: a checkpoint
    trained with one loss loads into a module configured with another. The loss is computed
    in float32 whatever the logits' dtype (as autocast does), so the weights and the logits
    agree under every precision, ``bf16-true`` included, where Lightning may cast the buffer.
    """

    def __init__(self, weight: torch.Tensor | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else weight.float(),
                             persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            # no labelled pixel (every mask value unknown): a mean over none would be NaN and
            # stop training; zero keeps the graph and lets the batch pass
            return logits.float().sum() * 0.0
        weight = None if self.weight is None else self.weight.float()
        if torch.are_deterministic_algorithms_enabled():
            return deterministic_cross_entropy(logits.float(), target, weight, self.ignore_index)
        return F.cross_entropy(logits.float(), target, weight=weight,
                               ignore_index=self.ignore_index)


def deterministic_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """``F.cross_entropy(logits, target, weight, ignore_index)`` (mean reduction) from
    operations with deterministic CUDA kernels: CUDA's ``nll_loss2d`` has none, so under
    ``torch.use_deterministic_algorithms(True)`` (``trainer.deterministic: true``) the plain
    call raises. The target's log-probability is picked by a one-hot product (not a gather,
    whose backward is a scatter-add) and the weighted mean is written out."""
    valid = target != ignore_index
    safe = target.masked_fill(~valid, 0)
    onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    picked = (logits.log_softmax(1) * onehot).sum(1)  # log p(target) per pixel
    pixel_weight = valid.to(logits.dtype)
    if weight is not None:
        pixel_weight = pixel_weight * weight[safe]
    return -(picked * pixel_weight).sum() / pixel_weight.sum()


class CombinedLoss(nn.Module):
    """Weighted sum of named losses; ``terms`` is ``[(coefficient, name, module), ...]``."""

    def __init__(self, terms: list[tuple[float, str, nn.Module]]) -> None:
        super().__init__()
        self.coefficients = [c for c, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.losses = nn.ModuleList([m for _, _, m in terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for c, loss in zip(self.coefficients, self.losses, strict=True):
            total = total + c * loss(logits, target)
        return total


def needs_class_weights(spec: str) -> bool:
    """Whether the loss ``spec`` has a ``weighted_ce`` term."""
    return any(name == "weighted_ce" for _, name in parse_loss(spec))


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """``"ce + 0.5 dice"`` -> ``[(1.0, "ce"), (0.5, "dice")]``, refusing unknown names."""
    terms = []
    for part in spec.split("+"):
        m = _TERM.match(part)
        if not m or m.group(2) not in LOSSES:
            raise ConfigError(f"cannot read loss term {part.strip()!r} in {spec!r}; a loss is a "
                             f"sum of terms like '0.5 dice', with names from {LOSSES}")
        terms.append((float(m.group(1)) if m.group(1) else 1.0, m.group(2)))
    return terms


def build_loss(spec: str, class_weights: torch.Tensor | None = None,
               ignore_index: int = IGNORE_INDEX) -> CombinedLoss:
    """Build the loss for ``spec``; ``weighted_ce`` needs ``class_weights``."""
    terms: list[tuple[float, str, nn.Module]] = []
    for coef, name in parse_loss(spec):
        if name == "ce":
            module: nn.Module = CrossEntropy(None, ignore_index)
        elif name == "weighted_ce":
            if class_weights is None:
                raise ConfigError("loss 'weighted_ce' needs class weights: set "
                                 "data.class_weighting to inverse_log or median_frequency")
            module = CrossEntropy(class_weights, ignore_index)
        elif name == "study_dice":
            module = SoftDiceLoss(ignore_index, eps=1e-6, all_classes=True)
        else:
            module = SoftDiceLoss(ignore_index)
        terms.append((coef, name, module))
    return CombinedLoss(terms)
