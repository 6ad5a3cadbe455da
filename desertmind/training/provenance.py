"""What produced a run: code version, libraries, device and the exact dataset, next to its logs."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightning as L
import torch

from desertmind import runs
from desertmind.data.layout import IMAGE_DIR, split_files
from desertmind.files import write_json

_LIBRARIES = ("desertmind", "torch", "torchvision", "lightning", "torchmetrics",
              "albumentations", "numpy", "opencv-python-headless")


def dataset_fingerprint(root: str | Path, splits: list[str]) -> dict:
    """Split sizes and a hash of every file's relative name and size (contents are not read)."""
    root = Path(root)
    h = hashlib.sha256()
    sizes = {}
    for split in splits:
        images = root / split / IMAGE_DIR
        sizes[split] = sum(1 for p in images.iterdir() if p.is_file()) if images.is_dir() else 0
        for sub, entry in split_files(root, split):
            h.update(f"{split}/{sub}/{entry.name}:{entry.stat().st_size}\n"
                     .encode(errors="surrogateescape"))  # a name that is not UTF-8
    return {"root": str(root.resolve()), "images_per_split": sizes, "sha256": h.hexdigest()}


def git_state() -> dict:
    """Commit of the source tree desertmind runs from, and whether it had local changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=here, capture_output=True, text=True, timeout=10,
                                    check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class Provenance(L.Callback):
    """Writes ``provenance.json`` beside the run's ``config.yaml`` when a run starts (rank 0)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        log_dir = runs.run_folder(trainer, runs.PROVENANCE_FILE)
        if not trainer.is_global_zero or log_dir is None:
            return
        dm = trainer.datamodule
        splits = []
        if dm is not None and hasattr(dm, "hparams"):
            splits = [s for s in (dm.hparams.get("train_dir"), dm.hparams.get("val_dir"),
                                  dm.hparams.get("test_dir")) if s]
        cuda = torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
        record = {
            "stage": stage,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "config": runs.CONFIG_FILE,
            "git": git_state(),
            "versions": _versions(),
            "device": {
                "accelerator": type(trainer.accelerator).__name__,
                "name": torch.cuda.get_device_name(trainer.strategy.root_device) if cuda
                else platform.processor() or platform.machine(),
                "world_size": trainer.world_size,
                "precision": str(trainer.precision),
            },
            "dataset": dataset_fingerprint(dm.root, splits) if dm is not None and splits
            else None,
        }
        write_json(log_dir / runs.PROVENANCE_FILE, record)
