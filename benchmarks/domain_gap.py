"""What each label-free tool does on two shifted deserts, over training seeds, with intervals;
then the chosen one, confirmed once on a sealed desert.

On synthetic data (``desertmind synth``: source train / val and two labelled shifted deserts,
``test_shifted`` and ``test_dusk``, see :mod:`desertmind.data.synth`), for each seed: a
fresh dataset and training order, MobileNetV3 DeepLabV3 from random weights, the same budget
for every training arm, kept at its best val mIoU (validated every ``--val-every`` epochs;
Lightning's ``ModelCheckpoint``, as the phases keep ``best.ckpt``; the epoch kept is printed).
A budget that stops well short of the plateau measures how fast an arm learns the source
rather than what it ends at: domain randomisation's val change was -0.043 [95%: -0.055,
-0.029] after 12 epochs (the last, at 224x128), -0.004 [-0.023, +0.018] kept at its best of
24, +0.005 [-0.011, +0.019] of 36. After 24 epochs every arm was still best at its last
epoch; the default, 36, keeps most arms at an earlier one, close to the plateau.
Each arm is scored on val (source) and on each desert, with the same tool applied to both (a
test-time tool adapts to whichever images it is given):

- ``baseline``: no augmentation, no adaptation;
- test-time, on the baseline's weights: ``adabn`` (BatchNorm statistics of the evaluated
  images), ``em_priors`` (class priors by EM), ``adabn_em`` (both), and ``known_classes``
  (the argmax restricted to the classes truly present in the evaluated desert: what a user
  who knew them could do; the ceiling ``em_priors`` is compared with);
- training-time (``--tools``; the default runs ``domain_random`` only, ``--tools all`` every
  one): ``domain_random`` (``data.domain_randomise``), ``histogram`` and ``fda`` (appearance
  moved toward that desert's images, ``data.target_dir``; one fit per desert),
  ``domain_random_fda`` (both: randomised, then moved toward the desert), each also
  with AdaBN (``+adabn``), EM priors (``+em``) and the true class list (``+classes``, EM's
  ceiling on that network); ``self_training`` (pseudo-labels of that
  desert's images, an EMA teacher, ``--st-epochs`` more epochs from the baseline's best
  weights), compared with ``continued`` (the baseline trained as many more epochs on the
  source alone), not with the baseline;
- ``overlay``: what ``configs/domain_generalisation.yaml`` turns on, training and test time.

Choosing and confirming are kept apart. ``test_shifted`` and ``test_dusk`` are the
*development* deserts: the tools are compared there, and the overlay's contents were chosen
on those labelled scores, so their figures are post-selection (``"development"`` in the
output). The overlay is read from its config before anything runs, then scored once on the
*sealed* desert (``test_sealed``, :mod:`desertmind.data.synth`: a look no tool was tuned on)
against the baseline: ``"sealed"`` in the output, the figure the docs quote as the headline.
Only the baseline and the overlay are scored there; a tool chosen on the sealed figures would
need a new sealed desert.

Per desert and tool: the mean and standard deviation over seeds of val and shifted mIoU, and
the change against its reference with a 95% interval over seeds and images
(:func:`~desertmind.reports.uncertainty.paired_change_over_seeds`). One JSON object.
``--full`` is the size for a GPU. ``--keep DIR`` keeps each seed's confusion matrices
(``DIR/seed<N>.npz``) and reads a seed kept there with the same settings instead of running it
again: more seeds, or an interrupted run, cost only the seeds not yet run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from _common import machine
from lightning.pytorch.callbacks import ModelCheckpoint

from desertmind.data.classes import CLASS_NAMES, NUM_CLASSES
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.synth import ABSENT, DUSK_SPLIT, SEALED_SPLIT, SHIFTED_SPLIT, generate
from desertmind.models.confusion import batched_confusion
from desertmind.models.prediction import EvalOptions
from desertmind.models.registry import Network
from desertmind.models.trained import TrainedModel, load_trained, read_checkpoint
from desertmind.reports.uncertainty import dataset_miou, paired_change_over_seeds
from desertmind.training.module import SegmentationModule
from desertmind.training.self_training import SelfTraining

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "domain_generalisation.yaml"
#: the development deserts (tools compared, the overlay chosen), and the sealed one
DESERTS = {SHIFTED_SPLIT: "shifted", DUSK_SPLIT: "dusk"}
SEALED = {SEALED_SPLIT: "sealed"}
TEST_TIME = {"adabn": {"adapt_bn": True}, "em_priors": {"class_priors": "em"},
             "adabn_em": {"adapt_bn": True, "class_priors": "em"}}
#: training-time tools: their data options (a ``target_transfer`` fit is one per desert)
TRAINING = {"domain_random": {"domain_randomise": True},  # the domain_random preset's steps
            "histogram": {"target_transfer": "histogram"},
            "fda": {"target_transfer": "fda"},
            # both: randomised light and colour, then moved toward the desert's appearance
            "domain_random_fda": {"domain_randomise": True, "target_transfer": "fda"}}
TOOLS = (*TRAINING, "self_training")
#: what a tool is compared with (the baseline unless said)
REFERENCE = {"self_training": "continued"}


def _trainer(epochs: int, val_every: int, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint)
                                              for c in callbacks or []),
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, callbacks=callbacks,
                     check_val_every_n_epoch=val_every)


def _score(trained: TrainedModel, root: Path, split: str, batch: int,
           options: EvalOptions) -> np.ndarray:
    """(images, C, C) confusion matrices of the trained network on ``split`` under ``options``,
    adapted to the split's images first when the options ask (as ``test`` does)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    evaluation = trained.evaluation(options)
    evaluation.network.to(device).eval()
    dm = OffroadDataModule(str(root), batch_size=batch, num_workers=0, test_dir=split)
    dm.setup("test")

    def batches():
        for b in dm.test_dataloader():
            yield dm.on_after_batch_transfer({**b, "image": b["image"].to(device)}, 0)

    evaluation.adapt(lambda: (b["image"] for b in batches()), len(dm.datasets["test"]))
    cms = [batched_confusion(evaluation.labels(b["image"]).cpu(), b["mask"], NUM_CLASSES)
           for b in batches()]
    evaluation.restore()
    return torch.cat(cms).numpy()


