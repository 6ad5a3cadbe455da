"""Exporting a trained model to ONNX or TorchScript with dynamic batch, height and width.

The exported graph takes normalised float32 images (N, 3, H, W), ImageNet mean/std as in
training, and returns logits (N, 10, H, W).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from desertmind.errors import ConfigError
from desertmind.module import SegmentationModule

FORMATS = ("onnx", "torchscript")


class LogitsOnly(nn.Module):
    """torchvision's segmentation models return a dict; exporters want a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


def load_for_export(ckpt: str | Path) -> nn.Module:
    """The checkpoint's network in eval mode on the CPU, without its aux head."""
    module = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu", weights="none")
    model = module.model.float().eval()
    model.aux_classifier = None
    return LogitsOnly(model).eval()


def export(ckpt: str | Path, fmt: str, out: str | Path, height: int = 540,
           width: int = 960) -> Path:
    """Write ``out`` atomically; ``height`` x ``width`` is only the example input's size."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} not found")
    model = load_for_export(ckpt)
    example = torch.randn(1, 3, height, width)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if fmt == "onnx":
                torch.onnx.export(
                    model, (example,), tmp, input_names=["images"], output_names=["logits"],
                    dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                  "logits": {0: "batch", 2: "height", 3: "width"}},
                    opset_version=17, dynamo=False)
            else:
                torch.jit.save(torch.jit.script(model), tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
