"""Inputs a careful new user broke (issue 11): each gets a message that names the file or value
and says what to do, and nothing is lost or mixed up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import yaml

from desertmind.cli.main import main
from desertmind.data.imageio import read_image, read_mask, write_png
from desertmind.data.synth import generate
from tests.stand_in import SUBPROCESS_ENV, TINY, kill_at

EXE = str(Path(sys.executable).with_name("desertmind"))


def test_training_on_masks_without_one_known_value_does_not_stop(data_copy: Path,
                                                                   tmp_path: Path, phase_args):
    for path in (data_copy / "train" / "Segmentation").glob("*.png"):
        write_png(path, np.full_like(read_mask(path), 4242))  # nothing labelled at all
    assert main(["fit", *phase_args("phase1", data_copy, tmp_path)]) == 0


def test_mixed_image_sizes_name_the_files_and_check_data_notes_them(data_copy: Path,
                                                                    tmp_path: Path, capsys,
                                                                    phase_args):
    small = generate(tmp_path / "small", n_train=1, n_val=0, height=40, width=64, seed=9)
    for sub in ("Color_Images", "Segmentation"):
        src = small / "train" / sub / "synth_train_00000.png"
        (data_copy / "train" / sub / "odd_size.png").write_bytes(src.read_bytes())
    # one batch of all 9 training images: the odd one is in it whatever the shuffle
    args = ["fit", *phase_args("phase1", data_copy, tmp_path), "--data.image_size", "null",
            "--data.batch_size", "9", "--data.eval_batch_size", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "odd_size.png (64x40)" in err and "data.image_size" in err
    assert main(["check-data", str(data_copy), "--workers", "1"]) == 0
    assert "mixed image sizes" in capsys.readouterr().out
    assert main(["check-data", str(data_copy), "--workers", "1", "--strict"]) == 1


def test_synth_overwrite_replaces_instead_of_adding(tmp_path: Path):
    generate(tmp_path / "d", n_train=4, n_val=1, height=32, width=48)
    generate(tmp_path / "d", n_train=2, n_val=1, height=40, width=64, overwrite=True)
    images = list((tmp_path / "d" / "train" / "Color_Images").glob("*.png"))
    assert len(images) == 2 and {read_image(p).shape for p in images} == {(40, 64, 3)}


def test_a_broken_link_and_a_root_that_is_a_file_are_named(data_copy: Path, tmp_path: Path,
                                                            capsys, phase_args):
    link = data_copy / "val" / "Color_Images" / "gone.png"
    os.symlink(tmp_path / "nowhere.png", link)
    assert main(["check-data", str(data_copy), "--workers", "1"]) == 2
    assert f"{link}: " in capsys.readouterr().err
    assert main(["fit", *phase_args("phase1", data_copy, tmp_path)]) == 2
    assert "broken symbolic link" in capsys.readouterr().err
    afile = tmp_path / "root.txt"
    afile.write_text("not a dataset")
    assert main(["fit", *phase_args("phase1", afile, tmp_path)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_predict_never_mixes_old_and_new_results(synth_root: Path, tmp_path: Path, capsys,
                                                 phase1_run):
    best = str(phase1_run[0])
    out = tmp_path / "out"
    stale = out / "raw" / "an_image_from_before.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    predict = ["predict", "--ckpt_path", best, "--data.predict_dir", str(synth_root / "val"),
               "--out", str(out), "--trainer.enable_progress_bar", "false"]
    assert main(predict) == 2
    assert "--overwrite" in capsys.readouterr().err and stale.exists()
    assert main([*predict, "--overwrite"]) == 0
    assert not stale.exists() and len(list((out / "raw").glob("*.png"))) == 4
    # a user's own file in an output folder is never deleted, --overwrite or not
    other = tmp_path / "other"
    raw_photo = other / "raw" / "IMG_0001.CR2"
    raw_photo.parent.mkdir(parents=True)
    raw_photo.write_bytes(b"a camera's raw file")
    for extra in ([], ["--overwrite"]):
        assert main([*predict[:-4], "--out", str(other), *predict[-2:], *extra]) == 2
        assert "IMG_0001.CR2" in capsys.readouterr().err
        assert raw_photo.read_bytes() == b"a camera's raw file"
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for command in (["predict", "--data.predict_dir", str(synth_root / "val")], ["test"]):
        args = [command[0], "--ckpt_path", best, *command[1:], "--out", str(afile)]
        if command[0] == "test":
            args += ["--data.test_dir", "val"]
        assert main(args) == 2
        assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_predict_leaves_the_previous_set_whole(synth_root: Path, tmp_path: Path,
                                                       phase_args):
    logs = tmp_path / "logs"  # the real network: the killed predict runs in its own process
    assert main(["fit", *phase_args("phase1", synth_root, logs, arch=None)]) == 0
    out = tmp_path / "out"
    predict = ["predict", "--ckpt_path", str(logs / "phase1" / "checkpoints" / "best.ckpt"),
               "--out", str(out), "--trainer.enable_progress_bar", "false",
               "--data.eval_batch_size", "1", "--data.num_workers", "0"]
    assert main([*predict, "--data.predict_dir", str(synth_root / "val")]) == 0

    def sets() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for d in ("raw", "color", "overlay")
                for p in (out / d).glob("*.png")}

    before = sets()
    assert len(before) == 12
    many = generate(tmp_path / "many", n_train=0, n_val=40, height=48, width=80, seed=5)
    # kill -9 after three images of the new set are written, before the fourth
    proc = subprocess.run([EXE, *predict, "--data.predict_dir", str(many / "val"),
                           "--overwrite", *kill_at(at_predict_batch=3)], env=SUBPROCESS_ENV,
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    staged = next(out.glob(".predicting-*"))
    assert len(list(staged.rglob("overlay/*.png"))) == 3  # a new set was begun
    assert sets() == before  # not one new image among the old ones, none of them lost
    assert len(list(out.glob(".predicting-*"))) == 1

    assert main([*predict, "--data.predict_dir", str(many / "val"), "--overwrite"]) == 0
    assert len(sets()) == 3 * 40
    assert not any(out.glob(".predicting-*"))  # the killed run's staging folder is cleared


def test_a_corrupt_checkpoint_is_named_in_one_line_never_with_torchs_advice(
        synth_root: Path, tmp_path: Path, capsys, phase_args):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage, not a checkpoint")
    assert main(["fit", *phase_args("phase1", synth_root, tmp_path / "a"),
                 "--ckpt_path", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not a checkpoint (" in err and "weights_only=False" not in err
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")  # torch's own words were "cannot read checkpoint (101)"
    assert main(["validate", "--ckpt_path", str(text)]) == 2
    assert f"{text}: not a checkpoint (torch.save writes a zip archive" in capsys.readouterr().err
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", synth_root, logs)]) == 0
    broken = logs / "broken" / "checkpoints" / "best.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"garbage")
    assert main(["scores", "--logs", str(logs)]) == 1  # the readable phase is still listed
    out, err = capsys.readouterr()
    assert "phase1" in out and "broken" in out and "unreadable" in out
    assert f"{broken}: not a checkpoint (" in err


def test_make_keeps_a_failed_phases_checkpoints_and_runs_it_again(tmp_path: Path):
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    logs = tmp_path / "logs"
    best = logs / "phase1" / "checkpoints" / "best.ckpt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"the failed run's best model so far")

    installed = tmp_path / "installed"  # stands in for the venv's stamp: nothing installs
    installed.touch()

    def make(dm: str) -> subprocess.CompletedProcess:  # DM stands in for desertmind
        return subprocess.run(["make", "-C", str(repo), "phase1", f"DM={dm}", f"LOGS={logs}",
                               f"STAMP={installed}"], capture_output=True, text=True)

    assert make("false").returncode != 0
    assert best.read_bytes() == b"the failed run's best model so far"  # not deleted
    assert not (logs / "phase1" / ".done").exists()
    assert make("true").returncode == 0 and (logs / "phase1" / ".done").exists()
    assert "Nothing to be done" in make("false").stdout  # finished: skipped


def test_after_a_resume_best_ckpt_is_never_replaced_by_a_worse_model(synth_root: Path,
                                                                     tmp_path: Path,
                                                                     phase_args):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from desertmind.models.trained import read_checkpoint

    logs = tmp_path / "logs"
    folder = logs / "phase1" / "checkpoints"

    def fit(epochs: int, *extra: str) -> None:
        assert main(["fit", *phase_args("phase1", synth_root, logs),
                     "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
                     "--last_checkpoint.every_n_train_steps", "2", *extra]) == 0  # on epoch ends

    def best_score(name: str) -> float:
        ckpt = read_checkpoint(folder / f"{name}.ckpt")
        return float(next(v["best_model_score"] for k, v in ckpt["callbacks"].items()
                          if k.startswith("PhaseCheckpoint")))

    fit(3)
    # last.ckpt records the best score of its own validation, not of the one before
    assert best_score("last") == best_score("best")
    fit(6, "--ckpt_path", "last")
    scores = []
    for run in sorted((logs / "phase1").glob("version_*")):
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        scores += [e.value for e in events.Scalars("val/mIoU")]
    assert len(scores) == 6
    assert best_score("best") == pytest.approx(max(scores))  # the best of both runs, kept


def test_a_corrupt_downloaded_weights_file_is_named_with_what_to_do(tmp_path: Path,
                                                                    monkeypatch):
    import torch
    from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights

    from desertmind.errors import WeightsUnavailableError
    from desertmind.models import build_network

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = DeepLabV3_MobileNet_V3_Large_Weights.DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(WeightsUnavailableError) as e:
        build_network("deeplabv3", "mobilenet_v3_large", weights="coco")
    assert str(cached) in str(e.value) and "Delete it" in str(e.value)


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    """What a command prints to a terminal (a pseudo-terminal): bars are drawn only there."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # 24 rows x 120 columns: a new pseudo-terminal is 0 wide, and tqdm draws nothing in that
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([EXE, *args], stdin=follower, stdout=follower, stderr=follower,
                            cwd=cwd)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the command ended and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # a subprocess on a pseudo-terminal, with the real network
