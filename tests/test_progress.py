"""Progress where the output is a file: a line per epoch, written while the run goes on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stand_in import SUBPROCESS_ENV

EXE = str(Path(sys.executable).with_name("desertmind"))


@pytest.mark.slow  # a subprocess that trains for seconds on purpose
def test_a_fit_into_a_file_writes_a_line_per_epoch_while_it_runs(synth_root: Path,
                                                                  tmp_path: Path, phase_args):
    log = tmp_path / "f.log"
    pause = {"class_path": "tests.stand_in.Pause", "init_args": {"seconds": 1.5}}
    args = [*phase_args("phase1", synth_root, tmp_path / "logs"), "--trainer.max_epochs", "4",
            "--trainer.enable_progress_bar", "true",
            f"--trainer.callbacks+={json.dumps(pause)}"]
    with log.open("w") as out:
        run = subprocess.Popen([EXE, "fit", *args], stdout=out, stderr=subprocess.STDOUT,
                               env=SUBPROCESS_ENV, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            seen = ""
            while run.poll() is None and time.monotonic() < deadline:
                seen = log.read_text()
                if "epoch 2/4 · train loss" in seen:
                    break
                time.sleep(0.2)
            assert run.poll() is None, f"the run ended before a line was seen:\n{seen[-2000:]}"
            lines = [line for line in seen.splitlines() if line.startswith("epoch ")]
            assert lines[0].startswith("epoch 1/4 · train loss"), seen[-2000:]
            assert "val/mIoU" in lines[0] and "(best " in lines[0] and "ETA" in lines[0]
            assert "\r" not in seen  # no bar redrawn in the file
        finally:
            run.kill()
            run.wait()
