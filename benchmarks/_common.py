"""Helpers shared by the benchmark scripts (not a test): machine description, timing."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from desertmind.data.classes import CLASSES
from desertmind.data.layout import Sample


def machine() -> str:
    """CPU model, core count, GPU if any, torch version."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], device: torch.device, warmup: int = 2,
                  repeats: int = 5) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class StudyDataset(Dataset):
    """The study's loader: PIL, float32 / 255 in the dataset, a boolean pass per class."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[index]
        image = np.array(Image.open(s.image).convert("RGB"), dtype=np.float32) / 255.0
        raw = np.array(Image.open(s.mask))
        mask = np.zeros(raw.shape, dtype=np.int64)
        for c in CLASSES:
            mask[raw == c.raw_id] = c.train_id
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)
