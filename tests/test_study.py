"""The study's own phases (configs/study) and the options its fidelity needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from desertmind.cli.main import main
from desertmind.data.classes import NUM_CLASSES, RAW_IDS
from desertmind.data.imageio import write_png
from desertmind.data.layout import Sample
from desertmind.data.stats import crop_class_pixels, study_class_weights
from desertmind.data.transforms import build_transform
from desertmind.models.trained import read_checkpoint
from desertmind.reports.report import load_report
from desertmind.training.losses import build_loss
from desertmind.training.module import SegmentationModule
from tests.stand_in import TINY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDY_PHASES = ("phase1", "phase2_1_head", "phase2_2_backbone", "phase3")
PER_IMAGE = "val/mIoU_per_image"

# the study's values (issue 12's table), phase by phase
TABLE = {
    "batch_size": (2, 2, 2, 2),
    "head_lr": (1e-4, 3e-5, 1e-5, 5e-5),
    "backbone_lr": (1e-4, "frozen", 1e-5, 1e-5),
    "weight_decay": (0.01, 0.01, 0.01, 1e-4),
    "max_epochs": (10, 6, 6, 12),
    "patience": (2, 2, 2, 3),
    "augmentation": ("none", "none", "study_flip_color", "crop 512"),
    "batchnorm": ("trains", "trains", "trains", "eval all phase"),
    "loss": ("ce", "ce", "ce", "weighted_ce + 0.5 study_dice"),
    "class_weighting": ("none", "none", "none", "study_inverse_log"),
    "input_scaling": ("unit",) * 4,
    "precision": ("16-mixed",) * 4,
    "val_batch_size": (1, 1, 1, 1),
    "starts_from": ("coco", "study/phase1", "study/phase2_1_head", "coco"),
}


def _resolved(capsys, phase: str) -> dict:
    with pytest.raises(SystemExit) as e:
        main(["fit", "-c", str(CONFIGS / "study" / f"{phase}.yaml"), "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _as_table(cfg: dict) -> dict:
    m, d, opt = cfg["model"], cfg["data"], cfg["model"]["optimizer"]["init_args"]
    net = m["network"]
    frozen = cfg["freeze"]["unfreeze_at_epoch"] is None
    if net["freeze_bn"]:
        bn = "eval all phase"
    else:  # a frozen backbone's BatchNorm statistics keep training only with train_bn
        bn = "trains" if (not frozen or cfg["freeze"]["train_bn"]) else "frozen with backbone"
    aug = d["train_preset"] + (f" {d['crop_size']}" if d["train_preset"] == "crop" else "")
    init = m["init_from"]
    return {
        "batch_size": d["batch_size"],
        "head_lr": opt["lr"],
        "backbone_lr": "frozen" if frozen else opt["lr"] * m["param_groups"]["backbone_lr_mult"],
        "weight_decay": opt["weight_decay"],
        "max_epochs": cfg["trainer"]["max_epochs"],
        "patience": cfg["early_stopping"]["patience"],
        "augmentation": aug,
        "batchnorm": bn,
        "loss": m["loss"],
        "class_weighting": d["class_weighting"],
        "input_scaling": net["input_scaling"],
        "precision": cfg["trainer"]["precision"],
        "val_batch_size": d["eval_batch_size"],
        "starts_from": net["weights"] if init is None else str(Path(init).parents[1].relative_to(
            "lightning_logs")),
    }


@pytest.mark.parametrize("index", range(4), ids=STUDY_PHASES)
def test_each_study_config_resolves_to_the_studys_values(capsys, index: int):
    cfg = _resolved(capsys, STUDY_PHASES[index])
    got = _as_table(cfg)
    for key, values in TABLE.items():
        expected = values[index]
        if isinstance(expected, float):
            assert got[key] == pytest.approx(expected), key
        else:
            assert got[key] == expected, key
    # the best checkpoint on the study's metric; early stopping and phase 3's plateau
    # scheduler are linked to it (not settable apart: tested on a run below)
    assert cfg["checkpoint"]["monitor"] == PER_IMAGE
    assert "monitor" not in cfg["early_stopping"]
    assert cfg["trainer"]["logger"]["init_args"]["name"] == f"study/{STUDY_PHASES[index]}"


def test_frozen_batchnorm_stays_frozen_through_training():
    module = SegmentationModule(replace(TINY, freeze_bn=True))
    module.train()
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    module.model(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns, strict=True))
    assert all(p.requires_grad for p in module.parameters())  # affine parameters still train
    plain = SegmentationModule(TINY).train()
    assert all(m.training for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_study_dice_is_the_studys_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))  # seven classes absent
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2).float()
    inter, denom = (probs * onehot).sum((0, 2, 3)), (probs + onehot).sum((0, 2, 3))
    expected = 1 - ((2 * inter + 1e-6) / (denom + 1e-6)).mean()
    got = build_loss("study_dice")(logits, target)
    torch.testing.assert_close(got, expected)
    assert got > build_loss("dice")(logits, target)  # absent classes count against it


def test_study_class_weights_count_random_crops(tmp_path: Path):
    masks = []
    for i in range(3):  # left half class 0 (raw 100), right half class 9 (raw 10000)
        raw = np.full((40, 60), RAW_IDS[9], dtype=np.uint16)
        raw[:, :30] = RAW_IDS[0]
        write_png(tmp_path / f"{i}.png", raw)
        masks.append(tmp_path / f"{i}.png")
    samples = [Sample(p.stem, p, p) for p in masks]
    whole = crop_class_pixels(samples, 100, seed=0)  # crop larger than the masks: whole masks
    assert whole[0] == whole[9] == 3 * 40 * 30 and whole.sum() == 3 * 40 * 60
    crops = crop_class_pixels(samples, 20, seed=0)
    assert crops.sum() == 3 * 20 * 20
    assert (crop_class_pixels(samples, 20, seed=0) == crops).all()  # seeded
    weights = study_class_weights(whole)
    share = whole / whole.sum()
    expected = 1 / np.log(1.02 + share)
    np.testing.assert_allclose(weights, expected / expected.mean())
    assert weights.mean() == pytest.approx(1.0) and weights[1] == weights.max()  # absent: largest


def test_study_flip_color_scales_every_image():
    transform = build_transform("study_flip_color", seed=0)
    image = np.full((8, 8, 3), 100, dtype=np.uint8)  # flat: contrast changes nothing
    values = [int(transform(image=image)["image"][0, 0, 0]) for _ in range(30)]
    assert all(80 <= v <= 120 for v in values) and len(set(values)) > 10


@pytest.mark.slow  # four phases of the study's configs: make test-full
def test_the_study_chain_trains_end_to_end(synth_root: Path, tmp_path: Path, phase_args):
    previous = None
    for phase in STUDY_PHASES:
        args = ["fit", *phase_args(f"study/{phase}", synth_root, tmp_path)]
        if previous and phase != "phase3":  # the study's phase 3 starts from COCO weights
            args += ["--model.init_from", str(previous)]
        assert main(args) == 0, phase
        previous = tmp_path / "study" / phase / "checkpoints" / "best.ckpt"
        assert previous.is_file()
    # phase 3's plateau scheduler follows the per-image metric too: it asks the checkpoint
    from desertmind.cli.lightning import DesertMindCLI

    cli = DesertMindCLI(args=phase_args("study/phase3", synth_root, tmp_path / "x"),
                        run=False)
    cli.model.trainer = cli.trainer
    scheduler = cli.model.configure_optimizers()["lr_scheduler"]
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler["monitor"] == PER_IMAGE


def test_every_best_epoch_of_a_study_run_is_the_one_best_ckpt_holds(synth_root: Path,
                                                                   tmp_path: Path, phase_args,
                                                                   capsys):
    assert main(["fit", *phase_args("study/phase1", synth_root, tmp_path),
                 "--trainer.max_epochs", "3", "--early_stopping.patience", "5"]) == 0
    folder = tmp_path / "study" / "phase1"
    best = read_checkpoint(folder / "checkpoints" / "best.ckpt")
    last = read_checkpoint(folder / "checkpoints" / "last.ckpt")
    states = {k.split("{")[0]: (k, v) for k, v in last["callbacks"].items()}
    key, checkpoint = states["PhaseCheckpoint"]
    assert f"'monitor': '{PER_IMAGE}'" in key
    assert f"'monitor': '{PER_IMAGE}'" in states["EarlyStopping"][0]
    score = float(checkpoint["best_model_score"])
    (run_dir,) = folder.glob("version_*")
    saved = np.load(run_dir / "val_images.npz")  # the report's bootstrap interval
    assert int(saved["epoch"]) == best["epoch"] and float(saved["value"]) == pytest.approx(score)
    assert states["HParamsSummary"][1]["best_monitored"] == pytest.approx(score)
    (run,), _ = load_report(tmp_path)
    assert run.best_epoch == best["epoch"]
    assert main(["scores", "--logs", str(tmp_path)]) == 0  # says which score it shows
    (row,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith("study/phase1 ")]
    assert row.split()[1:] == [f"{score:.4f}", PER_IMAGE, str(best["epoch"])]
