"""Epoch time of a training recipe (the shipped one unless told) laid out three ways on this
machine's cores, side by side: 1 process x 1 thread (how the recipes' search runs ran, two side by
side), 1 process x 2 threads (how `make train` runs here), and 2 processes x 1 thread (DDP via
torchrun, half the batch each, as `make train-ddp`: the same images per step in all three).

Every layout is started the same way (torchrun; with one process it is a plain run) and reads its
epoch times from the run's own checkpoint history: the training pass plus rank 0's val evaluation.
A recipe that reads a teacher bank gets it recorded first, on every core, untimed (once per machine:
later runs read it from artifacts/cache).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from train.checkpoint import safe_load
from train.common import REPO_ROOT
from train.data import DataError

BATCH = 64                               # images per step, as in the recipe
LAYOUTS = ((1, 1), (1, 2), (2, 1))       # (processes, threads per process)
QUICK = ["--model", "nano", "--input-size", "32", "--teacher"]  # a tiny model, no teacher: seconds
COLUMNS = {"processes": "processes", "threads": "threads per process", "batch_per_process": "batch per process",
           "epochs_timed": "epochs timed", "epoch_s": "epoch, median (s)", "speed_up": "speed-up vs 1 x 1"}


def recipe_argv(recipe: str) -> list[str]:
    return ["--config", str(Path(recipe).resolve()) if recipe else ""]


def record_bank(recipe: str, data: str) -> None:
    """The recipe's teacher bank, built before any layout is timed (when the recipe has one)."""
    from train.recipes import parse_train_args
    args = parse_train_args(recipe_argv(recipe))
    if args.teacher_views and args.teacher:
        print("  the recipe's teacher bank: from the cache, or recorded there first (untimed; ~20-35 min on 2 cores)")
        done = subprocess.run([sys.executable, "-m", "train.bank", *recipe_argv(recipe), "--data", str(Path(data).resolve()),
                               "--threads", "0"], cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError("the teacher bank could not be recorded:\n" + done.stderr.strip()[-1500:])


def time_layout(recipe: str, processes: int, threads: int, data: str, epochs: int, quick: bool) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "train.dog_emotion", "train", *(QUICK if quick else recipe_argv(recipe)),
               "--data", str(Path(data).resolve()),
               "--batch-size", str(BATCH), "--threads", str(threads), "--epochs", str(epochs),
               "--stop-after", str(epochs), "--out", out]
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if done.returncode != 0:
            raise DataError(f"training run with {processes} process(es) x {threads} thread(s) failed:\n"
                               + done.stderr.strip()[-1500:])
        return [h["seconds"] for h in safe_load(Path(out) / "last.ckpt")["history"]]


def bench_training(recipe: str, data: str, epochs: int, quick: bool) -> list[dict]:
    rows = []
    if not quick:
        record_bank(recipe, data)
    for processes, threads in LAYOUTS:
        seconds = time_layout(recipe, processes, threads, data, epochs, quick)
        timed = seconds[1:] or seconds  # the first epoch also pays for start-up, when there are others
        rows.append({"processes": processes, "threads": threads, "batch_per_process": BATCH // processes,
                     "epochs_timed": len(timed), "epoch_s": statistics.median(timed)})
        print(f"  {processes} process(es) x {threads} thread(s): {rows[-1]['epoch_s']:.1f} s per epoch")
    for r in rows:
        r["speed_up"] = rows[0]["epoch_s"] / r["epoch_s"]
    return rows
