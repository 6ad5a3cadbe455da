"""Training throughput: `desertmind fit` (Lightning) vs a plain PyTorch loop written like the
study's script, on the same model, data and device, plus a model-only ceiling.

- Lightning: our data module (uint8 batches, normalised on the device; ``--cache memory|disk``
  serves them from the decoded cache, built before the timing), precision auto (bf16 on a GPU
  that has it), channels_last on a GPU.
- Plain loop (the study's): float images divided by 255 in the dataset, an int64 mask built with
  a boolean pass per class, autocast + GradScaler on CUDA, AdamW, loss.item() every step.
- Model-only: random tensors already on the device, forward + backward + step with our
  settings: what the pipeline could reach if data cost nothing.

Prints JSON: images/s of each, lightning / plain, and pipeline efficiency = lightning /
model-only. Defaults are CPU-sized (256x144); pass --full for 960x540 on a GPU, and
``--backbone resnet101`` for DeepLabV3 ResNet-101 (all three use the same network).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from _common import StudyDataset, machine, sync
from torch.utils.data import DataLoader

from desertmind.cli.lightning import resolve_precision
from desertmind.data.cache import CACHES
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.layout import list_split
from desertmind.data.synth import generate
from desertmind.models import build_network
from desertmind.models.registry import Network
from desertmind.training.module import SegmentationModule
from desertmind.training.speed import Speedups


class StepTimer(L.Callback):
    """Seconds from the start of step ``warmup`` to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and not self.start:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.seconds = time.perf_counter() - self.start


def lightning_ips(root: Path, args, device: torch.device) -> float:
    module = SegmentationModule(Network(args.arch, args.backbone),
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4))
    dm = OffroadDataModule(str(root), batch_size=args.batch, num_workers=args.workers,
                           cache=args.cache, cache_dir=str(root.parent / "cache"))
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator=device.type, devices=1,
                        precision=resolve_precision(device.type), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[timer, Speedups(channels_last=device.type == "cuda")])
    trainer.fit(module, dm)
    return args.steps * args.batch / timer.seconds


def plain_ips(root: Path, args, device: torch.device) -> float:
    cuda = device.type == "cuda"
    loader = DataLoader(StudyDataset(list_split(root, "train")), batch_size=args.batch,
                        shuffle=True, num_workers=args.workers, drop_last=True, pin_memory=cuda,
                        persistent_workers=args.workers > 0)
    model = build_network(args.arch, args.backbone).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    step, start, running = 0, 0.0, 0.0
    while step < args.warmup + args.steps:
        for images, masks in loader:
            if step == args.warmup:
                sync(device)
                start = time.perf_counter()
            images, masks = images.to(device), masks.to(device)
            with torch.autocast(device.type, enabled=cuda):
                loss = criterion(model(images), masks)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += loss.item()
            step += 1
            if step == args.warmup + args.steps:
                break
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def model_only_ips(args, device: torch.device, channels_last: bool | None = None,
                   compile: bool = False) -> float:
    """The ceiling: random tensors on the device; channels_last defaults to on for CUDA."""
    cuda = device.type == "cuda"
    model = build_network(args.arch, args.backbone).to(device).train()
    fmt = torch.channels_last if (cuda if channels_last is None else channels_last) \
        else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.height, args.width, device=device).contiguous(
        memory_format=fmt)
    y = torch.randint(0, 10, (args.batch, args.height, args.width), device=device)
    dtype = torch.bfloat16 if resolve_precision(device.type) == "bf16-mixed" else torch.float16
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="960x540 (GPU-sized)")
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arch", default="deeplabv3",
                        help="deeplabv3 (torchvision) or an SMP architecture, e.g. deeplabv3plus")
    parser.add_argument("--backbone", default="mobilenet_v3_large",
                        help="mobilenet_v3_large, resnet50 or resnet101 (SMP: its encoders)")
    parser.add_argument("--cache", default="none", choices=CACHES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    args.height, args.width = (540, 960) if args.full else (144, 256)
    device = torch.device(args.device)
    n = (args.warmup + args.steps) * args.batch
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", n, 2, args.height, args.width)
        torch.manual_seed(0)
        plain = plain_ips(root, args, device)
        torch.manual_seed(0)
        ours = lightning_ips(root, args, device)
    ceiling = model_only_ips(args, device)
    print(json.dumps({
        "benchmark": "train_throughput",
        "machine": machine(),
        "device": str(device),
        "precision": resolve_precision(device.type),
        "setup": f"{args.arch} {args.backbone}, {args.width}x{args.height}, batch {args.batch}, "
                 f"{args.workers} workers, cache {args.cache}, {args.steps} timed steps after "
                 f"{args.warmup}",
        "lightning_images_per_s": round(ours, 2),
        "plain_loop_images_per_s": round(plain, 2),
        "model_only_images_per_s": round(ceiling, 2),
        "ratio_lightning_over_plain": round(ours / plain, 3),
        "pipeline_efficiency_lightning_over_model_only": round(ours / ceiling, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
