"""The model side of a run's randomness: torch's RNG seeded before every training step from
the run's step seed and the step's position (:class:`StepSeed`); the data side is
:class:`~desertmind.data.sampling.EpochSampler`."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

#: where a checkpoint keeps the seed of every training step's random state
STEP_SEED_KEY = "desertmind_step_seed"


class StepSeed(L.Callback):
    """The model side of :class:`~desertmind.data.sampling.EpochSampler`: torch's RNG
    (dropout, stochastic depth) is seeded before every training step from ``(step seed,
    epoch, batch, rank)``, so a step draws the same whether the run went straight through or
    was resumed from a checkpoint.

    The step seed is drawn once per run in ``setup`` from torch's RNG (``seed_everything``
    decides it) and kept in every checkpoint (:data:`STEP_SEED_KEY`), where a resume takes it
    back. Every fit gets it (:func:`desertmind.training.assembly.module_callbacks`).
    """

    def __init__(self) -> None:
        self.seed: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.seed is None:
            self.seed = int(torch.randint(2**31 - 1, ()).item())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: object, batch_idx: int) -> None:
        if self.seed is not None:
            key = [self.seed, trainer.current_epoch, batch_idx, trainer.global_rank]
            torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict) -> None:
        checkpoint[STEP_SEED_KEY] = self.seed

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict) -> None:
        self.seed = checkpoint.get(STEP_SEED_KEY, self.seed)
