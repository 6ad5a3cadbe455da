"""The ``desertmind`` command: LightningCLI fit / validate / test / predict, plus tools.

``desertmind fit|validate|test|predict -c CONFIG [--key value ...]`` goes to
:class:`DesertMindCLI`; ``desertmind check-data`` and ``desertmind synth`` are plain argparse
tools that do not import Lightning.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import sys
from pathlib import Path

from desertmind import __version__, runs
from desertmind.cli import short_help
from desertmind.errors import DesertMindError
from desertmind.files import cannot_write

LIGHTNING = ("fit", "validate", "test", "predict")
EVALUATION = ("validate", "test", "predict")
TOOLS = ("check-data", "synth", "scores", "report", "export", "app")
OTHERS = ("sweep", "pretrain")  # commands with their own parser
USAGE = """usage: desertmind [--version] COMMAND ...

  fit         train a phase:            desertmind fit -c configs/phase1.yaml
  validate    evaluate a checkpoint:    desertmind validate --ckpt_path CKPT [--out DIR]
  test        evaluate on data.test_dir desertmind test --ckpt_path CKPT --data.test_dir SPLIT
  predict     predict data.predict_dir  desertmind predict --ckpt_path CKPT --out DIR
  check-data  check a dataset and write its class statistics
  synth       write a synthetic dataset in the Duality format
  scores      the best monitored score of every phase under a logs folder
  report      summary.md/.csv and charts of every run under a logs folder
  export      a checkpoint to ONNX (RGB 0-255 in; dynamic batch, height, width)
  app         a local web page to look at a model's predictions (Gradio)
  sweep       search a phase's hyperparameters with Optuna: desertmind sweep -c configs/phase1.yaml
              -c configs/sweeps/demo.yaml --data.root ROOT [--sweep.trials N]
  pretrain    self-supervised pretraining of an encoder on unlabelled images (DINO):
              desertmind pretrain -c configs/pretrain/dino.yaml --data.root ROOT
              [--data.unlabelled_dirs "[ROOT/testImages]"]

