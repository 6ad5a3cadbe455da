"""LightningCLI subclass: the phase callbacks as config groups, precision ``auto``, and
evaluation from a checkpoint alone."""

from __future__ import annotations

import difflib
import logging
import random
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import lightning as L
import torch
import yaml
from jsonargparse import ActionYesNo
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ProgressBar,
    WeightAveraging,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from desertmind import runs
from desertmind.data.datamodule import OffroadDataModule
from desertmind.errors import ConfigError
from desertmind.inference.writer import OUTPUT_DIRS, PredictionWriter
from desertmind.models.trained import TrainedSettings, read_checkpoint, same_layout, settings_of
from desertmind.training.assembly import evaluation_callbacks, fit_callbacks
from desertmind.training.checkpoints import AtomicCheckpointIO, LastCheckpoint, PhaseCheckpoint
from desertmind.training.freeze import BackboneFreeze
from desertmind.training.losses import needs_class_weights
from desertmind.training.metrics import MONITOR
from desertmind.training.module import SegmentationModule
from desertmind.training.optimization import check_optimizer, describe
from desertmind.training.progress import ProgressLines
from desertmind.training.speed import Speedups


class _NoAdvertisement(logging.Filter):
    """Drops the tip Lightning logs at every Trainer's creation to advertise a cloud logging
    service: desertmind logs to TensorBoard, and an evaluation's output should be its results."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())


def resolve_precision(accelerator: str | None = "auto") -> str:
    """``bf16-mixed`` on a GPU with bf16, ``16-mixed`` on other CUDA GPUs, else ``32-true``."""
    if accelerator not in (None, "auto", "gpu", "cuda") or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


#: subcommands that evaluate a trained model and never train it
EVALUATION = ("validate", "test", "predict")


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith(("--config=", "-c=")):
            files.append(arg.split("=", 1)[1])
    return files


def refuse_overlay_first(argv: list[str]) -> None:
    """An overlay (a config of dotted keys only, such as ``configs/demo.yaml``) changes single
    values of a phase config; given first, jsonargparse fails on the first dotted key with a
    long unrelated message. Say what to do instead, in one line."""
    files = _config_files(argv)
    if not files:
        return
    try:
        first = yaml.safe_load(Path(files[0]).read_text())
    except (OSError, yaml.YAMLError):
        return  # missing or malformed: jsonargparse names the file
    if isinstance(first, dict) and first and "config" not in first and all(
            "." in str(key) for key in first):
        sub = argv[0] if argv and argv[0] in ("fit", *EVALUATION) else "fit"
        raise ConfigError(f"{files[0]} is an overlay applied after a phase config, not on its "
                          f"own; use: desertmind {sub} -c configs/phase1.yaml -c {files[0]}")


#: the evaluation options an evaluation from a checkpoint takes from it unless given
ADAPTATION_KEYS = ("adapt_bn", "class_priors")


def checkpoint_defaults(settings: TrainedSettings) -> dict[str, object]:
    """What a checkpoint decides or suggests for an evaluation (see
    :mod:`desertmind.models.trained`), as defaults of the subcommand's parser: the network's
    layout, its test-time adaptation and the evaluation-side data settings. Pretrained
    weights are never fetched: the checkpoint holds every weight."""
    network = {}
    for key, value in settings.network.items():  # a group (lora) as its dotted keys
        network.update({f"model.network.{key}.{k}": v for k, v in value.items()}
                       if isinstance(value, dict) else {f"model.network.{key}": value})
    # the test-time adaptation it was trained to be used with (configs/domain_generalisation)
    adaptation = {f"model.evaluation.{k}": getattr(settings.evaluation, k)
                  for k in ADAPTATION_KEYS}
    return {**network, **adaptation, "model.network.weights": "none",
            **{f"data.{k}": v for k, v in settings.data.items()}}


def refuse_other_network(config, settings: TrainedSettings) -> None:
    """The network's layout is the checkpoint's: a different value the user set (on the
    command line or in a config file: it won over the checkpoint's default) is refused."""
    ckpt, network = settings.path, settings.network
    for key, value in network.items():
        current = config.model.network.get(key)
        current = current.as_dict() if hasattr(current, "as_dict") else current
        if not same_layout(key, current, value):
            raise ConfigError(
                f"{ckpt} holds a {network['arch']} {network['backbone']} network with "
                f"{key}={value!r}; model.network.{key}={current!r} (given on the command line "
                f"or in a config file) cannot load its weights: leave model.network.{key} out, "
                "the checkpoint sets it")
    config.model.network.weights = "none"


def refuse_missing_root(config, settings: TrainedSettings, sub: str) -> None:
    """An evaluation on the checkpoint's own dataset root that is not there from this folder:
    say where the path came from and how to give another (the data module's message would
    suggest generating a synthetic dataset)."""
    root = config.data.get("root")
    if sub == "predict" or root != settings.data.get("root") or Path(root).is_dir():
        return
    where = (f"; training ran on {settings.trained_root}, which is not there either"
             if settings.trained_root else "")
    how = "" if Path(root).is_absolute() else " (relative to the folder training ran in)"
    raise ConfigError(f"{settings.path} trained on data.root {root!r}{how}, not found from "
                      f"here{where}: give the dataset with --data.root ROOT")


def named_checkpoint(config, name: str) -> Path:
    """``--ckpt_path best|last``: that file of the phase the config's checkpoint callback
    (``checkpoint.dirpath``) or logger (``save_dir``/``name``) names."""
    folder = config.get("checkpoint", {}).get("dirpath")
    logger = config.trainer.get("logger")
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if folder is None and init is not None and init.get("name") is not None:
        folder = runs.checkpoint_dir(init.get("save_dir") or ".", str(init.get("name")))
    if folder is None:
        raise ConfigError(f"--ckpt_path {name}: no phase to take {name}{runs.CKPT_EXT} from; "
                          "give the phase's config (-c configs/phase1.yaml) or the "
                          "checkpoint's path")
    path = Path(folder) / f"{name}{runs.CKPT_EXT}"
    if not path.is_file():
        raise ConfigError(f"--ckpt_path {name}: {path} does not exist; train the phase first "
                          "(or point --trainer.logger.init_args.save_dir at its logs), or give "
                          "the checkpoint's path")
    return path


# reStructuredText roles and literals in the docstrings the help text comes from
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_help(text: str) -> str:
    """Help text without the docstrings' markup: ``:mod:`~a.b``` -> ``a.b``, double back
    quotes dropped."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


class _Parser(LightningArgumentParser):
    """Knows the subcommand it parses (``command``: None for the main parser) and prints
    help without reStructuredText markup."""

    def __init__(self, *args, command: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.command = command

    def format_help(self) -> str:
        return plain_help(super().format_help())

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """The error first, in a few lines: what was wrong, the nearest valid option for an
        unknown one, and where the full list is (jsonargparse's own prints the whole usage,
        over a hundred lines, above the error)."""
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = f"desertmind {parser.command}" if getattr(parser, "command", None) else (
            "desertmind")
        lines = [f"{command}: error: {message.strip()}"]
        lines += [f"  did you mean {hint}?" for hint in nearest_options(message, parser)]
        lines += [f"  it takes: {usage}" for usage in option_usage(message, parser)]
        lines.append(f"  every option: {command} --help")
        sys.stderr.write("\n".join(lines) + "\n")
        self.exit(2)


def option_usage(message: str, parser: LightningArgumentParser) -> list[str]:
    """For a value the parser refused (``Parser key "data.cache": ...``), the option's line of
    the usage, which lists its choices (some jsonargparse versions' messages do not)."""
    keys = re.findall(r'Parser key "([\w.]+)"', message)
    if not keys:
        return []
    usage = parser.format_usage()
    found = []
    for key in keys:
        match = re.search(rf"\[--{re.escape(key)} ([^\]]+)\]", usage)
        if match:
            found.append(f"--{key} {match.group(1)}")
    return found


def nearest_options(message: str, parser: LightningArgumentParser) -> list[str]:
    """For each ``--option`` an error message names that the parser does not know, the
    closest option it knows (difflib), e.g. ``--data.rot`` -> ``--data.root``."""
    known = [f"--{key}" for key in parser.get_defaults().keys()]
    hints = []
    for word in re.findall(r"--[\w.\-]+", message):
        if word not in known and (close := difflib.get_close_matches(word, known, n=1,
                                                                    cutoff=0.6)):
            hints.append(close[0])
    return hints


class DesertMindCLI(LightningCLI):
    """``desertmind fit|validate|test|predict``.

    ``validate``, ``test`` and ``predict`` need only ``--ckpt_path``: the network and the
    evaluation-side data settings come from the checkpoint (:func:`apply_checkpoint`), options
    given by the user win, and nothing that only training needs is built. Their logs go to an
    ``eval`` folder of the checkpoint's phase, or under ``--out`` (:func:`runs.eval_dir`),
    never into a training run's folder; ``--out`` also receives their results.

    The checkpoint, early-stopping and backbone-freezing callbacks are config groups of their
    own (``checkpoint``, ``last_checkpoint``, ``early_stopping``, ``freeze``), so a phase
    config changes one value with a dotted key (``early_stopping.patience: 2``) instead of
    repeating the callback list. Every run also writes ``provenance.json`` beside its logs,
    and ``val_images.npz`` (the best epoch's per-image confusion matrices, for the report).
    ``trainer.precision`` left null means auto (:func:`resolve_precision`). Optimizer and
    scheduler are arguments of the model, which builds its own param groups, so LightningCLI's
    automatic ``--optimizer`` (one group for every parameter) is switched off.
    """

    def __init__(self, *, extra_callbacks: list[L.Callback] | None = None, **kwargs) -> None:
        """``extra_callbacks``: callbacks a Python caller adds to the trainer (a sweep's
        pruning callback: an object no config can name)."""
        self.extra_callbacks = list(extra_callbacks or [])
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", _Parser)
        # each subcommand's parser is told its name, and recorded by add_arguments_to_parser
        kwargs.setdefault("parser_kwargs", {sub: {"command": sub}
                                            for sub in LightningCLI.subcommands()})
        self.subcommand_parsers: dict[str, LightningArgumentParser] = {}
        self._ckpt_path: str | None = None
        self._preloaded: tuple[str, dict] | None = None  # an evaluation's checkpoint, read once
        super().__init__(SegmentationModule, OffroadDataModule,
                         auto_configure_optimizers=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if getattr(parser, "command", None):
            self.subcommand_parsers[parser.command] = parser
        parser.add_lightning_class_args(PhaseCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR, "checkpoint.mode": "max",
            "checkpoint.filename": "best", "checkpoint.save_last": False,
            "checkpoint.save_top_k": 1, "checkpoint.auto_insert_metric_name": False,
            "checkpoint.enable_version_counter": False,
            # decide right after validation (Lightning's default waits for the train epoch's
            # end), so that last.ckpt, written after it, records this validation's best score
            "checkpoint.save_on_train_epoch_end": False,
        })
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        # decide right after validation, before the checkpoint callback (always last) saves
        # last.ckpt, so the checkpoint records whether early stopping fired
        parser.set_defaults({"early_stopping.mode": "max",
                             "early_stopping.check_on_train_epoch_end": False})
        # one monitor: early stopping follows the best checkpoint's (so do a plateau
        # scheduler, val_images.npz, HParams and the report's best epoch, which ask the
        # checkpoint callback at run time: training.metrics.followed_monitor)
        parser.link_arguments("checkpoint.monitor", "early_stopping.monitor")
        # self-training needs a batch of target images with every training batch
        parser.link_arguments("model.self_training.weight", "data.target_batches",
                              compute_fn=lambda weight: weight > 0)
        parser.add_lightning_class_args(Speedups, "speed")
        parser.add_lightning_class_args(BackboneFreeze, "freeze")
        parser.set_defaults({"freeze.unfreeze_at_epoch": 0})
        # weight averaging (off unless given, e.g. --ema EMAWeightAveraging --ema.decay 0.999):
        # validation, best.ckpt and whatever reads a checkpoint see the averaged weights
        parser.add_lightning_class_args(WeightAveraging, "ema", subclass_mode=True,
                                        required=False)
        parser.add_argument("--out", default=None,
                            help="predict: folder for raw/, color/ and overlay/ PNGs; validate "
                            "and test: folder for metrics.json, per_image.csv and the "
                            "confusion matrix (and the run's logs)")
        parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                            help="predict, validate, test: replace the results already in "
                            "--out; fit: "
                            "start a phase again over its earlier checkpoints (each replaced when "
                            "the new run saves its own)")
        parser.add_argument("--print_param_groups", action=ActionYesNo, default=False,
                            help="fit: print the optimizer's parameter groups (learning rate, "
                            "weight decay, tensors) and exit without training")
        # --overwrite: each checkpoint callback decides about its folder's earlier files
        parser.link_arguments("overwrite", "checkpoint.overwrite")
        parser.link_arguments("overwrite", "last_checkpoint.overwrite")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Lightning's parse; for an evaluation from a checkpoint, the checkpoint's values then
        become the subcommand's defaults and the same arguments are parsed again, so that what
        the user gave (command line or config files) wins by jsonargparse's own precedence."""
        argv = list(sys.argv[1:] if args is None else args)
        refuse_overlay_first(argv)
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:  # run=False: a Python caller instantiates the classes itself
            return
        ckpt = self._checkpoint_of(sub)
        if sub in EVALUATION and ckpt and ckpt not in ("hpc", "registry"):
            # the one read of the file (without running code): its settings now, its
            # weights when Lightning asks the CheckpointIO for them
            self._preloaded = (ckpt, read_checkpoint(ckpt))
            settings = settings_of(ckpt, self._preloaded[1])
            # an evaluation draws nothing at random: no seed (and no "seed set" lines) unless
            # a config or the command line asks for one
            self.subcommand_parsers[sub].set_defaults({**checkpoint_defaults(settings),
                                                       "seed_everything": False})
            super().parse_arguments(parser, args)
            refuse_other_network(self.config[sub], settings)
            refuse_missing_root(self.config[sub], settings, sub)
        if self.config[sub].get("seed_everything") is True:
            # Lightning's seed_everything() without a seed picks 0, every time, silently
            seed = random.SystemRandom().randrange(2**31)
            self.config[sub].seed_everything = seed
            print(f"desertmind {sub}: seed_everything true: drew seed {seed} (kept in the "
                  "run's config.yaml; give it to repeat this run)", file=sys.stderr)
        # Lightning would next replace every model value with the checkpoint's saved
        # hyperparameters (the user's options and class paths included): the path is held
        # back until the classes are instantiated (before_instantiate_classes)
        self._ckpt_path, self.config[sub].ckpt_path = ckpt, None

    def _checkpoint_of(self, sub: str) -> str | None:
        """The subcommand's ``--ckpt_path``, ``best`` and ``last`` resolved; an evaluation
        without a trained model is refused."""
        config = self.config[sub]
        ckpt = config.get("ckpt_path")
        # Lightning resolves "last" for fit itself; "best" (and "last" in an evaluation,
        # whose training callbacks are dropped) would find no ModelCheckpoint to ask
        if ckpt == runs.BEST or (sub in EVALUATION and ckpt == runs.LAST):
            ckpt = config.ckpt_path = str(named_checkpoint(config, ckpt))
        if sub in EVALUATION and not ckpt and not config.model.get("init_from"):
            raise ConfigError(
                f"{sub} needs a trained model, or it would score random weights: give "
                "--ckpt_path CKPT (e.g. --ckpt_path lightning_logs/phase3/checkpoints/"
                "best.ckpt, or --ckpt_path best with the phase's config: -c "
                "configs/phase3.yaml), or a config whose model.init_from names a "
                "checkpoint")
        return ckpt

    def _eval_logger(self, config) -> TensorBoardLogger:
        if config.get("out"):
            out = Path(config.out)
            if out.exists() and not out.is_dir():
                raise ConfigError(f"--out {config.out}: is a file; give a folder for the "
                                  "results")
            earlier = [n for n in ("metrics.json", "logs") if (out / n).exists()]
            if earlier and not config.get("overwrite"):
                raise ConfigError(f"--out {config.out}: already holds an evaluation "
                                  f"({', '.join(earlier)}); choose another folder, or pass "
                                  "--overwrite to replace it")
            if "logs" in earlier:  # --overwrite: one run's events, never two mixed
                shutil.rmtree(out / "logs")
            return TensorBoardLogger(config.out, name="", version="logs",
                                     default_hp_metric=False)
        logger = config.trainer.get("logger")
        phase = None
        if isinstance(logger, TensorBoardLogger):
            phase = runs.phase_dir(logger.save_dir or ".", str(logger.name))
        return TensorBoardLogger(runs.eval_dir(config.get("ckpt_path"), phase),
                                 name=self.subcommand, default_hp_metric=False)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """The trainer, its callbacks assembled in one place (:mod:`desertmind.training.assembly`)
        from the config's groups, with atomic checkpoint writing unless a config names its own
        CheckpointIO plugin (every run gets it, whatever its config file). An evaluation run
        gets its own logger (see the class doc)."""
        sub = self.subcommand  # None: run=False, a Python caller's fit
        config = self.config_init[sub] if sub else self.config_init
        trainer_config = {**config.get("trainer", {}), **kwargs}
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO(preloaded=self._preloaded))
        user = trainer_config.pop("callbacks", None) or []
        user = [*(user if isinstance(user, list | tuple) else [user]), *self.extra_callbacks]
        if sub in ("fit", None):
            callbacks = fit_callbacks(
                checkpoint=config.checkpoint, last=config.last_checkpoint,
                early_stopping=config.early_stopping, freeze=config.freeze, speed=config.speed,
                ema=config.get("ema"), user=user, logger=trainer_config.get("logger") is not False)
        else:
            if trainer_config.get("logger") is not False:
                trainer_config["logger"] = self._eval_logger(config)
            if sub == "predict":
                check_predict_out(config.get("out"), config.get("overwrite"))
            callbacks = evaluation_callbacks(sub, config.get("out"), user)
        # into a file (a log, a SLURM job) a bar would show once, at the end: lines instead
        if (sub == "fit" and trainer_config.get("enable_progress_bar", True) is not False
                and not sys.stdout.isatty()
                and not any(isinstance(c, ProgressBar) for c in callbacks)):
            callbacks.append(ProgressLines())
        # config.yaml goes beside the run's logs: without a logger there is no such folder
        # (Lightning would write it into the working folder)
        if (self.save_config_callback and not trainer_config.get("fast_dev_run")
                and trainer_config.get("logger") is not False):
            callbacks.append(self.save_config_callback(
                self.subcommand_parsers.get(sub, self.parser),
                self.config[sub] if sub else self.config, **self.save_config_kwargs))
        return self.trainer_class(**{**trainer_config, "plugins": plugins,
                                     "callbacks": callbacks})

    def before_fit(self) -> None:
        _quiet_lightning_notices()
        self.datamodule.check_fit()
        hp = self.model.hparams
        check_optimizer(self.model.optimizer, self.model.scheduler)
        if self.config.fit.get("print_param_groups"):
            print(describe(self.model.model, self.model.groups, self.model.optimizer))
            raise SystemExit(0)  # as --print_config does: a look, not a run
        if self.trainer.limit_train_batches == 0:
            raise ConfigError("--trainer.limit_train_batches 0 trains nothing (the checkpoints "
                              "would hold the starting weights); to score a model, use "
                              "desertmind validate --ckpt_path CKPT")
        for callback in self.trainer.callbacks:
            if isinstance(callback, EarlyStopping) and callback.patience < 0:
                raise ConfigError(f"early_stopping.patience={callback.patience}: the number of "
                                  "validations without improvement to wait, 0 or more")
        if needs_class_weights(hp.loss) and hp.class_weights is None:
            weights = self.datamodule.class_weights()  # None: class_weighting none, refused
            hp.class_weights = None if weights is None else weights.tolist()
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, PhaseCheckpoint):
                callback.resolve_dirpath(self.trainer)
        # last.ckpt beside best.ckpt, wherever --checkpoint.dirpath put it (with no logger,
        # Lightning's default would be the working folder's checkpoints/)
        best = next((c for c in self.trainer.checkpoint_callbacks
                     if type(c) is PhaseCheckpoint and c.dirpath), None)
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, LastCheckpoint) and best is not None:
                callback.dirpath = best.dirpath
        if self.config.fit.get("ckpt_path") == runs.LAST:
            # Lightning would warn and train from scratch: a resume that resumes nothing
            found = [Path(c.dirpath) / f"{runs.LAST}{runs.CKPT_EXT}"
                     for c in self.trainer.checkpoint_callbacks
                     if isinstance(c, LastCheckpoint) and c.dirpath]
            if not any(p.is_file() for p in found):
                where = found[0] if found else "the phase's checkpoints folder"
                raise ConfigError(f"--ckpt_path last: nothing to resume, {where} does not "
                                  "exist; leave --ckpt_path out to start the phase")

    def before_validate(self) -> None:
        _quiet_lightning_notices()

    def before_test(self) -> None:
        _quiet_lightning_notices()

    def after_validate(self) -> None:
        self._say_where("validate")

    def after_test(self) -> None:
        self._say_where("test")

    def _say_where(self, sub: str) -> None:
        if not self.trainer.is_global_zero:
            return
        stage = "val" if sub == "validate" else sub
        headline = self.trainer.callback_metrics.get(f"{stage}/mIoU")
        if headline is not None:  # the one number first, before Lightning's table
            print(f"desertmind {sub}: {stage}/mIoU {float(headline):.4f}")
        if self.config[sub].out:
            print(f"desertmind {sub}: wrote metrics.json, per_image.csv and confusion.csv/.png "
                  f"to {self.config[sub].out}")

    def before_predict(self) -> None:
        _quiet_lightning_notices()
        # the writer saves every batch; keeping all predictions in memory too would not scale
        self.config_init.predict.return_predictions = False

    def after_predict(self) -> None:
        writer = next(c for c in self.trainer.callbacks if isinstance(c, PredictionWriter))
        if self.trainer.is_global_zero:
            print(f"desertmind predict: wrote {writer.written} images (raw/, color/, "
                  f"overlay/) to {writer.out_dir}")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand:
            config.ckpt_path = self._ckpt_path  # held back in parse_arguments
        if config.trainer.precision is None:
            config.trainer.precision = resolve_precision(config.trainer.accelerator)


