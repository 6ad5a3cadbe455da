"""A trained model from its checkpoint alone: reading a checkpoint, what it may decide, and
the network it holds. Below training: using a trained model builds no LightningModule.

A checkpoint is a file a user may get from someone else, so it is read with
``weights_only=True`` (no code runs) and only a short list of plain values is ever taken from
its saved hyperparameters, each checked for type and range:

- :data:`NETWORK_KEYS` decide the layout of the weights and what they were trained on
  (architecture, backbone, aux head, input scaling, adapters): they always come from the
  checkpoint, and a different value given by the user is refused, because the weights could
  not be loaded into it.
- :data:`DATA_KEYS` are the evaluation-side data settings the model was trained with (dataset
  root and splits, image size): defaults that the user's own values replace.

Nothing else is read: no loss, optimizer, scheduler, ``init_from`` or ``class_path``, so a
checkpoint can neither choose what gets imported nor change how training would run. Beside
the weights a checkpoint carries the class table it was trained with
(:data:`CLASS_TABLE_KEY`, which must be this package's), the class priors the network's
posteriors imply on the source val split (:data:`SOURCE_PRIORS_KEY`, what EM class priors
start from) and how training used target images (:data:`TARGET_USE_KEY`).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from desertmind import runs
from desertmind.data.classes import NUM_CLASSES, class_table
from desertmind.errors import CheckpointError, ConfigError
from desertmind.models import registry
from desertmind.models.adapters import LoRA
from desertmind.models.evaluation import Evaluation
from desertmind.models.network import SCALINGS, SegmentationNetwork
from desertmind.models.prediction import EvalOptions

#: where every checkpoint stores the class table it was trained with
CLASS_TABLE_KEY = "desertmind_classes"
#: the network's mean predicted class probabilities on the source val split (what EM class
#: priors start from)
SOURCE_PRIORS_KEY = "desertmind_source_priors"
#: how the weights a run started from (``init_from``) used unlabelled target images, or None
TARGET_USE_KEY = "desertmind_target_use"
#: a pretraining checkpoint's encoder (``desertmind pretrain``): ``{"network": {arch,
#: backbone, input_scaling}, "state_dict": the encoder's weights as plain layers}``
PRETRAINED_ENCODER_KEY = "desertmind_pretrained_encoder"
#: what self-supervised pretraining the weights descend from: ``method``, ``folders`` (the
#: image folders it read, absolute), ``steps``, ``weights``, ``adapters`` and, once a phase
#: started from it, ``checkpoint``; carried into every phase after it
PRETRAINING_KEY = "desertmind_pretraining"
#: where Lightning keeps the data module's state (OffroadDataModule.state_dict: the training
#: seed, how training used target images, the dataset root as an absolute path)
DATA_STATE_KEY = "OffroadDataModule"

_SHOW = 8


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint on the CPU with ``weights_only=True`` (no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(runs.missing_checkpoint_message(path))
    _check_records(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's text would suggest weights_only=False
        raise CheckpointError(
            f"{path}: not a readable checkpoint: corrupt, truncated, not a checkpoint at all, "
            "or holding objects other than tensors and plain values, which are refused "
            "because loading them could run code") from e
    except Exception as e:  # truncated zip, I/O error
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint ({detail})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict of weights and state)")
    return ckpt


def _check_records(path: Path) -> None:
    """Refuse a checkpoint whose records no longer match the CRC-32 the zip archive keeps for
    each (torch.load does not check them: bytes damaged in place would load as other weights).
    Reads the file once more, at disk speed. A file that is no zip archive is not a
    checkpoint (``torch.save`` has written zip archives since torch 1.6; Lightning always)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: not a checkpoint (torch.save writes a zip archive; "
                              "this file is not one: another kind of file, or a truncated "
                              "copy); give a .ckpt file a fit wrote") from e
    except (OSError, ValueError):
        return
    if damaged is not None:
        raise CheckpointError(f"{path}: damaged: the record {damaged} no longer matches the "
                              "checksum written with it (the file was changed on disk or in a "
                              "copy); use an intact copy of the checkpoint")


