"""Phase report: read every run's TensorBoard events and write a summary, tables and charts.

A run is a ``<logs>/<name>/version_N`` folder with event files (the phases, and any other run
under the logs folder). Figures are the values the runs logged, read back unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tqdm.auto import tqdm

from desertmind.data.classes import CLASS_NAMES
from desertmind.errors import DesertMindError, ReportError
from desertmind.figures import confusion_matrix_figure, new_figure, save
from desertmind.files import cannot_write, write_text
from desertmind.models.trained import read_checkpoint
from desertmind.reports.uncertainty import (
    LEVEL,
    RESAMPLES,
    Interval,
    class_iou_intervals,
    dataset_miou,
    miou_interval,
    paired_change,
    paired_change_over_seeds,
)
from desertmind.runs import (
    CONFIG_FILE,
    EVAL_DIR,
    PROVENANCE_FILE,
    VAL_IMAGES_FILE,
    checkpoints_of_run,
    is_eval_run,
    phase_of_checkpoint,
    phase_of_run,
    without_random_seed,
)
from desertmind.training.metrics import MONITOR

TRAIN_LOSS, VAL_LOSS = "train/loss_epoch", "val/loss"

#: the study's published val mIoU per phase (per-image mean of per-class IoU)
STUDY_MIOU = {"phase1": 0.496, "phase2_1_head": 0.502, "phase2_2_backbone": 0.507,
              "phase3": 0.487}


@dataclass
class RunSummary:
    """What the report says about one run."""

    run: str
    path: Path
    best_miou: float
    best_epoch: int
    pixel_acc: float | None
    miou_per_image: float | None
    epochs_run: int
    early_stopped: bool | None
    started_from: str | None = None
    delta: float | None = None
    per_class: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    # (epoch, value) of train/loss_epoch and val/loss
    loss_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # epochs of the phases this run's chain went through before it (curves end to end)
    epoch_offset: int = 0
    config: dict = field(default_factory=dict)
    # a validate run logged into a phase folder by desertmind before evaluation runs got
    # their own eval/ folder: shown, but never taken as the phase's training run
    evaluation_only: bool = False
    provenance: dict = field(default_factory=dict)
    phase: str = ""
    # the best epoch's validation images and their confusion matrices (val_images.npz)
    images: list[str] = field(default_factory=list)
    image_cms: np.ndarray | None = None
    interval: Interval | None = None  # of best_miou, over the validation images
    change: Interval | None = None  # paired, against the run it started from
    parent_cms: np.ndarray | None = None  # that run's, the same images (for seed verdicts)
    change_note: str = ""  # why there is no paired change, when there is none
    # the latest `desertmind test` of this phase's model (its eval/test runs), if any
    test_split: str | None = None
    test_miou: float | None = None
    per_class_delta: dict[str, float] = field(default_factory=dict)

    @property
    def study(self) -> float | None:
        """The study's published val mIoU for this phase (its per-image definition)."""
        return STUDY_MIOU.get(Path(self.phase).name)


def find_runs(logs: str | Path) -> list[Path]:
    """Every training run under ``logs`` (a folder holding TensorBoard event files), oldest
    first; evaluation runs (``<phase>/eval/...``) are not training runs and are left out."""
    logs = Path(logs)
    if logs.exists() and not logs.is_dir():
        raise ReportError(f"--logs {logs}: is a file, not a logs folder; give the folder that "
                          "holds the phases (e.g. lightning_logs)")
    if not logs.is_dir():
        raise ReportError(f"logs folder {logs} not found (train a phase first, e.g. make demo)")
    runs = {p.parent for p in logs.rglob("events.out.tfevents.*")
            if not is_eval_run(p.parent, logs)}
    return sorted(runs, key=lambda p: min(f.stat().st_mtime for f in p.glob("events.*")))


def _phase(run_dir: Path, logs: Path) -> str:
    """A run's name: its logger folder relative to ``logs`` (``phase1``, ``demo/phase3``)."""
    return run_dir.parent.relative_to(logs).as_posix() if run_dir.parent != logs else run_dir.name