'desertmind COMMAND --help' shows a command's options (fit, validate, test and predict:
the ones people change; --help-all: every option); Lightning commands also take
--print_config.
"""


def _check_data(args: argparse.Namespace) -> int:
    from desertmind.data.stats import format_report, scan, strict_findings

    result = scan(args.root, args.splits, args.stats, args.workers)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result, args.strict))
    if args.plot:
        from desertmind.figures import class_share_figure, save

        labelled = {f"{s['split']}, {s['n_images']} images": (s["pixel_share"], s["image_share"])
                    for s in result["splits"].values() if s["labelled"] and s["n_images"]}
        if labelled:
            path = save(class_share_figure(labelled, f"class shares of {args.root}"),
                        args.plot)
            print(f"plot written to {path}")
    problems = sum(len(s["problems"]) for s in result["splits"].values())
    return 1 if problems or (args.strict and strict_findings(result)) else 0


def _synth(args: argparse.Namespace) -> int:
    from desertmind.data.synth import generate

    out = generate(args.out, args.n_train, args.n_val, args.height, args.width, args.seed,
                   args.overwrite, args.n_shifted, args.domain, args.n_dusk, args.n_sealed)
    extra = [f"{n} {split} scenes" for n, split in ((args.n_shifted, "test_shifted"),
                                                      (args.n_dusk, "test_dusk"),
                                                      (args.n_sealed, "test_sealed")) if n]
    shifted = f" and {' and '.join(extra)}" if extra else ""
    print(f"wrote {args.n_train} train and {args.n_val} val scenes ({args.domain} domain)"
          f"{shifted} ({args.width}x{args.height}, seed {args.seed}) to {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from desertmind.reports.report import write_report

    result = write_report(args.logs, args.out)
    for problem in result["problems"]:
        print(f"desertmind report: left out: {problem}", file=sys.stderr)
    if args.print:
        print(result["paths"]["summary.md"].read_text())
    print("wrote " + ", ".join(str(p) for p in result["paths"].values()))
    return 0


def _export(args: argparse.Namespace) -> int:
    from desertmind.inference.export import INPUT_CONTRACT, export

    out = export(args.ckpt, args.format, args.out, args.height, args.width)
    print(f"wrote {out} ({args.format}; {INPUT_CONTRACT}; the input scaling is inside)")
    return 0


def _app(args: argparse.Namespace) -> int:
    from desertmind.app.viewer import launch

    launch(args.ckpt_path, args.root, args.split, args.host, args.port, args.device,
           evaluation=None if args.evaluation == "default" else args.evaluation)
    return 0


def _scores(args: argparse.Namespace) -> int:
    from desertmind.models.trained import best_score

    ckpts = runs.find_best_checkpoints(args.logs)
    if not ckpts:
        example = runs.best_checkpoint(args.logs, "<phase>")
        print(f"no finished phase under {args.logs} (no {example})", file=sys.stderr)
        return 1
    # each phase names what it monitored: the study's recipe keeps the best per-image mIoU
    print(f"{'phase':<22}{'best':>8}  {'monitored':<20}{'epoch':>6}")
    unreadable = 0
    for path in ckpts:
        phase = runs.phase_of_checkpoint(path).relative_to(args.logs).as_posix()
        try:
            monitor, score, epoch = best_score(path)
        except DesertMindError as e:  # list the others; name this one
            print(f"{phase:<22}{'unreadable':>8}  {'-':<20}{'-':>6}")
            print(f"desertmind scores: {e}", file=sys.stderr)
            unreadable += 1
            continue
        shown = "-" if score is None else f"{score:.4f}"
        saved = "-" if epoch is None else epoch
        print(f"{phase:<22}{shown:>8}  {monitor or '-':<20}{saved:>6}")
    return 1 if unreadable else 0


def _int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"must be at least {low}{f' and at most {high}' if high else ''}, got {value}")
        return value
    return parse


def _tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desertmind",
                                     description="Off-road desert semantic segmentation.")
    sub = parser.add_subparsers(dest="tool", required=True)

    p = sub.add_parser("check-data", help="scan a dataset, print its statistics and problems",
                       description="Check every image and mask of the given splits (in "
                       "parallel), print per-class pixel and image shares and every problem "
                       "with its file, and with two splits or more their mean colour and "
                       "class shares side by side (e.g. --splits train test_shifted). Exit 1 "
                       "when a problem is found.")
    p.add_argument("root", help="dataset root holding the split folders")
    p.add_argument("--splits", nargs="+", default=["train", "val"],
                   help="split folders to check (default: train val)")
    p.add_argument("--workers", type=_int_at_least(1), default=None,
                   help="processes (default: all cores)")
    p.add_argument("--stats", default=None,
                   help="statistics JSON (default: ROOT/desertmind_stats.json); reused while "
                   "the split's files are unchanged")
    p.add_argument("--strict", action="store_true",
                   help="also exit 1 when masks hold raw values outside the class table or a "
                   "split mixes image sizes")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--plot", metavar="FILE", default=None,
                   help="also write a bar chart of per-class pixel and image share (PNG)")
    p.set_defaults(func=_check_data)

    p = sub.add_parser("synth", help="write a synthetic dataset in the Duality format",
                       description="Generate deterministic synthetic off-road scenes: RGB PNG "
                       "images and uint16 raw-id masks in ROOT/{train,val}/{Color_Images,"
                       "Segmentation}.")
    p.add_argument("out", help="output dataset root")
    p.add_argument("--n-train", type=_int_at_least(0), default=40)
    p.add_argument("--n-val", type=_int_at_least(0), default=10)
    p.add_argument("--n-shifted", type=_int_at_least(0), default=0,
                   help="also write a labelled test_shifted split of the shifted domain")
    p.add_argument("--n-dusk", type=_int_at_least(0), default=0,
                   help="also write a labelled test_dusk split of the dusk domain (a second "
                   "shift: dim warm light, haze, grey soil, no Trees, Lush Bushes or Flowers)")
    p.add_argument("--n-sealed", type=_int_at_least(0), default=0,
                   help="also write a labelled test_sealed split: a desert no tool was chosen "
                   "on, for confirming a choice once (overcast, dark volcanic ground, another "
                   "camera; no Lush Bushes, Dry Bushes or Logs)")
    p.add_argument("--domain", choices=("source", "shifted", "dusk"), default="source",
                   help="the domain of train and val: source (default) or shifted (darker, "
                   "rocky, no Ground Clutter / Flowers / Logs: like the real test desert)")
    p.add_argument("--height", type=_int_at_least(16), default=540)
    p.add_argument("--width", type=_int_at_least(16), default=960)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing split folders")
    p.set_defaults(func=_synth)

    p = sub.add_parser("scores",
                       help="the best monitored score of every phase under a logs folder",
                       description="Read <logs>/<phase>/checkpoints/best.ckpt of every phase "
                       "(oldest first) and print its best score, the metric it monitored "
                       "(val/mIoU, or val/mIoU_per_image for the study's recipe) and the epoch "
                       "it was saved at.")
    p.add_argument("--logs", default="lightning_logs", help="logs folder (default: %(default)s)")
    p.set_defaults(func=_scores)

    p = sub.add_parser("report", help="summarise every run under a logs folder",
                       description="Read the TensorBoard events of every run under --logs and "
                       "write summary.md, summary.csv, curves.png and per_class_iou.png.")
    p.add_argument("--logs", default="lightning_logs", help="logs folder (default: %(default)s)")
    p.add_argument("--out", default="reports", help="output folder (default: %(default)s)")
    p.add_argument("--print", action="store_true", help="print summary.md when done")
    p.set_defaults(func=_report)

    p = sub.add_parser("export", help="export a checkpoint to ONNX",
                       description="Export a checkpoint's network (logits only, no aux head) "
                       "with dynamic batch, height and width.")
    p.add_argument("--ckpt_path", "--ckpt", dest="ckpt", required=True,
                   help="a desertmind checkpoint (e.g. best.ckpt); --ckpt is the same")
    p.add_argument("--format", default="onnx", help="onnx (the one format)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--height", type=_int_at_least(16), default=540,
                   help="example input height (the graph stays dynamic)")
    p.add_argument("--width", type=_int_at_least(16), default=960)
    p.set_defaults(func=_export)

    p = sub.add_parser("app", help="a local web page to look at a model's predictions",
                       description="Serve a local Gradio page for a checkpoint: upload or pick "
                       "an image and see the prediction over it; with --data.root, browse a "
                       "labelled split worst image first. Needs the app extra (Gradio).")
    p.add_argument("--ckpt_path", required=True, help="a desertmind checkpoint (e.g. best.ckpt)")
    p.add_argument("--data.root", dest="root", default=None,
                   help="dataset root: pick images from, and browse, its split")
    p.add_argument("--data.val_dir", dest="split", default=None,
                   help="the split under the root (default: the checkpoint's val_dir)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=_int_at_least(1, 65535), default=7860)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--evaluation", choices=["default", "checkpoint"], default="default",
                   help="default: predict as `desertmind validate` does without options; "
                   "checkpoint: with the TTA scales and class restriction saved in the "
                   "checkpoint's model.evaluation")
    p.set_defaults(func=_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``desertmind`` console script."""
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"desertmind {__version__}")
        return 0
    if argv[0] in LIGHTNING and {"-h", "--help"} & set(argv[1:]):
        print(short_help.text(argv[0]))  # no Lightning import: the short help is instant
        return 0
    commands = (*LIGHTNING, *TOOLS, *OTHERS)
    if argv[0] not in commands:  # before any import: a typo costs nothing
        near = difflib.get_close_matches(argv[0], commands, n=1, cutoff=0.5)
        print(f"desertmind: error: unknown command {argv[0]!r}"
              + (f"; did you mean {near[0]!r}?" if near else "")
              + f"\n  commands: {', '.join(commands)} (desertmind --help)",
              file=sys.stderr)
        return 2
    if "--help-all" in argv[1:]:
        argv = [("--help" if a == "--help-all" else a) for a in argv]
        from_shell = False
    if argv[0] in (*LIGHTNING, "pretrain") and (missing := missing_paths(argv[1:])):
        print(f"desertmind {argv[0]}: error: {missing}", file=sys.stderr)  # before any import
        return 2
    try:
        if argv[0] in LIGHTNING:
            from desertmind.cli.lightning import DesertMindCLI

            DesertMindCLI(args=None if from_shell else argv)
            return 0
        if argv[0] == "sweep":
            from desertmind.search.sweep import run

            return run(argv[1:])
        if argv[0] == "pretrain":
            from desertmind.pretraining.cli import run as pretrain

            return pretrain(argv[1:])
        args = _tool_parser().parse_args(argv)
        return args.func(args)
    except Exception as e:
        message = users_to_fix(e)
        if message is None:
            raise
        print(f"desertmind {argv[0]}: error: {message}", file=sys.stderr)
        return 2


