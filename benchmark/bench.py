"""The project's one benchmark entry point: every ratio it reports is measured side by side in this run.

    python -m benchmark.bench [--export-dir artifacts/export] [--quick]   # make bench

1. Inference per exported format and thread count (benchmark/inference.py).
2. The training input pipeline, per-image transforms vs the decoded cache (benchmark/input_pipeline.py).
3. The from-scratch MNIST network vs torch.nn + autograd (benchmark/mnist_autograd.py).
4. Training epoch time of --recipe: 1 process x 1 thread, 1 x 2, 2 processes (DDP) x 1 (benchmark/training_layouts.py).
Writes bench.json (rows with snake_case keys), bench.md (the same rows as Markdown tables, units
in the column titles) and bench.png under --out (default artifacts/bench/). Run it with nothing
else on the cores: timings taken while training runs are not comparable. The CPU time stolen by
the hypervisor and used by other processes during the run is measured and written beside the
timings (benchmark/contention.py), with a warning when it is over 5% of the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import torch

from benchmark import contention, inference, input_pipeline, mnist_autograd, training_layouts
from train.checkpoint import load_for_export
from train.common import (ARTIFACTS, SHIPPED_WEIGHTS, command_errors, cpu_description, markdown_table,
                          save_json, save_text)
from train.data import DEFAULT_DATA, check_data_root, load_for_model
from train.recipes import read_recipe


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights .pkl (default: %(default)s)")
    ap.add_argument("--export-dir", default=str(ARTIFACTS / "export"), help="folder of `make export` (default: %(default)s)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "bench"), help="output folder (default: %(default)s)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default: %(default)s)")
    ap.add_argument("--no-flip-average", action="store_true", help="eager without mirror-image averaging, to match "
                                                                    "files exported with --no-flip-average (default: off)")
    ap.add_argument("--recipe", default="", help="training recipe that part 4 times (default: none, the train command's "
                                                "defaults: the shipped model's recipe)")
    ap.add_argument("--train-epochs", type=int, default=0, help="epochs per training layout (part 4; 2 or more: the first "
                                                                 "is not timed; a few minutes, plus the recipe's teacher "
                                                                 "bank once per machine); 0 skips part 4 (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="few runs and images, a tiny model in part 4: for tests and CI")
    return ap


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    start = contention.snapshot()
    with command_errors():
        if args.train_epochs > 0 and args.recipe:  # --quick trains on the recipe too, with a tiny model in its place
            read_recipe(Path(args.recipe))  # a missing or broken recipe stops here, not after the inference timings
        model, ckpt = load_for_export(args.weights, not args.no_flip_average)
        test = load_for_model(check_data_root(args.data) / "test", ckpt["classes"],
                              model.config, ARTIFACTS / "cache")
        print("inference:")
        rows = inference.bench_inference(model, Path(args.export_dir), ckpt["sha256"], test, args.threads, args.quick)
        print("training input pipeline:")
        pipeline = input_pipeline.bench_input_pipeline(test.paths, model.config.input_size, args.quick)
        print(f"  {pipeline}")
        print("from-scratch MNIST vs torch.nn + autograd:")
        mnist = mnist_autograd.bench_mnist(args.quick)
        print(f"  {mnist}")
        training = []
        if args.train_epochs > 0:
            print("training epoch time, processes x threads:")
            training = training_layouts.bench_training(args.recipe, args.data, args.train_epochs, args.quick)
    shared = contention.contention(start, contention.snapshot())
    export_rows = export_times(Path(args.export_dir))
    machine = f"{cpu_description()}, {os.cpu_count()} CPUs, {platform.platform()}"
    result = {"date": date.today().isoformat(), "machine": machine, "quick": args.quick, "torch": torch.__version__,
              "flip_average": not args.no_flip_average, "weights_sha256": ckpt["sha256"], "recipe": args.recipe, "contention": shared,
              "inference": rows, "input_pipeline": pipeline, "mnist": mnist, "training": training, "export": export_rows}
    out = Path(args.out)
    save_json(result, out / "bench.json")
    text = (f"# Benchmark ({result['date']}, {machine}, torch {torch.__version__}{', QUICK' if args.quick else ''}"
            f"{', without flip averaging' if args.no_flip_average else ''})\n\n{contention.describe(shared)}\n\n"
            f"## Inference\n\n{markdown_table(rows, inference.COLUMNS)}\n"
            f"## Training input pipeline\n\n{markdown_table([pipeline], input_pipeline.COLUMNS)}\n"
            f"## From-scratch MNIST network vs torch.nn + autograd\n\n{markdown_table([mnist], mnist_autograd.COLUMNS)}\n"
            + (f"## Training epoch time ({'tiny model, QUICK' if args.quick else args.recipe or 'the shipped recipe'})\n\n"
               f"{markdown_table(training, training_layouts.COLUMNS)}\n" if training else "")
            + (f"## Export: each format's time to write and check (its run's own clock, parity.json)\n\n"
               f"{markdown_table(export_rows)}\n" if export_rows else "")
            + "![bench](bench.png)\n")
    save_text(text, out / "bench.md")
    inference.plot(rows, out / "bench.png")
    print("\n" + text)
    if shared["noisy"]:
        print(contention.describe(shared))
    return result


def export_times(export_dir: Path) -> list[dict]:
    """The export's own timing of each format it wrote and of the whole export (parity.json, measured
    by that run on the CPU it names); none for an export from before it was timed."""
    parity = json.loads((export_dir / "parity.json").read_text())
    rows = [{"format": f, "seconds": s} for f, s in parity.get("seconds", {}).items()]
    return rows + ([{"format": f"the whole export ({parity['cpu']})", "seconds": parity["total_seconds"]}]
                   if "total_seconds" in parity else [])


if __name__ == "__main__":
    main()
