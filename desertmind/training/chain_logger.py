"""TensorBoard steps that continue across a chain of phases.

Each phase is its own run, so TensorBoard would draw every phase from step 0 on top of the
others. A phase started from another run's weights (``model.init_from``) instead logs its step
N at ``N + offset``, where the offset is the step at which the source run's checkpoint was
saved, itself on the chained axis (:data:`~desertmind.training.checkpoints.STEP_OFFSET_KEY`).
The four phases then lie end to end on one axis. Only what is logged moves: checkpoints,
schedulers and callbacks keep the run's own ``global_step``.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


class ChainedTensorBoardLogger(TensorBoardLogger):
    """A TensorBoardLogger whose logged steps start at ``step_offset`` (set by the model when
    it loads ``init_from``; 0 for a phase that starts from scratch)."""

    step_offset: int = 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)


def set_step_offset(trainer: L.Trainer, offset: int) -> None:
    """Give every chained logger of ``trainer`` its offset."""
    for logger in trainer.loggers:
        if isinstance(logger, ChainedTensorBoardLogger):
            logger.step_offset = offset


def logged_step(trainer: L.Trainer) -> int:
    """The step to give to a writer used directly (images, figures): the run's global step on
    the chained axis."""
    offsets = [lg.step_offset for lg in trainer.loggers if isinstance(lg, ChainedTensorBoardLogger)]
    return trainer.global_step + (offsets[0] if offsets else 0)
