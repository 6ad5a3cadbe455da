"""The short ``--help`` of ``validate``, ``test`` and ``predict``.

LightningCLI's own help for these commands lists every Trainer, model and data option (about a
thousand lines, and several seconds to build because it imports Lightning and every network
library). An evaluation needs a handful of them: the rest come from the checkpoint. This text
is printed without importing Lightning; ``--help-all`` still prints the full list.
``tests/test_cli_help.py`` checks that every option named here is one the full parser accepts.
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
    "validate": "Score a checkpoint on its labelled val split (dataset-level mIoU, per-class "
                "IoU, per-image scores).",
    "test": "Score a checkpoint on a labelled split given with --data.test_dir (e.g. the test "
            "desert).",
    "predict": "Write a checkpoint's class maps for a folder of images (no masks needed).",
}

_EXAMPLE = {
    "validate": "desertmind validate --ckpt_path lightning_logs/phase3/checkpoints/best.ckpt "
                "--out reports/val",
    "test": "desertmind test --ckpt_path lightning_logs/phase3/checkpoints/best.ckpt "
            "--data.test_dir testImages --out reports/test",
    "predict": "desertmind predict --ckpt_path lightning_logs/phase3/checkpoints/best.ckpt "
               "--data.predict_dir testImages/Color_Images --out predictions",
}


def options(command: str) -> list[str]:
    """The option names the short help lists for ``command`` (for the drift test)."""
    return [flag for _, section in _rows(command) for name, _ in section
            for flag in name.replace(",", " ").split() if flag.startswith("-")]


def _rows(command: str) -> list[tuple[str, list[tuple[str, str]]]]:
    top = [(name, text if text is not None else _OUT[command]) for name, text in _COMMON_TOP]
    return [("what to score", top + _DATA[command]),
            ("evaluation (off unless given; adapt_bn and class_priors default to the "
             "checkpoint's)", _EVALUATION),
            ("run", _RUNTIME)]


def text(command: str) -> str:
    """The short help of ``desertmind COMMAND``."""
    lines = [f"usage: desertmind {command} --ckpt_path CKPT [options]", "",
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
