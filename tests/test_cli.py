"""LightningCLI: every config parses, phase values, precision auto, smoke fits and the chain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from desertmind.cli.lightning import resolve_precision
from desertmind.cli.main import main
from desertmind.models.trained import read_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PHASES = ["phase1", "phase2_1_head", "phase2_2_backbone", "phase3"]


def _print_config(capsys, *files: str) -> dict:
    args = ["fit"]
    for f in files:
        args += ["-c", str(CONFIGS / f"{f}.yaml")]
    with pytest.raises(SystemExit) as e:
        main([*args, "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("files", [[p] for p in PHASES] + [[p, "demo"] for p in PHASES])
def test_every_config_parses(capsys, files):
    cfg = _print_config(capsys, *files)
    assert cfg["model"]["network"]["backbone"] == "mobilenet_v3_large"
    assert cfg["checkpoint"]["monitor"] == "val/mIoU"  # early stopping is linked to it


def test_phase1_matches_the_study(capsys):
    cfg = _print_config(capsys, "phase1")
    m, d = cfg["model"], cfg["data"]
    assert (m["network"]["weights"], m["loss"], m["init_from"], m["scheduler"]) == (
        "coco", "ce", None, None)
    assert m["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert m["optimizer"]["init_args"]["lr"] == 1e-4
    assert d["train_preset"] == "none" and d["class_weighting"] == "none"
    assert cfg["early_stopping"]["patience"] == 3 and cfg["trainer"]["max_epochs"] == 20
    assert cfg["freeze"]["unfreeze_at_epoch"] == 0
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "phase1"


def test_later_phases_change_what_the_study_changed(capsys):
    p21 = _print_config(capsys, "phase2_1_head")
    assert p21["model"]["init_from"] == "lightning_logs/phase1/checkpoints/best.ckpt"
    assert p21["freeze"]["unfreeze_at_epoch"] is None
    p22 = _print_config(capsys, "phase2_2_backbone")
    lr = p22["model"]["optimizer"]["init_args"]["lr"]
    assert lr * p22["model"]["param_groups"]["backbone_lr_mult"] == pytest.approx(1e-5)
    assert p22["freeze"]["unfreeze_at_epoch"] == 0 and p22["early_stopping"]["patience"] == 2
    p3 = _print_config(capsys, "phase3")
    m = p3["model"]
    assert m["loss"] == "weighted_ce + 0.5 dice"
    assert m["optimizer"]["init_args"]["lr"] == 5e-5
    assert m["optimizer"]["init_args"]["lr"] * m["param_groups"]["backbone_lr_mult"] == \
        pytest.approx(1e-5)
    assert m["scheduler"]["class_path"].endswith("ReduceLROnPlateau")
    assert m["scheduler"]["init_args"]["mode"] == "max"
    assert p3["data"]["train_preset"] == "crop" and p3["data"]["crop_size"] == 512
    assert p3["data"]["class_weighting"] == "inverse_log"


def test_precision_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU machine
    assert resolve_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
    assert resolve_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("gpu") == "16-mixed"


def test_the_four_phases_chain_end_to_end(synth_root: Path, tmp_path: Path, phase_args,
                                          part_keys):
    logs = tmp_path / "logs"
    previous = None
    for phase in PHASES:
        args = ["fit", *phase_args(phase, synth_root, logs)]
        if previous:
            args += ["--model.init_from", str(previous)]
        assert main(args) == 0
        best = logs / phase / "checkpoints" / "best.ckpt"
        assert best.is_file() and (logs / phase / "checkpoints" / "last.ckpt").is_file()
        saved = yaml.safe_load((logs / phase / "version_0" / "config.yaml").read_text())
        assert saved["trainer"]["precision"] == "32-true"  # auto, resolved on the CPU
        if phase == "phase2_1_head":  # backbone frozen all phase: it is phase 1's, unchanged
            a, b = read_checkpoint(previous)["state_dict"], read_checkpoint(best)["state_dict"]
            keys = part_keys()
            assert keys["encoder"] and all(torch.equal(a[k], b[k]) for k in keys["encoder"])
            assert any(not torch.equal(a[k], b[k]) for k in keys["head"])
        previous = best


def test_bad_data_root_is_a_clear_error(tmp_path: Path, capsys, phase_args):
    args = ["fit", *phase_args("phase1", tmp_path / "none", tmp_path)]
    assert main(args) == 2
    assert "desertmind synth" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "choices"), [
    (["--data.train_preset", "fancy"], "flip_color"),
    (["--data.class_weighting", "balanced"], "median_frequency"),
    (["--data.cache", "ram"], "disk"),
    # jsonargparse's own words (docs/reliability.md gives the choices)
    (["--model.scheduler", "torch.optim.lr_scheduler.Nope"],
     "Given value: torch.optim.lr_scheduler.Nope"),
])
def test_unknown_names_list_the_valid_choices(tmp_path: Path, capsys, override, choices):
    with pytest.raises(SystemExit) as e:
        main(["fit", "-c", str(CONFIGS / "phase1.yaml"), *override, "--print_config"])
    assert e.value.code == 2
    assert choices in capsys.readouterr().err


def test_bad_loss_and_class_count_are_clear_errors(synth_root: Path, tmp_path: Path, capsys,
                                                    phase_args):
    base = ["fit", *phase_args("phase1", synth_root, tmp_path)]
    assert main([*base, "--model.loss", "ce + focal"]) == 2
    assert "weighted_ce" in capsys.readouterr().err
    assert main([*base, "--model.class_weights", "[1.0, 2.0]"]) == 2
    assert "one weight >= 0 per class" in capsys.readouterr().err
    missing = str(tmp_path / "phase0" / "best.ckpt")
    assert main([*base, "--model.init_from", missing]) == 2
    assert missing in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--model.evaluation.tta_scales", "[0.0]", "every scale must be > 0"),
    ("--model.evaluation.sliding_window", "-8", "at least 16 pixels"),
    ("--model.param_groups.backbone_lr_mult", "-1", "must be >= 0"),
    ("--data.image_size", "[0, 48]", "each at least 16 pixels"),
    ("--data.batch_size", "1", "at least 2 images per batch"),
])
def test_impossible_values_are_refused_before_training(synth_root: Path, tmp_path: Path, capsys,
                                                       phase_args, option, value, message):
    assert main(["fit", *phase_args("phase1", synth_root, tmp_path), option, value]) == 2
    err = capsys.readouterr().err
    assert message in err and option[2:] in err
    assert not (tmp_path / "phase1").exists()  # refused before any run folder or checkpoint


def test_resuming_with_nothing_to_resume_is_refused(synth_root: Path, tmp_path: Path, capsys,
                                                    phase_args):
    assert main(["fit", *phase_args("phase1", synth_root, tmp_path), "--ckpt_path",
                 "last"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and str(tmp_path / "phase1" / "checkpoints") in err


@pytest.mark.parametrize("extra", [
    ["--trainer.fast_dev_run", "true"],
    ["--trainer.fast_dev_run", "true", "--model.network.arch", "deeplabv3plus",
     "--model.network.backbone", "resnet18", "--model.network.weights", "none"],
    ["--trainer.logger", "false"],
    ["--trainer.overfit_batches", "1"],
    ["--trainer.limit_val_batches", "0"],
], ids=["fast_dev_run", "fast_dev_run-smp", "logger-false", "overfit_batches",
        "no-validation"])
def test_the_lightning_idioms_a_user_types_first_run(extra, synth_root, tmp_path, monkeypatch,
                                                     phase_args, capsys):
    monkeypatch.chdir(tmp_path)  # Lightning's default folder when there is no logger
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", synth_root, logs),
                 "--trainer.enable_progress_bar", "false", *extra]) == 0
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    given = " ".join(extra)
    if "fast_dev_run" in given:  # one batch of each, nothing written anywhere
        assert written <= {"logs/stats.json"}, written
        assert "val_images.npz not written" in capsys.readouterr().err
    elif "--trainer.logger" in given:  # checkpoints in Lightning's default folder, no records
        assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= written, written
        assert not {"config.yaml", "provenance.json"} & written
        err = capsys.readouterr().err
        assert "LearningRateMonitor left out" in err and "provenance.json not written" in err
    else:
        assert "logs/phase1/checkpoints/last.ckpt" in written