#: options whose value is a path that must exist (``--ckpt_path`` also takes names)
_PATH_OPTIONS = {"-c": "config file", "--config": "config file", "--ckpt_path": "checkpoint",
                 "--data.root": "dataset root"}
_CKPT_NAMES = ("best", "last", "hpc", "registry")


def missing_paths(args: list[str]) -> str | None:
    """The first path given on the command line that does not exist, said in one line: a
    Lightning command imports torch and every network library (seconds) before its parser
    would notice."""
    for i, arg in enumerate(args):
        option, _, value = arg.partition("=")
        if option not in _PATH_OPTIONS:
            continue
        value = value or (args[i + 1] if i + 1 < len(args) else "")
        if not value or value.startswith("-") or (option == "--ckpt_path"
                                                 and value in _CKPT_NAMES):
            continue
        if Path(value).exists():
            continue
        if option == "--data.root":
            from desertmind.data.layout import missing_root_message

            return missing_root_message(Path(value))
        if option == "--ckpt_path":
            return runs.missing_checkpoint_message(value)
        return f"{option} {value}: no such {_PATH_OPTIONS[option]}"
    return None


def users_to_fix(error: BaseException) -> str | None:
    """The one line to print for an error the user can fix, or None for a bug (a traceback).

    The whole chain is searched: on a full disk Lightning's teardown (TensorBoard's finalize)
    fails again while the checkpoint's own error is being raised, and the one line the user
    needs is the first error, buried under the second's traceback. An OSError naming a file
    (a read-only or full disk, a file where a folder should be) is the user's too."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in chain:
        if isinstance(e, DesertMindError):
            return one_line(e)
    for e in chain:
        if isinstance(e, OSError) and e.filename and e.errno in _USERS_ERRNOS:
            path = Path(e.filename)
            return str(cannot_write(path, e)) if e.errno in _FULL_OR_READ_ONLY else (
                f"{path}: {e.strerror}; choose another path")
    return None


_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_USERS_ERRNOS = _FULL_OR_READ_ONLY | {errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                                      errno.ENAMETOOLONG}


def one_line(error: DesertMindError) -> str:
    """The error's own message. An error raised in a DataLoader worker comes back re-raised
    by torch as the same class with "Caught DatasetError in DataLoader worker process 0" and
    the worker's whole traceback as its message; the message is that traceback's last line."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last.removeprefix(prefix).removeprefix(f"{type(error).__name__}: ")


if __name__ == "__main__":
    sys.exit(main())
