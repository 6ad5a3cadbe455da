"""Foundation-model networks side by side: parameters (total, trainable with and without LoRA),
training-step time per architecture, and the memory gradient checkpointing saves.

- ``networks``: for each architecture, the parameter counts and the median seconds of one
  training step (forward, cross-entropy, backward, AdamW) at the demo's 144x256, batch 2,
  random weights; ratios against DeepLabV3 MobileNetV3-Large, the study's network.
- ``grad_checkpointing``: one training step of DINOv3 ViT-B + DPT with and without timm's
  gradient checkpointing, each in a fresh process: on a GPU the peak of
  ``torch.cuda.max_memory_allocated``, on the CPU the peak of the resident memory (sampled
  every 2 ms) over what it was just before the step (the memory the step itself needed).
  Default 272x480 on the CPU; ``--full`` 540x960 (the real images) on a GPU.

Prints JSON. Figures from a CPU machine are for comparing the rows, not for planning a GPU run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine, sync

from desertmind.models.adapters import LoRA
from desertmind.models.registry import Network
from desertmind.training.module import SegmentationModule

NETWORKS = [
    ("deeplabv3", "mobilenet_v3_large", 0),
    ("upernet", "tu-convnext_tiny", 0),
    ("dpt", "tu-vit_small_patch16_dinov3", 0),
    ("dpt", "tu-vit_small_patch14_reg4_dinov2", 0),
    ("dpt", "tu-vit_small_patch16_dinov3", 16),
    ("dpt", "tu-vit_base_patch16_dinov3", 0),
    ("dpt", "tu-vit_base_patch16_dinov3", 16),
    ("dpt", "tu-vit_large_patch16_dinov3", 16),
]
MEMORY_NETWORK = ("dpt", "tu-vit_base_patch16_dinov3")


def _module(arch: str, backbone: str, rank: int) -> SegmentationModule:
    return SegmentationModule(Network(arch, backbone, lora=LoRA(rank=rank)),
                              optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4))


def _step(module: SegmentationModule, images: torch.Tensor, masks: torch.Tensor,
          optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(module.model(images), masks).backward()
    optimizer.step()


def network_row(arch: str, backbone: str, rank: int, device: torch.device, size: tuple[int, int],
                batch: int, repeats: int, time_it: bool) -> dict:
    module = _module(arch, backbone, rank).to(device).train()
    net = module.model
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    encoder = sum(p.numel() for p in net.encoder.parameters())
    row = {"arch": arch, "backbone": backbone, "lora_rank": rank,
           "params_m": round(total / 1e6, 2), "encoder_params_m": round(encoder / 1e6, 2),
           "trainable_params_m": round(trainable / 1e6, 2),
           "trainable_fraction": round(trainable / total, 4)}
    if time_it:
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        images = torch.rand(batch, 3, *size, device=device) * 255
        masks = torch.randint(0, 10, (batch, *size), device=device)
        _step(module, images, masks, optimizer)  # warm-up
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            _step(module, images, masks, optimizer)
            sync(device)
            times.append(time.perf_counter() - start)
        row["step_s"] = round(sorted(times)[len(times) // 2], 3)
    return row


class PeakRSS:
    """The highest resident memory of this process while the block runs (a sampling thread)."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self._process = psutil.Process()
        self.base = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def step_memory(network: tuple[str, str], enable: bool, size: tuple[int, int], batch: int,
                device: torch.device) -> dict:
    """The second training step of ``network`` (the first allocates AdamW's state) and the
    memory it needed: mostly the activations kept for the backward pass, and gradients. On a
    GPU the peak of ``torch.cuda.max_memory_allocated``; on the CPU the resident memory, so call
    it in a fresh process (:func:`memory_child`)."""
    module = _module(*network, 0).to(device).train()
    module.model.set_grad_checkpointing(enable)
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, *size, device=device) * 255
    masks = torch.randint(0, 10, (batch, *size), device=device)
    _step(module, images, masks, optimizer)  # the optimizer's state exists from here on
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with PeakRSS() as rss:
        start = time.perf_counter()
        _step(module, images, masks, optimizer)
        sync(device)
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        kind = "cuda max_memory_allocated"
    else:
        base, peak = rss.base, rss.peak
        kind = "CPU peak RSS growth"
    return {"grad_checkpointing": enable, "measure": kind,
            "step_memory_gib": round((peak - base) / 2**30, 3),
            "peak_gib": round(peak / 2**30, 3), "step_s": round(seconds, 2)}


def memory_child(enable: bool, size: tuple[int, int], batch: int) -> dict:
    """:func:`step_memory` of :data:`MEMORY_NETWORK` in this (fresh) process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return step_memory(MEMORY_NETWORK, enable, size, batch, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="540x960 for the memory section (a GPU), all networks timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-time", action="store_true", help="parameter counts only")
    parser.add_argument("--memory-child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=2, default=None, help="memory: H W")
    args = parser.parse_args()
    size = tuple(args.size) if args.size else ((540, 960) if args.full else (272, 480))
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child == "on", size, batch=2)))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    rows = [network_row(a, b, r, device, (144, 256), 2, args.repeats,
                        time_it=not args.no_time and (args.full or "vit_large" not in b))
            for a, b, r in NETWORKS]
    base = next(r for r in rows if r["arch"] == "deeplabv3").get("step_s")
    for row in rows:
        if base and "step_s" in row:
            row["step_vs_deeplabv3"] = round(row["step_s"] / base, 2)
    memory = []
    for enable in ("off", "on"):
        child = subprocess.run([sys.executable, str(Path(__file__)), "--memory-child", enable,
                                "--size", *map(str, size)], capture_output=True, text=True,
                               check=True)
        memory.append(json.loads(child.stdout.strip().splitlines()[-1]))
    off, on = memory
    print(json.dumps({
        "machine": machine(), "device": str(device),
        "networks": {"size": [144, 256], "batch": 2, "rows": rows},
        "grad_checkpointing": {
            "network": "/".join(MEMORY_NETWORK), "size": list(size), "batch": 2,
            "runs": memory,
            "memory_ratio_on_vs_off": round(on["step_memory_gib"] / off["step_memory_gib"], 3),
            "time_ratio_on_vs_off": round(on["step_s"] / off["step_s"], 2)},
    }, indent=1))


if __name__ == "__main__":
    main()