def _fit(root: Path, args, seed: int, data: dict, model: dict, epochs: int,
         folder: Path) -> tuple[TrainedModel, Path]:
    """A network trained ``epochs`` epochs, at its best val mIoU (weights and the source
    priors EM starts from), and the checkpoint that holds them."""
    L.seed_everything(seed, verbose=False)
    module = SegmentationModule(Network(bn_momentum=0.1),
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), **model)
    dm = OffroadDataModule(str(root), batch_size=args.batch, num_workers=0, **data)
    best = ModelCheckpoint(dirpath=folder, monitor="val/mIoU", mode="max", save_top_k=1)
    # the last epoch is always validated: every N epochs, N the largest divisor of the epochs
    # up to --val-every
    val_every = max(n for n in range(1, args.val_every + 1) if epochs % n == 0)
    _trainer(epochs, val_every, [best]).fit(module, dm)
    ckpt = read_checkpoint(best.best_model_path)
    # a fit kept at its last epoch had not reached its plateau: say which epoch was kept
    arm = f"{data or 'baseline'}{f' {model}' if model else ''}"
    print(f"  seed {seed}, {arm}: kept epoch {ckpt['epoch'] + 1} of {epochs}, val mIoU "
          f"{float(best.best_model_score):.3f}", file=sys.stderr, flush=True)
    return load_trained(best.best_model_path, ckpt), Path(best.best_model_path)


def _overlay() -> tuple[dict, dict, dict]:
    """The data, model and test-time values configs/domain_generalisation.yaml sets."""
    values = yaml.safe_load(CONFIG.read_text())
    data = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("data.")}
    evaluation = {k.rsplit(".", 1)[1]: v for k, v in values.items()
                  if k.startswith("model.evaluation.")}
    model = {k.split(".", 1)[1]: v for k, v in values.items()
             if k.startswith("model.") and not k.startswith("model.evaluation.")}
    return data, model, evaluation


def _needs_target(data: dict, model: dict) -> bool:
    return data.get("target_transfer", "none") != "none" or bool(model.get("self_training"))


def _miou(cms: np.ndarray) -> float:
    return float(dataset_miou(cms.sum(0)))


