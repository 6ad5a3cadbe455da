"""Data-loading throughput: desertmind's dataset vs a faithful re-implementation of the seed's.

Both read the same synthetic 960x540 Duality-format files. The seed's loader decodes with PIL,
divides a float image by 255 inside the dataset and fills an int64 mask with one boolean pass
per class (unknown values silently becoming class 0, as it did). Ours decodes with OpenCV,
remaps with one table lookup and keeps uint8; its figure through the DataLoader includes the
normalisation to float that it defers to the device.

Prints one JSON object: images/s for each loader, single process and through a DataLoader
(2 workers, batch 4, collate included), and the ratio ours/seed for each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import SeedDataset, machine
from torch.utils.data import DataLoader, Dataset

from desertmind.data.dataset import OffroadDataset
from desertmind.data.layout import list_split
from desertmind.data.synth import generate
from desertmind.data.transforms import normalize


def _single(ds: Dataset, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(ds)):
            ds[i]
    return repeats * len(ds) / (time.perf_counter() - start)


def _loader(ds: Dataset, repeats: int, ours: bool) -> float:
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    next(iter(loader))  # start the workers outside the timing
    n = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in loader:
            if ours:
                normalize(batch["image"])
                batch["mask"].long()
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
        ours, seed = OffroadDataset(samples), SeedDataset(samples)
        _single(ours, 1), _single(seed, 1)  # warm the page cache
        result = {
            "benchmark": "data_throughput",
            "machine": machine(),
            "image_size": f"{args.width}x{args.height}",
            "images": args.images,
            "single_process_images_per_s": {"ours": _single(ours, args.repeats),
                                            "seed": _single(seed, args.repeats)},
            "dataloader_2_workers_batch_4_images_per_s": {
                "ours": _loader(ours, args.repeats, True),
                "seed": _loader(seed, args.repeats, False)},
        }
    for key in ("single_process_images_per_s", "dataloader_2_workers_batch_4_images_per_s"):
        r = result[key]
        r = {k: round(v, 1) for k, v in r.items()}
        r["ratio_ours_over_seed"] = round(r["ours"] / r["seed"], 2)
        result[key] = r
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
