"""The short ``--help`` of ``fit``, ``validate``, ``test`` and ``predict``.

LightningCLI's own help lists every Trainer, model and data option (over a thousand lines for
``fit``, and seconds to build because it imports Lightning and every network library). A phase
config sets everything, and an evaluation takes the rest from its checkpoint: a user changes a
handful of options. This text is printed without importing Lightning; ``--help-all`` prints the
full list. ``tests/test_cli_help.py`` checks that every option named here is one the full
parser accepts.
"""

from __future__ import annotations

import shutil
import textwrap

_COMMON_TOP = [
    ("--ckpt_path CKPT", "the checkpoint to evaluate (e.g. lightning_logs/phase3/checkpoints/"
                         "best.ckpt); the network and the data settings come from it"),
    ("--out DIR", None),  # per command, below
    ("-c, --config FILE", "a YAML config (class_path/init_args); options given after it win"),
]

_DATA = {
    "validate": [
        ("--data.root ROOT", "dataset root (default: the checkpoint's)"),
        ("--data.val_dir SPLIT", "the labelled split under the root (default: the "
                                 "checkpoint's, val)"),
        ("--overwrite", "replace the evaluation already in --out"),
    ],
    "test": [
        ("--data.root ROOT", "dataset root (default: the checkpoint's)"),
        ("--data.test_dir SPLIT", "the labelled split to score, e.g. testImages (required)"),
        ("--overwrite", "replace the evaluation already in --out"),
    ],
    "predict": [
        ("--data.root ROOT", "dataset root (default: the checkpoint's)"),
        ("--data.predict_dir DIR", "folder of images to predict: a split folder, its "
                                   "Color_Images, or any folder of PNG/JPEG files"),
        ("--overwrite", "replace the predictions already in --out"),
    ],
}

_OUT = {
    "validate": "folder for metrics.json, per_image.csv and the confusion matrix",
    "test": "folder for metrics.json, per_image.csv and the confusion matrix",
    "predict": "folder for raw/ (class ids), color/ and overlay/ PNGs (required)",
}

_EVALUATION = [
    ("--model.evaluation.tta_scales [S,...]", "average the softmax over these input scales, "
                                              "e.g. [0.75,1.0,1.25]"),
    ("--model.evaluation.tta_flip true|false", "also average over horizontal flips"),
    ("--model.evaluation.sliding_window SIZE", "predict in overlapping square windows"),
    ("--model.evaluation.predict_classes [NAME,...]", "restrict the argmax to these classes"),
    ("--model.evaluation.adapt_bn true|false", "recompute BatchNorm statistics on the images "
                                               "scored (AdaBN; transductive)"),
    ("--model.evaluation.class_priors train|em", "em: estimate the images' class priors and "
                                                 "re-weight (transductive)"),
]

_RUNTIME = [
    ("--data.eval_batch_size N", "images per batch"),
    ("--data.num_workers N", "data loading processes"),
    ("--trainer.accelerator auto|cpu|gpu", "where to run (default: auto)"),
    ("--trainer.devices N", "how many devices"),
    ("--trainer.precision P", "e.g. 32-true, bf16-mixed, 16-mixed (default: auto)"),
    ("--trainer.logger false", "no TensorBoard run for this evaluation"),
    ("--seed_everything N", "seed (an evaluation seeds nothing unless asked)"),
    ("--print_config", "print the resolved configuration and exit"),
]

_WHAT = {
    "fit": "Train a phase: its config sets everything; these are the options people change.",
    "validate": "Score a checkpoint on its labelled val split (dataset-level mIoU, per-class "
                "IoU, per-image scores).",
    "test": "Score a checkpoint on a labelled split given with --data.test_dir (e.g. the test "
            "desert).",
    "predict": "Write a checkpoint's class maps for a folder of images (no masks needed).",
}

_EXAMPLE = {
    "fit": "desertmind fit -c configs/phase1.yaml --data.root /path/to/dataset",
    "validate": "desertmind validate --ckpt_path lightning_logs/phase3/checkpoints/best.ckpt "
                "--out reports/val",
    "test": "desertmind test --ckpt_path lightning_logs/phase3/checkpoints/best.ckpt "
            "--data.test_dir testImages --out reports/test",
    "predict": "desertmind predict --ckpt_path lightning_logs/phase3/checkpoints/best.ckpt "
               "--data.predict_dir testImages/Color_Images --out predictions",
}


