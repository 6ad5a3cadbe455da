"""What a sweep leaves beside its study: a table of trials, Optuna's plots and ``best.yaml``."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

import yaml

from desertmind.figures import save
from desertmind.files import write_text

PLOTS = {"history.png": "plot_optimization_history", "importances.png": "plot_param_importances",
         "slices.png": "plot_slice"}


def write_summary(study: Any, phase: Any, settings: Any, storage_url: str | None) -> list[Path]:
    """``<logs>/sweeps/<study>/``: trials.md, the plots Optuna can draw from the trials so
    far, and best.yaml when a trial completed; returns the files written."""
    import optuna

    folder = phase.folder / settings.study
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_text(folder / "trials.md", trials_table(study, phase.monitor))]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():  # Optuna calls its matplotlib plots experimental
                warnings.simplefilter("ignore")
                axes = getattr(optuna.visualization.matplotlib, function)(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this plot
            continue
        axes = axes.flat[0] if hasattr(axes, "flat") else axes
        written.append(save(axes.figure, folder / name))
    if done:
        written.append(write_text(folder / "best.yaml", best_overlay(study, phase, settings,
                                                                     storage_url)))
    return written


def trials_table(study: Any, monitor: str) -> str:
    """Every trial: number, state, score, epochs reported, values, run folder."""
    keys = sorted({k for t in study.trials for k in t.params})
    lines = [f"# Study {study.study_name}: {len(study.trials)} trials", "",
             f"| trial | state | {monitor} | epochs | " + " | ".join(keys) + " | run |",
             "|---:|---|---:|---:|" + "---|" * len(keys) + "---|"]
    for t in study.trials:
        score = f"{t.value:.4f}" if t.value is not None else "-"
        values = " | ".join(_short(t.params.get(k)) for k in keys)
        lines.append(f"| {t.number} | {t.state.name.lower()} | {score} | "
                     f"{len(t.intermediate_values)} | {values} | {t.user_attrs.get('run', '-')} |")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def best_overlay(study: Any, phase: Any, settings: Any, storage_url: str | None) -> str:
    """The best trial's values as a config overlay, its provenance in the header."""
    best = study.best_trial
    done = sum(t.state.name == "COMPLETE" for t in study.trials)
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    header = [
        f"# The best trial of sweep study {study.study_name!r} "
        f"({datetime.date.today().isoformat()}): trial {best.number}, {phase.monitor} "
        f"{best.value:.4f} at its best epoch",
        f"# over {len(study.trials)} trials ({done} complete, {pruned} pruned), storage "
        f"{storage_url or 'SQLite beside the runs'}; run: {best.user_attrs.get('run', '-')}.",
        "# One training seed, and the best of many: a search's best score is optimistic. Before",
        "# trusting it, train it and the phase without it over several seeds and compare (make",
        "# phases SEEDS=\"1 2 3\" CONFIGS=\"-c <this file>\", then desertmind report: the verdict",
        "# over seeds). Apply after the phase file it was searched on:",
        "#   desertmind fit -c configs/<phase>.yaml -c <this file>",
    ]
    body = yaml.safe_dump({k: v for k, v in best.params.items()}, sort_keys=False)
    return "\n".join(header) + "\n" + body
