"""Inference latency and throughput of every exported format, side by side with eager PyTorch.

Per format and thread count: file size, test accuracy, batch-1 latency p50/p90/p99 over many
timed runs after warm-up, batch-32 throughput (median of its runs), and ratios to eager at the
same thread count. onnxruntime: ORT_ENABLE_ALL, intra-op threads as stated, inter-op 1;
PyTorch: torch.set_num_threads as stated. ExecuTorch (.pte): its Python runtime has no thread
setting, so its XNNPACK threadpool runs with the runtime's default in both rows. LiteRT
(.tflite): ai-edge-litert's interpreter with its default XNNPACK delegate and num_threads as
stated; the files take a batch of 1, so its batch-32 column is 32 calls.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from benchmark.timing import time_calls
from export.runtimes import FORMATS, batched_logits, exported_from, make_runner, model_inputs
from train.common import accuracy
from train.data import DataError
from train.plots import plt, save_figure

ROW_FORMATS = ("eager", *FORMATS)   # eager PyTorch, then every format of the registry (export/formats.py)
COLUMNS = {"format": "format", "threads": "threads", "size_kb": "size (kB)", "test_acc": "test acc (%)",
           "p50_ms": "p50 (ms)", "p90_ms": "p90 (ms)", "p99_ms": "p99 (ms)", "batch32_img_per_s": "batch-32 (img/s)",
           "p50_vs_eager": "p50 vs eager", "batch32_vs_eager": "batch-32 vs eager"}


# the export refuses to write an INT8 program that fails its accuracy check, and writes no file whose
# environment is missing (.tflite without make venv-litert): no row then
OPTIONAL_FORMATS = tuple(f.name for f in FORMATS.values() if f.optional)


def asked_formats(export_dir: Path) -> list[str]:
    """The rows the export was asked to write (its parity.json; every row for an export made before
    `--formats`, or a folder without that record)."""
    try:
        return [f for f in json.loads((export_dir / "parity.json").read_text())["formats"] if f in FORMATS]
    except (OSError, ValueError, KeyError, TypeError):
        return list(FORMATS)


def check_exports(export_dir: Path, weights_sha256: str) -> list[str]:
    """The formats to time; refuses an export of other weights (its meta.json records their digest)
    and one that lacks a format the export was asked for and always writes."""
    digest = exported_from(export_dir)
    if digest != weights_sha256:
        raise DataError(f"{export_dir}: exported from other weights (sha256 {str(digest)[:12]}, these are "
                        f"{weights_sha256[:12]}); timing its files against this eager model would compare two models: "
                        "export these weights (`make export WEIGHTS=...`) or bench the weights it came from")
    asked = asked_formats(export_dir)
    missing = [f for f in asked if not (export_dir / FORMATS[f].file).is_file() and f not in OPTIONAL_FORMATS]
    if missing:
        raise DataError(f"{export_dir}: no exported {', '.join(missing)} "
                                f"({', '.join(FORMATS[f].file for f in missing)}); run `make export` first")
    for f in OPTIONAL_FORMATS:
        if f in asked and not (export_dir / FORMATS[f].file).is_file():
            print(f"  no {FORMATS[f].file} (the export did not write or keep it: parity.md says why); no row for {f}")
    return [f for f in ROW_FORMATS if f == "eager" or (export_dir / FORMATS[f].file).is_file()]


def bench_inference(model, export_dir: Path, weights_sha256: str, test, threads_list, quick: bool) -> list[dict]:
    formats = check_exports(export_dir, weights_sha256)
    size = model.config.input_size
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 3, size, size), dtype=np.uint8))
    warmup, runs, tp_runs = (5, 30, 5) if quick else (50, 500, 40)
    state_kb = sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 1000  # kB = 1,000 bytes
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        eager = None
        for fmt in formats:
            path = export_dir / FORMATS[fmt].file if fmt != "eager" else None
            run = make_runner(fmt, path, model=model, threads=threads)
            x1, x32 = next(model_inputs(fmt, pixels[:1], size, 1)), next(model_inputs(fmt, pixels, size, 32))
            lat = time_calls(lambda: run(x1), warmup, runs) * 1000
            tp = time_calls(lambda: run(x32), max(2, warmup // 5), tp_runs)
            row = {"format": fmt, "threads": threads,
                   "size_kb": round(path.stat().st_size / 1000 if path else state_kb, 1),
                   "test_acc": round(accuracy(batched_logits(run, test.images, size, fmt), test.labels.numpy()), 2),
                   "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
                   "p99_ms": float(np.percentile(lat, 99)), "batch32_img_per_s": float(32 / np.median(tp))}
            eager = eager or row
            row["p50_vs_eager"] = row["p50_ms"] / eager["p50_ms"]
            row["batch32_vs_eager"] = row["batch32_img_per_s"] / eager["batch32_img_per_s"]
            rows.append(row)
            print(f"  {fmt:12s} threads {threads}: p50 {row['p50_ms']:.3f} ms  batch-32 {row['batch32_img_per_s']:.0f} "
                  f"img/s  acc {row['test_acc']:.2f}%", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    threads_list = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, len(threads_list), figsize=(6 * len(threads_list), 4), squeeze=False)
    for threads, ax in zip(threads_list, axes[0]):
        rs = [r for r in rows if r["threads"] == threads]
        # whiskers clipped at 3x the slowest p50, so one stall (a 564 ms p99) cannot flatten every bar;
        # a clipped whisker's label gives its p99
        cap = 3 * max(r["p50_ms"] for r in rs)
        bars = ax.bar([r["format"] for r in rs], [r["p50_ms"] for r in rs],
                      yerr=[[0] * len(rs), [min(r["p99_ms"], cap) - r["p50_ms"] for r in rs]], capsize=4)
        ax.bar_label(bars, [f"{r['p50_ms']:.2f} ms\n{r['test_acc']:.1f}%" + (f"\np99 {r['p99_ms']:.0f} ms (clipped)"
                                                                          if r["p99_ms"] > cap else "") for r in rs],
                     fontsize=7, padding=2)
        ax.set_ylabel("batch-1 latency p50 (ms), whisker to p99")
        ax.set_title(f"{threads} thread{'s' if threads > 1 else ''}", fontsize=10)
        ax.tick_params(axis="x", labelrotation=35, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_ha("right")
        ax.set_ylim(0, max(min(r["p99_ms"], cap) for r in rs) * 1.3)   # room for the labels above the bars
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("dog-emotion model: latency and test accuracy per format (whiskers clipped at 3x the slowest p50)",
                 y=1.0)
    fig.tight_layout()
    save_figure(fig, path)
