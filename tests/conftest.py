"""Shared fixtures: one tiny synthetic dataset per session, and writable copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from desertmind.synth import generate

TINY = {"n_train": 8, "n_val": 4, "height": 48, "width": 80, "seed": 3}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention tiny dataset in the Duality format (8 train, 4 val, 80x48)."""
    return generate(tmp_path_factory.mktemp("synth") / "data", **TINY)


@pytest.fixture
def data_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(synth_root, dst, ignore=shutil.ignore_patterns("desertmind_stats.json"))
    return dst
