"""How many photos a class does the default recipe need? Test accuracy against train photos a class.

For each size N, a copy of the data set whose train split keeps N photos of every class (drawn with
a fixed seed; val and test whole; files linked, not copied) trains the `train` command's defaults
without a teacher (as on a user's own classes, which the shipped teachers cannot teach), one thread,
and reads its test split once. N = 0 is the whole train split. Finished runs are kept, a stopped
one resumes, so the command can be run again to add sizes or seeds; the table and the figure cover
every finished run under --out.

    python -m train.learning_curve [--sizes 30 60 150 300 0] [--seeds 0] [--epochs 300] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

from train import engine
from train.common import ARTIFACTS, at_least, command_errors, markdown_table, save_json, save_text
from train.data import DEFAULT_DATA, IMAGE_EXTENSIONS, DataError, check_data_root, class_names
from train.recipes import parse_train_args
from train.scoring import wilson_interval


def subset(data: Path, out: Path, per_class: int, seed: int) -> Path:
    """`data` with N train photos a class (0: all), as a tree of links under `out`; built once."""
    root = out / f"data-{per_class or 'all'}-s{seed}"
    if root.is_dir():
        return root
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)   # a build of ours that stopped half-way
    classes = class_names(data / "train")
    for split in ("train", "val", "test"):
        for c in classes:
            photos = sorted(p for p in (data / split / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if split == "train" and per_class:
                if len(photos) < per_class:
                    raise DataError(f"{data / split / c}: {len(photos)} photos, fewer than the {per_class} asked for")
                photos = sorted(random.Random(f"{seed}-{c}").sample(photos, per_class))
            (staging / split / c).mkdir(parents=True, exist_ok=True)
            for p in photos:
                (staging / split / c / p.name).symlink_to(p.resolve())
    staging.rename(root)
    return root


def train_size(data: Path, out: Path, per_class: int, seed: int, epochs: int) -> dict:
    """One point of the curve: the run's metrics, trained (or resumed) unless finished."""
    run = out / "runs" / f"n{per_class or 'all'}-s{seed}"
    if not (run / "metrics.json").is_file():
        engine.fit(parse_train_args(["--data", str(subset(data, out, per_class, seed)), "--teacher", "--seed", str(seed),
                                     "--epochs", str(epochs), "--threads", "1", "--out", str(run), "--cache-dir",
                                     str(out / "cache"), *(["--resume"] if (run / "last.ckpt").is_file() else [])]))
    return json.loads((run / "metrics.json").read_text())


def curve_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "runs").glob("*/metrics.json")):
        m = json.loads(path.read_text())
        n_test = sum(sum(r) for r in m["confusion_test"])
        lo, hi = wilson_interval(round(m["test_acc"] * n_test / 100), n_test)
        train = out / ("data-" + path.parent.name[1:]) / "train"   # run n<N>-s<seed> trained on data-<N>-s<seed>
        per_class = sum(1 for p in train.rglob("*") if p.is_symlink()) // m["config"]["num_classes"]
        rows.append({"run": path.parent.name, "train photos a class": per_class,
                     "epochs": m["args"]["epochs"], "test (%)": f"{m['test_acc']:.2f}", "95% interval": f"{lo:.1f}-{hi:.1f}",
                     "final val (%)": f"{m['final_val_acc']:.2f}", "minutes": f"{m['train_minutes']:.0f}"})
    return sorted(rows, key=lambda r: (r["train photos a class"], r["run"]))


def plot_curve(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [r["train photos a class"] for r in rows]
    y = [float(r["test (%)"]) for r in rows]
    lo = [y_ - float(r["95% interval"].split("-")[0]) for y_, r in zip(y, rows)]
    hi = [float(r["95% interval"].split("-")[1]) - y_ for y_, r in zip(y, rows)]
    ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", capsize=3)
    ax.axhline(25, color="grey", ls=":", lw=1)
    ax.text(x[0], 26, "chance", color="grey", fontsize=8)
    ax.set(xscale="log", xlabel="train photos a class (log scale)", ylabel="test accuracy (%), 95% interval",
           title="Default recipe, no teacher, on fewer photos")
    ax.set_xticks(x, [str(v) for v in x])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root (default: %(default)s)")
    ap.add_argument("--sizes", type=at_least(0), nargs="+", default=[30, 60, 150, 300, 0],
                    help="train photos a class; 0 = all (default: %(default)s)")
    ap.add_argument("--seeds", type=at_least(0), nargs="+", default=[0], help="seeds of each size (default: %(default)s)")
    ap.add_argument("--epochs", type=at_least(1, 10_000), default=300, help="epochs of each run (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "learning_curve"), help="subsets, runs, table and figure (default: %(default)s)")
    return ap


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    with command_errors():
        data, out = check_data_root(args.data), Path(args.out)
        for n in args.sizes:
            for seed in args.seeds:
                train_size(data, out, n, seed, args.epochs)
        rows = curve_rows(out)
        save_json(rows, out / "learning_curve.json")
        save_text(markdown_table(rows) + "\n", out / "learning_curve.md")
        plot_curve(rows, out / "learning_curve.png")
        print(markdown_table(rows))
        print(f"-> {out / 'learning_curve.md'}, {out / 'learning_curve.png'}")


if __name__ == "__main__":
    main()
