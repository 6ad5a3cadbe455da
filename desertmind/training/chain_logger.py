"""TensorBoard steps that continue across a chain of phases.

Each phase is its own run, so TensorBoard would draw every phase from step 0 on top of the
others. A phase started from another run's weights (``model.init_from``) instead logs its step
N at ``N + offset``, where the offset is where the source run's logging ended, itself on the
chained axis (:func:`logged_end`). The four phases then lie end to end on one axis. Only
what is logged moves: checkpoints, schedulers and callbacks keep the run's own
``global_step``.

Kept rather than relying on TensorBoard's "relative" axis: that axis is wall time, so a phase
resumed after a pause, or run on another machine, would not line up; steps do.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from desertmind import runs

#: where every checkpoint records the step at which its run's logging started
STEP_OFFSET_KEY = "desertmind_step_offset"


class ChainedTensorBoardLogger(TensorBoardLogger):
    """A TensorBoardLogger whose logged steps start where ``init_from``'s run ended.

    The logger finds the offset itself: Lightning hands every logger the module's
    hyperparameters before the first step (``log_hyperparams``), ``init_from`` among them. A
    phase that starts from scratch logs from 0.
    """

    step_offset: int = 0

    def log_hyperparams(self, params: Mapping[str, Any] | Any, *args: Any,
                        **kwargs: Any) -> None:
        if isinstance(params, Mapping) and "init_from" in params:
            init = params["init_from"]
            self.step_offset = logged_end(init) if isinstance(init, str) and init else 0
        super().log_hyperparams(params, *args, **kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)


def logged_end(path: str | Path) -> int:
    """Where the run that wrote checkpoint ``path`` ended its logging on the chained axis: the
    step of its ``last.ckpt`` when the file sits in a phase's checkpoints folder (the run went
    on after its best epoch), else its own; 0 for a file that cannot be read (only the
    logging axis depends on it)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the model's own load names a bad file
        return 0
    last = Path(path).parent / f"{runs.LAST}{runs.CKPT_EXT}"
    if Path(path).parent.name == runs.CHECKPOINT_DIR and last.is_file():
        try:  # memory-mapped: only the step numbers are read, not the optimizer state
            ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # only the logging axis depends on it
            warnings.warn(f"{last}: unreadable ({e}); this run's TensorBoard steps continue "
                          f"from {path} instead", stacklevel=2)
    return int(ckpt.get("global_step", 0)) + int(ckpt.get(STEP_OFFSET_KEY, 0))


def step_offset(trainer: L.Trainer) -> int:
    """Where ``trainer``'s logging starts on the chained axis (0 without a chained logger)."""
    offsets = [lg.step_offset for lg in trainer.loggers if isinstance(lg, ChainedTensorBoardLogger)]
    return offsets[0] if offsets else 0


def logged_step(trainer: L.Trainer) -> int:
    """The step to give to a writer used directly (images, figures): the run's global step on
    the chained axis."""
    return trainer.global_step + step_offset(trainer)
