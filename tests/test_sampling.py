"""The training sampler: an epoch's order and augmentations from (seed, epoch) alone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from desertmind.data.dataset import OffroadDataset, collate
from desertmind.data.layout import list_split
from desertmind.data.sampling import EpochSampler
from desertmind.data.transforms import build_transform


def _epochs(root: Path, workers: int, epochs: int = 2) -> list[list[torch.Tensor]]:
    """Augmented training images of each epoch, through a DataLoader like the data module's."""
    dataset = OffroadDataset(list_split(root, "train"), build_transform("flip_color", (32, 48)))
    sampler = EpochSampler(dataset, seed=7)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, collate_fn=collate, drop_last=True)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append([batch["image"] for batch in loader])
    return out


def test_an_epoch_depends_on_seed_and_epoch_not_on_the_workers(synth_root: Path):
    main, workers = _epochs(synth_root, 0), _epochs(synth_root, 2)
    for a, b in zip(main, workers, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # persistent workers used to carry their augmentation state into the next epoch; the
    # epochs differ from each other, and a fresh loader repeats epoch 1 by itself
    assert not all(torch.equal(x, y) for x, y in zip(main[0], main[1], strict=True))


def test_order_and_seeds_are_fixed_by_seed_and_epoch():
    dataset = list(range(10))
    a, b = EpochSampler(dataset, seed=1), EpochSampler(dataset, seed=1, epoch=3)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(123)  # whatever the global RNG holds
    assert list(a) == first
    assert sorted(i for i, _ in first) == dataset
    assert len({s for _, s in first}) == 10
    a.set_epoch(3)
    assert list(a) == list(b) != first
    assert list(EpochSampler(dataset, seed=2)) != first


def test_skip_resumes_the_epoch_once():
    dataset = list(range(10))
    full = list(EpochSampler(dataset, seed=1, epoch=2))
    sampler = EpochSampler(dataset, seed=1, epoch=2, skip=4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # a cycling loader's next pass starts from the beginning
    assert len(sampler) == 10  # Lightning counts the epoch's batches from the full length


def test_processes_share_one_permutation():
    dataset = list(range(9))
    ranks = [list(EpochSampler(dataset, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # padded like DistributedSampler
    assert {i for r in ranks for i, _ in r} == set(dataset)