def _quiet_lightning_notices() -> None:
    """Lightning's notices a user can do nothing about, left out of a run's output: that an
    evaluation (which restores only a training checkpoint's weights) has no callback for the
    training callbacks' states, and Lightning 2.6's deprecation warning about its own use of
    torch's pytree API (torch >= 2.10)."""
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")


def check_predict_out(out: str | None, overwrite: bool) -> None:
    """Refuse a ``predict --out`` that cannot take a new prediction set: none given, a file,
    a user's own file in an output folder (never deleted, ``--overwrite`` or not) or earlier
    predictions without ``--overwrite``."""
    if not out:
        raise ConfigError("predict needs --out FOLDER for the predicted masks")
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for the predictions")
    old = [d for d in OUTPUT_DIRS if (out_path / d).is_dir() and any((out_path / d).iterdir())]
    # --overwrite replaces a prediction set as a whole: anything else in its folders
    # (a user's own files) would go with it
    foreign = next((f for d in old for f in sorted((out_path / d).iterdir())
                    if not (f.is_file() and f.suffix == ".png")), None)
    if foreign is not None:
        raise ConfigError(f"--out {out}: {foreign} is not a predicted PNG, and replacing "
                          f"the predictions would delete it with the rest of "
                          f"{foreign.parent.name}/; move it, or choose another folder")
    if old and not overwrite:
        raise ConfigError(f"--out {out}: already holds predictions ({', '.join(old)}/); "
                          "choose an empty folder, or pass --overwrite to replace them "
                          "(once the new set is complete)")
