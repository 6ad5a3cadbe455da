"""A trained model from its checkpoint alone: what a checkpoint may decide, and loading it.

A checkpoint is a file a user may get from someone else, so only a short list of plain values
is ever taken from its saved hyperparameters, each checked for type and range:

- :data:`NETWORK_KEYS` decide the layout of the weights and what they were trained on
  (architecture, backbone, aux head, input scaling): they always come from the checkpoint,
  and a different value given by the user is refused, because the weights could not be
  loaded into it.
- :data:`DATA_KEYS` are the evaluation-side data settings the model was trained with (dataset
  root and splits, image size): defaults that the user's own values replace.

Nothing else is read: no loss, optimizer, scheduler, ``init_from`` or ``class_path``, so a
checkpoint can neither choose what gets imported nor change how training would run. The class
table the model was trained with is stored beside the weights
(:data:`~desertmind.training.checkpoints.CLASS_TABLE_KEY`) and must be this package's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from desertmind.data.classes import CLASS_NAMES, class_table
from desertmind.errors import CheckpointError, ConfigError
from desertmind.models.adapters import LoRA
from desertmind.models.network import SCALINGS
from desertmind.models.prediction import EvalOptions
from desertmind.models.registry import ARCHITECTURES
from desertmind.training.checkpoints import (
    CLASS_TABLE_KEY,
    best_of,
    copy_weights,
    read_checkpoint,
)
from desertmind.training.module import SegmentationModule, read_training_record

#: model arguments that decide the layout of the weights, always the checkpoint's: key ->
#: (default for checkpoints that predate it, check, what the check expects)
NETWORK_KEYS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
    "arch": ("deeplabv3", lambda v: v in ARCHITECTURES, f"one of {list(ARCHITECTURES)}"),
    "backbone": (None, lambda v: isinstance(v, str), "a backbone name"),
    # > 0: the network has torchvision's aux head (checkpoints before it: aux_loss, below)
    "aux_weight": (0.0, lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                   and v >= 0, "a number >= 0"),
    # the weights were trained on inputs scaled this way; checkpoints before it: imagenet
    "input_scaling": ("imagenet", lambda v: v in SCALINGS, f"one of {list(SCALINGS)}"),
    # low-rank adapters: their layout and scaling (checkpoints before them: none)
    "lora": (asdict(LoRA()), lambda v: _lora(v) is not None, "low-rank adapter settings"),
}


def _lora(value: Any) -> LoRA | None:
    """``value`` as LoRA settings, None if it is not valid ones."""
    if isinstance(value, LoRA):
        return value
    try:
        return LoRA(**value) if isinstance(value, dict) else None
    except (TypeError, ConfigError):
        return None


def same_layout(key: str, a: Any, b: Any) -> bool:
    """Whether network values ``a`` and ``b`` of ``key`` hold the same weights (any positive
    aux weight is the same aux head; adapters compare as settings)."""
    if key == "aux_weight" and None not in (a, b):
        return (a > 0) == (b > 0)
    if key == "lora":
        return _lora(a) == _lora(b)
    return a == b


def _saved_network(hp: dict) -> dict:
    """The network keys of saved hyperparameters, in this version's terms: checkpoints before
    ``aux_weight`` alone decided the aux head said so with ``aux_loss``."""
    hp = dict(hp)
    if isinstance(hp.get("aux_loss"), bool):
        hp["aux_weight"] = float(hp.get("aux_weight") or 0.4) if hp["aux_loss"] else 0.0
    return hp


def _is_size(value: Any) -> bool:
    return value is None or (
        isinstance(value, list | tuple) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


#: data arguments for evaluating as trained, the checkpoint's unless the user gives them:
#: key -> check (a value that fails it is not suggested)
DATA_KEYS: dict[str, Callable[[Any], bool]] = {
    "root": lambda v: isinstance(v, str),
    "val_dir": lambda v: isinstance(v, str),
    "test_dir": lambda v: v is None or isinstance(v, str),
    "image_size": _is_size,
}


@dataclass(frozen=True)
class TrainedSettings:
    """The values a checkpoint decides (``network``) and suggests (``data``, and the
    ``evaluation`` options it was trained to be evaluated with)."""

    path: Path
    network: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    #: the training run's monitor, its best score (the one this checkpoint holds) and epoch
    best: tuple[str | None, float | None, int | None] = (None, None, None)


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
            f"{path}: trained with the class table {table!r}, which differs from this "
            f"desertmind's {class_table()}; its predictions would be mislabelled")
    if hp.get("num_classes", len(CLASS_NAMES)) != len(CLASS_NAMES):
        raise CheckpointError(f"{path}: saved hyperparameter num_classes={hp['num_classes']!r} "
                              f"is not {len(CLASS_NAMES)} (the class table); the file was not "
                              "written by desertmind or was altered")
    hp = _saved_network(hp)
    network = {}
    for key, (default, ok, expected) in NETWORK_KEYS.items():
        value = hp.get(key, default)
        if not ok(value):
            raise CheckpointError(f"{path}: saved hyperparameter {key}={value!r} is not "
                                  f"{expected}; the file was not written by desertmind or was "
                                  "altered")
        network[key] = value
    dm = ckpt.get("datamodule_hyper_parameters")
    dm = dm if isinstance(dm, dict) else {}
    data = {key: list(dm[key]) if isinstance(dm[key], tuple) else dm[key]
            for key, ok in DATA_KEYS.items() if key in dm and ok(dm[key])}
    return TrainedSettings(path, network, data, _saved_evaluation(hp), best_of(ckpt))


def _saved_evaluation(hp: dict) -> EvalOptions:
    """The checkpoint's evaluation options (checkpoints before the group kept them flat); any
    value that is not a valid option leaves the defaults."""
    saved = hp.get("evaluation")
    saved = saved if isinstance(saved, dict) else {
        k: hp[k] for k in ("tta_scales", "tta_flip", "sliding_window", "predict_classes")
        if k in hp}
    try:
        return EvalOptions(**saved)
    except (TypeError, ConfigError):
        return EvalOptions()


def read_settings(path: str | Path) -> TrainedSettings:
    """Read a checkpoint without running code and return what it decides."""
    return settings_of(path, read_checkpoint(path))


def load_trained(path: str | Path,
                 evaluation: EvalOptions | None = None) -> tuple[SegmentationModule,
                                                               TrainedSettings]:
    """The checkpoint's :class:`~desertmind.training.module.SegmentationModule` in eval mode,
    and its settings.

    The network is built from the checkpoint's settings with ``weights="none"`` (the checkpoint
    holds every weight: nothing is downloaded) and its weights are loaded strictly.
    ``evaluation`` are the module's evaluation options (default: none, whole images).
    """
    ckpt = read_checkpoint(path)
    settings = settings_of(path, ckpt)
    module = SegmentationModule(**settings.network, weights="none",
                                evaluation=evaluation or EvalOptions())
    copy_weights(module.model, ckpt["state_dict"], path)
    read_training_record(module, ckpt)
    return module.eval(), settings


def load_module(path: str | Path, evaluation: EvalOptions | None = None) -> SegmentationModule:
    """:func:`load_trained` without the settings."""
    return load_trained(path, evaluation)[0]
