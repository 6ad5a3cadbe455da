"""Self-training on unlabelled target images: a teacher's confident predictions as labels.

The options are one config group, ``model.self_training`` (:class:`SelfTraining`). The
teacher is the network a phase starts from (``model.init_from``), kept fixed, or moved toward
the student after every step as an exponential moving average (``teacher_ema``). On
each target batch it predicts; a pixel becomes a pseudo-label when the teacher's confidence is
at least ``threshold``, and, with ``class_balance``, also when it is among the more confident
half of its predicted class in the batch (class-balanced self-training, Zou et al. 2018), so
rare classes keep some labels instead of the frequent ones taking them all. Every other pixel
is ignored. Target masks are never read: the labels come from the teacher alone.

The teacher lives outside the LightningModule's state, so checkpoints hold the student only
and load anywhere a normal checkpoint does; a resumed run rebuilds the teacher from
``init_from`` (an EMA teacher starts again from there).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from desertmind.data.classes import IGNORE_INDEX
from desertmind.errors import ConfigError


@dataclass(frozen=True)
class SelfTraining:
    """Self-training's options (``model.self_training``); checked on creation.

    Args:
        weight: weight of the pseudo-label loss on the data module's unlabelled
            ``target_dir`` images (0: off).
        threshold: the teacher's confidence a pixel needs to become a pseudo-label.
        class_balance: also keep the more confident half of each predicted class.
        teacher_ema: None: a fixed teacher; e.g. 0.999: an exponential moving average of the
            student.
    """

    weight: float = 0.0
    threshold: float = 0.9
    class_balance: bool = True
    teacher_ema: float | None = None

    def __post_init__(self) -> None:
        ema = self.teacher_ema
        if self.weight < 0 or not 0 < self.threshold <= 1 or (
                ema is not None and not 0 < ema < 1):
            raise ConfigError(f"model.self_training: weight={self.weight}, threshold="
                              f"{self.threshold}, teacher_ema={ema}: need a weight >= 0, a "
                              "threshold in (0, 1] and an EMA decay in (0, 1) or null")

    @property
    def enabled(self) -> bool:
        """Whether training also takes batches of unlabelled target images."""
        return self.weight > 0


class PseudoLabeler:
    """A frozen copy of ``network`` that labels target images (see the module doc)."""

    def __init__(self, network: nn.Module, *, threshold: float = 0.9,
                 class_balance: bool = True, ema_decay: float | None = None) -> None:
        self.teacher = copy.deepcopy(network).eval()
        self.teacher.requires_grad_(False)
        self.threshold = threshold
        self.class_balance = class_balance
        self.ema_decay = ema_decay

    def to(self, device: torch.device) -> PseudoLabeler:
        self.teacher.to(device)
        return self

    @torch.no_grad()
    def label(self, images: Tensor) -> Tensor:
        """Pseudo-labels (N, H, W) int64 for RGB 0-255 images; unconfident pixels ignored."""
        probs = self.teacher(images).float().softmax(1)
        conf, pred = probs.max(1)
        keep = conf >= self.threshold
        if self.class_balance:
            for c in pred.unique():
                chosen = pred == c
                keep |= chosen & (conf >= conf[chosen].median())
        return pred.masked_fill(~keep, IGNORE_INDEX)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """With an EMA teacher: teacher = decay x teacher + (1 - decay) x student; buffers
        (BatchNorm statistics) are copied."""
        if self.ema_decay is None:
            return
        for t, s in zip(self.teacher.parameters(), student.parameters(), strict=True):
            t.lerp_(s.detach().to(t.dtype), 1.0 - self.ema_decay)
        for t, s in zip(self.teacher.buffers(), student.buffers(), strict=True):
            t.copy_(s)


def pseudo_label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy (float32) over the pseudo-labelled pixels; zero, with its graph, when the
    teacher kept none (a mean over no pixels would be NaN)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
