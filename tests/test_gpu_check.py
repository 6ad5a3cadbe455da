"""The prepared GPU check (``make gpu-check``) cannot rot between GPU loans: its dry run goes
through every section on the CPU, and a section past its time limit is stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402 - a script of benchmarks/, not a package module


@pytest.mark.slow
def test_the_dry_run_goes_through_every_section(tmp_path: Path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry-run",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # stdout is the JSON alone
    assert report == json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["ok"] is True
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    chain = sections["phase_chain"]
    assert list(chain["phases"]) == list(gpu_check.PHASES)
    assert all(p["best_ckpt"] and p["finite"] for p in chain["phases"].values())
    assert chain["phase1_16_mixed"] is None  # a GradScaler needs CUDA
    assert chain["predicted_images"] == 4 and 0 <= chain["test_mIoU_phase3"] <= 1
    (row,) = sections["train_throughput"]["networks"].values()
    assert row["plain_loop_images_per_s"] > 0 and row["lightning_cache_images_per_s"] > 0
    assert row["model_only_peak_gib"] is None  # GPU memory
    latency = sections["eval_and_latency"]["latency_ms_batch1"]
    assert latency["eager_fp32"] > 0 and latency["onnxruntime_cpu"] > 0
    assert latency["bf16_autocast"] is None and latency["compile_channels_last"] is None
    assert sections["determinism"]["identical_weights"] is True
    assert "needs 2" in sections["ddp"]["skipped"]
    found = sections["foundation"]
    assert found["fit"] == {"best_ckpt": True, "finite": True}
    assert {k: v["grad_checkpointing"] for k, v in found["grad_checkpointing"].items()} == {
        "off": False, "on": True}
    pre = sections["pretrain"]
    assert pre["method"] == "dino" and pre["adapters"] == 16 and pre["ok"] is True
    page = (tmp_path / "out" / "gpu_check.md").read_text()
    assert all(f"| {name} | True |" in page for name in gpu_check.SECTIONS)


@pytest.mark.slow  # subprocesses
def test_an_isolated_section_answers_in_json_and_one_past_its_limit_is_stopped():
    assert gpu_check.run_isolated("ddp", True, 300)["ok"] is True  # through a child process
    stopped = gpu_check.run_isolated("ddp", True, 0.2)  # not even python starts in 0.2 s
    assert stopped["ok"] is False and "stopped at its 0 s limit" in stopped["error"]
