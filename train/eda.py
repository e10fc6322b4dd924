"""Exploratory analysis of a dog-emotion split root -> artifacts/eda/ (PNGs + summary.md).

    python -m train.eda [--data DIR] [--out artifacts/eda]

Label counts per split, source image sizes (from MANIFEST.csv when the data set has one, else
read from the files' headers), per-class colour histograms and a grid of samples per class.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from train.common import ARTIFACTS, command_errors, markdown_table, save_text, warn
from train.data import DEFAULT_DATA, SPLITS, DataError, class_names, list_images, load_splits
from train.plots import image_grid, plt, save_figure

HIST_SIZE = 72  # colour statistics need no detail: small decoded squares keep the pass over every split fast


def manifest_sizes(manifest: Path) -> list[tuple[int, int]]:
    """(source_width, source_height) of every row of a MANIFEST.csv; DataError naming the line
    of the first row that does not hold two positive whole numbers there."""
    sizes = []
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    w, h = int(row["source_width"]), int(row["source_height"])
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{manifest}: line {line} has no whole-number source_width and "
                                    "source_height") from None
                if w <= 0 or h <= 0:
                    raise DataError(f"{manifest}: line {line} gives a size of {w} x {h}")
                sizes.append((w, h))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{manifest}: not a readable CSV file ({e})") from None
    return sizes


def source_sizes(root: Path, classes: list[str]) -> list[tuple[int, int]]:
    """(width, height) of every source image: MANIFEST.csv if present and well formed (sizes
    before downscaling), else the files' own headers."""
    manifest = root / "MANIFEST.csv"
    if manifest.is_file():
        try:
            sizes = manifest_sizes(manifest)
            if sizes:
                return sizes
            warn(f"{manifest}: no rows; reading the sizes from the images instead")
        except DataError as e:
            warn(f"{e}; reading the sizes from the images instead")
    sizes = []
    for split in SPLITS:
        for path, _ in list_images(root / split, classes) if (root / split).is_dir() else []:
            try:
                with Image.open(path) as im:  # header only, no decode
                    sizes.append(im.size)
            except Exception:  # noqa: BLE001 - load_splits names every unreadable file; sizes skip them
                pass
    return sizes


def plot_label_counts(counts: dict, classes: list[str], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(counts)
    for i, (s, c) in enumerate(counts.items()):
        bars = ax.bar(np.arange(len(classes)) + i * width, c, width, label=s)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(classes)) + width * (len(counts) - 1) / 2, classes)
    ax.set_ylabel("images")
    ax.set_title("label distribution per split")
    ax.legend()
    save_figure(fig, out / "label_distribution.png")


def plot_sizes(sizes: np.ndarray, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].scatter(sizes[:, 0], sizes[:, 1], s=4, alpha=0.4)
    axes[0].set_xlabel("width (px)")
    axes[0].set_ylabel("height (px)")
    axes[0].set_title(f"source sizes (n={len(sizes)})")
    axes[1].hist(sizes.min(1), bins=40)
    axes[1].set_xlabel("shorter side (px)")
    axes[1].set_title("shorter side")
    save_figure(fig, out / "image_sizes.png")


def plot_colours(ref, classes: list[str], out: Path) -> list[dict]:
    """Colour histograms per channel and class; returns each class's channel means."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    channel_means = []
    for k, name in enumerate(classes):
        imgs = ref.images[ref.labels == k]
        if len(imgs) == 0:
            continue
        channel_means.append({"class": name, **{f"mean {ch}": round(imgs[:, i].float().mean().item(), 1)
                                                for i, ch in enumerate("RGB")},
                              "brightness": round(imgs.float().mean().item(), 1)})
        for i, ax in enumerate(axes):
            hist = np.bincount(imgs[:, i].reshape(-1).numpy(), minlength=256) / imgs[:, i].numel()
            ax.plot(hist, label=name)
    for ax, ch in zip(axes, ("red", "green", "blue")):
        ax.set_title(f"{ch} channel")
        ax.set_xlabel("value")
    axes[0].set_ylabel("share of pixels")
    axes[0].legend()
    save_figure(fig, out / "color_histograms.png")
    return channel_means


def plot_samples(ref, classes: list[str], out: Path, per_class: int = 8) -> None:
    """A grid of the first images of each class in file order (deterministic)."""
    images, titles = [], []
    for k, name in enumerate(classes):
        idx = (ref.labels == k).nonzero().flatten()[:per_class]
        images += [ref.images[i].permute(1, 2, 0).numpy() for i in idx]
        titles += [name] * len(idx)
    image_grid(images, titles, out / "samples.png", cols=per_class, title="samples per class", cell=1.6, dpi=80)


def run(root: Path, out: Path) -> str:
    data = load_splits(root, HIST_SIZE, splits=[s for s in SPLITS if (root / s).is_dir()],
                       cache_dir=ARTIFACTS / "cache")
    classes = class_names(root)
    counts = {s: np.bincount(d.labels.numpy(), minlength=len(classes)) for s, d in data.items()}
    sizes = np.array(source_sizes(root, classes))
    plot_label_counts(counts, classes, out)
    plot_sizes(sizes, out)
    ref = data.get("train") or next(iter(data.values()))  # the train split, or the first one present
    channel_means = plot_colours(ref, classes, out)
    plot_samples(ref, classes, out)
    count_rows = [{"split": s, **{c: int(n) for c, n in zip(classes, v)}, "total": int(v.sum())}
                  for s, v in counts.items()]
    short = sizes.min(1)
    text = (f"# EDA: {root}\n\n## Label distribution\n\n{markdown_table(count_rows)}\n"
            f"![labels](label_distribution.png)\n\n## Source image sizes\n\n"
            f"{len(sizes)} images; width mean {sizes[:, 0].mean():.1f} px, height mean {sizes[:, 1].mean():.1f} px; "
            f"shorter side min {short.min()}, median {np.median(short):.0f}, max {short.max()} px; "
            f"{(sizes[:, 0] == sizes[:, 1]).mean():.0%} square.\n\n![sizes](image_sizes.png)\n\n"
            f"## Colour (split '{Path(ref.paths[0]).parent.parent.name}', decoded {HIST_SIZE} px squares, 0-255)\n\n"
            f"{markdown_table(channel_means)}\n![colour](color_histograms.png)\n\n## Samples\n\n![samples](samples.png)\n")
    save_text(text, out / "summary.md")
    print(text)
    print(f"wrote {out}/summary.md and 4 PNGs")
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="split root (default: %(default)s)")
    p.add_argument("--out", default=str(ARTIFACTS / "eda"), help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    with command_errors():
        run(Path(args.data), Path(args.out))


if __name__ == "__main__":
    main()
