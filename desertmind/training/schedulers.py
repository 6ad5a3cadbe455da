"""Learning-rate schedules that torch does not ship: poly decay per step with linear warmup."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class PolyLR(LRScheduler):
    """``lr = base_lr * (1 - step / total_steps) ** power``, stepped every optimizer step.

    ``total_steps`` may be left None in a config: the module sets it to the trainer's
    ``estimated_stepping_batches`` before training. During the first ``warmup_steps`` steps the
    factor rises linearly from ``warmup_start`` to the poly value.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None, power: float = 0.9,
                 warmup_steps: int = 0, warmup_start: float = 0.1, last_epoch: int = -1) -> None:
        self.total_steps = total_steps
        self.power = power
        self.warmup_steps = warmup_steps
        self.warmup_start = warmup_start
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        total = max(self.total_steps or 1, 1)
        poly = (1.0 - min(step, total) / total) ** self.power
        if step < self.warmup_steps:
            ramp = self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
            return poly * ramp
        return poly

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
