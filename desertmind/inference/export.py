"""Exporting a trained network to ONNX or TorchScript with dynamic batch, height and width.

The exported graph is the network's contract forward: float32 images (N, 3, H, W) scaled as in
training (ImageNet mean/std, or / 255 only for a model trained with ``input_scaling: unit``),
to logits (N, 10, H, W), padding to the architecture's size multiple included, so any input
size works.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal, get_args

import torch

from desertmind.errors import ConfigError, check_choice
from desertmind.files import write_via_path
from desertmind.inference.trained import load_module
from desertmind.models.network import SegmentationNetwork

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = get_args(Format)


def load_network(ckpt: str | Path) -> SegmentationNetwork:
    """The checkpoint's network in eval mode, float32, on the CPU."""
    return load_module(ckpt).model.float().eval()


def export(ckpt: str | Path, fmt: str, out: str | Path, height: int = 540,
           width: int = 960) -> Path:
    """Write ``out`` atomically; ``height`` x ``width`` is only the example input's size."""
    check_choice("export format", fmt, FORMATS)
    model = load_network(ckpt)
    example = torch.randn(1, 3, height, width)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            if fmt == "onnx":
                torch.onnx.export(
                    model, (example,), tmp, input_names=["images"], output_names=["logits"],
                    dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                  "logits": {0: "batch", 2: "height", 3: "width"}},
                    opset_version=17, dynamo=False)
            else:
                try:
                    scripted = torch.jit.script(model)
                except Exception as e:  # noqa: BLE001 - TorchScript's frontend raises many types
                    raise ConfigError(
                        f"{type(model.encoder).__name__}: this architecture cannot be compiled "
                        f"to TorchScript ({type(e).__name__}); export it with --format onnx"
                    ) from e
                torch.jit.save(scripted, tmp)

    return write_via_path(out, write)
