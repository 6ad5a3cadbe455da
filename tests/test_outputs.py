"""Outputs that cannot be written: a read-only folder and a full disk, made for real with tmpfs
mounts (root only: CI runs as root), give one line naming the file, and lose nothing; a copied
logs folder is a working copy."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from desertmind.cli.main import main
from desertmind.models.trained import read_checkpoint

CPU = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
       "--data.num_workers", "0"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(name, size="1m", read_only=False)``: a folder on its own small file system; a
    read-only one gets ``files`` copied in before it is remounted read-only."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "1m", read_only: bool = False,
              files: dict[str, bytes] | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        for rel, data in (files or {}).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def trained(phase1_run) -> tuple[Path, Path]:
    """The shared phase-1 checkpoint and its logs folder."""
    ckpt, logs, _ = phase1_run
    return ckpt, logs


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


def test_export_into_a_read_only_folder_is_one_line(trained, tmpfs, capsys):
    ckpt, _ = trained
    folder = tmpfs("ro", read_only=True, files={"old.onnx": b"previous"})
    assert main(["export", "--ckpt", str(ckpt), "--out", str(folder / "old.onnx"),
                 "--height", "32", "--width", "48"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"desertmind export: error: {folder / 'old.onnx'}: cannot write")
    assert "Read-only file system" in line
    assert (folder / "old.onnx").read_bytes() == b"previous"


def test_predict_onto_a_full_disk_is_one_line_and_keeps_the_previous_set(
        trained, synth_root, tmpfs, capsys):
    ckpt, _ = trained
    old = {f"{d}/synth_val_00000.png": b"old" for d in ("raw", "color", "overlay")}
    out = tmpfs("full", size="64k", files=old)
    assert main(["predict", "--ckpt_path", str(ckpt), "--data.predict_dir",
                 str(synth_root / "val"), "--data.image_size", "null", "--out", str(out),
                 "--overwrite", *CPU]) == 2  # 4 full-size predictions do not fit in 64k
    line = _one_error_line(capsys)
    assert "cannot write (No space left on device)" in line and "MiB free" in line
    assert {p.relative_to(out).as_posix(): p.read_bytes()
            for p in out.rglob("*.png")} == old
    assert not any(out.glob(".predicting-*"))  # the staging folder went with the error


def test_a_read_only_cache_folder_stops_the_fit_naming_it(synth_root, tmp_path, tmpfs, capsys,
                                                          phase_args):
    # large enough for the free-space check (a tmpfs reserves nothing), but read-only
    cache = tmpfs("cache", size="400m", read_only=True, files={"other/keep": b"x"})
    assert main(["fit", *phase_args("phase1", synth_root, tmp_path / "logs"),
                 "--data.cache", "disk", "--data.cache_dir", str(cache)]) == 2
    line = _one_error_line(capsys)
    assert f"{cache}: cannot write the decoded cache" in line
    assert "Read-only file system" in line and "--data.cache none" in line


def test_a_copied_logs_folder_is_scored_reported_and_resumed_on_its_own(trained, synth_root,
                                                                        tmp_path, capsys,
                                                                        phase_args):
    ckpt, logs = trained
    copy = tmp_path / "copied-logs"
    shutil.copytree(logs, copy)
    original = {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()}
    assert main(["scores", "--logs", str(copy)]) == 0
    (row,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith("phase1 ")]
    assert row.split()[2] == "val/mIoU"  # what the phase monitored, beside its score
    assert main(["report", "--logs", str(copy), "--out", str(tmp_path / "reports")]) == 0
    # resume the copy: it trains on in the copy, and the original is not touched
    best_before = _best_score(logs / "phase1" / "checkpoints" / "last.ckpt")
    assert main(["fit", *phase_args("phase1", synth_root, copy), "--trainer.max_epochs", "3",
                 "--trainer.enable_progress_bar", "false", "--ckpt_path", "last"]) == 0
    folder = copy / "phase1" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    last = read_checkpoint(folder / "last.ckpt")
    assert last["epoch"] == 2
    # the best score so far came along: a worse epoch cannot replace best.ckpt
    assert _best_score(folder / "last.ckpt") >= best_before
    assert {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()} == original


def _best_score(ckpt: Path) -> float:
    (score,) = [float(s["best_model_score"]) for k, s in read_checkpoint(ckpt)["callbacks"].items()
                if k.startswith("PhaseCheckpoint") and s.get("best_model_score") is not None]
    return score


def test_a_fit_onto_a_full_disk_names_the_checkpoint_and_the_space(synth_root, tmpfs, capsys,
                                                                   phase_args):
    logs = tmpfs("logs", size="8m")  # room for the logs, not for a 44 MB real checkpoint
    assert main(["fit", *phase_args("phase1", synth_root, logs, arch=None),
                 "--trainer.enable_progress_bar", "false"]) == 2
    line = _one_error_line(capsys)
    assert "cannot write the checkpoint (the disk is full" in line, line
    assert "MiB free on its disk" in line and not list(logs.rglob("*.ckpt"))
    assert "--ckpt_path last" not in line and "run the phase again" in line  # no last.ckpt


def test_a_full_disk_that_breaks_the_loggers_finalize_too_is_still_the_checkpoints_line(
        synth_root, tmpfs, capsys, phase_args, monkeypatch):
    """Lightning's teardown finalises TensorBoard while the checkpoint's error is raised; when
    that fails too (the same full disk), the first error is the one line, not a chain."""
    import errno

    from lightning.pytorch.loggers import TensorBoardLogger

    def full(self, status):
        raise OSError(errno.ENOSPC, "No space left on device", str(logs / "events.out"))

    monkeypatch.setattr(TensorBoardLogger, "finalize", full)
    logs = tmpfs("logs", size="256k")
    assert main(["fit", *phase_args("phase1", synth_root, logs, arch=None),
                 "--trainer.enable_progress_bar", "false"]) == 2
    line = _one_error_line(capsys)
    assert "best.ckpt: cannot write the checkpoint (the disk is full" in line, line


def test_outputs_outside_the_atomic_writer_are_one_line(trained, synth_root, tmp_path, tmpfs,
                                                       capsys, phase_args):
    ckpt, logs = trained
    folder = tmpfs("ro", read_only=True)
    cases = {
        "predict": ["predict", "--ckpt_path", str(ckpt), "--data.predict_dir",
                    str(synth_root / "val"), "--out", str(folder / "pred"), *CPU],
        "report": ["report", "--logs", str(logs), "--out", str(folder / "reports")],
        "fit": ["fit", *phase_args("phase1", synth_root, folder / "logs"),
                "--trainer.enable_progress_bar", "false"],
    }
    for name, args in cases.items():
        assert main(args) == 2, name
        line = _one_error_line(capsys)
        assert str(folder) in line and "Read-only file system" in line, (name, line)
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    assert main(["report", "--logs", str(logs), "--out", str(a_file)]) == 2
    assert f"--out {a_file}: is a file" in _one_error_line(capsys)
    assert a_file.read_text() == "keep"
