"""``desertmind sweep``: hyperparameter search over an ordinary phase, with Optuna.

Each trial is a normal ``fit`` of the phase with the trial's values given as command-line
options, logged as its own run (``<logs>/sweeps/<study>/trial_NNNN``: checkpoints,
TensorBoard, provenance), so ``scores``, ``report``, ``validate`` and ``app`` read trials like any
run. The objective is the phase's monitored val metric (``checkpoint.monitor``) at its best
epoch, in the direction the phase's checkpoint keeps (``checkpoint.mode``).

Trials are shared through an Optuna RDB storage: by default an SQLite file beside the runs
(``<logs>/sweeps/<study>.db``, nothing to start); with ``--sweep.storage postgresql://...``
any number of workers on any number of machines run the same command and share the study.
Workers send a heartbeat: a worker killed mid-trial leaves that trial running only until its
heartbeat is missed, then it is failed and retried (``RetryFailedTrialCallback``). Running the
command again resumes the study. Pruning is optuna-integration's Lightning callback (median
pruner by default), checked after each fit as its docs ask.

After its trials the command writes, beside the study: ``trials.md`` (every trial, its values
and score), Optuna's plots (history, importances, slices; matplotlib), and ``best.yaml``: the
best trial's values as a config overlay for ``make phases CONFIGS=...``, with the search's
figures in its header. A best trial of a search is one seed's score, chosen among many: with
``--sweep.confirm K`` the best K are trained again over seeds and judged against the phase as
it is (:mod:`desertmind.search.confirm`), and ``best.yaml`` holds a trial only if it is better
over seeds.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from desertmind.errors import ConfigError, DesertMindError
from desertmind.search.space import SweepSettings, as_options, read_settings, split_config_files

SWEEPS_DIR = "sweeps"
RETRIES = 2  # a failed trial (its worker killed) is tried again up to twice
OPEN_ATTEMPTS = 4


@dataclass(frozen=True)
class Phase:
    """What the phase's own parser says about the sweep's fit arguments: where it logs, what
    its checkpoint monitors and in which direction."""

    save_dir: Path
    monitor: str
    mode: str

    @property
    def folder(self) -> Path:
        return self.save_dir / SWEEPS_DIR


def _parse(args: list[str]) -> tuple[int, str, str]:
    """Run the phase's parser on ``fit ARGS --print_config`` in this process: (exit code,
    printed config, error text)."""
    from desertmind.cli.lightning import DesertMindCLI

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            DesertMindCLI(args=["fit", *args, "--print_config"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
    return code, out.getvalue(), err.getvalue()


def fit_phase(args: list[str], what: str, callbacks: list | None = None) -> Any:
    """One ``fit`` of the phase in this process (a trial, a confirmation run); the LightningCLI
    that ran it. A value the parser refuses fails this run, named ``what``, not the command."""
    from desertmind.cli.lightning import DesertMindCLI

    with warnings.catch_warnings():  # each run gives LightningCLI its arguments, by design
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            return DesertMindCLI(args=["fit", *args], extra_callbacks=callbacks)
        except SystemExit as e:
            raise DesertMindError(f"{what}: the phase refused its values") from e


def check_phase(fit_args: list[str], settings: SweepSettings) -> Phase:
    """Parse the phase with every key of the space set to its values (each choice, both ends
    of a range): an unknown key, or a value the parser refuses, is one line naming it, before
    any trial."""
    points = [{d.key: d.example() for d in settings.space}]
    for d in settings.space:
        others = d.choices[1:] if d.kind == "choice" else (d.high,)
        points += [{**points[0], d.key: value} for value in others]
    printed = ""
    for point in points:
        code, text, err = _parse([*fit_args, *as_options(point)])
        if code:
            line = next((ln for ln in err.splitlines() if "error:" in ln), err.strip()[-300:])
            detail = " ".join(ln.strip() for ln in err.splitlines()
                              if ln.strip().startswith(("Expected", "did you mean",
                                                        "it takes")))
            message = line.split("error:", 1)[-1].strip()
            raise ConfigError(f"the sweep's phase refuses {message}"
                              + (f" ({detail})" if detail else "")
                              + "; a space key is an option of the phase (e.g. "
                              "model.optimizer.init_args.lr) and its values ones it takes")
        printed = printed or text
    config = yaml.safe_load(printed) or {}
    logger = (config.get("trainer") or {}).get("logger") or {}
    save_dir = ((logger.get("init_args") or {}).get("save_dir") if isinstance(logger, dict)
                else None) or "lightning_logs"
    checkpoint = config.get("checkpoint") or {}
    return Phase(Path(save_dir), checkpoint.get("monitor") or "val/mIoU",
                 checkpoint.get("mode") or "max")


def open_storage(url: str | None, phase: Phase, study: str, heartbeat: int = 30):
    """The study's RDB storage with heartbeats and retries; an unreachable URL is one line."""
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    if url is None:
        phase.folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(phase.folder / f'{study}.db').resolve()}"
    elif url.startswith("postgresql://"):  # SQLAlchemy's default driver is psycopg2; ours is 3
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    error: Exception | None = None
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeat and retries: "experimental" in Optuna
                warnings.simplefilter("ignore")
                return RDBStorage(url, heartbeat_interval=heartbeat,
                                  grace_period=3 * heartbeat,
                                  failed_trial_callback=RetryFailedTrialCallback(
                                      max_retry=RETRIES))
        except Exception as e:  # sqlalchemy: a bad URL, a server that does not answer
            # workers started together race to create the storage's tables: one loses, and
            # finds them made a moment later
            error = e
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.5 * (attempt + 1))
    detail = (str(error).strip().splitlines()[0][:300] if str(error).strip()
              else type(error).__name__)
    raise ConfigError(f"--sweep.storage {_redacted(url)}: cannot open the study's storage "
                      f"({detail}); for PostgreSQL: postgresql://USER:PASSWORD@HOST:PORT/DB, "
                      "reachable from this machine") from error


