"""Figures shared by every command: training curves, confusion matrices, image grids."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: this runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train.common import atomic_write  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_curves(history: list[dict], path: str | Path, title: str, splits=("train", "val")) -> Path:
    """Loss and accuracy per epoch, one line per split (keys '<split>_loss', '<split>_acc')."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy (%)")):
        for split in splits:
            ax.plot(epochs, [h[f"{split}_{metric}"] for h in history], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str | Path, title: str) -> Path:
    """Rows are true classes, columns predictions; cells show counts, colour shows row share."""
    matrix = np.asarray(matrix)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def image_grid(images: list, titles: list[str], path: str | Path, cols: int, title: str,
               cell: float = 2.2, dpi: int = 120) -> Path:
    """Images (HxWx3 uint8 arrays or PIL images) in a grid with a caption under each."""
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * (cell + 0.4)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, titles):
        ax.imshow(img)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, dpi)


def plot_runs(runs: dict[str, list[dict]], path: str | Path, title: str, window: int = 9) -> Path:
    """Val accuracy and loss per epoch of several runs side by side. One image of 400 is 0.25
    points, so each run's raw line is drawn faint and its centred running mean over `window`
    epochs bold: the trend is what tells recipes apart."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, history) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = np.array([h["epoch"] for h in history])
        for ax, key in zip(axes, ("val_acc", "val_loss")):
            values = np.array([h[key] for h in history], dtype=float)
            ax.plot(epochs, values, color=color, alpha=0.25, linewidth=0.8)
            if len(values) >= window:
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(epochs[window // 2:len(epochs) - window // 2], smooth, color=color, label=name)
            else:
                ax.plot(epochs, values, color=color, label=name)
    for ax, label in zip(axes, ("val accuracy (%)", "val loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_frontier(points: list[dict], path: str | Path) -> Path:
    """Accuracy on photos the recipe never trained on against inference parameters, one point per
    recipe at its seeds' mean (test where read, else held-out val), a bar from its lowest to its
    highest seed: where the spread is wider than the gap, so is the doubt."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for kind, teacher, label, fmt in (("test", False, "students: test accuracy", "o"),
                                      ("val", False, "students: held-out val (train-only runs, final weights)", "s"),
                                      ("test", True, "teachers (190k parameters): test", "D"),
                                      ("val", True, "teachers: held-out val", "D")):
        pts = [p for p in points if p["kind"] == kind and p.get("teacher", False) == teacher]
        if not pts:
            continue
        x, y = np.array([p["params"] for p in pts]), np.array([p["mean"] for p in pts])
        err = np.array([[p["mean"] - p["lo"] for p in pts], [p["hi"] - p["mean"] for p in pts]])
        ax.errorbar(x, y, yerr=err, fmt=fmt, capsize=3, alpha=0.85 if kind == "test" else 0.45, label=label,
                    color="tab:grey" if teacher else None, markersize=5)
    # the frontier: the students' test means over three seeds or more (the protocol's final
    # candidates) that no smaller recipe beats
    best, front = -1.0, []
    finals = (p for p in points if p["kind"] == "test" and not p.get("teacher") and p.get("seeds", 0) >= 3)
    for p in sorted(finals, key=lambda p: (p["params"], -p["mean"])):
        if p["mean"] > best:
            best = p["mean"]
            front.append(p)
    if front:
        ax.step([p["params"] for p in front], [p["mean"] for p in front], where="post", color="tab:blue", linewidth=1.5,
                label="frontier: the best 3-seed test mean at or under each size")
        for i, p in enumerate(front):   # above and below by turns, so that neighbours' names do not overlap
            ax.annotate(p["name"], (p["params"], p["mean"]), textcoords="offset points", xytext=(6, -12 if i % 2 else 8), fontsize=8)
    for p in (p for p in points if p.get("shipped")):
        ax.plot(p["params"], p["mean"], marker="*", markersize=18, color="tab:red", linestyle="none", label="shipped recipe")
        ax.annotate("shipped", (p["params"], p["mean"]), textcoords="offset points", xytext=(8, 6), fontsize=9, color="tab:red")
    ax.set_xscale("log")
    ax.set_xlabel("inference parameters (BatchNorm folded)")
    ax.set_ylabel("accuracy on unseen photos (%), mean over seeds;\nbar: lowest to highest seed")
    ax.axhline(70, color="grey", linestyle=":", linewidth=1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("accuracy against size, one point per recipe (docs/runs.jsonl)")
    return save_figure(fig, path)


def plot_prediction(img, row: dict, path: str | Path) -> Path:
    """The photo with its label, and one bar per class probability beside it."""
    classes, probs = list(row["probabilities"]), list(row["probabilities"].values())
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(7, 3.2), gridspec_kw={"width_ratios": [1.2, 1]})
    thumb = img.copy()
    thumb.thumbnail((512, 512))
    ax_img.imshow(thumb)
    ax_img.axis("off")
    ax_img.set_title(f"{row['label']} ({max(probs):.0%})", fontsize=12)
    colors = ["C1" if c == row["label"] else "C0" for c in classes]
    ax_bar.barh(classes, probs, color=colors)
    ax_bar.set_xlim(0, 1.15)
    ax_bar.invert_yaxis()
    for y, p in enumerate(probs):
        ax_bar.text(p + 0.02, y, f"{p:.2f}", va="center", fontsize=9)
    ax_bar.set_xlabel("probability")
    ax_bar.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)
