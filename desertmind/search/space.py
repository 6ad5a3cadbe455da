"""A sweep's settings and search space, read from a ``sweep:`` config group and ``--sweep.*``.

The space names the same dotted keys the CLI takes, each with one distribution::

    sweep:
      space:
        model.optimizer.init_args.lr: {float: [1.0e-4, 1.0e-2], log: true}
        model.param_groups.backbone_lr_mult: {float: [0.05, 1.0]}
        data.batch_size: {int: [2, 8], step: 2}
        data.train_preset: {choice: [none, flip, flip_color]}

Everything here is checked before the first trial: a malformed distribution is one line naming
the key (whether a key is one the phase takes is checked against the phase's own parser, in
:mod:`desertmind.search.sweep`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from desertmind.errors import ConfigError

PRUNERS = ("median", "none")


@dataclass(frozen=True)
class Dimension:
    """One key of the space: a float or int range (``log`` scale, integer ``step``) or a
    choice among values."""

    key: str
    kind: str  # float | int | choice
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple = ()

    @classmethod
    def parse(cls, key: str, spec: Any) -> Dimension:
        where = f"sweep.space.{key}"
        kinds = [k for k in ("float", "int", "choice") if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: one of {{float: [low, high]}}, {{int: [low, high]}} or "
                              f"{{choice: [...]}}, got {spec!r}")
        kind = kinds[0]
        extra = set(spec) - {kind, "log", "step"}
        if extra:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(extra))}; a "
                              "range takes log and step")
        if kind == "choice":
            values = spec["choice"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: choice needs a non-empty list of values")
            return cls(key, kind, choices=tuple(values))
        bounds = spec[kind]
        number = float if kind == "float" else int
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool)
                           for b in bounds)):
            raise ConfigError(f"{where}: {kind} needs [low, high], got {bounds!r}")
        low, high = (number(b) for b in bounds)
        if not low < high:
            raise ConfigError(f"{where}: the range [{low}, {high}] is empty (low must be below "
                              "high)")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None and (kind != "int" or not isinstance(step, int) or step < 1):
            raise ConfigError(f"{where}: step is a whole number >= 1, for int ranges")
        if step is not None and log:
            raise ConfigError(f"{where}: step and log do not go together (Optuna's rule)")
        return cls(key, kind, low, high, log, step)

    def suggest(self, trial) -> Any:
        """This dimension's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def example(self) -> Any:
        """A value of the dimension (its first choice or low end), for checking the key."""
        return self.choices[0] if self.kind == "choice" else self.low


@dataclass(frozen=True)
class SweepSettings:
    """The ``sweep:`` group: what to search and where the study lives.

    Args:
        space: dotted key -> distribution (see the module doc).
        trials: trials this command runs (another worker, or running it again, adds more).
        timeout: seconds after which this command starts no new trial (None: no limit).
        study: the study's name (its run folders: ``<logs>/sweeps/<study>/trial_NNNN``).
        storage: an Optuna RDB URL; None: an SQLite file beside the runs
            (``<logs>/sweeps/<study>.db``). ``postgresql://...``: workers on many machines.
        pruner: ``median`` (stop a trial whose monitored value is below the median of earlier
            trials at the same epoch) or ``none``.
        seed: the sampler's seed (the trials' own training seed is the phase's).
        heartbeat: seconds between a worker's heartbeats; a running trial whose worker missed
            three is failed and retried (a killed worker's trial is not left running).
        confirm: after the trials, train the best ``confirm`` trials and the phase as it is
            again over ``seeds`` and keep only a trial better over seeds
            (:mod:`desertmind.search.confirm`); 0: no confirmation.
        seeds: the confirmation's training seeds (at least 2; 3 or more for a useful interval).
    """

    space: tuple[Dimension, ...] = ()
    trials: int = 10
    timeout: float | None = None
    study: str = "sweep"
    storage: str | None = None
    pruner: str = "median"
    seed: int = 0
    heartbeat: int = 30
    confirm: int = 0
    seeds: tuple[int, ...] = (1, 2, 3)

    def __post_init__(self) -> None:
        if not self.space:
            raise ConfigError("sweep.space is empty: give at least one key to search, e.g. "
                              "model.optimizer.init_args.lr: {float: [1.0e-4, 1.0e-2], log: true}")
        if self.trials < 0 or self.confirm < 0 or self.trials + self.confirm == 0:
            raise ConfigError(f"sweep.trials={self.trials}, sweep.confirm={self.confirm}: "
                              "whole numbers, not both 0 (trials 0 with confirm K confirms "
                              "the study's best K trials)")
        if len(set(self.seeds)) < 2 or not all(isinstance(s, int) for s in self.seeds):
            raise ConfigError(f"sweep.seeds={list(self.seeds)}: at least two different whole "
                              "numbers (three or more for a useful interval)")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"sweep.pruner={self.pruner!r}: one of {', '.join(PRUNERS)}")
        if self.heartbeat < 1:
            raise ConfigError(f"sweep.heartbeat={self.heartbeat}: at least 1 second")
        if not self.study or "/" in self.study or self.study.startswith("."):
            raise ConfigError(f"sweep.study={self.study!r}: a plain name (it names a folder)")


