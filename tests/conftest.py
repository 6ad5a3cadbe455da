"""Shared fixtures: one tiny synthetic dataset per session, writable copies of it, the
arguments that shrink any phase config to seconds on a CPU (the 1x1-conv stand-in network of
``tests/stand_in.py``, ``--model.network.arch tiny``, among them), and one trained phase-1
checkpoint for the tests that only need some checkpoint.

Callbacks, the CLI and the reliability machinery do not depend on which network trains: their
tests pass the stand-in visibly (``phase_args``, ``network=TINY``); the real networks are
built wherever a test does not (``test_model.py``, ``test_networks.py``, ``test_ddp.py``, the
end-to-end phase chain)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from desertmind.data.synth import generate
from tests.stand_in import TINY

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean() -> Iterator[None]:
    """Tests write under their temporary folders only: a command run without a logs folder
    (Lightning's default is the working directory) must not leave files in the checkout."""
    before = set(REPO.iterdir())
    yield
    added = sorted(p.name for p in set(REPO.iterdir()) - before if p.name != ".pytest_cache")
    assert not added, f"the tests wrote into the repository: {added}"


@pytest.fixture(scope="session")
def tiny_spec() -> dict:
    """The tiny dataset's generator arguments (8 train, 4 val, 80x48, seed 3)."""
    return {"n_train": 8, "n_val": 4, "height": 48, "width": 80, "seed": 3}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory, tiny_spec: dict) -> Path:
    """A read-only-by-convention tiny dataset in the Duality format."""
    return generate(tmp_path_factory.mktemp("synth") / "data", **tiny_spec)


@pytest.fixture
def data_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(synth_root, dst, ignore=shutil.ignore_patterns("desertmind_stats.json"))
    return dst


@pytest.fixture(scope="session")
def configs() -> Path:
    """The repository's configs/ folder."""
    return CONFIG_DIR


@pytest.fixture(scope="session")
def phase_args() -> Callable[..., list[str]]:
    """``phase_args(phase, root, logs, arch="tiny")``: ``-c <phase>.yaml -c demo.yaml`` plus
    overrides that shrink the phase to two 32x48 batches of one epoch on the CPU with the
    stand-in network (``arch=None``: the configs' own, real network), logging under
    ``logs``."""

    def args(phase: str, root: Path, logs: Path, arch: str | None = TINY.arch) -> list[str]:
        return ["-c", str(CONFIG_DIR / f"{phase}.yaml"), "-c", str(CONFIG_DIR / "demo.yaml"),
                *(["--model.network.arch", arch] if arch else []),
                "--data.root", str(root), "--data.image_size", "[32, 48]",
                "--data.batch_size", "2", "--data.crop_size", "32",
                "--trainer.logger.init_args.save_dir", str(logs), "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
                "--trainer.num_sanity_val_steps", "0", "--trainer.enable_model_summary", "false",
                "--trainer.accelerator", "cpu", "--data.stats_path", str(logs / "stats.json")]

    return args


@pytest.fixture(scope="session")
def phase1_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
               phase_args) -> tuple[Path, Path, list[str]]:
    """One tiny phase-1 run for every test that needs some trained checkpoint: its
    ``best.ckpt``, its logs folder (evaluations of it log there too: copy it to change it)
    and the arguments that trained it."""
    from desertmind.cli.main import main

    logs = tmp_path_factory.mktemp("phase1") / "logs"
    args = [*phase_args("phase1", synth_root, logs), "--trainer.enable_progress_bar", "false"]
    assert main(["fit", *args]) == 0
    return logs / "phase1" / "checkpoints" / "best.ckpt", logs, args


@pytest.fixture(scope="session")
def fit_once(phase_args) -> Callable[..., tuple[float, dict]]:
    """``fit_once(root, logs, *extra)``: two deterministic epochs of phase 1 with augmentation
    and 2 DataLoader workers; returns the best val mIoU and the last checkpoint's weights."""
    from desertmind.cli.main import main
    from desertmind.models.trained import read_checkpoint
    from desertmind.reports.report import load_report

    def fit(root: Path, logs: Path, *extra: str) -> tuple[float, dict]:
        args = ["fit", *phase_args("phase1", root, logs),
                "--trainer.max_epochs", "2", "--trainer.deterministic", "true",
                "--data.train_preset", "flip_color", "--data.num_workers", "2",
                "--trainer.enable_progress_bar", "false", *extra]
        assert main(args) == 0
        state = read_checkpoint(logs / "phase1" / "checkpoints" / "last.ckpt")
        (run,), _ = load_report(logs)
        return run.best_miou, state["state_dict"]

    return fit


@pytest.fixture(scope="session")
def part_keys() -> Callable[[str], dict[str, set[str]]]:
    """``part_keys(arch="tiny", backbone=...)``: the checkpoint keys (``model.*``) of the
    network's encoder (parameters and BatchNorm statistics) and of its head, through the
    network contract, so tests never spell an architecture's module names."""
    from desertmind.models.registry import Network, build

    def keys(arch: str = TINY.arch, backbone: str = "mobilenet_v3_large") -> dict[str, set[str]]:
        net = build(Network(arch, backbone))
        encoder = {f"model.{n}" for n, t in net.state_dict(keep_vars=True).items()
                   if any(t is e for e in net.encoder.state_dict(keep_vars=True).values())}
        head_ids = {id(p) for p in net.head_parameters()}
        head = {f"model.{n}" for n, p in net.named_parameters() if id(p) in head_ids}
        return {"encoder": encoder, "head": head}

    return keys
