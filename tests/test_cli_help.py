"""The command line's help: short and instant for evaluations, complete with --help-all,
and free of docstring markup."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from desertmind.cli import short_help
from desertmind.cli.lightning import plain_help
from desertmind.cli.main import EVALUATION, LIGHTNING, main


@pytest.mark.parametrize("command", LIGHTNING)
def test_the_short_help_is_short_fast_and_needs_no_lightning(command: str):
    import time

    code = (f"import sys; from desertmind.cli.main import main; main(['{command}', '--help']); "
            "print('LOADED' if 'lightning' in sys.modules or 'torch' in sys.modules else 'LEAN')")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    seconds = time.perf_counter() - start
    assert out.rstrip().endswith("LEAN")  # neither Lightning nor torch was imported
    assert len(out.splitlines()) <= 80 and seconds < 10  # (2 s on an idle 2-core machine)
    assert "--ckpt_path" in out and f"desertmind {command} --help-all" in out
    assert "``" not in out and ":mod:" not in out


def test_every_option_the_short_help_names_is_one_the_full_parser_takes(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help-all"])  # the full LightningCLI help
    full = capsys.readouterr().out
    accepted = set(re.findall(r"(--?[\w.]+)", full))
    for command in EVALUATION:
        named = short_help.options(command)
        assert "--ckpt_path" in named
        assert not set(named) - accepted, f"{command}: {set(named) - accepted}"
    with pytest.raises(SystemExit):  # with a phase config, as the short help's usage says
        main(["fit", "-c", str(Path(__file__).parents[1] / "configs" / "phase1.yaml"),
              "--help-all"])
    fit = set(re.findall(r"(--?[\w.]+)", capsys.readouterr().out))
    phase1 = str(Path(__file__).parents[1] / "configs" / "phase1.yaml")
    for nested in set(short_help.options("fit")) - fit:  # a class's init_args: not in --help
        assert ".init_args." in nested, nested
        with pytest.raises(SystemExit) as e:
            main(["fit", "-c", phase1, nested, "1", "--print_config"])
        assert e.value.code in (0, None), nested
    capsys.readouterr()
    assert len(full.splitlines()) > 300  # --help-all is the whole list, not the short one
    assert "``" not in full and ":class:`" not in full and ":mod:`" not in full


def test_plain_help_drops_roles_and_literals():
    text = "see :mod:`desertmind.data.cache` and :class:`~a.B`; ``train`` or ``em``"
    assert plain_help(text) == "see desertmind.data.cache and a.B; train or em"


def test_every_option_of_fit_but_the_trainers_has_help_text(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help-all"])
    lines = capsys.readouterr().out.splitlines()
    bare = []
    for i, line in enumerate(lines):  # "  --name VALUE   text" or the text on the next line
        m = re.match(r"  (--(?!trainer\.)\w+\.[\w.]+)( [A-Z_{},a-z]+)?\s*(.*)", line)
        if m:
            text = m.group(3) or lines[i + 1].strip()
            if text.startswith(("(type", "(default")):
                bare.append(m.group(1))
    assert not bare, f"options without help text: {bare}"


def test_a_typo_gets_the_error_first_and_the_nearest_name(capsys, tmp_path):
    """An unknown command names the nearest (before anything heavy is imported); an unknown
    option prints the error, 'did you mean', and where the full list is, in a few lines."""
    from desertmind.cli.main import LIGHTNING, TOOLS, _tool_parser

    assert main(["fti"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fti'; did you mean 'fit'?" in err
    assert all(c in err for c in (*LIGHTNING, *TOOLS))
    subcommands = next(a for a in _tool_parser()._subparsers._group_actions)
    assert set(subcommands.choices) == set(TOOLS)  # the list a typo is answered with is whole
    with pytest.raises(SystemExit) as e:
        main(["fit", "-c", "configs/phase1.yaml", "--data.rot", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 10, err
    assert err[0].lower().startswith("desertmind fit: error: unrecognized arguments: --data.rot")
    assert "did you mean --data.root?" in err[1]
    assert err[-1].endswith("desertmind fit --help")


def test_export_takes_ckpt_path_like_every_command():
    from desertmind.cli.main import _tool_parser

    args = _tool_parser().parse_args(["export", "--ckpt_path", "a.ckpt", "--out", "a.onnx"])
    assert args.ckpt == "a.ckpt"
    assert _tool_parser().parse_args(["export", "--ckpt", "b.ckpt", "--out", "b.onnx"]).ckpt == (
        "b.ckpt")


@pytest.mark.parametrize("args, expected", [
    (["fit", "-c", "nowhere.yaml"], "-c nowhere.yaml: no such config file"),
    (["fit", "--data.root", "/no/such/root"], "dataset root /no/such/root does not exist"),
    (["validate", "--ckpt_path=gone.ckpt"], "checkpoint gone.ckpt not found"),
])
def test_a_missing_path_is_named_before_torch_is_imported(args, expected):
    code = (f"import sys; from desertmind.cli.main import main; code = main({args!r}); "
            "print(code, 'LOADED' if 'torch' in sys.modules else 'LEAN')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["2", "LEAN"] and expected in done.stderr
