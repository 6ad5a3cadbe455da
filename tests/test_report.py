"""Dashboards and the phase report, against the event files of a real tiny two-phase run."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar.layout_pb2 import Layout
from tensorboard.plugins.hparams import metadata
from torch.utils.tensorboard import SummaryWriter

from desertmind.cli.main import main
from desertmind.data.classes import CLASS_NAMES
from desertmind.models.trained import best_score, read_checkpoint
from desertmind.reports.report import load_report, write_report
from desertmind.reports.uncertainty import dataset_miou
from desertmind.runs import VAL_IMAGES_FILE

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "phase_analysis.ipynb"


def _two_phases(root: Path, logs: Path, phase_args, arch: str | None = "tiny") -> Path:
    """phase1 then phase2_1_head, 3 epochs each, with the phase configs' dashboard callbacks
    (``arch=None``: the configs' real network)."""
    previous: list[str] = []
    for phase in ("phase1", "phase2_1_head"):
        args = ["fit", *phase_args(phase, root, logs, arch=arch),
                "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", *previous]
        assert main(args) == 0
        previous = ["--model.init_from", str(logs / phase / "checkpoints" / "best.ckpt")]
    return logs


@pytest.fixture(scope="module")
def tiny_logs(synth_root: Path, tmp_path_factory, phase_args) -> Path:
    """Two phases of the tests' stand-in network."""
    return _two_phases(synth_root, tmp_path_factory.mktemp("runs") / "logs", phase_args)


@pytest.fixture(scope="module")
def real_logs(synth_root: Path, tmp_path_factory, phase_args) -> Path:
    """Two phases of the real network, for a notebook kernel (its own process) to load."""
    return _two_phases(synth_root, tmp_path_factory.mktemp("real") / "logs", phase_args,
                       arch=None)


def _events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_report_figures_equal_the_logged_values(tiny_logs: Path):
    runs, problems = load_report(tiny_logs)
    assert problems == [] and [r.run for r in runs] == ["phase1", "phase2_1_head"]
    for r in runs:
        ea = _events(r.path)
        miou = ea.Scalars("val/mIoU")
        best = max(miou, key=lambda e: e.value)
        assert r.best_miou == pytest.approx(best.value) and r.epochs_run == len(miou) == 3
        epoch = {e.step: int(e.value) for e in ea.Scalars("epoch")}[best.step]
        assert r.best_epoch == epoch
        at = {tag: [e.value for e in ea.Scalars(tag) if e.step == best.step][0]
              for tag in ("val/pixel_acc", "val/mIoU_per_image")}
        assert r.pixel_acc == pytest.approx(at["val/pixel_acc"])
        assert r.miou_per_image == pytest.approx(at["val/mIoU_per_image"])
        for name, value in r.per_class.items():
            logged = [e.value for e in ea.Scalars(f"val/iou/{name}") if e.step == best.step][0]
            assert value == pytest.approx(logged)
        _, ckpt_score, _ = best_score(r.path.parent / "checkpoints" / "best.ckpt")
        assert r.best_miou == pytest.approx(ckpt_score)
        assert r.early_stopped is False  # patience 3 cannot fire in 3 epochs
    p1, p21 = runs
    assert p21.started_from == "phase1" and p21.delta == pytest.approx(p21.best_miou - p1.best_miou)


def test_csv_and_markdown_agree_and_plots_are_real_charts(tiny_logs: Path, tmp_path: Path):
    assert main(["report", "--logs", str(tiny_logs), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    md = (tmp_path / "summary.md").read_text()
    assert [r["run"] for r in rows] == ["phase1", "phase2_1_head"]
    for row in rows:
        line = next(li for li in md.splitlines() if li.startswith(f"| {row['run']} |"))
        assert f"{float(row['best_val_mIoU']):.4f}" in line and f"| {row['best_epoch']} |" in line
        assert f"{float(row['pixel_acc']):.4f}" in line
        for name in CLASS_NAMES:
            if row[f"iou_{name}"]:
                class_line = next(li for li in md.splitlines() if li.startswith(f"| {name} |"))
                assert f"{float(row[f'iou_{name}']):.4f}" in class_line
    for png in ("curves.png", "per_class_iou.png"):
        image = cv2.imread(str(tmp_path / png))
        assert image is not None and image.shape[0] > 300 and image.shape[1] > 600
        assert image.std() > 10  # not a blank canvas


def test_dashboard_images_come_at_the_configured_interval_only(tiny_logs: Path):
    ea = _events(next((tiny_logs / "phase1").glob("version_*")))
    steps_per_epoch = 2  # limit_train_batches; images are logged at the epoch's last global step
    confmat = [e.step // steps_per_epoch - 1 for e in ea.Images("val/confusion_matrix")]
    grids = [e.step // steps_per_epoch - 1 for e in ea.Images("val/predictions")]
    assert confmat == [0, 1, 2]  # every_n_epochs: 1
    assert grids == [1]  # every_n_epochs: 2
    best = max(e.value for e in ea.Scalars("val/mIoU"))
    assert ea.Scalars("hp/best_val_mIoU")[-1].value == pytest.approx(best)
    # one value per validation, none before the first (no 0.0 placeholder)
    kept, logged = ea.Scalars("hp/best_val_mIoU"), ea.Scalars("val/mIoU")
    assert len(kept) == len(logged) and kept[0].step >= logged[0].step > 0
    hparams = ea.PluginTagToContent("hparams")
    experiment = metadata.parse_experiment_plugin_data(hparams["_hparams_/experiment"])
    names = [h.name for h in experiment.hparam_infos]
    changes = [n for n in names if n.startswith("change/")]
    assert set(changes) >= {"change/loss", "change/init_from", "change/lr_head",
                            "change/lr_backbone", "change/train_preset"}
    assert sorted(names)[:len(changes)] == sorted(changes)  # TensorBoard lists them first
    assert [m.name.tag for m in experiment.metric_infos] == ["hp/best_val_mIoU"]
    start = metadata.parse_session_start_info_plugin_data(
        hparams["_hparams_/session_start_info"])
    assert start.group_name == "phase1/version_0"  # HParams rows name their run
    session = start.hparams
    assert session["change/crop_size"].string_value == "none"  # phase 1 does not crop
    assert session["setup/backbone"].string_value == "mobilenet_v3_large"
    assert session["setup/freeze_bn"].WhichOneof("kind") == "bool_value"  # a boolean, not 0.0
    assert session["setup/max_epochs"].string_value == "3"  # not 3.0000
    # trained without target images: not transductive (a boolean, for filtering)
    assert session["setup/transductive"].WhichOneof("kind") == "bool_value"
    assert session["setup/transductive"].bool_value is False
    assert session["change/lr_head"].number_value > 0
    layout = Layout.FromString(
        ea.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    per_class = next(c for c in layout.category if c.title == "per-class IoU")
    assert [(c.title, list(c.multiline.tag)) for c in per_class.chart] == \
        [(n, [f"val/iou/{n}"]) for n in CLASS_NAMES]  # one chart per class


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(real_logs: Path, monkeypatch):
    monkeypatch.setenv("DESERTMIND_LOGS", str(real_logs))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4


def test_runs_without_metrics_are_named_not_a_traceback(tiny_logs: Path, tmp_path: Path, capsys):
    import shutil

    logs = tmp_path / "logs"
    shutil.copytree(tiny_logs, logs)
    broken = logs / "crashed" / "version_0"
    writer = SummaryWriter(str(broken))
    writer.add_scalar("train/loss_step", 1.0, 0)
    writer.close()
    assert main(["report", "--logs", str(logs), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "crashed" in err and "no val/mIoU" in err
    assert "Runs left out" in (tmp_path / "out" / "summary.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--logs", str(empty), "--out", str(tmp_path / "o2")]) == 2
    assert str(empty) in capsys.readouterr().err


def test_check_data_plot(synth_root: Path, tmp_path: Path):
    out = tmp_path / "shares.png"
    assert main(["check-data", str(synth_root), "--stats", str(tmp_path / "s.json"),
                 "--plot", str(out)]) == 0
    image = cv2.imread(str(out))
    assert image is not None and image.std() > 10


def test_report_says_when_early_stopping_fired(synth_root: Path, tmp_path: Path, phase_args):
    logs = tmp_path / "logs"
    args = ["fit", *phase_args("phase1", synth_root, logs),
            "--trainer.max_epochs", "5", "--trainer.enable_progress_bar", "false",
            "--early_stopping.patience", "1", "--early_stopping.min_delta", "2.0"]
    assert main(args) == 0
    (run,), _ = load_report(logs)
    assert run.early_stopped is True and run.epochs_run == 2


def test_write_report_returns_what_it_wrote(tiny_logs: Path, tmp_path: Path):
    result = write_report(tiny_logs, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in result["paths"].values())
    assert os.path.commonpath([str(p) for p in result["paths"].values()]) == str(tmp_path)


def test_each_run_keeps_its_best_epochs_images_and_the_report_judges_the_change(
        tiny_logs: Path, tmp_path: Path):
    runs, _ = load_report(tiny_logs)
    for r in runs:
        with np.load(r.path / VAL_IMAGES_FILE) as kept:
            names, cms, epoch = list(kept["names"]), kept["cms"], int(kept["epoch"])
        assert len(names) == len(set(names)) == 4  # limit_val_batches 2 x batch 2
        assert epoch == r.best_epoch  # a worse later epoch did not replace it
        assert dataset_miou(cms.sum(0)) == pytest.approx(r.best_miou, abs=1e-6)
        assert r.interval.low <= r.best_miou <= r.interval.high
    phase1, head = runs
    assert phase1.change is None and head.started_from == "phase1"
    assert head.change.value == pytest.approx(head.delta, abs=1e-6)
    assert head.change.low <= head.change.value <= head.change.high
    assert set(head.per_class_delta) == set(head.per_class) & set(phase1.per_class)
    text = write_report(tiny_logs, tmp_path)["paths"]["summary.md"].read_text()
    row = next(line for line in text.splitlines() if line.startswith("| phase2_1_head |"))
    assert "0.5020" in row and head.change.verdict in row  # the study's figure, the verdict
    assert f"[{head.interval.low:.4f}, {head.interval.high:.4f}]" in row
    assert "## Worst validation images" in text
    assert (tmp_path / "confusion.png").is_file()


def test_runs_repeated_with_random_seeds_are_summarised_per_phase():
    from desertmind.reports.report import RunSummary, across_seeds, markdown
    from desertmind.runs import without_random_seed

    assert without_random_seed("demo/random_seed_12/phase3") == ("demo/phase3", 12)
    assert without_random_seed("study/phase1") == ("study/phase1", None)
    runs = [RunSummary(run=f"random_seed_{s}/{p}", path=Path("."), best_miou=v, best_epoch=1,
                       pixel_acc=None, miou_per_image=None, epochs_run=2, early_stopped=False,
                       phase=f"random_seed_{s}/{p}")
            for s, p, v in ((1, "phase1", 0.40), (2, "phase1", 0.44), (3, "phase1", 0.45),
                            (1, "phase3", 0.5))]
    groups, notes = across_seeds(runs)
    assert notes == []
    assert list(groups) == ["phase1"] and len(groups["phase1"]) == 3  # phase3: one seed only
    row = next(line for line in markdown(runs, []).splitlines() if line.startswith("| phase1 |"))
    values = np.array([0.40, 0.44, 0.45])
    assert f"| 3 | {values.mean():.4f} | {values.std(ddof=1):.4f} | 0.4000 | 0.4500 |" in row
    assert row.endswith("| - | - |")  # no paired changes kept: no verdict over seeds


def test_seeds_are_the_recorded_ones_not_the_folder_names():
    from desertmind.reports.report import RunSummary, across_seeds, markdown

    runs = [RunSummary(run=f"random_seed_{s}/phase1", path=Path("."), best_miou=v, best_epoch=1,
                       pixel_acc=None, miou_per_image=None, epochs_run=2, early_stopped=False,
                       phase=f"random_seed_{s}/phase1", config={"seed_everything": recorded})
            for s, recorded, v in ((1, 42, 0.40), (2, 42, 0.40), (3, 7, 0.45))]
    groups, notes = across_seeds(runs)
    assert [r.run for r in groups["phase1"]] == ["random_seed_1/phase1", "random_seed_3/phase1"]
    assert len(notes) == 1 and "random_seed_2/phase1" in notes[0] and "42" in notes[0]
    text = markdown(runs, [])
    assert notes[0] in text and "| phase1 | 2 |" in text


def test_a_nan_run_and_a_config_that_is_a_list_leave_the_others_reported(
        tiny_logs: Path, tmp_path: Path, capsys):
    import shutil

    logs = tmp_path / "logs"
    shutil.copytree(tiny_logs, logs)
    nan_run = logs / "diverged" / "version_0"
    writer = SummaryWriter(str(nan_run))
    for step in range(3):
        writer.add_scalar("val/mIoU", float("nan"), step)
    writer.close()
    (first, *_), _ = load_report(tiny_logs)
    listed = logs / first.path.relative_to(tiny_logs) / "config.yaml"
    listed.write_text("- 1\n- 2\n")
    assert main(["report", "--logs", str(logs), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "diverged" in err and "NaN" in err and "Traceback" not in err
    runs, _ = load_report(logs)
    assert len(runs) == 2 and runs[0].config == {}
    (runs[0].path / "val_images.npz").write_bytes(b"damaged")
    runs, problems = load_report(logs)
    assert len(runs) == 1 and any("val_images.npz is damaged" in p for p in problems)
    assert "allow_pickle" not in " ".join(problems)


def test_a_change_judged_over_seeds_resamples_seeds_and_images():
    from desertmind.reports.report import RunSummary, markdown
    from desertmind.reports.uncertainty import paired_change, paired_change_over_seeds

    rng = np.random.default_rng(0)

    def cms(boost: int) -> np.ndarray:
        m = rng.integers(0, 50, (12, 10, 10))
        m[:, np.arange(10), np.arange(10)] += 400 + boost
        return m

    runs = []
    for seed, boost in ((1, 300), (2, -150), (3, -150)):
        parent, child = cms(0), cms(boost)
        run = RunSummary(run=f"random_seed_{seed}/phase3", path=Path("."), best_miou=0.5,
                         best_epoch=1, pixel_acc=None, miou_per_image=None, epochs_run=2,
                         early_stopped=False, phase=f"random_seed_{seed}/phase3",
                         delta=0.0, image_cms=child, parent_cms=parent,
                         images=[f"{i}.png" for i in range(len(child))],
                         change=paired_change(child, parent))
        runs.append(run)
    row = next(line for line in markdown(runs, []).splitlines() if line.startswith("| phase3 |"))
    over = paired_change_over_seeds([(r.image_cms, r.parent_cms) for r in runs],
                                    design="crossed")
    assert f"[{over.low:+.4f}, {over.high:+.4f}] | {over.verdict} |" in row
    # one seed gains, two lose: each seed's verdict is clear, the one over seeds is not
    assert "significant gain" in row and "significant regression" in row
    assert over.verdict == "no significant change"


def test_chained_phases_are_drawn_end_to_end_with_their_losses(tiny_logs: Path):
    from desertmind.reports.report import TRAIN_LOSS, VAL_LOSS

    phase1, head = load_report(tiny_logs)[0]
    assert phase1.epoch_offset == 0 and head.epoch_offset == phase1.epochs_run == 3
    for r in (phase1, head):
        assert [e for e, _ in r.loss_curves[TRAIN_LOSS]] == [0, 1, 2]
        logged = [e.value for e in _events(r.path).Scalars(VAL_LOSS)]
        assert [v for _, v in r.loss_curves[VAL_LOSS]] == pytest.approx(logged)


def test_prediction_grid_has_column_titles_row_names_and_a_class_legend():
    from desertmind.data.classes import CLASSES
    from desertmind.figures import GRID_COLUMNS, prediction_grid

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (18, 32, 3), dtype=np.uint8) for _ in range(2)]
    masks = [rng.integers(0, 10, (18, 32), dtype=np.uint8) for _ in range(2)]
    fig = prediction_grid(images, masks, masks[::-1], ["a.png", "b.png"])
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes[:4]] == list(GRID_COLUMNS)
    assert [axes[0].get_ylabel(), axes[4].get_ylabel()] == ["a.png", "b.png"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][:10] == [c.name for c in CLASSES]
    assert [t.get_text() for t in legend.get_texts()][10:] == ["error: wrong", "error: ignored"]


@pytest.mark.parametrize("kind", ["confusion", "grid"])
def test_dashboard_figures_stay_readable_where_tensorboard_shows_them(kind: str):
    """TensorBoard draws an image about 480 pixels wide: no text may shrink below 7 pixels."""
    from matplotlib.text import Text

    from desertmind.figures import confusion_matrix_figure, prediction_grid

    rng = np.random.default_rng(0)
    if kind == "confusion":
        fig = confusion_matrix_figure(rng.integers(0, 50, (10, 10)), "validation, epoch 3")
    else:
        images = [rng.integers(0, 255, (144, 256, 3), dtype=np.uint8) for _ in range(4)]
        masks = [rng.integers(0, 10, (144, 256), dtype=np.uint8) for _ in range(4)]
        fig = prediction_grid(images, masks, masks[::-1], [f"{i}.png" for i in range(4)])
    fig.canvas.draw()
    width = fig.get_figwidth() * fig.dpi
    sizes = [t.get_fontsize() * fig.dpi / 72 for t in fig.findobj(Text)
             if t.get_text() and t.get_visible()]
    assert sizes and min(sizes) * 480 / width >= 7, (width, min(sizes))


def test_a_chained_phase_continues_the_previous_phases_tensorboard_steps(tiny_logs: Path):
    phase1, head = load_report(tiny_logs)[0]
    first, second = _events(phase1.path), _events(head.path)
    last_step = read_checkpoint(tiny_logs / "phase1" / "checkpoints" / "last.ckpt")["global_step"]
    assert last_step == 6  # phase 1's 3 epochs x 2 steps: phase 2.1 starts where it ended
    for tag in ("val/mIoU", "train/loss_epoch", "epoch"):
        own = [e.step for e in first.Scalars(tag)]
        chained = [e.step for e in second.Scalars(tag)]
        assert chained == [s + last_step for s in own]  # the same run length, shifted
    assert [e.step for e in second.Images("val/confusion_matrix")] == \
        [e.step + last_step for e in first.Images("val/confusion_matrix")]


def test_val_and_test_side_by_side(tiny_logs: Path, tmp_path: Path):
    # last in this file: it adds an evaluation run to the shared logs
    best = tiny_logs / "phase2_1_head" / "checkpoints" / "best.ckpt"
    assert main(["test", "--ckpt_path", str(best), "--data.test_dir", "val",
                 "--trainer.enable_progress_bar", "false"]) == 0
    phase1, head = load_report(tiny_logs)[0]
    assert phase1.test_miou is None
    (run,) = (tiny_logs / "phase2_1_head" / "eval" / "test").glob("version_*")
    logged = _events(run).Scalars("test/mIoU")[-1].value
    assert head.test_split == "val" and head.test_miou == pytest.approx(logged)
    text = write_report(tiny_logs, tmp_path)["paths"]["summary.md"].read_text()
    row = next(line for line in text.splitlines()
               if line.startswith("| phase2_1_head |") and "| val |" in line)
    assert f"{head.test_miou:.4f}" in row and f"{head.best_miou - head.test_miou:+.4f}" in row


def test_the_curves_mark_each_phase_and_where_the_loss_definition_changes():
    from desertmind.reports.report import TRAIN_LOSS, RunSummary, curves_figure

    def run(phase: str, loss: str, offset: int, parent: str | None) -> RunSummary:
        return RunSummary(run=phase, path=Path("."), best_miou=0.4, best_epoch=1,
                          pixel_acc=None, miou_per_image=None, epochs_run=3,
                          early_stopped=False, phase=phase, started_from=parent,
                          epoch_offset=offset, curve=[(0, 0.3), (1, 0.4), (2, 0.4)],
                          loss_curves={TRAIN_LOSS: [(0, 0.5), (1, 0.3), (2, 0.2)]},
                          config={"model": {"loss": loss}})

    chain = [run("phase2_2_backbone", "ce", 0, None),
             run("phase3", "weighted_ce + 0.5 dice", 3, "phase2_2_backbone")]
    ax_miou, ax_loss = curves_figure(chain).get_axes()
    assert [t.get_text() for t in ax_miou.texts] == ["phase2_2_backbone", "phase3"]
    assert len(ax_miou.patches) == len(ax_loss.patches) == 2  # one shaded span per phase
    assert [t.get_text() for t in ax_loss.texts] == [
        "loss changes: ce -> weighted_ce + 0.5 dice"]
    same = [run("phase1", "ce", 0, None), run("phase2_1_head", "ce", 3, "phase1")]
    assert not curves_figure(same).get_axes()[1].texts  # the same loss: nothing to mark
