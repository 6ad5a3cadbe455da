"""A trained model from its checkpoint alone: what a checkpoint may decide, and loading it.

A checkpoint is a file a user may get from someone else, so only a short list of plain values
is ever taken from its saved hyperparameters, each checked for type and range:

- :data:`NETWORK_KEYS` decide the layout of the weights (architecture, backbone, class count,
  aux head): they always come from the checkpoint, and a different value given by the user is
  refused, because the weights could not be loaded into it.
- :data:`DATA_KEYS` are the evaluation-side data settings the model was trained with (dataset
  root and splits, image size): defaults that the user's own values replace.

Nothing else is read: no loss, optimizer, scheduler, ``init_from`` or ``class_path``, so a
checkpoint can neither choose what gets imported nor change how training would run. The class
table the model was trained with is stored beside the weights
(:data:`~desertmind.training.checkpoints.CLASS_TABLE_KEY`) and must be this package's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desertmind.data.classes import CLASS_NAMES, RAW_IDS, class_table
from desertmind.errors import CheckpointError
from desertmind.models.registry import ARCHITECTURES
from desertmind.training.checkpoints import CLASS_TABLE_KEY, copy_weights, read_checkpoint
from desertmind.training.module import SegmentationModule

#: model arguments that decide the layout of the weights: always the checkpoint's
NETWORK_KEYS = ("arch", "backbone", "num_classes", "aux_loss")
#: data arguments for evaluating as trained: the checkpoint's unless the user gives them
DATA_KEYS = ("root", "val_dir", "test_dir", "image_size")

@dataclass(frozen=True)
class TrainedSettings:
    """The values a checkpoint decides (``network``) and suggests (``data``)."""

    path: Path
    network: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)


def _check(path: Path, key: str, value: Any, ok: bool, expected: str) -> Any:
    if not ok:
        raise CheckpointError(f"{path}: saved hyperparameter {key}={value!r} is not {expected}; "
                              "the file was not written by desertmind or was altered")
    return value


def _is_size(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def settings_of(path: str | Path, ckpt: dict) -> TrainedSettings:
    """Check and extract the settings of an already read checkpoint (see the module doc)."""
    path = Path(path)
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a desertmind training checkpoint (no saved "
                              "hyperparameters or state_dict)")
    table = ckpt.get(CLASS_TABLE_KEY)
    if table is not None and table != class_table():
        raise CheckpointError(
            f"{path}: trained with the class table {table.get('names')} "
            f"(raw ids {table.get('raw_ids')}), which differs from this desertmind's "
            f"{list(CLASS_NAMES)} {list(RAW_IDS)}; its predictions would be mislabelled")
    network = {
        "arch": _check(path, "arch", hp.get("arch", "deeplabv3"),
                       hp.get("arch", "deeplabv3") in ARCHITECTURES,
                       f"one of {list(ARCHITECTURES)}"),
        "backbone": _check(path, "backbone", hp.get("backbone"),
                           isinstance(hp.get("backbone"), str), "a backbone name"),
        "num_classes": _check(path, "num_classes", hp.get("num_classes"),
                              hp.get("num_classes") == len(CLASS_NAMES),
                              f"{len(CLASS_NAMES)} (the class table)"),
        "aux_loss": _check(path, "aux_loss", hp.get("aux_loss", False),
                           isinstance(hp.get("aux_loss", False), bool), "true or false"),
    }
    data = {}
    dm = ckpt.get("datamodule_hyper_parameters")
    if isinstance(dm, dict):
        for key in ("root", "val_dir"):
            if isinstance(dm.get(key), str):
                data[key] = dm[key]
        if dm.get("test_dir") is None or isinstance(dm.get("test_dir"), str):
            data["test_dir"] = dm.get("test_dir")
        if dm.get("image_size") is None or _is_size(dm.get("image_size")):
            data["image_size"] = list(dm["image_size"]) if dm.get("image_size") else None
    return TrainedSettings(path, network, data)


def read_settings(path: str | Path) -> TrainedSettings:
    """Read a checkpoint without running code and return what it decides."""
    return settings_of(path, read_checkpoint(path))


def load_trained(path: str | Path, **options: Any) -> tuple[SegmentationModule, TrainedSettings]:
    """The checkpoint's :class:`~desertmind.training.module.SegmentationModule` in eval mode,
    and its settings.

    The network is built from the checkpoint's settings with ``weights="none"`` (the checkpoint
    holds every weight: nothing is downloaded) and its weights are loaded strictly. ``options``
    are evaluation options of the module (``tta_flip``, ``tta_scales``, ``sliding_window``,
    ``predict_classes``, ``channels_last``).
    """
    ckpt = read_checkpoint(path)
    settings = settings_of(path, ckpt)
    module = SegmentationModule(**settings.network, weights="none", **options)
    copy_weights(module.model, ckpt["state_dict"], path)
    return module.eval(), settings


def load_module(path: str | Path, **options: Any) -> SegmentationModule:
    """:func:`load_trained` without the settings."""
    return load_trained(path, **options)[0]