_FIT = [
    ("what to train", [
        ("-c, --config FILE", "a phase config (configs/phase1.yaml, ...), then overlays "
                              "(configs/demo.yaml); options given after them win"),
        ("--data.root ROOT", "dataset root (ROOT/train, ROOT/val)"),
        ("--model.init_from CKPT", "start from a previous phase's weights (weights only)"),
        ("--ckpt_path last|CKPT", "resume an interrupted run of this phase (weights, "
                                  "optimizer, epoch)"),
        ("--overwrite", "start the phase again over its earlier checkpoints"),
    ]),
    ("what people change", [
        ("--trainer.max_epochs N", "epochs"),
        ("--model.optimizer.init_args.lr LR", "the head's learning rate"),
        ("--model.param_groups.backbone_lr_mult M", "the encoder's LR relative to the head's"),
        ("--model.loss SPEC", "e.g. ce, weighted_ce + 0.5 dice"),
        ("--data.batch_size N", "images per batch, per process"),
        ("--data.train_preset NAME", "augmentation: none, flip_color, crop, scale_crop, "
                                     "strong, domain_random, ..."),
        ("--data.crop_size N", "the crop of the cropping presets"),
        ("--freeze.unfreeze_at_epoch N", "the encoder trains from this epoch (null: never)"),
        ("--early_stopping.patience N", "validations without improvement before stopping"),
        ("--model.network.arch NAME", "deeplabv3, deeplabv3plus, upernet, dpt, ..."),
        ("--model.network.backbone NAME", "e.g. mobilenet_v3_large, tu-convnext_tiny"),
        ("--model.network.weights NAME", "pretrained weights, or none"),
    ]),
    ("run", [
        ("--trainer.accelerator auto|cpu|gpu", "where to run (default: auto)"),
        ("--trainer.devices N", "devices per machine (DDP: --trainer.strategy ddp)"),
        ("--trainer.precision P", "e.g. bf16-mixed, 16-mixed, 32-true (default: auto)"),
        ("--data.num_workers N", "data loading processes"),
        ("--data.cache none|memory|disk", "decode the dataset once"),
        ("--trainer.logger.init_args.save_dir DIR", "where phases log (default: "
                                                    "lightning_logs)"),
        ("--seed_everything N|true", "the run's seed (true: drawn and recorded)"),
    ]),
    ("look before running", [
        ("--print_config", "print the resolved configuration and exit"),
        ("--print_param_groups", "print the optimizer's parameter groups and exit"),
    ]),
]


def options(command: str) -> list[str]:
    """The option names the short help lists for ``command`` (for the drift test)."""
    return [flag for _, section in _rows(command) for name, _ in section
            for flag in name.replace(",", " ").split() if flag.startswith("-")]


def _rows(command: str) -> list[tuple[str, list[tuple[str, str]]]]:
    if command == "fit":
        return _FIT
    top = [(name, text if text is not None else _OUT[command]) for name, text in _COMMON_TOP]
    return [("what to score", top + _DATA[command]),
            ("evaluation (off unless given; adapt_bn and class_priors default to the "
             "checkpoint's)", _EVALUATION),
            ("run", _RUNTIME)]


def text(command: str) -> str:
    """The short help of ``desertmind COMMAND``."""
    usage = ("-c configs/PHASE.yaml [-c OVERLAY.yaml] [options]" if command == "fit"
             else "--ckpt_path CKPT [options]")
    lines = [f"usage: desertmind {command} {usage}", "",
             _WHAT[command], "", f"  e.g. {_EXAMPLE[command]}", ""]
    columns = max(60, min(shutil.get_terminal_size().columns, 120))
    for title, section in _rows(command):
        lines.append(f"{title}:")
        width = max(len(name) for name, _ in section) + 4
        for name, what in section:  # the text in a column beside the names, wrapped
            lines += textwrap.wrap(what, columns, initial_indent=f"  {name}".ljust(width),
                                   subsequent_indent=" " * width)
        lines.append("")
    lines.append(f"Every option (Trainer, model, data): desertmind {command} --help-all")
    return "\n".join(lines)
