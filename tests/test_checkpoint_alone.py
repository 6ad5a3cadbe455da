"""A checkpoint is enough: predict / validate / test / export with ``--ckpt_path`` and no config,
the user's options winning, evaluation runs in their own folder, and ``--out`` results."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from desertmind.cli.main import main
from desertmind.data.classes import RAW_IDS
from desertmind.data.imageio import read_mask
from desertmind.models.trained import CLASS_TABLE_KEY
from desertmind.reports.report import load_report

CPU = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
       "--data.num_workers", "0"]


@pytest.fixture(scope="module")
def phase3(synth_root: Path, tmp_path_factory, phase_args) -> tuple[Path, Path]:
    """A tiny phase-3 run (weighted CE + Dice, crops): its best.ckpt and its logs folder."""
    logs = tmp_path_factory.mktemp("p3") / "logs"
    args = [*phase_args("phase3", synth_root, logs), "--model.init_from", "null",
            "--trainer.enable_progress_bar", "false"]
    assert main(["fit", *args]) == 0
    return logs / "phase3" / "checkpoints" / "best.ckpt", logs


def _altered(ckpt: Path, out: Path, **changes) -> Path:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key == "hyper_parameters":  # a group (network) is merged into the saved one
            hp = state["hyper_parameters"]
            hp.update({k: {**hp[k], **v} if isinstance(v, dict) and isinstance(hp.get(k), dict)
                       else v for k, v in value.items()})
        else:
            state[key] = value
    torch.save(state, out)
    return out


def test_predict_with_only_a_phase3_checkpoint(synth_root, phase3, tmp_path, capsys):
    ckpt, _ = phase3
    folder = synth_root / "val" / "Color_Images"
    out = tmp_path / "out"
    assert main(["predict", "--ckpt_path", str(ckpt), "--data.predict_dir", str(folder),
                 "--out", str(out), *CPU]) == 0
    names = sorted(p.name for p in folder.iterdir())
    for sub in ("raw", "color", "overlay"):
        assert sorted(p.name for p in (out / sub).iterdir()) == names
    assert read_mask(out / "raw" / names[0]).shape == (48, 80)  # original size
    assert f"wrote {len(names)} images" in capsys.readouterr().out


@pytest.mark.parametrize("scaling", ["imagenet", "unit"])
def test_an_exported_model_fed_plain_rgb_agrees_with_predict(synth_root, phase3, tmp_path,
                                                             scaling):
    import onnx
    import onnxruntime as ort

    from desertmind.data.classes import CLASS_NAMES, remap
    from desertmind.data.imageio import read_image

    ckpt, _ = phase3
    if scaling == "unit":  # the same weights, told they were trained on / 255 input
        ckpt = _altered(ckpt, tmp_path / "unit.ckpt",
                        hyper_parameters={"network": {"input_scaling": "unit"}})
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(onnx_path),
                 "--height", "32", "--width", "48"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASS_NAMES)
    assert json.loads(meta["raw_ids"]) == list(RAW_IDS) and meta["input_scaling"] == scaling
    out = tmp_path / "pred"  # at the images' own size, as the ONNX model is fed below
    assert main(["predict", "--ckpt_path", str(ckpt), "--data.root", str(synth_root),
                 "--data.predict_dir", "val", "--data.image_size", "null",
                 "--out", str(out), *CPU]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    agree = []
    for path in sorted((synth_root / "val" / "Color_Images").iterdir()):
        rgb = read_image(path).transpose(2, 0, 1)[None].astype(np.float32)  # no scaling
        (logits,) = session.run(None, {"images": rgb})
        expected = remap(read_mask(out / "raw" / path.name))
        agree.append((logits[0].argmax(0) == expected).mean())
    assert np.mean(agree) >= 0.995, agree


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _confusion(out: Path) -> np.ndarray:
    with open(out / "confusion.csv") as f:
        return np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])


def test_test_out_writes_metrics_per_image_and_confusion(synth_root, phase3, tmp_path):
    ckpt, logs = phase3
    out = tmp_path / "eval"
    # at the original 48x80 here; the checkpoint's own 32x48 is the default (last test below)
    assert main(["test", "--ckpt_path", str(ckpt), "--data.root", str(synth_root),
                 "--data.test_dir", "val", "--data.image_size", "null", "--out", str(out),
                 *CPU]) == 0
    metrics = _metrics(out)
    assert metrics["images"] == 4 and metrics["checkpoint"] == str(ckpt)
    keys = list(metrics)  # the headline first, then each class's IoU in the class order
    assert keys[:3] == ["test/mIoU", "test/mIoU_per_image", "test/pixel_acc"]
    ious = [k for k in keys if k.startswith("test/iou/")]
    from desertmind.data.classes import CLASS_NAMES

    assert [k.split("/", 2)[2] for k in ious] == [n for n in CLASS_NAMES
                                                  if f"test/iou/{n}" in ious]
    assert all(float(f"{v:.6g}") == v for v in metrics.values()
               if isinstance(v, float))  # 6 significant digits, not a float's 16
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (out / "logs").rglob("events.out.tfevents.*")}
    tb = EventAccumulator(str(events), size_guidance={"tensors": 0})
    tb.Reload()  # one table in TensorBoard's text tab, beside the single-point charts
    assert "test/summary/text_summary" in tb.Tags()["tensors"]
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["image"] for r in rows} == {
        p.stem for p in (synth_root / "val" / "Color_Images").iterdir()}
    per_image = [float(r["mIoU"]) for r in rows]
    assert per_image == sorted(per_image)  # worst first
    # the same per-image rule as the logged metric: their mean is test/mIoU_per_image
    assert np.mean(per_image) == pytest.approx(metrics["test/mIoU_per_image"], abs=1e-5)
    confmat = _confusion(out)
    assert confmat.shape == (10, 10)
    labelled = sum(int(np.isin(read_mask(p), RAW_IDS).sum())
                   for p in (synth_root / "val" / "Segmentation").iterdir())
    assert confmat.sum() == labelled
    iou = np.diag(confmat) / (confmat.sum(0) + confmat.sum(1) - np.diag(confmat))
    assert np.nanmean(iou) == pytest.approx(metrics["test/mIoU"], abs=1e-5)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the run's logs are under --out, never in the phase's training folder
    assert sorted(p.name for p in (logs / "phase3").iterdir()) == [".done", "checkpoints",
                                                                  "version_0"]


def test_user_evaluation_options_win_over_the_checkpoint(phase3, tmp_path):
    ckpt, _ = phase3
    plain, flipped = tmp_path / "plain", tmp_path / "flip"
    assert main(["validate", "--ckpt_path", str(ckpt), "--out", str(plain), *CPU]) == 0
    # multi-scale TTA (a flip would change nothing for the tests' 1x1-conv stand-in network)
    assert main(["validate", "--ckpt_path", str(ckpt), "--out", str(flipped),
                 "--model.evaluation.tta_scales", "[0.5, 1.0]", "--model.evaluation.tta_flip",
                 "true", *CPU]) == 0
    assert _metrics(plain)["val/loss"] != _metrics(flipped)["val/loss"]
    only = tmp_path / "only"
    assert main(["validate", "--ckpt_path", str(ckpt), "--out", str(only),
                 "--model.evaluation.predict_classes", "[Sky, Landscape]", *CPU]) == 0
    predicted = _confusion(only)
    assert predicted[:, :8].sum() == 0 and predicted[:, 8:].sum() > 0
    # evaluated at the size the checkpoint was trained at: 4 images of 32x48
    assert _confusion(plain).sum() == 4 * 32 * 48


def test_restricted_classes_hold_after_the_resize(synth_root, phase3, tmp_path):
    """Evaluated at 32x48 and written at 48x80: no excluded class may appear (the -inf scores
    used to go through the bilinear resize and come out NaN)."""
    ckpt, _ = phase3
    out = tmp_path / "out"
    assert main(["predict", "--ckpt_path", str(ckpt), "--data.image_size", "[32, 48]",
                 "--data.predict_dir", str(synth_root / "val" / "Color_Images"),
                 "--model.evaluation.predict_classes", "[Sky, Landscape]", "--out", str(out),
                 *CPU]) == 0
    for path in (out / "raw").iterdir():
        mask = read_mask(path)
        assert mask.shape == (48, 80)
        assert set(np.unique(mask).tolist()) <= {RAW_IDS[8], RAW_IDS[9]}


def test_an_evaluation_with_a_phase_config_logs_in_its_own_folder(synth_root, phase3, configs,
                                                                  tmp_path):
    ckpt, logs = phase3
    runs_before, _ = load_report(logs)
    for command in (["validate"], ["test", "--data.test_dir", "val"]):
        assert main([*command, "-c", str(configs / "phase1.yaml"), "--ckpt_path", str(ckpt),
                     "--data.root", str(synth_root), "--model.network.arch", "tiny",
                     "--trainer.logger.init_args.save_dir", str(logs), *CPU]) == 0
    assert not (logs / "phase1").exists()  # the config's phase is not the checkpoint's
    assert sorted(p.name for p in (logs / "phase3").iterdir()) == [
        ".done", "checkpoints", "eval", "version_0"]
    assert sorted(p.name for p in (logs / "phase3" / "eval").iterdir()) == ["test", "validate"]
    runs_after, problems = load_report(logs)
    assert [r.run for r in runs_after] == [r.run for r in runs_before] and not problems


def test_a_different_network_given_by_the_user_is_refused(phase3, capsys):
    ckpt, _ = phase3
    assert main(["validate", "--ckpt_path", str(ckpt), "--model.network.backbone", "resnet50",
                 *CPU]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "mobilenet_v3_large" in err and "model.network.backbone" in err


def test_nothing_in_a_checkpoint_chooses_what_is_imported_or_downloaded(phase3, tmp_path,
                                                                      monkeypatch):
    """Training-time values and class paths in a checkpoint from someone else are not read:
    no import, no download of COCO weights, no init_from."""
    ckpt, _ = phase3
    marker = tmp_path / "imported"
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / "dm_evil_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(package))
    evil = _altered(ckpt, tmp_path / "evil.ckpt", hyper_parameters={
        "_class_path": "dm_evil_module.Evil",
        "optimizer": {"class_path": "dm_evil_module.Evil", "init_args": {"lr": 10.0}},
        "scheduler": {"class_path": "dm_evil_module.Evil"},
        "init_from": str(tmp_path / "missing.ckpt"),
        "network": {"weights": "coco"}, "loss": "dm_evil_module.Evil",
    })
    import torchvision.models._api as tv_api

    def no_download(*args, **kwargs):
        raise AssertionError("pretrained weights were requested")

    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", no_download)
    assert main(["validate", "--ckpt_path", str(evil), "--out", str(tmp_path / "o"), *CPU]) == 0
    assert not marker.exists() and "dm_evil_module" not in sys.modules
    assert math.isfinite(_metrics(tmp_path / "o")["val/mIoU"])


def test_a_checkpoint_with_another_class_table_is_refused(phase3, tmp_path, capsys):
    ckpt, _ = phase3
    table = torch.load(ckpt, map_location="cpu", weights_only=True)[CLASS_TABLE_KEY]
    swapped = {"names": table["names"][::-1], "raw_ids": table["raw_ids"]}
    other = _altered(ckpt, tmp_path / "other.ckpt", **{CLASS_TABLE_KEY: swapped})
    assert main(["predict", "--ckpt_path", str(other), "--data.predict_dir", str(tmp_path),
                 "--out", str(tmp_path / "o"), *CPU]) == 2
    assert "class table" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_overlay_given_alone_fails_with_one_line(configs, capsys):
    assert main(["fit", "-c", str(configs / "demo.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "applied after a phase config" in err[0] and "-c configs/phase1.yaml" in err[0]


@pytest.mark.parametrize("sub", ["validate", "test", "predict"])
def test_an_evaluation_without_a_checkpoint_is_refused_and_writes_nothing(
        sub, synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where Lightning's defaults would write
    args = [sub, "--data.root", str(synth_root), "--data.test_dir", "val",
            "--data.predict_dir", "val", "--out", str(tmp_path / "out"), *CPU]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ckpt_path" in err and "random weights" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["best", "last"])
def test_ckpt_path_best_and_last_name_the_phase_files(name, synth_root, phase3, tmp_path,
                                                      configs):
    _, logs = phase3
    phase = ["-c", str(configs / "phase3.yaml"), "-c", str(configs / "demo.yaml"),
             "--trainer.logger.init_args.save_dir", str(logs), "--data.root", str(synth_root),
             "--data.image_size", "[32, 48]", "--model.network.arch", "tiny", *CPU]
    for sub in ("validate", "test"):
        out = tmp_path / f"{sub}-{name}"
        assert main([sub, *phase, "--data.test_dir", "val", "--ckpt_path", name,
                     "--out", str(out)]) == 0
        assert json.loads((out / "metrics.json").read_text())
    out = tmp_path / f"predict-{name}"
    assert main(["predict", *phase, "--data.predict_dir", "val", "--ckpt_path", name,
                 "--out", str(out)]) == 0
    assert len(list((out / "raw").iterdir())) == 4
    # a phase without the file is named, not Lightning's "ModelCheckpoint is not configured"
    empty = tmp_path / "empty-logs"
    assert main(["validate", *phase, "--trainer.logger.init_args.save_dir", str(empty),
                 "--ckpt_path", name]) == 2
    assert not empty.exists()


def test_a_relative_data_root_is_found_from_another_folder_or_named(synth_root, tmp_path,
                                                                   phase_args, monkeypatch,
                                                                   capsys):
    """Trained with a data.root relative to its folder: validated from another folder, the
    checkpoint's recorded absolute root is used; when that is gone too, one line says where
    the path came from and to pass --data.root."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(synth_root, work / "data")
    monkeypatch.chdir(work)
    args = phase_args("phase1", Path("data"), Path("logs"))
    assert main(["fit", *args]) == 0
    ckpt = (work / "logs" / "phase1" / "checkpoints" / "best.ckpt").resolve()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["validate", "--ckpt_path", str(ckpt), "--out", "ev",
                 "--trainer.accelerator", "cpu"]) == 0
    assert json.loads((other / "ev" / "metrics.json").read_text())["images"] > 0
    shutil.rmtree(work / "data")
    assert main(["validate", "--ckpt_path", str(ckpt), "--out", "ev2"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trained on data.root 'data' (relative to the folder training ran in)" in line
    assert "--data.root ROOT" in line and "synth" not in line
