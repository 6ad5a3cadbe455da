"""Batch-1 inference latency at 960x540: eager fp32, channels_last, ONNX Runtime (CPU), and on a
GPU also bf16 / fp16 autocast and torch.compile (ONNX Runtime's CUDA provider where it is
installed: ``measure(onnx=True)``). Prints JSON (median ms per image, speed-ups).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _common import machine, time_per_call

from desertmind.models import ARCHITECTURES, build_network


def measure(model: torch.nn.Module, height: int, width: int, device: torch.device,
            repeats: int = 7, compile: bool = False, onnx: bool | None = None) -> dict:
    """Median seconds per batch-1 image of each way to run ``model``: eager fp32 and
    channels_last; on CUDA bf16 / fp16 autocast; compiled if ``compile`` or on CUDA; ONNX
    Runtime (by default on the CPU; on CUDA where its CUDA provider is installed)."""
    model = model.eval().to(device)
    x = torch.randn(1, 3, height, width, device=device)
    results: dict[str, float] = {}

    def run(m, inp):
        with torch.inference_mode():
            return m(inp)

    results["eager_fp32"] = time_per_call(lambda: run(model, x), device, 2, repeats)
    cl = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    results["channels_last_fp32"] = time_per_call(lambda: run(cl, xc), device, 2, repeats)
    model = model.to(memory_format=torch.contiguous_format)
    if device.type == "cuda":
        for name, dtype in (("bf16_autocast", torch.bfloat16), ("fp16_autocast", torch.float16)):
            def amp(dtype=dtype):
                with torch.autocast("cuda", dtype=dtype):
                    return run(cl, xc)
            results[name] = time_per_call(amp, device, 2, repeats)
    if compile or device.type == "cuda":
        compiled = torch.compile(cl)
        results["compile_channels_last"] = time_per_call(lambda: run(compiled, xc), device, 3,
                                                         repeats)
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if (device.type == "cpu" if onnx is None else onnx) and \
            provider in ort.get_available_providers():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            torch.onnx.export(model.cpu(), (x.cpu(),), str(path), input_names=["images"],
                              output_names=["logits"], opset_version=17, dynamo=False)
            model.to(device)
            session = ort.InferenceSession(str(path), providers=[provider])
            feed = {"images": x.cpu().numpy()}
            name = "onnxruntime_cuda" if device.type == "cuda" else "onnxruntime_cpu"
            results[name] = time_per_call(lambda: session.run(None, feed), device, 2, repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=540)
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--arch", default="deeplabv3", choices=ARCHITECTURES)
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = build_network(args.arch, args.backbone)
    results = measure(model, args.height, args.width, device, args.repeats, args.compile)
    base = results["eager_fp32"]
    print(json.dumps({
        "benchmark": "inference_latency",
        "machine": machine(),
        "device": str(device),
        "input": f"1x3x{args.height}x{args.width}, {args.arch} {args.backbone}",
        "ms_per_image": {k: round(v * 1000, 1) for k, v in results.items()},
        "speedup_over_eager_fp32": {k: round(base / v, 2) for k, v in results.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
