"""Figures and image grids shared by the TensorBoard callbacks, the report and the notebook."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from desertmind.data.classes import CLASS_NAMES, CLASSES
from desertmind.data.palette import ERROR_COLOR, colorize, error_map
from desertmind.files import write_with


def new_figure(width: float, height: float) -> tuple[Figure, object]:
    """A figure and its axes without pyplot: no GUI backend, no global state to leak."""
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def confusion_matrix_figure(confmat: np.ndarray, title: str = "confusion matrix") -> Figure:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction).

    Sized for where it is read: TensorBoard shows an image about 450-500 pixels wide, so the
    figure is 640 pixels wide with no text under 10 points (tests/test_report.py checks it)."""
    cm = np.asarray(confmat, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = new_figure(6.4, 5.8)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    n = len(norm)
    names = CLASS_NAMES[:n]
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=11)
    ax.set_yticks(range(n), names, fontsize=11)
    ax.set_xlabel("prediction", fontsize=12)
    ax.set_ylabel("ground truth", fontsize=12)
    ax.set_title(title, fontsize=12)
    for i in range(n):
        for j in range(n):
            if rows[i, 0] > 0 and norm[i, j] >= 0.005:
                ax.text(j, i, f"{norm[i, j]:.2f}"[1:] if norm[i, j] < 1 else "1",
                        ha="center", va="center", fontsize=10,
                        color="white" if norm[i, j] > 0.5 else "black")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class", fontsize=11)
    bar.ax.tick_params(labelsize=10)
    fig.tight_layout()
    return fig


#: column titles, short enough for a 2-inch column at 12 points (the legend says what the
#: error map's colours mean)
GRID_COLUMNS = ("image", "ground truth", "prediction", "errors")


def prediction_grid(images: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                    preds: Sequence[np.ndarray],
                    row_titles: Sequence[str] | None = None) -> Figure:
    """One row per image: image | ground truth | prediction | error map, with column titles,
    optional row titles, and a legend of every class colour.

    800 pixels wide with no text under 10 points, so that it stays readable where TensorBoard
    shows it (about 450-500 pixels wide)."""
    rows = len(images)
    h, w = images[0].shape[:2]
    legend_height = 1.1  # inches: three rows of four classes
    fig = Figure(figsize=(8, 2 * rows * h / w + 0.4 + legend_height), dpi=100)
    axes = np.atleast_2d(fig.subplots(rows, 4))
    for r, (img, tgt, pred) in enumerate(zip(images, targets, preds, strict=True)):
        for c, tile in enumerate((img, colorize(tgt), colorize(pred), error_map(pred, tgt))):
            ax = axes[r, c]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(GRID_COLUMNS[c], fontsize=12)
        if row_titles is not None:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=10)
    handles = [Patch(color=np.asarray(c.color) / 255, label=c.name) for c in CLASSES]
    handles += [Patch(color=np.asarray(ERROR_COLOR) / 255, label="error: wrong"),
                Patch(color="black", label="error: ignored")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=12, frameon=False)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    return fig


def class_share_figure(splits: dict[str, tuple[Sequence[float], Sequence[float]]],
                       title: str) -> Figure:
    """Each class's pixel share (top) and image share (bottom), a bar per split side by side,
    so a class that one split lacks or over-represents stands out."""
    x = np.arange(len(CLASS_NAMES))
    fig = Figure(figsize=(10, 7), dpi=100)
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.8 / max(len(splits), 1)
    for row, (ax, what) in enumerate(zip(axes, ("pixel share", "image share"), strict=True)):
        for i, (name, shares) in enumerate(splits.items()):
            ax.bar(x - 0.4 + width * (i + 0.5), np.asarray(shares[row]) * 100, width,
                   label=name)
        ax.set_ylabel(f"{what} (%)")
        ax.set_yscale("symlog", linthresh=1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title="split")
    axes[0].set_title(title)
    axes[1].set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG, atomically (see :mod:`desertmind.files`)."""
    return write_with(path, lambda f: fig.savefig(f, format="png"))
