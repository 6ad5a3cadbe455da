"""A sweep's best trials confirmed over seeds: ``desertmind sweep ... --sweep.confirm K``.

A search's best score is one training seed's, chosen among many trials: optimistic by
construction. Confirmation trains the best ``K`` trials' values and the phase as it is (the
baseline) again with new seeds (``--sweep.seeds``, three by default), each seed's runs scored on
the same validation images, and judges each trial against the baseline with the report's
verdict over seeds (:func:`~desertmind.reports.uncertainty.paired_change_over_seeds`, crossed
design: one image resample for every seed). Only a trial whose whole interval lies above zero
is called better; ``best.yaml`` then holds it, with the search's and the confirmation's figures
in its header, and says so when none was.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from desertmind.errors import DesertMindError
from desertmind.files import write_text
from desertmind.reports.uncertainty import GAIN, LEVEL, dataset_miou, paired_change_over_seeds
from desertmind.runs import VAL_IMAGES_FILE
from desertmind.search.space import as_options

CONFIRM_DIR = "confirm"


def _fit(fit_args: list[str], values: dict, seed: int, name: str, save_dir: Path) -> np.ndarray:
    """One confirmation run; its best epoch's per-image confusion matrices, by image name."""
    from desertmind.search.sweep import fit_phase

    fit_phase([*fit_args, *as_options(values), "--seed_everything", str(seed),
               "--trainer.logger.init_args.name", name, "--overwrite"], f"confirmation run {name}")
    kept = sorted((save_dir / name).glob(f"version_*/{VAL_IMAGES_FILE}"))
    if not kept:
        raise DesertMindError(f"confirmation run {name}: no {VAL_IMAGES_FILE} (a run with a "
                              "logger keeps one; --trainer.logger false cannot be confirmed)")
    with np.load(kept[-1]) as data:
        order = np.argsort(data["names"])
        return data["cms"][order].astype(np.int64)


def confirm(study: Any, fit_args: list[str], phase: Any, settings: Any, top: int,
            seeds: list[int]) -> list[Path]:
    """Train the best ``top`` trials and the baseline over ``seeds``, judge each trial against
    the baseline, write ``confirm.md`` and ``best.yaml``; return the files written."""
    done = sorted((t for t in study.trials if t.state.name == "COMPLETE"),
                  key=lambda t: t.value, reverse=phase.mode == "max")[:top]
    if not done:
        raise DesertMindError(f"study {study.study_name!r} has no complete trial to confirm")
    folder = phase.folder / settings.study
    base = f"sweeps/{settings.study}/{CONFIRM_DIR}"
    baseline = [_fit(fit_args, {}, s, f"{base}/baseline/random_seed_{s}", phase.save_dir)
                for s in seeds]
    rows = []
    for trial in done:
        runs = [_fit(fit_args, trial.params, s, f"{base}/trial_{trial.number:04d}/random_seed_{s}",
                     phase.save_dir) for s in seeds]
        change = paired_change_over_seeds(list(zip(runs, baseline, strict=True)),
                                          design="crossed")
        rows.append((trial, [float(dataset_miou(r.sum(0))) for r in runs], change))
    base_scores = [float(dataset_miou(r.sum(0))) for r in baseline]
    winner = max((r for r in rows if r[2].verdict == GAIN), key=lambda r: r[2].value,
                 default=None)
    table = _table(rows, base_scores, seeds, phase.monitor)
    written = [write_text(folder / "confirm.md", table)]
    written.append(write_text(folder / "best.yaml", _overlay(study, winner, rows, base_scores,
                                                             seeds)))
    return written


def _table(rows: list, base_scores: list[float], seeds: list[int], monitor: str) -> str:
    pct = f"{LEVEL:.0%}"
    lines = [f"# Confirmation over seeds {seeds}", "",
             f"Each trial's values and the phase as it is (baseline) trained again with each "
             f"seed; dataset-level val mIoU at each run's best epoch ({monitor}), and the mean "
             f"change against the baseline with its {pct} interval over seeds and images "
             "(crossed: the seeds share the validation images). Only an interval above zero "
             "is a gain.", "",
             f"| run | search score | val mIoU per seed | mean | change [{pct}] | verdict |",
             "|---|---:|---|---:|---|---|",
             f"| baseline | - | {', '.join(f'{v:.4f}' for v in base_scores)} | "
             f"{np.mean(base_scores):.4f} | - | - |"]
    for trial, scores, change in rows:
        lines.append(f"| trial {trial.number} | {trial.value:.4f} | "
                     f"{', '.join(f'{v:.4f}' for v in scores)} | {np.mean(scores):.4f} | "
                     f"{change.value:+.4f} [{change.low:+.4f}, {change.high:+.4f}] | "
                     f"{change.verdict} |")
    return "\n".join(lines) + "\n"


def _overlay(study: Any, winner: tuple | None, rows: list, base_scores: list[float],
             seeds: list[int]) -> str:
    today = datetime.date.today().isoformat()
    if winner is None:
        tried = ", ".join(f"trial {t.number} {c.value:+.4f} [{c.low:+.4f}, {c.high:+.4f}]"
                          for t, _, c in rows)
        return (f"# Sweep study {study.study_name!r} ({today}): no trial confirmed better than "
                f"the phase as it is over seeds {seeds} (baseline mean "
                f"{np.mean(base_scores):.4f}; {tried}).\n# Nothing to apply: keep the phase's "
                "own values.\n{}\n")
    trial, scores, change = winner
    header = [
        f"# Sweep study {study.study_name!r} ({today}): trial {trial.number}, confirmed over "
        f"seeds {seeds}:",
        f"# val mIoU {np.mean(scores):.4f} against the baseline's {np.mean(base_scores):.4f}, "
        f"change {change.value:+.4f} [{LEVEL:.0%}: {change.low:+.4f}, {change.high:+.4f}], "
        f"{change.verdict}",
        f"# (its search score, one seed, best of {len(study.trials)} trials: {trial.value:.4f})."
        " Apply after the phase file it was searched on:",
        "#   desertmind fit -c configs/<phase>.yaml -c <this file>",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(dict(trial.params), sort_keys=False)
