"""The gap between the source desert and a shifted one, and what each label-free tool does.

On synthetic data (``desertmind synth``: source train / val and a labelled ``test_shifted``
split of the shifted domain), trains MobileNetV3 DeepLabV3 from random weights with the same
budget for each variant, then scores it on val (source) and on the shifted split:

- ``baseline``: no augmentation;
- ``domain_random``: the photometric domain-randomisation preset;
- ``transfer_fda`` / ``transfer_histogram``: appearance transfer toward the shifted split's
  images (``data.target_dir``; their masks are never read);
- ``tta_class_prior``: the baseline model evaluated with flip TTA and the classes known to be
  absent from the target (Ground Clutter, Flowers, Logs) excluded;
- ``self_training``: the baseline continued for ``--extra-epochs`` with pseudo-labels on the
  shifted images, next to ``baseline_continued``, the same continuation without them (the
  same budget);
- ``domain_generalisation``: the tools of ``configs/domain_generalisation.yaml`` together.

Prints one JSON object: per variant, val mIoU, shifted mIoU and the gap (val - shifted), with
the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from _common import machine

from desertmind.data.classes import CLASS_NAMES
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.synth import SHIFTED_ABSENT, SHIFTED_SPLIT, generate
from desertmind.training.module import SegmentationModule

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "domain_generalisation.yaml"
TARGET = f"{SHIFTED_SPLIT}/Color_Images"


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0)


def _data(root: Path, args, **extra) -> OffroadDataModule:
    return OffroadDataModule(str(root), batch_size=args.batch, num_workers=0,
                             test_dir=SHIFTED_SPLIT, **extra)


def _module(**extra) -> SegmentationModule:
    return SegmentationModule(weights="none", bn_momentum=0.1,
                              optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), **extra)


def _score(module: SegmentationModule, dm: OffroadDataModule) -> dict[str, float]:
    trainer = _trainer(1)
    val = trainer.validate(module, dm, verbose=False)[0]["val/mIoU"]
    shifted = trainer.test(module, dm, verbose=False)[0]["test/mIoU"]
    return {"val_mIoU": round(val, 4), "shifted_mIoU": round(shifted, 4),
            "gap": round(val - shifted, 4)}


def _fit(root: Path, args, epochs: int, data: dict, model: dict,
         start: Path | None = None) -> SegmentationModule:
    L.seed_everything(args.seed, verbose=False)
    module = _module(init_from=str(start) if start else None, **model)
    _trainer(epochs).fit(module, _data(root, args, **data))
    return module


def _overlay() -> tuple[dict, dict]:
    """The data and model values that configs/domain_generalisation.yaml sets."""
    values = yaml.safe_load(CONFIG.read_text())
    data = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("data.")}
    model = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model.")}
    if data.get("target_transfer", "none") != "none" or model.get("self_training.weight"):
        data["target_dir"] = TARGET  # the overlay leaves it to the command line
    return data, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-shifted", type=int, default=24)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--extra-epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", args.n_train, args.n_val, args.height, args.width,
                        args.seed, n_shifted=args.n_shifted)
        variants = {"baseline": ({}, {}),
                    "domain_random": ({"train_preset": "domain_random"}, {}),
                    "transfer_fda": ({"target_dir": TARGET, "target_transfer": "fda"}, {}),
                    "transfer_histogram": ({"target_dir": TARGET,
                                            "target_transfer": "histogram"}, {}),
                    "domain_generalisation": _overlay()}
        baseline_ckpt = Path(tmp) / "baseline.ckpt"
        for name, (data, model) in variants.items():
            module = _fit(root, args, args.epochs, data, model)
            results[name] = _score(module, _data(root, args))
            if name == "baseline":
                torch.save({"state_dict": module.state_dict()}, baseline_ckpt)
                allowed = [n for i, n in enumerate(CLASS_NAMES) if i not in SHIFTED_ABSENT]
                prior = _module(evaluation={"tta_flip": True, "predict_classes": allowed})
                prior.load_state_dict(module.state_dict())
                results["tta_class_prior"] = _score(prior, _data(root, args))
        for name, data, model in (
                ("baseline_continued", {}, {}),
                ("self_training", {"target_dir": TARGET, "target_batches": True},
                 {"self_training": {"weight": 1.0, "teacher_ema": 0.99}})):
            module = _fit(root, args, args.extra_epochs, data, model, start=baseline_ckpt)
            results[name] = _score(module, _data(root, args))
    print(json.dumps({
        "benchmark": "domain_gap",
        "machine": machine(),
        "setup": f"mobilenet_v3_large deeplabv3 from random weights, {args.width}x"
                 f"{args.height}, {args.n_train} train / {args.n_val} val / {args.n_shifted} "
                 f"shifted images, {args.epochs} epochs (+{args.extra_epochs} for the "
                 f"continued variants), batch {args.batch}, seed {args.seed}",
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