def load_run(path: Path, label: str) -> RunSummary:
    """Summarise one run from its events, its config.yaml and its phase's last.ckpt."""
    events = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 1})
    try:
        events.Reload()
    except Exception as e:  # a corrupt or half-written event file
        raise ReportError(f"run {label} ({path}): cannot read its event files ({e})") from e
    tags = set(events.Tags().get("scalars", []))
    if MONITOR not in tags:
        raise ReportError(f"run {label} ({path}): no {MONITOR} logged yet (it stopped before the "
                          "end of its first validation epoch, or is still starting)")
    epoch_at = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}

    def at(tag: str, step: int) -> float | None:
        if tag not in tags:
            return None
        values = [e.value for e in events.Scalars(tag) if e.step == step]
        return float(values[-1]) if values else None

    loss_curves = {tag: [(epoch_at.get(e.step, i), float(e.value))
                         for i, e in enumerate(events.Scalars(tag))]
                   for tag in (TRAIN_LOSS, VAL_LOSS) if tag in tags}
    curve_events = events.Scalars(MONITOR)
    curve = [(epoch_at.get(e.step, i), float(e.value)) for i, e in enumerate(curve_events)]
    config = _read_yaml(path / CONFIG_FILE)
    # the best epoch is the one best.ckpt holds: chosen by the run's checkpoint.monitor
    checkpoint = section(config, "checkpoint")
    monitor = checkpoint.get("monitor") or MONITOR
    chooser = events.Scalars(monitor) if monitor in tags else curve_events
    values = [float(e.value) for e in chooser]
    if not np.isfinite(values).any() or not np.isfinite([v for _, v in curve]).any():
        raise ReportError(f"run {label} ({path}): every {monitor} it logged is NaN or "
                          "infinite (no labelled val pixel, or a diverged run): nothing to "
                          "report")
    pick = np.nanargmin if checkpoint.get("mode") == "min" else np.nanargmax
    best_step = chooser[int(pick(values))].step
    steps = [e.step for e in curve_events]
    best_index = steps.index(best_step) if best_step in steps else int(
        np.nanargmax([v for _, v in curve]))
    images, image_cms = _read_val_images(path, label)
    return RunSummary(
        run=label, path=path, best_miou=curve[best_index][1], best_epoch=curve[best_index][0],
        pixel_acc=at("val/pixel_acc", best_step), miou_per_image=at("val/mIoU_per_image",
                                                                    best_step),
        epochs_run=len(curve), early_stopped=_early_stopped(path),
        per_class={n: v for n in CLASS_NAMES if (v := at(f"val/iou/{n}", best_step)) is not None},
        curve=curve, loss_curves=loss_curves, config=config,
        evaluation_only=not any(t.startswith("train/") for t in tags),
        provenance=_read_json(path / PROVENANCE_FILE), images=images, image_cms=image_cms,
        test_split=(test := _latest_test(path))[0], test_miou=test[1],
        interval=miou_interval(image_cms) if image_cms is not None else None,
    )