def copy_weights(model: nn.Module, state: dict[str, Any], source: str | Path,
                 prefix: str = "model.") -> None:
    """Load the entries of ``state`` under ``prefix`` into ``model``, strictly.

    Any missing key, unexpected key or shape difference is refused with a message naming
    ``source`` and listing them.
    """
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(own.keys() - weights.keys())
    unexpected = sorted(weights.keys() - own.keys())
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(own.keys() & weights.keys()) if weights[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes)):
        if items:
            more = f" ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit this model (another architecture, backbone, class count or "
            "aux head?); " + "; ".join(problems))
    model.load_state_dict(weights)


def best_of(ckpt: dict) -> tuple[str | None, float | None, int | None]:
    """The monitor and best score ModelCheckpoint stored in a read checkpoint, and its epoch."""
    monitor = score = None
    for state in ckpt.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("best_model_score") is not None:
            score = float(state["best_model_score"])
            monitor = state.get("monitor") if isinstance(state.get("monitor"), str) else None
    return monitor, score, ckpt.get("epoch")


def best_score(path: str | Path) -> tuple[str | None, float | None, int | None]:
    """The monitor and best score ModelCheckpoint stored in ``path``, and the epoch saved."""
    return best_of(read_checkpoint(path))


def _lora(value: Any) -> LoRA | None:
    """``value`` as LoRA settings, None if it is not valid ones."""
    if isinstance(value, LoRA):
        return value
    try:
        return LoRA(**value) if isinstance(value, dict) else None
    except (TypeError, ConfigError):
        return None


#: ``model.network`` values that decide the layout of the weights, always the checkpoint's:
#: key -> (check, what the check expects)
NETWORK_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "arch": (lambda v: v in registry.architectures(), "an architecture of the registry"),
    "backbone": (lambda v: isinstance(v, str), "a backbone name"),
    # > 0: the network has torchvision's aux head
    "aux_weight": (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
                   "a number >= 0"),
    # the weights were trained on inputs scaled this way
    "input_scaling": (lambda v: v in SCALINGS, f"one of {list(SCALINGS)}"),
    # low-rank adapters: their layout and scaling
    "lora": (lambda v: _lora(v) is not None, "low-rank adapter settings"),
}


def same_layout(key: str, a: Any, b: Any) -> bool:
    """Whether network values ``a`` and ``b`` of ``key`` hold the same weights (any positive
    aux weight is the same aux head; adapters compare as settings)."""
    if key == "aux_weight" and None not in (a, b):
        return (a > 0) == (b > 0)
    if key == "lora":
        return _lora(a) == _lora(b)
    return a == b


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
    #: the absolute dataset root it trained on (None in older checkpoints)
    trained_root: str | None = None