def run_seed(args, seed: int, tmp: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Per desert, per tool: {"val": cms, "shifted": cms} for one seed."""
    root = generate(tmp / f"data{seed}", args.n_train, args.n_val, args.height, args.width,
                    seed, n_shifted=args.n_shifted, n_dusk=args.n_shifted,
                    n_sealed=args.n_shifted)
    batch = args.batch
    plain = EvalOptions()
    results: dict[str, dict[str, dict[str, np.ndarray]]] = {d: {} for d in {**DESERTS,
                                                                             **SEALED}}
    # one fit per distinct set of options (the overlay may be one of the tools): the module,
    # kept with its scores so that its id is not reused meanwhile, and its val scores
    fits: dict[str, tuple[TrainedModel, Path]] = {}
    val_scores: dict[tuple[int, str], tuple[TrainedModel, np.ndarray]] = {}

    def fit(data: dict, model: dict | None = None, epochs: int | None = None
            ) -> tuple[TrainedModel, Path]:
        key = json.dumps([data, model or {}, epochs], sort_keys=True, default=str)
        if key not in fits:
            fits[key] = _fit(root, args, seed, data, model or {}, epochs or args.epochs,
                             tmp / f"ckpt{seed}_{len(fits)}")
        return fits[key]

    def both(module: TrainedModel, desert: str, options: EvalOptions) -> dict:
        key = (id(module), repr(options))
        if key not in val_scores:
            val_scores[key] = module, _score(module, root, "val", batch, options)
        return {"val": val_scores[key][1],
                "shifted": _score(module, root, desert, batch, options)}

    def known_classes(module: TrainedModel, desert: str, val: np.ndarray) -> dict:
        """The argmax restricted to the desert's true classes; val is ``val``, the module's
        unrestricted score (every class is present there: no restriction)."""
        present = [n for i, n in enumerate(CLASS_NAMES) if i not in ABSENT[DESERTS[desert]]]
        return {"val": val, "shifted": _score(module, root, desert, batch,
                                              EvalOptions(predict_classes=present))}

    baseline, baseline_ckpt = fit({})
    o_data, o_model, o_eval = _overlay()
    for desert in DESERTS:
        target = {"target_dir": f"{desert}/Color_Images"}
        arms = results[desert]
        arms["baseline"] = both(baseline, desert, plain)
        for name, options in TEST_TIME.items():
            arms[name] = both(baseline, desert, EvalOptions(**options))
        arms["known_classes"] = known_classes(baseline, desert, arms["baseline"]["val"])
        for tool in args.tools:
            if tool == "self_training":
                more = {"init_from": str(baseline_ckpt)}
                arms["continued"] = both(fit({}, more, args.st_epochs)[0], desert, plain)
                taught, _ = fit({**target, "target_batches": True},
                                {**more, "self_training": SelfTraining(
                                    weight=1.0, teacher_ema=0.999)}, args.st_epochs)
                arms[tool] = both(taught, desert, plain)
                continue
            data = TRAINING[tool]
            module, _ = fit({**data, **target} if _needs_target(data, {}) else data)
            arms[tool] = both(module, desert, plain)
            arms[f"{tool}+adabn"] = both(module, desert, EvalOptions(adapt_bn=True))
            arms[f"{tool}+em"] = both(module, desert, EvalOptions(class_priors="em"))
            arms[f"{tool}+classes"] = known_classes(module, desert, arms[tool]["val"])
        data = {**o_data, **target} if _needs_target(o_data, o_model) else o_data
        overlay, _ = fit(data, o_model)
        arms["overlay"] = both(overlay, desert, replace(plain, **o_eval))
    # confirmation: the overlay as written in its config, once, on the sealed desert
    for desert in SEALED:
        target = {"target_dir": f"{desert}/Color_Images"}
        data = {**o_data, **target} if _needs_target(o_data, o_model) else o_data
        results[desert]["baseline"] = both(baseline, desert, plain)
        results[desert]["overlay"] = both(fit(data, o_model)[0], desert,
                                          replace(plain, **o_eval))
    return results


def _settings(args) -> dict:
    """What a kept seed must have been run with to be reused: every option but the seed list,
    and what the overlay turns on. (The code is not compared: after changing a tool, start a
    new --keep folder.)"""
    data, model, evaluation = _overlay()
    return {**{k: v for k, v in sorted(vars(args).items()) if k not in ("seeds", "keep", "full")},
            "overlay": {"data": data, "model": model, "evaluation": evaluation}}


def _save(path: Path, results: dict, settings: dict) -> None:
    arrays = {f"{desert}/{tool}/{split}": cms for desert, arms in results.items()
              for tool, splits in arms.items() for split, cms in splits.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, settings=np.array(json.dumps(settings)), **arrays)


def _load(path: Path, settings: dict) -> dict:
    """A kept seed's results, if it was run with ``settings`` (else a clear exit: mixing
    budgets or tools in one table would compare unlike things)."""
    with np.load(path) as kept:
        was = json.loads(str(kept["settings"]))
        if was != settings:
            differ = sorted(k for k in {*was, *settings} if was.get(k) != settings.get(k))
            changes = "; ".join(f"{k}: {was.get(k)} there, {settings.get(k)} now"
                                for k in differ)
            sys.exit(f"{path}: kept with other settings ({changes}); use another --keep folder")
        results: dict = {}
        for key in kept.files:
            if key != "settings":
                desert, tool, split = key.split("/")
                results.setdefault(desert, {}).setdefault(tool, {})[split] = kept[key]
    return results


def summarise(per_seed: list[dict]) -> dict:
    """Means, spreads and intervals over seeds, per desert and tool."""
    table: dict[str, dict] = {}
    for desert in per_seed[0]:
        table[desert] = {}
        for tool in per_seed[0][desert]:
            row: dict[str, object] = {}
            reference = REFERENCE.get(tool, "baseline")
            for split in ("val", "shifted"):
                values = [_miou(seed[desert][tool][split]) for seed in per_seed]
                row[f"{split}_mIoU"] = [round(v, 4) for v in values]
                row[f"{split}_mean"] = round(float(np.mean(values)), 4)
                row[f"{split}_sd"] = round(float(np.std(values, ddof=1)) if len(values) > 1
                                           else 0.0, 4)
                if tool != reference and tool != "baseline":
                    change = paired_change_over_seeds(
                        [(seed[desert][tool][split], seed[desert][reference][split])
                         for seed in per_seed], design="nested")  # each seed its own desert
                    row["against"] = reference
                    row[f"{split}_change"] = round(change.value, 4)
                    row[f"{split}_interval"] = [round(change.low, 4), round(change.high, 4)]
                    row[f"{split}_verdict"] = change.verdict
            table[desert][tool] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-shifted", type=int, default=16, help="images per shifted desert")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=176)
    parser.add_argument("--epochs", type=int, default=36)
    parser.add_argument("--val-every", type=int, default=3,
                        help="validate (and keep the best weights) every N epochs")
    parser.add_argument("--st-epochs", type=int, default=8,
                        help="self-training's epochs after the baseline's")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tools", nargs="+", default=["domain_random"],
                        choices=[*TOOLS, "all"], help="training-time tools to run")
    parser.add_argument("--full", action="store_true",
                        help="the GPU size: 5 seeds, 384 train / 64 val / 64 per desert at "
                        "270x480, 40 epochs, batch 8, every tool")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep each seed's confusion matrices in DIR/seed<N>.npz, and "
                        "reuse a seed kept there with the same settings")
    args = parser.parse_args()
    if "all" in args.tools:
        args.tools = list(TOOLS)
    if args.full:
        args.seeds, args.n_train, args.n_val, args.n_shifted = [0, 1, 2, 3, 4], 384, 64, 64
        args.height, args.width, args.epochs, args.batch = 270, 480, 40, 8
        args.tools = list(TOOLS)
    start = time.perf_counter()
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            kept = args.keep / f"seed{seed}.npz" if args.keep else None
            reused = kept is not None and kept.exists()
            if reused:
                per_seed.append(_load(kept, _settings(args)))
            else:
                per_seed.append(run_seed(args, seed, Path(tmp)))
                if kept is not None:
                    _save(kept, per_seed[-1], _settings(args))
            how = f"read from {kept}" if reused else "done"
            print(f"seed {seed} {how} at {time.perf_counter() - start:.0f} s: " + ", ".join(
                f"{tool} {desert} {_miou(cms['shifted']):.3f} (val {_miou(cms['val']):.3f})"
                for desert, arms in per_seed[-1].items() for tool, cms in arms.items()
                if tool in ("baseline", "overlay")), file=sys.stderr, flush=True)
    data, model, evaluation = _overlay()
    table = summarise(per_seed)
    print(json.dumps({
        "benchmark": "domain_gap",
        "machine": machine(),
        "setup": f"mobilenet_v3_large deeplabv3 from random weights, {args.width}x"
                 f"{args.height}, {args.n_train} train / {args.n_val} val / {args.n_shifted} "
                 f"per shifted desert, {args.epochs} epochs kept at the best val mIoU "
                 f"(validated every {args.val_every}), batch {args.batch}, seeds "
                 f"{args.seeds} (each its own data and training order)",
        "tools": args.tools,
        "overlay": {"data": data, "model": model, "evaluation": evaluation},
        "interval": "95%, two-level bootstrap over seeds and images, paired with the reference",
        "seconds": round(time.perf_counter() - start, 1),
        "development": {d: t for d, t in table.items() if d in DESERTS},
        "sealed": {d: t for d, t in table.items() if d in SEALED},
        "how_to_read": "development: the deserts the tools were compared on and the overlay "
                       "chosen on (post-selection figures); sealed: the overlay as its config "
                       "says, confirmed once on a desert nothing was chosen on (the headline)",
    }, indent=1))


if __name__ == "__main__":
    main()