def _read_val_images(path: Path, label: str) -> tuple[list[str], np.ndarray | None]:
    file = path / VAL_IMAGES_FILE
    if not file.is_file():
        return [], None
    try:
        with np.load(file) as data:
            names, cms = [str(n) for n in data["names"]], data["cms"].astype(np.int64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ReportError(f"run {label}: {file} is damaged (not the names and confusion "
                          "matrices a fit saves); delete it to report the run without its "
                          "intervals") from e
    return (names, cms) if len(names) >= 2 else ([], None)


def latest_image(run_path: str | Path, tag: str) -> bytes | None:
    """The last image logged under ``tag`` in a run's events, PNG-encoded (None if none)."""
    events = EventAccumulator(str(run_path), size_guidance={"images": 1})
    events.Reload()
    if tag not in events.Tags().get("images", []):
        return None
    return events.Images(tag)[-1].encoded_image_string


def _read_yaml(path: Path) -> dict:
    """A run's config as a mapping; {} when it is missing, unreadable or not a mapping."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def section(config: dict, key: str) -> dict:
    """``config[key]`` when it is a mapping, else {} (a hand-edited config.yaml may hold
    anything)."""
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _latest_test(run_path: Path) -> tuple[str | None, float | None]:
    """The split and test/mIoU of the newest ``desertmind test`` run of this run's phase
    (``<phase>/eval/test/version_N``), or ``(None, None)``."""
    tests = sorted((phase_of_run(run_path) / EVAL_DIR / "test").glob("version_*"),
                   key=lambda p: p.stat().st_mtime)
    for run in reversed(tests):
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        try:
            events.Reload()
            value = events.Scalars("test/mIoU")[-1].value
        except Exception:  # no test/mIoU, or an unreadable file: try an older run
            continue
        split = section(_read_yaml(run / CONFIG_FILE), "data").get("test_dir")
        return split, float(value)
    return None, None


def _early_stopped(run_path: Path) -> bool | None:
    _, last = checkpoints_of_run(run_path)
    if not last.is_file():
        return None
    try:
        callbacks = read_checkpoint(last).get("callbacks", {})
    except DesertMindError:
        return None
    for key, state in callbacks.items():
        if key.startswith("EarlyStopping"):
            return bool(state.get("stopped_epoch", 0))
    return None


def load_report(logs: str | Path = "lightning_logs") -> tuple[list[RunSummary], list[str]]:
    """Summaries of every readable run, and one message per run that could not be read."""
    logs = Path(logs)
    paths = find_runs(logs)
    phases = [_phase(p, logs) for p in paths]
    runs, problems, by_phase = [], [], {}
    # a bar on a terminal only: reading events and bootstrapping intervals takes seconds a run
    bar = tqdm(zip(paths, phases, strict=True), total=len(paths), desc="reading runs",
               unit="run", leave=False, disable=None)
    for p, phase in bar:
        label = phase if phases.count(phase) == 1 else f"{phase}/{p.name}"
        try:
            run = load_run(p, label)
        except ReportError as e:
            problems.append(str(e))
            continue
        run.phase = phase
        runs.append(run)
        if run.evaluation_only:
            run.run += " (evaluation)"
        else:
            by_phase[phase] = run  # the latest training run of a phase is what others start from
    for r in runs:
        init_from = section(r.config, "model").get("init_from")
        if init_from:
            source_dir = phase_of_checkpoint(init_from)
            try:
                source = source_dir.resolve().relative_to(logs.resolve()).as_posix()
            except ValueError:
                source = source_dir.name
            r.started_from = source
            if source in by_phase:
                _compare(r, by_phase[source])
    _chain_offsets(runs, by_phase)
    return runs, problems


def _chain_offsets(runs: list[RunSummary], by_phase: dict[str, RunSummary]) -> None:
    """Each run's epoch offset: the epochs of every run its chain started from."""
    def offset(run: RunSummary, seen: frozenset = frozenset()) -> int:
        parent = by_phase.get(run.started_from or "")
        if parent is None or parent.phase in seen:
            return 0
        return offset(parent, seen | {run.phase}) + parent.epochs_run

    for r in runs:
        r.epoch_offset = offset(r)


def _compare(run: RunSummary, parent: RunSummary) -> None:
    """The change from the run a phase started from: mIoU, per class, and its paired interval
    when both kept their best epoch's validation images (the same images)."""
    run.delta = run.best_miou - parent.best_miou
    run.per_class_delta = {n: run.per_class[n] - parent.per_class[n] for n in CLASS_NAMES
                           if n in run.per_class and n in parent.per_class}
    if run.image_cms is None or parent.image_cms is None:
        run.change_note = "no per-image results kept (val_images.npz)"
    elif run.images != parent.images:
        run.change_note = "not scored on the same validation images"
    else:
        run.change = paired_change(run.image_cms, parent.image_cms)
        run.parent_cms = parent.image_cms


COLUMNS = ("run", "best_val_mIoU", "ci_low", "ci_high", "best_epoch", "pixel_acc",
           "val_mIoU_per_image", "study_val_mIoU_per_image", "epochs_run", "early_stopped",
           "started_from", "delta_vs_start", "delta_ci_low", "delta_ci_high", "verdict",
           "test_split", "test_mIoU")


def rows(runs: list[RunSummary]) -> list[dict]:
    """One flat row per run (the CSV), per-class IoU columns included."""
    out = []
    for r in runs:
        ci, ch = r.interval, r.change
        row = {"run": r.run, "best_val_mIoU": r.best_miou,
               "ci_low": ci.low if ci else None, "ci_high": ci.high if ci else None,
               "best_epoch": r.best_epoch, "pixel_acc": r.pixel_acc,
               "val_mIoU_per_image": r.miou_per_image, "study_val_mIoU_per_image": r.study,
               "epochs_run": r.epochs_run, "early_stopped": r.early_stopped,
               "started_from": r.started_from, "delta_vs_start": r.delta,
               "delta_ci_low": ch.low if ch else None, "delta_ci_high": ch.high if ch else None,
               "verdict": ch.verdict if ch else None,
               "test_split": r.test_split, "test_mIoU": r.test_miou}
        row.update({f"iou_{n}": r.per_class.get(n) for n in CLASS_NAMES})
        out.append(row)
    return out


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:+.4f}" if signed else f"{v:.4f}"
    return str(v)


