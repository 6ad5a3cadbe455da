"""The prepared GPU check (``make gpu-check``): everything that needs an accelerator, at the real
960x540, on synthetic data it makes itself, in one run of at most about 9 minutes.

GPU time comes rarely and in short windows, so this must already work when it comes. It has
seven sections, each in its own process with its own time limit, so one slow or hanging part
cannot eat the others:

1. ``phase_chain``: phase 1 -> 2.1 -> 2.2 -> 3 for real (MobileNetV3-L DeepLabV3, the phase
   configs, ``bf16-mixed``, a few dozen steps each, each phase from the previous one's
   ``best.ckpt``), then phase 1 under ``16-mixed`` (GradScaler); every phase must end with
   finite weights and a ``best.ckpt`` that ``desertmind test`` and ``predict`` read.
2. ``train_throughput``: images/s of our Lightning fit (PNG path and decoded memory cache)
   against the study-style plain loop and the model-only ceiling, for MobileNetV3-L DeepLabV3
   and DeepLabV3+ ResNet-101, with the ceiling also without ``channels_last`` and compiled,
   and the peak GPU memory of each.
3. ``eval_and_latency``: our fused metrics against the study's per-image loop, and batch-1
   latency (eager fp32, channels_last, bf16 / fp16 autocast, compiled, ONNX Runtime's CUDA
   provider where installed).
4. ``determinism``: two short ``--trainer.deterministic true`` runs must give identical
   weights, or the operation without a deterministic kernel is named.
5. ``ddp``: a 2-process DDP fit when the machine has 2 GPUs; skipped with a line otherwise.
6. ``foundation``: the DINOv3 ViT-B + DPT recipe (960x540, layer decay, EMA, gradient
   checkpointing, ``bf16-mixed``; random weights) for a few steps, its ``best.ckpt`` finite; and
   the GPU memory one training step of that network needs with and without gradient
   checkpointing (``torch.cuda.max_memory_allocated``), with the step times.
7. ``pretrain``: a few steps of self-supervised pretraining (``desertmind pretrain``'s module:
   DINO with an EMA teacher) of DINOv3 ViT-B with LoRA at 512 px crops under ``bf16-mixed``:
   images/s and peak memory.

``--dry-run`` runs the same sections on the CPU at a tiny size in one process, in well under a
minute (``tests/test_gpu_check.py`` runs it, so the script cannot rot between GPU loans);
figures that need a GPU are null. The JSON goes to stdout and, with a rendered table, to
``--out`` (default ``$OUT`` when set, else ``reports/gpu-check``): ``gpu_check.json`` and
``gpu_check.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = REPO / "configs"
SECTIONS = ("phase_chain", "train_throughput", "eval_and_latency", "determinism", "ddp",
            "foundation", "pretrain")
#: seconds each section may take on the GPU (about 9 minutes in all, start-up excluded)
BUDGET_S = {"phase_chain": 150, "train_throughput": 170, "eval_and_latency": 60,
            "determinism": 50, "ddp": 30, "foundation": 60, "pretrain": 45}
PHASES = ("phase1", "phase2_1_head", "phase2_2_backbone", "phase3")


def _size(dry: bool) -> tuple[int, int]:
    return (32, 48) if dry else (540, 960)


def _data(tmp: Path, dry: bool, n_train: int) -> Path:
    from desertmind.data.synth import generate

    h, w = (48, 80) if dry else _size(dry)
    return generate(tmp / "data", n_train=n_train, n_val=4 if dry else 16, height=h, width=w,
                    seed=1)


def _fit_args(phase: str, root: Path, logs: Path, dry: bool, precision: str,
              steps: int) -> list[str]:
    """A phase config shrunk to ``steps`` training steps, offline (random initial weights)."""
    h, w = _size(dry)
    return ["-c", str(CONFIGS / f"{phase}.yaml"), "--data.root", str(root),
            "--model.network.weights", "none",
            "--data.image_size", "null" if not dry else f"[{h}, {w}]",
            "--data.batch_size", "2" if dry else "4", "--data.num_workers", "0" if dry else "4",
            "--data.crop_size", "32" if dry else "512",
            "--data.stats_path", str(logs / "stats.json"),
            "--trainer.logger.init_args.save_dir", str(logs), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", str(steps), "--trainer.limit_val_batches", "2",
            "--trainer.num_sanity_val_steps", "0", "--trainer.precision", precision,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.accelerator", "cpu" if dry else "gpu", "--trainer.devices", "1"]


def _finite(ckpt: Path) -> bool:
    import torch

    from desertmind.models.trained import read_checkpoint

    state = read_checkpoint(ckpt)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def _run_cli(args: list[str]) -> None:
    from desertmind.cli.main import main

    code = main(args)
    if code != 0:
        raise RuntimeError(f"desertmind {args[0]} exited {code}")


def phase_chain(dry: bool) -> dict:
    from desertmind import runs

    steps = 2 if dry else 24
    precision = "32-true" if dry else "bf16-mixed"
    out: dict = {"precision": precision, "steps_per_phase": steps, "phases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = _data(tmp, dry, 8 if dry else 4 * steps)
        logs = tmp / "logs"
        previous = None
        for phase in PHASES:
            start = time.perf_counter()
            extra = ["--model.init_from", str(previous)] if previous else []
            _run_cli(["fit", *_fit_args(phase, root, logs, dry, precision, steps), *extra])
            best = runs.best_checkpoint(logs, phase)
            out["phases"][phase] = {"seconds": round(time.perf_counter() - start, 1),
                                    "best_ckpt": best.is_file(), "finite": _finite(best)}
            previous = best
        fp16 = "32-true" if dry else "16-mixed"  # a GradScaler needs CUDA
        start = time.perf_counter()
        _run_cli(["fit", *_fit_args("phase1", root, tmp / "logs16", dry, fp16, steps)])
        best16 = runs.best_checkpoint(tmp / "logs16", "phase1")
        out["phase1_16_mixed"] = None if dry else {
            "seconds": round(time.perf_counter() - start, 1), "best_ckpt": best16.is_file(),
            "finite": _finite(best16)}
        device = ["--trainer.accelerator", "cpu" if dry else "gpu", "--trainer.devices", "1",
                  "--trainer.enable_progress_bar", "false", "--data.num_workers", "0"]
        _run_cli(["test", "--ckpt_path", str(previous), "--data.root", str(root),
                  "--data.test_dir", "val", "--out", str(tmp / "test"), *device])
        metrics = json.loads((tmp / "test" / "metrics.json").read_text())
        _run_cli(["predict", "--ckpt_path", str(previous), "--data.root", str(root),
                  "--data.predict_dir", "val", "--out", str(tmp / "pred"), *device])
        out["test_mIoU_phase3"] = round(float(metrics.get("test/mIoU", math.nan)), 4)
        out["predicted_images"] = len(list((tmp / "pred" / "raw").glob("*.png")))
    phases = out["phases"].values()
    out["ok"] = all(p["best_ckpt"] and p["finite"] for p in phases) and (
        out["phase1_16_mixed"] is None or out["phase1_16_mixed"]["finite"]) and \
        out["predicted_images"] > 0
    return out


def _peak_memory(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def train_throughput(dry: bool) -> dict:
    import torch
    from train_throughput import lightning_ips, model_only_ips, plain_ips

    device = torch.device("cpu" if dry else "cuda")
    h, w = (48, 80) if dry else _size(dry)
    networks = [("deeplabv3", "mobilenet_v3_large")] if dry else [
        ("deeplabv3", "mobilenet_v3_large"), ("deeplabv3plus", "resnet101")]
    out: dict = {"size": f"{w}x{h}", "networks": {}}
    batch, steps, warmup = (2, 2, 1) if dry else (8, 20, 5)
    with tempfile.TemporaryDirectory() as tmp:
        root = _data(Path(tmp), dry, (warmup + steps) * batch)  # one data set for every row
        for i, (arch, backbone) in enumerate(networks):
            args = Namespace(arch=arch, backbone=backbone, batch=batch, steps=steps,
                             warmup=warmup, workers=0 if dry else 8, height=h, width=w,
                             cache="none")
            row: dict = {}

            def timed(name, fn, row=row, **kw):
                _reset_peak(device)
                torch.manual_seed(0)
                row[f"{name}_images_per_s"] = round(fn(**kw), 2)
                row[f"{name}_peak_gib"] = _peak_memory(device)

            timed("plain_loop", plain_ips, root=root, args=args, device=device)
            timed("lightning_png", lightning_ips, root=root, args=args, device=device)
            timed("lightning_cache", lightning_ips, root=root,
                  args=Namespace(**{**vars(args), "cache": "memory"}), device=device)
            timed("model_only", model_only_ips, args=args, device=device)
            if not dry:  # the ceiling without channels_last, and (first network) compiled
                timed("model_only_contiguous", model_only_ips, args=args, device=device,
                      channels_last=False)
                if i == 0:  # compiling takes about a minute: once, for the first network
                    timed("model_only_compiled", model_only_ips, args=args, device=device,
                          compile=True)
            best = max(row["lightning_png_images_per_s"], row["lightning_cache_images_per_s"])
            row["ratio_ours_over_plain"] = round(best / row["plain_loop_images_per_s"], 3)
            row["pipeline_efficiency"] = round(best / row["model_only_images_per_s"], 3)
            out["networks"][f"{arch} {backbone}"] = row
    out["ok"] = True
    return out


def eval_and_latency(dry: bool) -> dict:
    import torch
    from eval_throughput import ours, study_loop
    from inference_latency import measure

    from desertmind.models import build_network

    device = torch.device("cpu" if dry else "cuda")
    n, (h, w) = (4, (48, 80)) if dry else (32, _size(dry))
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (n, h, w), generator=g)
    preds = torch.where(torch.rand(targets.shape, generator=g) < 0.7, targets,
                        torch.randint(0, 10, targets.shape, generator=g))
    preds, targets = preds.to(device), targets.to(device)
    from _common import time_per_call

    t_ours = time_per_call(lambda: ours(preds, targets, 4), device, 1, 3)
    t_study = time_per_call(lambda: study_loop(preds, targets), device, 1, 3)
    latency = measure(build_network("deeplabv3", "mobilenet_v3_large"), h, w,
                      device, repeats=3 if dry else 10, onnx=True)
    ms = {k: round(v * 1000, 2) for k, v in latency.items()}
    for key in ("bf16_autocast", "fp16_autocast", "compile_channels_last", "onnxruntime_cuda"):
        ms.setdefault(key, None)  # what needs a GPU (or ONNX Runtime's CUDA provider)
    return {"eval_images": f"{n} at {w}x{h}",
            "eval_ours_images_per_s": round(n / t_ours, 1),
            "eval_study_images_per_s": round(n / t_study, 1),
            "eval_ratio_ours_over_study": round(t_study / t_ours, 2),
            "latency_ms_batch1": ms, "ok": True}


def determinism(dry: bool) -> dict:
    import torch

    from desertmind import runs
    from desertmind.models.trained import read_checkpoint

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    states = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = _data(tmp, dry, 8 if dry else 24)
        for i in range(2):
            logs = tmp / f"logs{i}"
            args = _fit_args("phase1", root, logs, dry, "32-true" if dry else "bf16-mixed",
                             2 if dry else 6)
            try:
                _run_cli(["fit", *args, "--trainer.deterministic", "true"])
            except RuntimeError as e:  # an op without a deterministic kernel names itself
                return {"identical_weights": None, "ok": False,
                        "error": str(e).strip().splitlines()[0][:400]}
            states.append(read_checkpoint(runs.best_checkpoint(logs, "phase1"))["state_dict"])
    same = states[0].keys() == states[1].keys() and all(
        torch.equal(states[0][k], states[1][k]) for k in states[0])
    return {"identical_weights": same, "ok": same}


def ddp(dry: bool) -> dict:
    import torch

    gpus = 0 if dry else torch.cuda.device_count()
    if gpus < 2:
        return {"skipped": f"{gpus} GPU(s): a DDP run needs 2", "ok": True}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = _data(tmp, dry, 32)
        args = _fit_args("phase1", root, tmp / "logs", dry, "bf16-mixed", 4)
        args[args.index("--trainer.devices") + 1] = "2"
        _run_cli(["fit", *args, "--trainer.strategy", "ddp"])
        from desertmind import runs

        best = runs.best_checkpoint(tmp / "logs", "phase1")
        return {"devices": 2, "best_ckpt": best.is_file(), "finite": _finite(best),
                "ok": best.is_file()}


def foundation(dry: bool) -> dict:
    import torch
    from foundation import MEMORY_NETWORK, step_memory

    from desertmind import runs

    recipe = CONFIGS / "recipes" / "dinov3_vitb_dpt.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = _data(tmp, dry, 8 if dry else 12)
        args = _fit_args("phase1", root, tmp / "logs", dry, "32-true" if dry else "bf16-mixed",
                         2 if dry else 4)
        args[1] = str(recipe)
        args += ["--trainer.logger.init_args.name", "foundation"]
        if dry:
            args += ["--model.network.backbone", "tu-vit_small_patch16_dinov3"]
        _run_cli(["fit", *args])
        best = runs.best_checkpoint(tmp / "logs", "foundation")
        fit = {"best_ckpt": best.is_file(), "finite": _finite(best)}
    device = torch.device("cpu" if dry else "cuda")
    network = ("dpt", "tu-vit_small_patch16_dinov3") if dry else MEMORY_NETWORK
    memory = {("on" if on else "off"): step_memory(network, on, _size(dry), 2, device)
              for on in (False, True)}
    return {"recipe": recipe.name, "fit": fit, "network": "/".join(network),
            "size": list(_size(dry)), "grad_checkpointing": memory,
            "ok": fit["best_ckpt"] and fit["finite"]}


def pretrain(dry: bool) -> dict:
    """A few steps of ``desertmind pretrain``'s module on DINOv3 ViT-B with LoRA adapters (rank
    16, the last block unfrozen; random weights: none can be fetched there) at 512 px global
    crops (518 is DINOv2's patch-14 size; DINOv3's patch 16 makes 512 a 32x32 token grid) and
    six 224 px local ones, ``bf16-mixed``: images/s after warm-up and the peak GPU memory."""
    import lightning as L
    import torch

    from desertmind.models.adapters import LoRA
    from desertmind.models.registry import Network
    from desertmind.pretraining.data import UnlabelledDataModule
    from desertmind.pretraining.module import Objective, PretrainModule

    backbone = "tu-vit_small_patch16_dinov3" if dry else "tu-vit_base_patch16_dinov3"
    batch, warmup, steps = (2, 1, 1) if dry else (8, 4, 8)
    crop, local = (64, 32) if dry else (512, 224)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        root = _data(Path(tmp), dry, batch * 2)
        module = PretrainModule(Network("dpt", backbone), adapters=LoRA(rank=16),
                                unfrozen_blocks=1, objective=Objective(output_dim=4096 if not
                                                                        dry else 64))
        dm = UnlabelledDataModule(str(root), crop_size=crop, local_crop_size=local,
                                  local_views=2 if dry else 6, batch_size=batch,
                                  num_workers=0 if dry else 8)
        trainer = L.Trainer(max_steps=warmup + steps + 1, accelerator="cpu" if dry else "gpu",
                            devices=1, precision="32-true" if dry else "bf16-mixed",
                            logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[Clock()])
        device = torch.device("cpu" if dry else "cuda")
        _reset_peak(device)
        trainer.fit(module, dm)
        loss = float(trainer.callback_metrics["train/loss"])
    timed = times[warmup:warmup + steps + 1]
    ips = batch * (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else None
    return {"network": f"dpt {backbone}", "method": module.method, "adapters": 16,
            "crops": f"2 x {crop} + {dm.hparams.local_views} x {local}", "batch": batch,
            "images_per_s": None if dry or ips is None else round(ips, 2),
            "peak_gib": _peak_memory(device), "loss": round(loss, 4),
            "ok": math.isfinite(loss)}


def run_section(name: str, dry: bool) -> dict:
    """One section in this process, its failure recorded instead of raised."""
    start = time.perf_counter()
    try:  # the commands' own output (Lightning's tables) goes to stderr: stdout is the JSON
        with contextlib.redirect_stdout(sys.stderr):
            result = globals()[name](dry)
    except Exception as e:  # noqa: BLE001 - the check records every failure and goes on
        result = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:400]}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_isolated(name: str, dry: bool, limit_s: float) -> dict:
    """One section in its own process, stopped at ``limit_s``: a hang costs only its budget."""
    start = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name]
    if dry:
        cmd.append("--dry-run")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"stopped at its {limit_s:.0f} s limit",
                "seconds": round(time.perf_counter() - start, 1)}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"ok": False, "error": f"exit {done.returncode}: {' | '.join(tail)[:400]}",
                "seconds": round(time.perf_counter() - start, 1)}


def render(report: dict) -> str:
    """The report as a Markdown page (what docs/benchmarks.md's GPU section quotes)."""
    lines = [f"# GPU check, {report['date']}", "", f"Machine: {report['machine']}. "
             f"Dry run: {report['dry_run']}. Wall time: {report['wall_s']} s.", "",
             "| section | ok | seconds | figures |", "|---|---|---:|---|"]
    for name, sec in report["sections"].items():
        figures = {k: v for k, v in sec.items() if k not in ("ok", "seconds")}
        lines.append(f"| {name} | {sec.get('ok')} | {sec.get('seconds')} | "
                     f"`{json.dumps(figures)[:600]}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same sections on the CPU at a tiny size, in one process")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "reports" /
                                                                       "gpu-check"))
    parser.add_argument("--only", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))  # the other benchmarks' helpers
    if args.only:  # a child of run_isolated: one JSON line
        print(json.dumps(run_section(args.only, args.dry_run)))
        return
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu-check: no CUDA device here; `make gpu-check DRY_RUN=1` runs the same "
                     "code on the CPU at a tiny size")
    from _common import machine

    start = time.perf_counter()
    sections = {}
    for name in args.sections:
        sections[name] = (run_section(name, True) if args.dry_run
                          else run_isolated(name, False, BUDGET_S[name]))
        print(f"gpu-check: {name}: ok={sections[name].get('ok')} "
              f"({sections[name].get('seconds')} s)", file=sys.stderr, flush=True)
    report = {"benchmark": "gpu_check", "date": datetime.now(timezone.utc).isoformat(
              timespec="seconds"), "machine": machine(), "dry_run": args.dry_run,
              "wall_s": round(time.perf_counter() - start, 1),
              "ok": all(s.get("ok") for s in sections.values()), "sections": sections}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(render(report))
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
