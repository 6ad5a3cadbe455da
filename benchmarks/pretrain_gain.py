"""What self-supervised pretraining (``desertmind pretrain``) gives phase 1, against phase 1
trained for the same compute, over seeds, with intervals, on val and on every desert.

On synthetic data (``desertmind synth``: source train / val, the two development deserts
``test_shifted`` and ``test_dusk``, and the sealed one, ``test_sealed``), for each seed: a
fresh dataset and training order, MobileNetV3 DeepLabV3 from random weights, three arms:

- ``baseline``: phase 1 for ``--epochs`` plus as many epochs as the pretraining's steps make
  (pretraining steps / phase-1 steps per epoch, rounded): the same number of optimizer steps;
- ``pretrained_train``: DINO pretraining of the encoder on the train split's images only
  (``--pretrain-steps`` steps; not transductive), then phase 1 for ``--epochs`` from it;
- ``pretrained_deserts``: the same pretraining on the train images plus every desert's images
  (transductive: it has seen the images it is scored on), then phase 1 the same.

Both pretrainings take the same number of steps, so one baseline matches both. Every phase 1
is kept at its best val mIoU (as ``best.ckpt`` is). A pretraining step costs more than a
phase-1 step (two global and ``--local-views`` local crops through the student, two through
the teacher), so "same compute" here is the same number of steps; each arm's seconds are
printed too. The pretraining recipe was fixed before any run and nothing was chosen on these
scores: ``test_shifted`` and ``test_dusk`` are the deserts the domain tools were developed on
(see ``domain_gap.py``), ``test_sealed`` the one kept for confirmation, reported apart.

Per desert and arm: mean and standard deviation over seeds, and the change against the
baseline with a 95% interval over seeds and images (nested design: each seed its own images).
One JSON object. ``--keep DIR`` keeps each seed's confusion matrices and reuses them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from _common import machine
from domain_gap import _fit, _load, _miou, _save, _score, summarise

from desertmind.data.synth import DUSK_SPLIT, SEALED_SPLIT, SHIFTED_SPLIT, generate
from desertmind.models.prediction import EvalOptions
from desertmind.models.registry import Network
from desertmind.pretraining.data import UnlabelledDataModule
from desertmind.pretraining.module import Objective, PretrainModule

DEVELOPMENT = (SHIFTED_SPLIT, DUSK_SPLIT)
SEALED = (SEALED_SPLIT,)
ARMS = ("baseline", "pretrained_train", "pretrained_deserts")


def pretrain(root: Path, args, seed: int, folders: list[str], path: Path) -> float:
    """DINO pretraining of the encoder for ``--pretrain-steps`` steps on the train images and
    ``folders``; the checkpoint at ``path``; returns its seconds."""
    start = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    module = PretrainModule(Network(bn_momentum=0.1),
                            objective=Objective(output_dim=args.prototypes, hidden_dim=512,
                                                bottleneck_dim=128,
                                                center_momentum=args.center_momentum),
                            optimizer=lambda p: torch.optim.AdamW(p, lr=args.pretrain_lr,
                                                                  weight_decay=0.04))
    dm = UnlabelledDataModule(str(root), unlabelled_dirs=folders, crop_size=args.crop,
                              local_views=args.local_views, batch_size=args.batch,
                              num_workers=0)
    trainer = L.Trainer(max_steps=args.pretrain_steps, accelerator="auto", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    seconds = time.perf_counter() - start
    print(f"  seed {seed}, pretraining on train + {folders or 'nothing else'}: "
          f"{args.pretrain_steps} steps in {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds


def run_seed(args, seed: int, tmp: Path) -> tuple[dict, dict]:
    """Per desert, per arm: {"val": cms, "shifted": cms}; and each arm's seconds."""
    root = generate(tmp / f"data{seed}", args.n_train, args.n_val, args.height, args.width,
                    seed, n_shifted=args.n_desert, n_dusk=args.n_desert,
                    n_sealed=args.n_desert)
    per_epoch = args.n_train // args.batch  # phase 1 drops the last partial batch
    extra = round(args.pretrain_steps / per_epoch)
    seconds: dict[str, float] = {}
    trained = {}
    start = time.perf_counter()
    trained["baseline"], _ = _fit(root, args, seed, {}, {}, args.epochs + extra,
                                  tmp / f"base{seed}")
    seconds["baseline"] = time.perf_counter() - start
    deserts = [f"{d}/Color_Images" for d in (*DEVELOPMENT, *SEALED)]
    for arm, folders in (("pretrained_train", []), ("pretrained_deserts", deserts)):
        ckpt = tmp / f"{arm}{seed}.ckpt"
        took = pretrain(root, args, seed, folders, ckpt)
        start = time.perf_counter()
        trained[arm], _ = _fit(root, args, seed, {}, {"init_from": str(ckpt)}, args.epochs,
                               tmp / f"{arm}{seed}")
        seconds[arm] = took + time.perf_counter() - start
    plain = EvalOptions()
    val = {arm: _score(model, root, "val", args.batch, plain) for arm, model in trained.items()}
    results = {desert: {arm: {"val": val[arm],
                              "shifted": _score(model, root, desert, args.batch, plain)}
                        for arm, model in trained.items()}
               for desert in (*DEVELOPMENT, *SEALED)}
    return results, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-desert", type=int, default=16, help="images per desert")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=176)
    parser.add_argument("--epochs", type=int, default=30, help="phase 1's epochs")
    parser.add_argument("--val-every", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pretrain-steps", type=int, default=360)
    parser.add_argument("--pretrain-lr", type=float, default=5e-4)
    parser.add_argument("--crop", type=int, default=96, help="global crop side")
    parser.add_argument("--local-views", type=int, default=4)
    parser.add_argument("--prototypes", type=int, default=1024)
    parser.add_argument("--center-momentum", type=float, default=0.9,
                        help="the teacher centre's momentum (DINO's 0.9)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep each seed's confusion matrices in DIR/seed<N>.npz and "
                        "reuse a seed kept there with the same settings")
    args = parser.parse_args()
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ("seeds", "keep")}
    start = time.perf_counter()
    per_seed, times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            kept = args.keep / f"seed{seed}.npz" if args.keep else None
            if kept is not None and kept.exists():
                per_seed.append(_load(kept, settings))
                continue
            results, seconds = run_seed(args, seed, Path(tmp))
            per_seed.append(results)
            times.append(seconds)
            if kept is not None:
                _save(kept, results, settings)
            print(f"seed {seed} done at {time.perf_counter() - start:.0f} s: " + ", ".join(
                f"{arm} {desert} {_miou(cms['shifted']):.3f} (val {_miou(cms['val']):.3f})"
                for desert, arms in results.items() for arm, cms in arms.items()),
                file=sys.stderr, flush=True)
    table = summarise(per_seed)
    per_epoch = args.n_train // args.batch
    print(json.dumps({
        "benchmark": "pretrain_gain",
        "machine": machine(),
        "setup": f"mobilenet_v3_large deeplabv3 from random weights, {args.width}x{args.height},"
                 f" {args.n_train} train / {args.n_val} val / {args.n_desert} per desert; "
                 f"pretraining: DINO, {args.pretrain_steps} steps of batch {args.batch} "
                 f"({args.crop} px global crops, {args.local_views} local), "
                 f"{args.prototypes} prototypes, centre momentum "
                 f"{args.center_momentum}; phase 1: {args.epochs} "
                 f"epochs from the pretrained encoder, the baseline {args.epochs} + "
                 f"{round(args.pretrain_steps / per_epoch)} epochs (the same steps); kept at "
                 f"the best val mIoU (validated every {args.val_every}); seeds {args.seeds}",
        "interval": "95%, two-level bootstrap over seeds and images, paired with the baseline",
        "seconds": round(time.perf_counter() - start, 1),
        "arm_seconds": {arm: [round(t[arm]) for t in times] for arm in ARMS} if times else {},
        "development": {d: table[d] for d in DEVELOPMENT},
        "sealed": {d: table[d] for d in SEALED},
        "how_to_read": "each arm against the baseline trained for the same steps; "
                       "pretrained_deserts has seen every desert's images (transductive); "
                       "sealed: the desert kept for confirmation",
    }, indent=1))


if __name__ == "__main__":
    main()