def _interval(i: Interval | None, signed: bool = False) -> str:
    return "-" if i is None else f"[{_fmt(i.low, signed)}, {_fmt(i.high, signed)}]"


def _change(r: RunSummary) -> str:
    if r.delta is None:
        return "-"
    if r.change is None:
        return f"{_fmt(r.delta, signed=True)} (no interval: {r.change_note})"
    return f"{_fmt(r.delta, signed=True)} {_interval(r.change, signed=True)}"


def across_seeds(runs: list[RunSummary]) -> tuple[dict[str, list[RunSummary]], list[str]]:
    """Runs of the same phase trained with different random seeds (``random_seed_N/``
    folders), by phase, for phases with at least two seeds; and a note for each run left out
    because its config records the same ``seed_everything`` as a run already kept (a folder's
    name is not a seed: only the recorded seed says the run is another draw)."""
    groups: dict[str, list[RunSummary]] = {}
    notes: list[str] = []
    for r in runs:
        phase, seed = without_random_seed(r.phase)
        if seed is None or r.evaluation_only:
            continue
        recorded = r.config.get("seed_everything")
        twin = next((o for o in groups.get(phase, []) if isinstance(recorded, int)
                     and not isinstance(recorded, bool)
                     and o.config.get("seed_everything") == recorded), None)
        if twin is not None:
            notes.append(f"{r.run} left out of the seeds of {phase}: its config records "
                         f"seed_everything {recorded}, like {twin.run} (the same seed, not "
                         "another draw)")
            continue
        groups.setdefault(phase, []).append(r)
    return {p: g for p, g in groups.items() if len(g) >= 2}, notes