_SCALARS = {f.name: f.type for f in fields(SweepSettings) if f.name != "space"}


def read_settings(groups: list[dict], options: dict[str, str]) -> SweepSettings:
    """The sweep settings from the ``sweep:`` groups of the config files (later ones win, key
    by key) and the ``--sweep.*`` command-line options (which win over both)."""
    merged: dict[str, Any] = {}
    for group in groups:
        if not isinstance(group, dict):
            raise ConfigError(f"sweep: a mapping of settings, got {group!r}")
        for key, value in group.items():
            if key == "space" and isinstance(value, dict):
                merged["space"] = {**merged.get("space", {}), **value}
            else:
                merged[key] = value
    for key, text in options.items():
        if key == "space":
            raise ConfigError("--sweep.space: give the space in a sweep config file")
        merged[key] = yaml.safe_load(text)
    unknown = set(merged) - set(_SCALARS) - {"space"}
    if unknown:
        raise ConfigError(f"sweep: unknown setting(s) {', '.join(sorted(unknown))}; the "
                          f"settings are space, {', '.join(_SCALARS)}")
    space = merged.pop("space", {})
    if not isinstance(space, dict):
        raise ConfigError(f"sweep.space: a mapping of dotted keys to distributions, got {space!r}")
    if "seeds" in merged:
        seeds = merged["seeds"]
        merged["seeds"] = tuple(seeds) if isinstance(seeds, list) else (seeds,)
    for key in ("trials", "seed", "heartbeat", "confirm"):
        if key in merged and not (isinstance(merged[key], int)
                                  and not isinstance(merged[key], bool)):
            raise ConfigError(f"sweep.{key}={merged[key]!r}: a whole number")
    return SweepSettings(space=tuple(Dimension.parse(k, v) for k, v in space.items()),
                         **merged)


def split_config_files(argv: list[str]) -> tuple[list[str], list[dict], dict[str, str]]:
    """Separate a sweep's command line: the phase's fit arguments (config files without a
    ``sweep:`` group, other options), the ``sweep:`` groups of config files that hold one
    (such a file holds nothing else), and the ``--sweep.KEY VALUE`` options."""
    fit, groups, options = [], [], {}
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--config"):
            path = next(args, None)
            if path is None:
                raise ConfigError(f"{arg}: give a config file")
            text = _read(Path(path))
            if isinstance(text, dict) and "sweep" in text:
                if set(text) != {"sweep"}:
                    raise ConfigError(f"{path}: a sweep config holds only its sweep: group "
                                      f"(found also {', '.join(sorted(set(text) - {'sweep'}))})")
                groups.append(text["sweep"])
            else:
                fit += [arg, path]
        elif arg.startswith("--sweep."):
            key, _, value = arg[len("--sweep."):].partition("=")
            if not _:
                value = next(args, None)
                if value is None:
                    raise ConfigError(f"{arg}: give a value")
            options[key] = value
        else:
            fit.append(arg)
    return fit, groups, options


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e


def as_options(values: dict[str, Any]) -> list[str]:
    """Dotted key -> value as command-line options (lists as JSON, None as null)."""
    out = []
    for key, value in values.items():
        text = json.dumps(value) if isinstance(value, list | dict | bool) or value is None else (
            str(value))
        out += [f"--{key}", text]
    return out
