"""Self-training on unlabelled target images: a teacher's confident predictions as labels.

The options are one config group, ``model.self_training`` (:class:`SelfTraining`). The
teacher is the network a phase starts from (``model.init_from``), kept fixed, or moved toward
the student after every step as an exponential moving average (``teacher_ema``). On
each target batch it predicts; a pixel becomes a pseudo-label when the teacher's confidence is
at least ``threshold``, and, with ``class_balance``, also when it is among the more confident
half of its predicted class in the batch (class-balanced self-training, Zou et al. 2018), so
rare classes keep some labels instead of the frequent ones taking them all. Every other pixel
is ignored. Target masks are never read: the labels come from the teacher alone.

The EMA is torch's ``AveragedModel`` with ``get_ema_multi_avg_fn``, the averaging Lightning's
``EMAWeightAveraging`` uses; Lightning's callback itself averages the model being trained and
exposes its average only privately, so it cannot serve as the teacher. The teacher lives
outside the LightningModule's state, so checkpoints hold the student only
and load anywhere a normal checkpoint does; a resumed run rebuilds the teacher from
``init_from`` (an EMA teacher starts again from there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

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
    """A frozen copy of ``network`` that labels target images (see the module doc).

    The copy is torch's ``AveragedModel`` (what Lightning's ``EMAWeightAveraging`` keeps too),
    so an EMA teacher is torch's EMA of the student's parameters and buffers, started from
    ``network`` as it is now."""

    def __init__(self, network: nn.Module, *, threshold: float = 0.9,
                 class_balance: bool = True, ema_decay: float | None = None) -> None:
        multi_avg_fn = get_ema_multi_avg_fn(ema_decay) if ema_decay is not None else None
        self.teacher = AveragedModel(network, multi_avg_fn=multi_avg_fn, use_buffers=True)
        self.teacher.update_parameters(network)  # the first "average" is the copy itself
        self.teacher.eval().requires_grad_(False)
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
        """With an EMA teacher: teacher = decay x teacher + (1 - decay) x student, for the
        parameters and the floating-point buffers (BatchNorm statistics)."""
        if self.ema_decay is not None:
            self.teacher.update_parameters(student)


def pseudo_label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy (float32) over the pseudo-labelled pixels; zero, with its graph, when the
    teacher kept none (a mean over no pixels would be NaN)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