def test_long_work_shows_progress_on_a_terminal(synth_root: Path, tmp_path: Path, phase_args,
                                                capsys):
    made = _on_a_terminal(["synth", str(tmp_path / "d"), "--n-train", "3", "--n-val", "1",
                           "--height", "32", "--width", "48"], tmp_path)
    assert "writing train" in made and "img" in made
    checked = _on_a_terminal(["check-data", str(synth_root), "--workers", "1",
                              "--stats", str(tmp_path / "stats.json")], tmp_path)
    assert "checking train" in checked
    assert main(["fit", *phase_args("phase1", synth_root, tmp_path / "logs")]) == 0
    reported = _on_a_terminal(["report", "--logs", str(tmp_path / "logs"), "--out",
                               str(tmp_path / "reports")], tmp_path)
    assert "reading runs" in reported
    # and nothing of it where the output is a file or a pipe
    capsys.readouterr()
    assert main(["report", "--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "reading runs" not in captured.out + captured.err


def test_version_answers(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"desertmind {version('desertmind')}"


def test_long_work_shows_a_progress_bar_on_a_terminal(tmp_path: Path, monkeypatch, capsys):
    import sys

    root = generate(tmp_path / "d", n_train=3, n_val=0, height=32, width=48)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["check-data", str(root), "--splits", "train", "--workers", "1"]) == 0
    assert "checking train" in capsys.readouterr().err


def test_a_finished_phase_is_not_overwritten_and_a_busy_one_is_locked(synth_root: Path,
                                                                      tmp_path: Path, capsys,
                                                                      phase_args):
    from desertmind.models.trained import read_checkpoint

    logs = tmp_path / "logs"
    args = ["fit", *phase_args("phase1", synth_root, logs)]
    assert main(args) == 0
    folder = logs / "phase1" / "checkpoints"
    before = read_checkpoint(folder / "best.ckpt")["state_dict"]
    assert main(args) == 2  # a second run into the finished phase
    err = capsys.readouterr().err
    assert "best.ckpt" in err and "--overwrite" in err and "--ckpt_path last" in err
    after = read_checkpoint(folder / "best.ckpt")["state_dict"]
    assert all((before[k] == after[k]).all() for k in before)  # untouched
    assert not (folder / ".lock").exists()  # released
    # a run in progress in another process holds the folder's lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, filelock; lock = filelock.FileLock("
         "sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)",
         str(folder / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([*args, "--overwrite"]) == 2
        assert "being written by another process" in capsys.readouterr().err
        assert read_checkpoint(folder / "best.ckpt")["state_dict"].keys() == before.keys()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock, no stale lock survives it
        holder.wait()
    assert main([*args, "--overwrite"]) == 0
    assert not (folder / ".lock").exists()


def test_a_plain_python_fit_gets_the_same_folder_protection(synth_root: Path, tmp_path: Path):
    """PhaseCheckpoint owns its folder: no CLI needed to refuse an earlier run's files."""
    import lightning as L

    from desertmind.data.datamodule import OffroadDataModule
    from desertmind.errors import ConfigError
    from desertmind.training.checkpoints import PhaseCheckpoint
    from desertmind.training.module import SegmentationModule

    folder = tmp_path / "phase" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "best.ckpt").write_bytes(b"an earlier run's")

    def fit(overwrite: bool) -> None:
        trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                            num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu",
                            callbacks=[PhaseCheckpoint(dirpath=str(folder), filename="best",
                                                       monitor="val/mIoU", mode="max",
                                                       overwrite=overwrite)])
        dm = OffroadDataModule(str(synth_root), batch_size=2, num_workers=0,
                               image_size=(32, 48))
        trainer.fit(SegmentationModule(TINY), dm)

    with pytest.raises(ConfigError, match="already holds best.ckpt"):
        fit(overwrite=False)
    assert (folder / "best.ckpt").read_bytes() == b"an earlier run's"
    assert not (folder / ".lock").exists()  # released on the exception
    fit(overwrite=True)
    assert (folder / "best.ckpt").read_bytes() != b"an earlier run's"


def test_check_data_fails_a_split_without_one_labelled_pixel(data_copy: Path, capsys):
    for path in (data_copy / "val" / "Segmentation").glob("*.png"):
        write_png(path, np.full_like(read_mask(path), 4242))
    assert main(["check-data", str(data_copy), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: split 'val': no mask pixel is a known class (values found: 4242)" in out
    assert "no problems found" not in out


def test_a_val_split_without_one_labelled_pixel_stops_fit_and_validate(data_copy: Path,
                                                                        tmp_path: Path, capsys,
                                                                        phase1_run, phase_args):
    for path in (data_copy / "val" / "Segmentation").glob("*.png"):
        write_png(path, np.full_like(read_mask(path), 4242))
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", data_copy, logs)]) == 2
    assert "the val split has not one labelled pixel" in capsys.readouterr().err
    assert not list(logs.rglob("best.ckpt"))  # none chosen on NaN
    out = tmp_path / "eval"
    assert main(["validate", "--ckpt_path", str(phase1_run[0]), "--data.root", str(data_copy),
                 "--out", str(out), "--trainer.accelerator", "cpu"]) == 2
    assert "the val split has not one labelled pixel" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_check_data_warns_when_few_mask_pixels_are_known(data_copy: Path, capsys):
    for path in (data_copy / "train" / "Segmentation").glob("*.png"):
        mask = read_mask(path)
        mask[: mask.shape[0] * 3 // 4] = 4242  # three quarters unknown
        write_png(path, mask)
    assert main(["check-data", str(data_copy), "--workers", "1"]) == 0  # --strict fails it
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "WARNING" in x]
    assert "only 25.0% of mask pixels are a known class" in line


def test_a_jpeg_mask_is_named_as_such(data_copy: Path, capsys):
    mask = sorted((data_copy / "train" / "Segmentation").iterdir())[0]
    mask.rename(mask.with_suffix(".jpg"))
    assert main(["check-data", str(data_copy), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"are JPEG, not PNG: {mask.stem}.jpg" in out and "have no mask" not in out


@pytest.mark.parametrize("option, value, message", [
    ("--data.num_workers", "-1", "data.num_workers=-1: the number of DataLoader worker"),
    ("--model.evaluation.predict_classes", "[]",
     "model.evaluation.predict_classes: [] would allow no class"),
    ("--data.predict_dir", "FILE", "is a file, not a folder of images"),
])
def test_small_misleading_messages_say_what_is_wrong(synth_root: Path, tmp_path: Path, capsys,
                                                     phase_args, option, value, message):
    ckpt = tmp_path / "logs" / "phase1" / "checkpoints" / "best.ckpt"
    if value == "FILE":
        value = str(next((synth_root / "val" / "Color_Images").iterdir()))
        assert main(["fit", *phase_args("phase1", synth_root, tmp_path / "logs")]) == 0
        args = ["predict", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "o")]
    else:
        args = ["fit", *phase_args("phase1", synth_root, tmp_path / "logs")]
    assert main([*args, option, value]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert message in line


def test_report_on_a_file_says_it_is_a_file(tmp_path: Path, capsys):
    file = tmp_path / "summary.md"
    file.write_text("not logs")
    assert main(["report", "--logs", str(file)]) == 2
    assert "is a file, not a logs folder" in capsys.readouterr().err


class StopAtFirstStep(L.Callback):
    """Fails a fit before its first optimizer step, so before it saves anything (a Ctrl+C
    or a crash early in a run)."""

    def on_train_batch_start(self, *args) -> None:
        raise RuntimeError("stopped before the first save")


def test_a_phase_trained_by_hand_is_done_and_a_restart_keeps_it_until_replaced(
        synth_root: Path, tmp_path: Path, capsys, phase_args):
    """Trained with ``desertmind fit`` as the README teaches, phase 1 is finished for make;
    started again with --overwrite (what make does to an unfinished phase), its checkpoints
    stay until the new run writes its own."""
    logs = tmp_path / "logs"
    args = ["fit", *phase_args("phase1", synth_root, logs)]
    assert main(args) == 0
    phase = logs / "phase1"
    assert (phase / ".done").is_file()
    installed = tmp_path / "installed"
    installed.touch()
    repo = Path(__file__).resolve().parents[1]
    made = subprocess.run(["make", "-C", str(repo), "phase1", "DM=false", f"LOGS={logs}",
                           f"STAMP={installed}"], capture_output=True, text=True)
    assert made.returncode == 0 and "Nothing to be done" in made.stdout, made.stdout
    def kept() -> dict[str, tuple[int, bytes]]:  # the same file: inode and content
        return {p.name: (p.stat().st_ino, p.read_bytes())
                for p in (phase / "checkpoints").glob("*.ckpt")}

    before = kept()
    assert set(before) == {"best.ckpt", "last.ckpt"}
    stop = f"--trainer.callbacks+={__name__}.StopAtFirstStep"
    with pytest.raises(RuntimeError, match="before the first save"):
        main([*args, "--overwrite", stop])
    assert kept() == before  # nothing deleted before the new run had saved
    assert not (phase / ".done").exists()  # and the phase is not finished
    assert main([*args, "--overwrite"]) == 0
    assert (phase / ".done").is_file()
    assert kept()["best.ckpt"][0] != before["best.ckpt"][0]  # replaced by the new run's


def test_an_evaluation_into_a_used_out_folder_is_refused_unless_overwrite(
        tmp_path: Path, capsys, phase1_run):
    best = str(phase1_run[0])
    out = tmp_path / "eval"
    validate = ["validate", "--ckpt_path", best, "--out", str(out), "--trainer.accelerator",
                "cpu", "--trainer.enable_progress_bar", "false"]
    assert main(validate) == 0
    first = (out / "metrics.json").read_bytes()
    assert main(validate) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == first
    events = lambda: sorted((out / "logs").glob("events.*"))  # noqa: E731
    assert len(events()) == 1
    assert main([*validate, "--overwrite"]) == 0
    assert len(events()) == 1  # one run's events, not both mixed


def _bomb(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A PNG header declaring ``width`` x ``height`` (a decompression bomb's, without the
    megabytes of zeros): only the header may be read."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                     + struct.pack(">I", zlib.crc32(chunk)) + b"\0\0\0\0IEND\xaeB`\x82")


def test_one_pixel_limit_read_from_headers_for_every_reader(data_copy: Path, tmp_path: Path,
                                                           capsys, phase_args, monkeypatch):
    import time

    from desertmind.errors import DatasetError

    bomb = next((data_copy / "val" / "Color_Images").iterdir())
    _bomb(bomb)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="larger than the 25 MP any reader decodes"):
        read_image(bomb)
    assert main(["check-data", str(data_copy), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{bomb.name}" in out and "larger than the 25 MP" in out
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", data_copy, logs)]) == 2
    assert "larger than the 25 MP" in capsys.readouterr().err
    assert time.monotonic() - start < 60  # nothing decoded: seconds, not minutes
    # the limit is raised (or lowered) for every reader by one variable
    normal = next((data_copy / "train" / "Color_Images").iterdir())
    monkeypatch.setenv("DESERTMIND_MAX_PIXELS", "1000")
    with pytest.raises(DatasetError, match=f"{normal}: 80x48 pixels .* larger than the 0.001 MP"):
        read_image(normal)
    monkeypatch.setenv("DESERTMIND_MAX_PIXELS", "lots")
    with pytest.raises(Exception, match="DESERTMIND_MAX_PIXELS='lots': a positive number"):
        read_image(normal)


def test_a_checkpoint_that_is_a_list_is_named_in_one_line(synth_root: Path, tmp_path: Path,
                                                           capsys, phase_args):
    import torch

    bad = tmp_path / "phase" / "checkpoints" / "best.ckpt"
    bad.parent.mkdir(parents=True)
    torch.save([1, 2, 3], bad)
    for args in (["validate", "--ckpt_path", str(bad)],
                 ["export", "--ckpt", str(bad), "--out", str(tmp_path / "m.onnx")],
                 ["fit", *phase_args("phase1", synth_root, tmp_path / "logs"),
                  "--model.init_from", str(bad)]):
        assert main(args) == 2
        assert f"{bad}: not a Lightning checkpoint (it holds a list" in capsys.readouterr().err
    assert main(["scores", "--logs", str(tmp_path)]) == 1
    assert "not a Lightning checkpoint" in capsys.readouterr().err


def test_no_logger_and_a_checkpoint_folder_write_only_there(synth_root: Path, tmp_path: Path,
                                                            monkeypatch, phase_args):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *phase_args("phase1", synth_root, tmp_path / "logs"),
            "--trainer.logger", "false", "--checkpoint.dirpath", "ck"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no config.yaml, provenance
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.ckpt")) == ["best.ckpt",
                                                                         "last.ckpt"]
    assert main([*args, "--overwrite"]) == 0  # the next such run is not refused


def test_a_checkpoint_damaged_in_place_is_refused(tmp_path: Path, capsys, phase1_run):
    """Bytes of a weight record changed, the file's size kept: torch.load would read other
    weights; the archive's CRC-32 of the record says it is damaged."""
    import shutil
    import struct
    import zipfile

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(phase1_run[0], ckpt)
    with zipfile.ZipFile(ckpt) as archive:  # the largest record: weights
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(ckpt.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the record's own bytes
    for i in range(start, start + min(64, info.file_size)):
        data[i] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    assert main(["validate", "--ckpt_path", str(ckpt), "--trainer.accelerator", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: damaged: the record {info.filename} no longer matches" in err


@pytest.mark.parametrize("content", ["null", "[1]", '{"a": 1}',
                                     '{"version": 3, "splits": {"train": 5}}'])
def test_a_stats_file_that_is_not_ours_is_named_and_kept(synth_root: Path, tmp_path: Path,
                                                         capsys, content: str):
    stats = tmp_path / "mine.json"
    stats.write_text(content)
    assert main(["check-data", str(synth_root), "--workers", "1", "--stats", str(stats)]) == 2
    line = capsys.readouterr().err.strip()
    assert f"{stats}: not a desertmind statistics file" in line and "\n" not in line
    assert stats.read_text() == content


def test_an_optimizer_value_torch_refuses_stops_before_a_run_folder(synth_root: Path,
                                                                     tmp_path: Path, capsys,
                                                                     phase_args):
    assert main(["fit", *phase_args("phase1", synth_root, tmp_path / "logs"),
                 "--model.optimizer.init_args.lr", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith("Invalid learning rate: -1.0")
    assert "Traceback" not in err
    assert not list((tmp_path / "logs").rglob("version_*"))


def test_a_file_name_that_is_not_utf8_is_trained_scored_and_predicted(data_copy: Path,
                                                                       tmp_path: Path,
                                                                       phase_args):
    name = b"caf\xe9_scene.png"  # Latin-1, as an old camera or a Windows share writes it
    for sub in (b"Color_Images", b"Segmentation"):
        folder = os.fsencode(data_copy / "val") + b"/" + sub
        source = sorted(os.listdir(folder))[0]
        with open(folder + b"/" + source, "rb") as f, open(folder + b"/" + name, "wb") as g:
            g.write(f.read())
    logs = tmp_path / "logs"
    assert main(["check-data", str(data_copy), "--workers", "1"]) == 0
    assert main(["fit", *phase_args("phase1", data_copy, logs), "--data.cache", "disk",
                 "--data.cache_dir", str(tmp_path / "cache")]) == 0
    ckpt = logs / "phase1" / "checkpoints" / "best.ckpt"
    assert main(["validate", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "ev"),
                 "--trainer.accelerator", "cpu"]) == 0
    assert b"caf\xe9_scene" in (tmp_path / "ev" / "per_image.csv").read_bytes()
    assert main(["predict", "--ckpt_path", str(ckpt), "--data.predict_dir",
                 str(data_copy / "val"), "--out", str(tmp_path / "pred"),
                 "--trainer.accelerator", "cpu"]) == 0
    assert name in os.listdir(os.fsencode(tmp_path / "pred" / "raw"))


@pytest.mark.parametrize("option, value, expected", [
    ("--trainer.limit_train_batches", "0", "limit_train_batches 0 trains nothing"),
    ("--early_stopping.patience", "-1", "early_stopping.patience=-1"),
    ("--data.target_transfer_p", "5", "data.target_transfer_p=5.0: a probability"),
])
def test_values_that_would_train_nothing_or_make_no_sense_are_refused_before_a_run(
        synth_root: Path, tmp_path: Path, capsys, phase_args, option, value, expected):
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", synth_root, logs), option, value]) == 2
    assert expected in capsys.readouterr().err
    assert not list(logs.rglob("version_*"))


def test_synth_of_nothing_and_a_random_seed_say_what_happened(synth_root: Path,
                                                              tmp_path: Path, capsys,
                                                              phase_args):
    assert main(["synth", str(tmp_path / "none"), "--n-train", "0", "--n-val", "0"]) == 2
    assert "nothing to generate" in capsys.readouterr().err
    seeds = []
    for run in ("a", "b"):
        logs = tmp_path / run
        assert main(["fit", *phase_args("phase1", synth_root, logs),
                     "--seed_everything", "true"]) == 0
        (config,) = logs.rglob("config.yaml")
        seeds.append(yaml.safe_load(config.read_text())["seed_everything"])
        assert f"drew seed {seeds[-1]}" in capsys.readouterr().err
    assert seeds[0] != seeds[1] and all(isinstance(s, int) for s in seeds)