def _seed_lines(groups: dict[str, list[RunSummary]], notes: list[str]) -> list[str]:
    pct = f"{LEVEL:.0%}"
    lines = ["", "## Across random seeds", "",
             "| phase | seeds | mean val mIoU | std | min | max | mean change | verdicts "
             f"(one seed each) | change over seeds [{pct}] | verdict over seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for phase, group in groups.items():
        best = np.array([r.best_miou for r in group])
        deltas = [r.delta for r in group if r.delta is not None]
        verdicts = Counter(r.change.verdict for r in group if r.change is not None)
        pairs = [(r.image_cms, r.parent_cms) for r in group
                 if r.change is not None and r.parent_cms is not None]
        over = paired_change_over_seeds(pairs, design="crossed") if len(pairs) >= 2 else None
        lines.append(
            f"| {phase} | {len(group)} | {best.mean():.4f} | {best.std(ddof=1):.4f} | "
            f"{best.min():.4f} | {best.max():.4f} | "
            f"{_fmt(float(np.mean(deltas)), signed=True) if deltas else '-'} | "
            f"{', '.join(f'{n} x {v}' for v, n in verdicts.items()) or '-'} | "
            f"{_interval(over, signed=True)} | {over.verdict if over else '-'} |")
    lines += ["", "std is the sample standard deviation over seeds: the spread that retraining "
              "alone produces, which a change between phases has to exceed to be trusted. "
              "Each seed's own verdict covers the sampling of validation images only; the "
              "verdict over seeds resamples the seeds and the images (a two-level bootstrap of "
              "the mean paired change), so it also covers retraining. Every seed was scored on "
              "the same validation images, so each resample draws one set of images for all "
              "seeds (a crossed design): the images' luck is counted once, not once per seed. "
              "Seeds are the ones each run's config records, not its folder's name."]
    lines += [f"- {n}" for n in notes]
    return lines


def worst_images(run: RunSummary, count: int = 5) -> list[tuple[str, float]]:
    """The run's validation images with the lowest mean IoU at its best epoch."""
    if run.image_cms is None:
        return []
    miou = dataset_miou(run.image_cms)
    order = np.argsort(miou, kind="stable")[:count]
    return [(run.images[i], float(miou[i])) for i in order]


def markdown(runs: list[RunSummary], problems: list[str]) -> str:
    """The summary as markdown: best results per run with their intervals and verdicts, then
    per-class IoU and its change, the best run's worst images, and provenance."""
    pct = f"{LEVEL:.0%}"
    lines = ["# desertmind phase report", "",
             "## Best results summary", "",
             f"| run | best val mIoU | {pct} interval | mIoU per image | study (per image) "
             f"| epoch | pixel acc | epochs run | early stop | started from "
             f"| change [{pct} paired interval] | verdict |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---|---|---|"]
    for r in runs:
        verdict = r.change.verdict if r.change else "-"
        lines.append(f"| {r.run} | {_fmt(r.best_miou)} | {_interval(r.interval)} | "
                     f"{_fmt(r.miou_per_image)} | {_fmt(r.study)} | {r.best_epoch} | "
                     f"{_fmt(r.pixel_acc)} | {r.epochs_run} | {_fmt(r.early_stopped)} | "
                     f"{r.started_from or '-'} | {_change(r)} | {verdict} |")
    if runs:
        best = max(runs, key=lambda r: r.best_miou)
        lines += ["", f"Best run: **{best.run}** with val mIoU {best.best_miou:.4f} "
                      f"(epoch {best.best_epoch})."]
    lines += ["", f"The {pct} interval resamples the validation images ({RESAMPLES} bootstrap "
              "resamples); the change is paired: each resample draws the same images for a run "
              "and the run it started from. A verdict is significant only when the whole "
              "interval of the change lies on one side of zero. 'study' is the study's "
              "published figure, which uses its per-image definition: compare it with the "
              "'mIoU per image' column, not with the dataset-level one. The intervals cover the "
              "choice of validation images, not training randomness: only runs repeated with "
              "other seeds show that."]
    lines += ["", "## Per-class IoU at each run's best epoch", "",
              "| class | " + " | ".join(r.run for r in runs) + " |",
              "|---|" + "---:|" * len(runs)]
    for name in CLASS_NAMES:
        lines.append(f"| {name} | " + " | ".join(_fmt(r.per_class.get(name)) for r in runs)
                     + " |")
    groups, seed_notes = across_seeds(runs)
    if groups or seed_notes:
        lines += _seed_lines(groups, seed_notes)
    tested = [r for r in runs if r.test_miou is not None]
    if tested:
        lines += ["", "## Validation and test side by side", "",
                  "| run | val mIoU | test split | test mIoU | val - test |",
                  "|---|---:|---|---:|---:|"]
        lines += [f"| {r.run} | {_fmt(r.best_miou)} | {r.test_split or '-'} | "
                  f"{_fmt(r.test_miou)} | {_fmt(r.best_miou - r.test_miou, signed=True)} |"
                  for r in tested]
        lines += ["", "Test figures come from the newest `desertmind test` of each phase's "
                  "checkpoint (its `eval/test` runs); on another desert the gap, not val, is "
                  "what to close."]
    changed = [r for r in runs if r.per_class_delta]
    if changed:
        lines += ["", "## Per-class IoU change against the run each started from", "",
                  "| class | " + " | ".join(f"{r.run} (from {r.started_from})" for r in changed)
                  + " |", "|---|" + "---:|" * len(changed)]
        for name in CLASS_NAMES:
            lines.append(f"| {name} | " + " | ".join(
                _fmt(r.per_class_delta.get(name), signed=True) for r in changed) + " |")
    lines += ["", "val mIoU is dataset-level: intersections and unions summed over the whole "
              "validation set, averaged over the classes present in the target or the prediction. "
              "'mIoU per image' is the study's definition (mean over images of each image's mean "
              "IoU), kept for comparison with its published numbers. Epochs count from 0."]
    if runs and (worst := worst_images(best)):
        lines += ["", f"## Worst validation images of {best.run} (best epoch)", "",
                  "| image | mIoU |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(v)} |" for name, v in worst]
    lines += ["", "## Provenance", "",
              "| run | desertmind | git commit | dirty | torch | lightning | device | dataset |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r.provenance
        if not p:
            lines.append(f"| {r.run} | - | - | - | - | - | - | no provenance.json |")
            continue
        v, git, dev, data = p.get("versions", {}), p.get("git", {}), p.get("device", {}), \
            p.get("dataset") or {}
        sizes = ", ".join(f"{k} {n}" for k, n in data.get("images_per_split", {}).items())
        lines.append(
            f"| {r.run} | {v.get('desertmind')} | {str(git.get('commit'))[:12]} | "
            f"{_fmt(git.get('dirty'))} | {v.get('torch')} | {v.get('lightning')} | "
            f"{dev.get('name')} ({dev.get('precision')}, x{dev.get('world_size')}) | "
            f"{sizes} sha256 {str(data.get('sha256', '-'))[:12]} |")
    if problems:
        lines += ["", "## Runs left out", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def csv_text(runs: list[RunSummary]) -> str:
    buf = io.StringIO()
    table = rows(runs)
    writer = csv.DictWriter(buf, fieldnames=list(table[0]) if table else list(COLUMNS))
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def loss_of(run: RunSummary) -> str | None:
    """The loss spec a run trained with (its config's ``model.loss``)."""
    model = run.config.get("model") if isinstance(run.config, dict) else None
    return model.get("loss") if isinstance(model, dict) else None


def curves_figure(runs: list[RunSummary]) -> Figure:
    """val/mIoU (left) and the train and val losses (right) per epoch, one colour per run, a
    chained phase drawn after the phases it started from (one epoch axis for the chain).

    Each run's epochs are shaded in its colour and named; a star marks its best epoch (the one
    best.ckpt holds), with its 95% interval over the validation images as a whisker. Where a
    chained phase trains with
    another loss than the phase it started from (phase 3's weighted CE + Dice after plain
    CE), a line marks it on the loss plot: its loss values are not on the same scale, and a
    jump there is the definition changing, not the model getting worse."""
    fig = Figure(figsize=(13, 4.5), dpi=100)
    ax_miou, ax_loss = fig.subplots(1, 2)
    by_phase = {r.phase: r for r in runs}
    for i, r in enumerate(runs):
        colour = f"C{i % 10}"
        start, end = r.epoch_offset - 0.5, r.epoch_offset + r.epochs_run - 0.5
        for ax in (ax_miou, ax_loss):
            ax.axvspan(start, end, color=colour, alpha=0.07, lw=0)
        ax_miou.annotate(r.run, (start, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, -10), textcoords="offset points", fontsize=7, color=colour)
        epochs, values = zip(*r.curve, strict=True)
        ax_miou.plot(np.add(epochs, r.epoch_offset), values, marker="o", markersize=3,
                     color=colour, label=r.run)
        # the best epoch (what best.ckpt holds) with its 95% interval over the val images
        best = r.best_epoch + r.epoch_offset
        if r.interval is not None:
            ax_miou.errorbar([best], [r.best_miou], yerr=[[r.best_miou - r.interval.low],
                                                          [r.interval.high - r.best_miou]],
                             fmt="*", markersize=11, color=colour, capsize=4, zorder=5)
        else:
            ax_miou.plot([best], [r.best_miou], "*", markersize=11, color=colour, zorder=5)
        for tag, style in ((TRAIN_LOSS, "-"), (VAL_LOSS, "--")):
            if r.loss_curves.get(tag):
                e, v = zip(*r.loss_curves[tag], strict=True)
                ax_loss.plot(np.add(e, r.epoch_offset), v, style, color=colour,
                             label=f"{r.run} {'train' if tag == TRAIN_LOSS else 'val'}")
        parent = by_phase.get(r.started_from or "")
        if parent is not None and loss_of(parent) != loss_of(r):
            ax_loss.axvline(start, color=colour, linestyle=":", linewidth=1.5)
            ax_loss.annotate(f"loss changes: {loss_of(parent)} -> {loss_of(r)}",
                             (start, 0.97), xycoords=("data", "axes fraction"),
                             xytext=(3, 0), textcoords="offset points", fontsize=7,
                             color=colour, rotation=90, va="top")
    for ax, ylabel, title in ((ax_miou, "val mIoU (dataset level)",
                               "Validation mIoU (star: best epoch, 95% interval)"),
                              (ax_loss, "loss (each run's own definition)",
                               "Train (solid) and validation (dashed) loss")):
        ax.set_xlabel("epoch, phases end to end")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def per_class_figure(runs: list[RunSummary]) -> Figure:
    """Per-class IoU at each run's best epoch, grouped bars (classes x runs)."""
    x = np.arange(len(CLASS_NAMES))
    width = 0.8 / max(len(runs), 1)
    fig, ax = new_figure(10, 4.8)
    for i, r in enumerate(runs):
        values = np.array([r.per_class.get(n, np.nan) for n in CLASS_NAMES])
        error = None
        if r.image_cms is not None:  # the 95% interval over the val images, as whiskers
            low, high = class_iou_intervals(r.image_cms)
            error = np.nan_to_num(np.stack([values - low, high - values]).clip(min=0))
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=r.run, yerr=error,
               capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    ax.set_ylabel("IoU at the best epoch")
    ax.set_ylim(0, 1)
    ax.set_title("Per-class IoU at each run's best epoch (whiskers: 95% interval over images)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_report(logs: str | Path = "lightning_logs", out: str | Path = "reports") -> dict:
    """Write summary.md, summary.csv, curves.png, per_class_iou.png and the best run's
    confusion.png (when it kept its validation images); return their paths."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: is a file; give a folder for the report's files")
    runs, problems = load_report(logs)
    if not runs:
        detail = "; ".join(problems) if problems else "no runs with event files"
        raise ReportError(f"nothing to report under {logs}: {detail}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(out, e) from e
    paths = {"summary.md": out / "summary.md", "summary.csv": out / "summary.csv"}
    for key, text in (("summary.md", markdown(runs, problems)), ("summary.csv", csv_text(runs))):
        write_text(paths[key], text)
    paths["curves.png"] = save(curves_figure(runs), out / "curves.png")
    paths["per_class_iou.png"] = save(per_class_figure(runs), out / "per_class_iou.png")
    best = max(runs, key=lambda r: r.best_miou)
    if best.image_cms is not None:
        paths["confusion.png"] = save(confusion_matrix_figure(
            best.image_cms.sum(0), f"{best.run}: confusion matrix at its best epoch "
            f"({len(best.images)} validation images)"), out / "confusion.png")
    return {"paths": paths, "runs": runs, "problems": problems}