def _redacted(url: str) -> str:
    """A storage URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.rpartition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


def run(argv: list[str]) -> int:
    """The ``desertmind sweep`` command: check everything, then run this worker's trials."""
    fit_args, groups, options = split_config_files(argv)
    if not groups:
        raise ConfigError("a sweep needs a sweep config: -c configs/sweeps/<name>.yaml (a "
                          "sweep: group with its space)")
    settings = read_settings(groups, options)
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    phase = check_phase(fit_args, settings)
    storage = open_storage(settings.storage, phase, settings.study, settings.heartbeat)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
              if settings.pruner == "median" else optuna.pruners.NopPruner())
    direction = "maximize" if phase.mode == "max" else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the command says what it does
    try:
        study = optuna.create_study(
            study_name=settings.study, storage=storage, load_if_exists=True,
            direction=direction, pruner=pruner,
            sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=4))
    except ValueError as e:  # an existing study of the other direction
        raise ConfigError(f"study {settings.study!r}: {e}") from e

    def objective(trial: optuna.Trial) -> float:
        values = {d.key: d.suggest(trial) for d in settings.space}
        name = f"{SWEEPS_DIR}/{settings.study}/trial_{trial.number:04d}"
        print(f"desertmind sweep: trial {trial.number} of study {settings.study!r}: "
              + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
        trial.set_user_attr("run", str(phase.save_dir / name))
        pruning = PyTorchLightningPruningCallback(trial, monitor=phase.monitor)
        cli = fit_phase([*fit_args, *as_options(values), "--trainer.logger.init_args.name",
                         name], f"trial {trial.number}", [pruning])
        pruning.check_pruned()  # raises TrialPruned for a stopped trial
        score = cli.trainer.checkpoint_callback.best_model_score
        if score is None:
            raise DesertMindError(f"trial {trial.number}: no {phase.monitor} was logged")
        return float(score)

    start = time.perf_counter()
    if settings.trials:
        study.optimize(objective, n_trials=settings.trials, timeout=settings.timeout,
                       catch=(DesertMindError,), gc_after_trial=True)
    from desertmind.search.summary import write_summary

    written = write_summary(study, phase, settings, storage_url=settings.storage)
    if settings.confirm:
        from desertmind.search.confirm import confirm

        written += confirm(study, fit_args, phase, settings, settings.confirm,
                           list(settings.seeds))
    states = _counts(study)
    print(f"desertmind sweep: study {settings.study!r}: {states} "
          f"({time.perf_counter() - start:.0f} s here); wrote "
          + ", ".join(str(p) for p in written), flush=True)
    return 0


def _counts(study: Any) -> str:
    from collections import Counter

    counts = Counter(t.state.name.lower() for t in study.trials)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))

