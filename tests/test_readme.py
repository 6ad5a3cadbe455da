"""The README is a front page whose commands work as written: each one's target, config files
and options exist, its tool arguments parse, and the cheap one runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from desertmind.cli.main import LIGHTNING, _tool_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _commands() -> list[list[str]]:
    """Every command line of the README's bash blocks as arguments, variables substituted,
    comments dropped."""
    text = README.read_text()
    commands, variables = [], {}
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if len(words) == 1 and "=" in words[0]:  # CKPT=...
                name, value = words[0].split("=", 1)
                variables[name] = value
                continue
            commands.append([re.sub(r"\$(\w+)", lambda m: variables[m[1]], w) for w in words])
    return commands


def _make_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z0-9_-]+):", makefile, flags=re.M))


def _accepted(command: str, capsys) -> set[str]:
    with pytest.raises(SystemExit):
        main([command, "--help-all"])
    return set(re.findall(r"(--?[\w.]+)", capsys.readouterr().out))


def test_the_readme_is_a_front_page_with_a_table_of_contents():
    text = README.read_text()
    assert len(text.encode()) < 16_000
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    linked = re.findall(r"\]\(#([\w-]+)\)", contents)
    anchors = [re.sub(r"[^\w\- ]", "", s.lower()).replace(" ", "-") for s in sections]
    assert linked and set(linked) <= set(anchors)
    assert set(anchors) - {"contents"} <= set(linked)  # every section is in the contents


def test_every_file_the_readme_links_exists():
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_every_command_in_the_readme_names_what_exists(capsys):
    targets = _make_targets()
    accepted: dict[str, set[str]] = {}
    seen = set()
    for words in _commands():
        program = Path(words[0]).name
        seen.add(program)
        if program == "make":
            named = [w for w in words[1:] if "=" not in w]
            assert named and set(named) <= targets, words
        elif program == "desertmind" and words[1] in LIGHTNING:
            command = words[1]
            if command not in accepted:
                accepted[command] = _accepted(command, capsys)
            options = {w.split("=")[0] for w in words[2:] if w.startswith("-")}
            assert options <= accepted[command], (words, options - accepted[command])
            for config in (words[i + 1] for i, w in enumerate(words) if w == "-c"):
                assert (REPO / config).is_file(), config
        elif program == "desertmind" and words[1] == "sweep":
            from desertmind.search.space import read_settings, split_config_files

            _, groups, options = split_config_files(
                [str(REPO / w) if w.endswith(".yaml") else w for w in words[2:]])
            assert groups and read_settings(groups, options).trials > 0
        elif program == "desertmind":
            _tool_parser().parse_args(words[1:])  # exits (fails the test) on a bad argument
        elif program == "jupyter":
            notebook = next(w for w in words if w.endswith(".ipynb"))
            assert (REPO / notebook).is_file()
            import nbconvert  # noqa: F401 - the dev extra installs what the command runs
        else:
            pytest.fail(f"a README command this test does not know: {words}")
    assert {"make", "desertmind"} <= seen


def test_the_readmes_print_config_command_runs(capsys):
    line = next(w for w in _commands() if "--print_config" in w)
    with pytest.raises(SystemExit) as e:
        main(line[1:])
    assert e.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_the_paths_the_readme_names_after_the_demo_are_the_ones_the_demo_writes():
    """``make -n demo`` lists what the demo's own targets run; the README's checkpoint, data,
    logs and report folders must be among their paths (not the scores: those change with the
    machine and are in the README as measured)."""
    import subprocess

    dry = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    text = README.read_text()
    demo = text.split("## The demo", 1)[1].split("\n## ", 1)[0]
    ckpt = next(value for name, value in (w[0].split("=", 1) for w in (
        shlex.split(line, comments=True) for line in text.splitlines()
        if line.startswith("CKPT=")) if w) if name == "CKPT")
    assert f"--ckpt_path {ckpt}" in dry  # the checkpoint the demo tests is the README's CKPT
    for folder in re.findall(r"^- `([\w/<>.]+)/`", demo, flags=re.M):
        prefix = folder.split("<", 1)[0].rstrip("/")
        assert prefix and prefix in dry, folder
