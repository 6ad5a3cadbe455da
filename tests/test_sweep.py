"""desertmind sweep: Optuna trials of an ordinary phase (SQLite here; PostgreSQL in the slow
tier), checked before the first trial, resumable, summarised as a table, plots and best.yaml."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.mark.slow  # ten tiny fits
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
    ({"data.rot": {"choice": ["a"]}}, None, "arguments: --data.rot"),
    ({"model.optimizer.init_args.lr": {"float": [1.0e-2, 1.0e-3]}}, None, "is empty"),
    ({"data.train_preset": {"choice": ["none", "flip"]}}, None, "flip_color"),  # the choices
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


def _initdb() -> str | None:
    import glob
    import shutil

    return shutil.which("initdb") or next(iter(sorted(glob.glob(
        "/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 for this module: initdb in a temporary
    folder owned by the unprivileged ``postgres`` user (PostgreSQL refuses root), stopped and
    removed at the end. ``.ci/run`` installs Debian's postgresql package when it is missing."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    bin_dir = Path(initdb).resolve().parent  # pg_ctl and createdb beside the real initdb
    # not under pytest's folder, which only root may enter
    folder = Path(tempfile.mkdtemp(prefix="desertmind-postgres-"))
    data = folder / "data"
    as_user = [] if os.geteuid() else ["runuser", "-u", "postgres", "--"]
    if as_user:
        shutil.chown(folder, "postgres")
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(folder / "log"), "-o", f"-h 127.0.0.1 -p {port} -k {folder}",
                    "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "sweeps"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _worker(phase_args, synth_root: Path, logs: Path, config: Path, *extra: str):
    import json
    import subprocess
    import sys

    from tests.stand_in import SUBPROCESS_ENV

    # a class of tests.stand_in in the config imports it: the stand-in network is registered
    pause = {"class_path": "tests.stand_in.Pause", "init_args": {"seconds": 0.0}}
    exe = str(Path(sys.executable).with_name("desertmind"))
    return subprocess.Popen([exe, *_args(phase_args, synth_root, logs, config)[0:], *extra,
                             f"--trainer.callbacks+={json.dumps(pause)}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=SUBPROCESS_ENV)


@pytest.mark.slow  # a PostgreSQL server and four worker processes
def test_workers_share_a_postgresql_study_and_a_killed_workers_trial_is_retried(
        postgres: str, synth_root: Path, tmp_path: Path, phase_args):
    from tests.stand_in import kill_at

    logs = tmp_path / "logs"
    config = _sweep_config(tmp_path, trials=2, pruner="none", storage=postgres, heartbeat=1)
    workers = [_worker(phase_args, synth_root, logs, config) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="t", storage=postgres)
    numbers = [t.number for t in study.trials]
    runs = [t.user_attrs["run"] for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3] and len(set(runs)) == 4  # none lost or twice
    assert {t.state.name for t in study.trials} == {"COMPLETE"}

    killed = _worker(phase_args, synth_root, logs, config, "--sweep.trials", "1",
                     *kill_at(at_step=1))
    killed.communicate(timeout=600)
    assert killed.returncode == -9
    running = [t for t in optuna.load_study(study_name="t", storage=postgres).trials
               if t.state.name == "RUNNING"]
    assert len(running) == 1  # left running by the dead worker, until its heartbeat is missed
    import time

    time.sleep(4)  # three missed heartbeats (heartbeat: 1 s)
    again = _worker(phase_args, synth_root, logs, config, "--sweep.trials", "1")
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out
    trials = optuna.load_study(study_name="t", storage=postgres).trials
    dead = next(t for t in trials if t.number == running[0].number)
    assert dead.state.name == "FAIL"
    from optuna.storages import RetryFailedTrialCallback

    retried = [t for t in trials if RetryFailedTrialCallback.retried_trial_number(t) == dead.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == dead.params


@pytest.mark.slow  # six tiny fits
def test_confirmation_trains_the_best_trials_and_the_baseline_over_seeds(
        synth_root: Path, tmp_path: Path, phase_args):
    """--sweep.confirm: the best trial and the phase as it is, trained again with each seed,
    judged over seeds (crossed); best.yaml holds a trial only when its interval is above 0."""
    logs = tmp_path / "logs"
    config = _sweep_config(tmp_path, trials=2, pruner="none", confirm=1, seeds=[1, 2])
    assert main(_args(phase_args, synth_root, logs, config)) == 0
    folder = logs / "sweeps" / "t"
    table = (folder / "confirm.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| trial "))
    assert row.count(", ") >= 1 and ("significant" in row or "no significant change" in row)
    for who in ("baseline", "trial_"):  # each trained with both seeds, as ordinary runs
        runs = [p for p in (folder / "confirm").glob(f"{who}*/random_seed_*")]
        assert len(runs) == 2, runs
    best = (folder / "best.yaml").read_text()
    verdict = row.rsplit("|", 2)[-2].strip()
    if verdict == "significant gain":
        assert "confirmed over seeds [1, 2]" in best
    else:
        assert "no trial confirmed better" in best
    # the confirmation alone, on the study as it is: trials 0
    assert main(_args(phase_args, synth_root, logs, config, "--sweep.trials", "0")) == 0
    assert len(optuna.load_study(study_name="t",
                                 storage=f"sqlite:///{logs / 'sweeps' / 't.db'}").trials) == 2
