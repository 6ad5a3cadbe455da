"""desertmind sweep: Optuna trials of an ordinary phase (SQLite here; PostgreSQL in the slow
tier), checked before the first trial, resumable, summarised as a table, plots and best.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from desertmind.cli.main import main

optuna = pytest.importorskip("optuna")

SPACE = {"model.optimizer.init_args.lr": {"float": [1.0e-3, 1.0e-2], "log": True},
         "data.train_preset": {"choice": ["none", "flip_color"]}}


def _sweep_config(tmp_path: Path, space: dict | None = None, **settings) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": {"study": "t", "space": space or SPACE,
                                              **settings}}))
    return path


def _args(phase_args, synth_root: Path, logs: Path, config: Path, *extra: str) -> list[str]:
    return ["sweep", *phase_args("phase1", synth_root, logs), "-c", str(config),
            "--trainer.max_epochs", "3", *extra]


def test_trials_are_runs_the_study_resumes_and_best_yaml_is_an_overlay(
        synth_root: Path, tmp_path: Path, phase_args, capsys):
    logs = tmp_path / "logs"
    config = _sweep_config(tmp_path, trials=4, pruner="median")
    assert main(_args(phase_args, synth_root, logs, config)) == 0
    folder = logs / "sweeps" / "t"
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{logs / 'sweeps' / 't.db'}")
    assert len(study.trials) == 4
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    for t in study.trials:  # every trial is an ordinary run of the phase
        run = Path(t.user_attrs["run"])
        assert (run / "checkpoints" / "best.ckpt").is_file() or t.state.name == "PRUNED"
        assert list(run.glob("version_*/events.out.tfevents.*"))
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best == study.best_trial.params
    assert "optimistic" in (folder / "best.yaml").read_text()
    table = (folder / "trials.md").read_text()
    assert table.count("\n| ") == 4 + 1  # a row per trial, after the header
    assert (folder / "history.png").stat().st_size > 1000
    # the overlay is a config the phase takes
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", *phase_args("phase1", synth_root, logs), "-c", str(folder / "best.yaml"),
              "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train_preset"] == best["data.train_preset"]
    # running it again adds to the same study
    assert main(_args(phase_args, synth_root, logs, config, "--sweep.trials", "2")) == 0
    assert len(optuna.load_study(study_name="t", storage=study._storage).trials) == 6


@pytest.mark.parametrize("space, storage, expected", [
    ({"data.rot": {"choice": ["a"]}}, None, "unrecognized arguments: --data.rot"),
    ({"model.optimizer.init_args.lr": {"float": [1.0e-2, 1.0e-3]}}, None, "is empty"),
    ({"data.train_preset": {"choice": ["none", "flip"]}}, None, "Got value: flip"),
    (None, "postgresql://u:secret@127.0.0.1:1/none", "cannot open the study's storage"),
])
def test_a_bad_space_or_storage_is_one_line_before_any_trial(synth_root: Path, tmp_path: Path,
                                                             phase_args, capsys, space, storage,
                                                             expected):
    logs = tmp_path / "logs"
    config = _sweep_config(tmp_path, space, trials=1, **({"storage": storage} if storage else {}))
    assert main(_args(phase_args, synth_root, logs, config)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and len(err) == 1, err
    assert "secret" not in err[-1]  # a password is never printed
    assert not list(logs.rglob("trial_*"))
