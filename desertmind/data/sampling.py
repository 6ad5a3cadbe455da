"""Training randomness drawn from the run's seed and the position in the run alone, so that a
resumed run continues exactly where it stopped: the sampler (an epoch's order and every
sample's augmentation); the step seed (torch's RNG in each training step) is its model side,
:class:`~desertmind.training.step_seed.StepSeed`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffles like torch's DistributedSampler (a permutation seeded by ``seed + epoch``) and
    yields ``(index, augmentation seed)`` pairs, the seed drawn from ``(seed, epoch, rank)``.

    Why not torch's RandomSampler and per-worker seeds: they draw from the state the process's
    RNG happens to be in when an epoch's iterator is made, and persistent workers carry their
    augmentation state from epoch to epoch. Neither is in a checkpoint, so a run resumed from
    ``last.ckpt`` used to see other images in another order with other augmentations than the
    uninterrupted run, and end with another ``best.ckpt``. Here an epoch's samples depend on
    ``(seed, epoch)`` only: not on the number of DataLoader workers, not on whether they
    persist, not on what used the RNG before.

    ``skip`` drops the epoch's first samples of this process from the next pass only: a run
    resumed in the middle of an epoch sees the rest of the same epoch (Lightning counts the
    batches already done), and a loader that cycles within the epoch (self-training's target
    images) then starts its next pass from the beginning, as the uninterrupted run did.

    Being a DistributedSampler, Lightning keeps it under DDP (it would replace a plain
    sampler); each process takes its share of the same permutation.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0,
                 epoch: int = 0, skip: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed)
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(
            len(indices))
        skip, self.skip = self.skip, 0
        return iter(list(zip(indices, seeds.tolist(), strict=True))[skip:])
