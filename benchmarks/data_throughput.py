"""Data-loading throughput: desertmind's dataset from the PNGs and from its decoded cache, and a
faithful re-implementation of the study's loader.

All three read the same synthetic 960x540 Duality-format files. The study's loader decodes with
PIL, divides a float image by 255 inside the dataset and fills an int64 mask with one boolean
pass per class (unknown values silently becoming class 0, as it did). Ours decodes with OpenCV,
remaps with one table lookup and keeps uint8 (normalisation is done later, on the device, and is
not timed here); ``cached`` serves the same arrays from the disk cache (``data.cache: disk``),
built before the timing.

Prints one JSON object: images/s for each loader in one process (no DataLoader, each sample
collated into a batch of one), through a
DataLoader with 2 workers and through one that loads in the main process (batch 4, collate
included), with the ratios cached/PNG and PNG/study. ``transport_ceiling`` is a 2-worker
DataLoader over a dataset that returns the same constant 960x540 tensors without reading
anything: what moving batches from worker processes to the main process costs by itself.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import StudyDataset, machine
from torch.utils.data import DataLoader, Dataset, default_collate

from desertmind.data.cache import open_cache
from desertmind.data.dataset import OffroadDataset
from desertmind.data.layout import list_split
from desertmind.data.synth import generate


def _single(ds: Dataset, repeats: int) -> float:
    """Samples per second in this process, each collated into a one-sample batch, so that a
    sample served as a view into the cache is read too, as training reads it."""
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(ds)):
            default_collate([ds[i]])
    return repeats * len(ds) / (time.perf_counter() - start)


class _Constant(Dataset):
    """Samples of the benchmark's shape that cost nothing to produce."""

    def __init__(self, n: int, height: int, width: int) -> None:
        self.n = n
        self.image = torch.zeros(3, height, width, dtype=torch.uint8)
        self.mask = torch.zeros(height, width, dtype=torch.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"image": self.image, "mask": self.mask}


def _loader(ds: Dataset, repeats: int, workers: int = 2) -> float:
    loader = DataLoader(ds, batch_size=4, num_workers=workers, persistent_workers=workers > 0)
    next(iter(loader))  # start the workers outside the timing
    n = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for _batch in loader:
            n += 4
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--height", type=int, default=540)
    parser.add_argument("--width", type=int, default=960)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", n_train=args.images, n_val=0,
                        height=args.height, width=args.width)
        samples = list_split(root, "train")
        decoded = open_cache(samples, "disk", root / "train", Path(tmp) / "cache",
                             progress=False)
        loaders = {"png": OffroadDataset(samples), "cached": OffroadDataset(samples,
                                                                           decoded=decoded),
                   "study": StudyDataset(samples)}
        for ds in loaders.values():
            _single(ds, 1)  # warm the page cache
        result = {
            "benchmark": "data_throughput",
            "machine": machine(),
            "image_size": f"{args.width}x{args.height}",
            "images": args.images,
            "single_process_images_per_s": {k: _single(ds, args.repeats)
                                            for k, ds in loaders.items()},
            "dataloader_2_workers_batch_4_images_per_s": {k: _loader(ds, args.repeats)
                                                          for k, ds in loaders.items()},
            "dataloader_main_process_batch_4_images_per_s": {
                k: _loader(ds, args.repeats, workers=0) for k, ds in loaders.items()},
        }
    ceiling = _Constant(args.images, args.height, args.width)
    result["transport_ceiling_2_workers_images_per_s"] = round(_loader(ceiling, args.repeats), 1)
    for key in ("single_process_images_per_s", "dataloader_2_workers_batch_4_images_per_s",
                "dataloader_main_process_batch_4_images_per_s"):
        r = {k: round(v, 1) for k, v in result[key].items()}
        r["ratio_cached_over_png"] = round(r["cached"] / r["png"], 2)
        r["ratio_png_over_study"] = round(r["png"] / r["study"], 2)
        result[key] = r
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