def settings_of(path: str | Path, ckpt: dict) -> TrainedSettings:
    """Check and extract the settings of an already read checkpoint (see the module doc)."""
    path = Path(path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if isinstance(ckpt, dict) and PRETRAINED_ENCODER_KEY in ckpt:
        raise CheckpointError(f"{path}: a pretraining checkpoint (desertmind pretrain): it "
                              "holds an encoder, no segmentation head; start a phase from it "
                              f"(desertmind fit -c configs/phase1.yaml --model.init_from {path})")
    if not isinstance(hp, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a desertmind training checkpoint (no saved "
                              "hyperparameters or state_dict)")
    table = ckpt.get(CLASS_TABLE_KEY)
    if table is not None and table != class_table():
        raise CheckpointError(
            f"{path}: trained with the class table {table!r}, which differs from this "
            f"desertmind's {class_table()}; its predictions would be mislabelled")
    saved = hp.get("network") if isinstance(hp.get("network"), dict) else {}
    network = {}
    for key, (ok, expected) in NETWORK_KEYS.items():
        value = saved.get(key)
        if not ok(value):
            raise CheckpointError(f"{path}: saved hyperparameter network.{key}={value!r} is "
                                  f"not {expected}; the file was not written by this desertmind "
                                  "or was altered")
        network[key] = value
    dm = ckpt.get("datamodule_hyper_parameters")
    dm = dm if isinstance(dm, dict) else {}
    data = {key: list(dm[key]) if isinstance(dm[key], tuple) else dm[key]
            for key, ok in DATA_KEYS.items() if key in dm and ok(dm[key])}
    state = ckpt.get(DATA_STATE_KEY)
    trained_at = state.get("root") if isinstance(state, dict) else None
    if ("root" in data and not Path(data["root"]).is_dir() and isinstance(trained_at, str)
            and Path(trained_at).is_dir()):  # a relative root, from another folder
        data["root"] = trained_at
    return TrainedSettings(path, network, data, _saved_evaluation(hp), best_of(ckpt),
                           trained_at if isinstance(trained_at, str) else None)


def _saved_evaluation(hp: dict) -> EvalOptions:
    """The checkpoint's evaluation options; any value that is not a valid option leaves the
    defaults."""
    try:
        return EvalOptions(**hp["evaluation"])
    except (KeyError, TypeError, ConfigError):
        return EvalOptions()


def read_settings(path: str | Path) -> TrainedSettings:
    """Read a checkpoint without running code and return what it decides."""
    return settings_of(path, read_checkpoint(path))


def build_trained_network(network: dict[str, Any]) -> SegmentationNetwork:
    """An untrained network of the layout ``network`` (:data:`NETWORK_KEYS`), built by the
    registry with ``weights="none"``: a checkpoint holds every weight, nothing is fetched."""
    return registry.build(registry.Network(**network, weights="none"))


def training_record(ckpt: dict) -> tuple[torch.Tensor, str | None]:
    """A checkpoint's source class priors (zeros when it holds none) and how its weights used
    target images: the data module's record of the run itself, and what the weights it started
    from recorded (None: neither did)."""
    priors = ckpt.get(SOURCE_PRIORS_KEY)
    ok = isinstance(priors, list) and len(priors) == NUM_CLASSES
    state = ckpt.get(DATA_STATE_KEY)
    uses = [state.get("target_use") if isinstance(state, dict) else None,
            ckpt.get(TARGET_USE_KEY)]
    use = "; ".join(u for u in uses if isinstance(u, str) and u) or None
    return torch.tensor(priors if ok else [0.0] * NUM_CLASSES, dtype=torch.float32), use


def pretraining_record(ckpt: dict) -> dict | None:
    """What self-supervised pretraining a checkpoint's weights descend from
    (:data:`PRETRAINING_KEY`), None when none or not a valid record."""
    record = ckpt.get(PRETRAINING_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("folders"), list) or not all(
            isinstance(f, str) for f in record["folders"]):
        return None
    return {k: v for k, v in record.items() if isinstance(v, str | int | float | list)}


@dataclass
class TrainedModel:
    """What a checkpoint holds, ready to use: the network in eval mode on the CPU, its settings
    and its training record (source class priors, how training used target images)."""

    settings: TrainedSettings
    network: SegmentationNetwork
    source_priors: torch.Tensor
    target_use: str | None = None
    #: the self-supervised pretraining its weights descend from (:func:`pretraining_record`)
    pretraining: dict | None = None

    def evaluation(self, options: EvalOptions | None = None) -> Evaluation:
        """An :class:`~desertmind.models.evaluation.Evaluation` of this network under
        ``options`` (default: whole images, every class)."""
        return Evaluation(self.network, options or EvalOptions(),
                          source_priors=self.source_priors, target_use=self.target_use,
                          pretraining=self.pretraining)


def load_trained(path: str | Path, ckpt: dict | None = None) -> TrainedModel:
    """The checkpoint at ``path`` (``ckpt``: already read from it) as a :class:`TrainedModel`:
    its network built from its settings and its weights loaded strictly."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    settings = settings_of(path, ckpt)
    network = build_trained_network(settings.network)
    copy_weights(network, ckpt["state_dict"], path)
    priors, use = training_record(ckpt)
    return TrainedModel(settings, network.eval(), priors, use, pretraining_record(ckpt))

