"""The ``desertmind`` command: dataset tools as sub-commands."""

from __future__ import annotations

import argparse
import json
import sys

from desertmind.imageio import DatasetError

TOOLS = ("check-data", "synth")


def _check_data(args: argparse.Namespace) -> int:
    from desertmind.stats import format_report, scan

    result = scan(args.root, args.splits, args.stats, args.workers)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result))
    problems = sum(len(s["problems"]) for s in result["splits"].values())
    unknown = any(s["unknown_values"] for s in result["splits"].values())
    return 1 if problems or (args.strict and unknown) else 0


def _synth(args: argparse.Namespace) -> int:
    from desertmind.synth import generate

    out = generate(args.out, args.n_train, args.n_val, args.height, args.width, args.seed,
                   args.overwrite)
    print(f"wrote {args.n_train} train and {args.n_val} val scenes "
          f"({args.width}x{args.height}, seed {args.seed}) to {out}")
    return 0


def _int_at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desertmind",
                                     description="Off-road desert semantic segmentation.")
    sub = parser.add_subparsers(dest="tool", required=True)

    p = sub.add_parser("check-data", help="scan a dataset, print its statistics and problems",
                       description="Check every image and mask of the given splits (in "
                       "parallel), print per-class pixel and image shares and every problem "
                       "with its file. Exit 1 when a problem is found.")
    p.add_argument("root", help="dataset root holding the split folders")
    p.add_argument("--splits", nargs="+", default=["train", "val"],
                   help="split folders to check (default: train val)")
    p.add_argument("--workers", type=_int_at_least(1), default=None,
                   help="processes (default: all cores)")
    p.add_argument("--stats", default=None,
                   help="statistics JSON (default: ROOT/desertmind_stats.json); reused while "
                   "the split's files are unchanged")
    p.add_argument("--strict", action="store_true",
                   help="also exit 1 when masks hold raw values outside the class table")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=_check_data)

    p = sub.add_parser("synth", help="write a synthetic dataset in the Duality format",
                       description="Generate deterministic synthetic off-road scenes: RGB PNG "
                       "images and uint16 raw-id masks in ROOT/{train,val}/{Color_Images,"
                       "Segmentation}.")
    p.add_argument("out", help="output dataset root")
    p.add_argument("--n-train", type=_int_at_least(0), default=40)
    p.add_argument("--n-val", type=_int_at_least(0), default=10)
    p.add_argument("--height", type=_int_at_least(16), default=540)
    p.add_argument("--width", type=_int_at_least(16), default=960)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing split folders")
    p.set_defaults(func=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``desertmind`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = _tool_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, FileExistsError) as e:
        print(f"desertmind {args.tool}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
