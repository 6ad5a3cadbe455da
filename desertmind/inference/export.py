"""Exporting a trained network to ONNX with dynamic batch, height and width.

The exported graph is the network's contract forward, so it takes what a deployer has:
float32 RGB images in 0-255, (N, 3, H, W), any H and W. The network's own input scaling
(ImageNet mean/std, or / 255 only for a model trained with ``input_scaling: unit``) is inside
the graph, then logits (N, 10, H, W), padding to the architecture's size multiple included.
The ONNX file also carries what a deployer needs to read its output, as ``metadata_props``
(class names and raw ids, the input contract, architecture, input scaling and desertmind
version).

Two things make foundation-model networks exportable: low-rank adapters are merged into their
layers first (the graph is plain layers; onnxruntime needs no peft), and the antialiased bicubic
resampling with which a ViT with learned position embeddings (DINOv2) fits them to the token
grid is written as ONNX's antialiased cubic ``Resize`` (opset 18), which the exporter has no
rule for.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal, get_args

import torch

from desertmind import __version__
from desertmind.data.classes import CLASS_NAMES, RAW_IDS
from desertmind.errors import check_choice
from desertmind.files import write_via_path
from desertmind.models.network import SegmentationNetwork
from desertmind.models.trained import load_trained

#: ONNX opset of the exported graph: 18 has Resize with antialiasing
OPSET = 18
#: the exported graph's input, in words (also in the ONNX metadata)
INPUT_CONTRACT = "images: float32 RGB 0-255, N x 3 x H x W (any N, H, W); logits: N x 10 x H x W"

Format = Literal["onnx"]
FORMATS: tuple[str, ...] = get_args(Format)


def load_network(ckpt: str | Path) -> tuple[SegmentationNetwork, dict[str, str]]:
    """The checkpoint's network in eval mode, float32, on the CPU (RGB 0-255 in, logits out);
    and the metadata the ONNX file carries."""
    trained = load_trained(ckpt)
    trained.network.merge_lora()
    net = trained.settings.network
    metadata = {"classes": json.dumps(list(CLASS_NAMES)), "raw_ids": json.dumps(list(RAW_IDS)),
                "input": INPUT_CONTRACT, "arch": str(net["arch"]),
                "backbone": str(net["backbone"]), "input_scaling": str(net["input_scaling"]),
                "desertmind_version": __version__}
    return trained.network.float().eval(), metadata


def export(ckpt: str | Path, fmt: str, out: str | Path, height: int = 540,
           width: int = 960) -> Path:
    """Write ``out`` atomically; ``height`` x ``width`` is only the example input's size."""
    check_choice("export format", fmt, FORMATS)
    model, metadata = load_network(ckpt)
    example = torch.rand(1, 3, height, width) * 255
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _bicubic_antialias,
                                           OPSET)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model, (example,), tmp, input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                              "logits": {0: "batch", 2: "height", 3: "width"}},
                opset_version=OPSET, dynamo=False)
            _add_metadata(tmp, metadata)

    return write_via_path(out, write)


def _bicubic_antialias(g, images, output_size, align_corners, scale_h=None, scale_w=None):
    """``F.interpolate(mode="bicubic", antialias=True)`` as ONNX ``Resize``: PyTorch's filter
    is PIL's (cubic coefficient -0.5, taps outside the image dropped and the rest
    renormalised), which is what ``antialias=1`` with ``exclude_outside=1`` computes."""
    from torch.onnx import symbolic_helper as helper

    if helper._is_packed_list(output_size):
        output_size = g.op("Concat", *[helper._unsqueeze_helper(g, n, [0])
                                       for n in helper._unpack_list(output_size)], axis_i=0)
    sizes = g.op("Concat", helper._slice_helper(g, g.op("Shape", images), axes=[0], starts=[0],
                                                ends=[2]),
                 g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: INT64
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    corners = helper._maybe_get_const(align_corners, "b")
    return g.op("Resize", images, empty, empty, sizes, mode_s="cubic", antialias_i=1,
                cubic_coeff_a_f=-0.5, exclude_outside_i=1,
                coordinate_transformation_mode_s="align_corners" if corners is True
                else "half_pixel")


def _add_metadata(path: str, metadata: dict[str, str]) -> None:
    """Write ``metadata`` into the ONNX file's ``metadata_props`` (``onnx.load(path)``
    reads it back)."""
    import onnx

    model = onnx.load(path)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
