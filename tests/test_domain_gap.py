"""The domain benchmark keeps each seed's confusion matrices, so a longer run costs only the
seeds it has not run yet, and it refuses to mix seeds run with other settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "domain_gap.py"
TINY = ["--n-train", "8", "--n-val", "4", "--n-shifted", "4", "--epochs", "1",
        "--height", "32", "--width", "48"]


def _run(folder: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, *options],
                          capture_output=True, text=True, timeout=600, cwd=folder)


def _tables(output: dict) -> dict:
    return {**output["development"], **output["sealed"]}


@pytest.mark.slow  # subprocesses that train
def test_kept_seeds_are_read_back_and_other_settings_are_refused(tmp_path: Path):
    keep = tmp_path / "kept"
    first = _run(tmp_path, "--seeds", "0", "--keep", str(keep))
    assert first.returncode == 0, first.stderr[-3000:]
    assert (keep / "seed0.npz").exists()

    more = _run(tmp_path, "--seeds", "0", "1", "--keep", str(keep))
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"seed 0 read from {keep / 'seed0.npz'}" in more.stderr
    assert "seed 1 done" in more.stderr and (keep / "seed1.npz").exists()
    one, two = (_tables(json.loads(run.stdout)) for run in (first, more))
    # the overlay is confirmed once on the sealed desert, against the baseline only
    assert set(json.loads(first.stdout)["sealed"]["test_sealed"]) == {"baseline", "overlay"}
    assert set(json.loads(first.stdout)["development"]) == {"test_shifted", "test_dusk"}
    for desert, arms in one.items():  # seed 0's figures come back as they were
        for tool, row in arms.items():
            assert two[desert][tool]["val_mIoU"][0] == row["val_mIoU"][0]
            assert two[desert][tool]["shifted_mIoU"][0] == row["shifted_mIoU"][0]
            assert len(two[desert][tool]["shifted_mIoU"]) == 2

    other = _run(tmp_path, "--seeds", "0", "--keep", str(keep), "--batch", "2")
    assert other.returncode != 0
    assert f"{keep / 'seed0.npz'}: kept with other settings (batch: 4 there, 2 now)" in \
        other.stderr
