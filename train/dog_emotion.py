"""Dog-emotion classifier: the commands (train, evaluate, predict, compare).

    python -m train.dog_emotion train    [--data DIR] [--config recipes/X.toml] [--epochs N] [--resume]
    python -m train.dog_emotion evaluate --data DIR [--weights weights/dog_emotion.pkl]
    python -m train.dog_emotion predict  IMAGE... [--weights weights/dog_emotion.pkl]
    python -m train.dog_emotion compare  RUN_DIR... [--until N] [--out runs.png]   # recipes by mean final val over seeds
    torchrun --standalone --nproc_per_node 2 -m train.dog_emotion train --batch-size 32 ...   # DDP

The work is done by the library: train/engine.py (training), train/scoring.py (inference and scores), train/recipes.py (--config),
train/runlog.py (comparing runs), train/classifier.py (labelling photos), train/data.py and train/checkpoint.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


from mobile_model import count_parameters
from train import engine, runlog, scoring
from train.checkpoint import load_weights
from train.classifier import Classifier
from train.common import (ARTIFACTS, SHIPPED_WEIGHTS, at_least, command_errors, device_name, markdown_table, percent, progress,
                          resolve_device)
from train.data import (DEFAULT_DATA, FRAMINGS, DataError, check_data_root, class_names, expand_inputs, is_split_root,
                        load_for_model)
from train.distributed import teardown
from train.plots import plot_prediction, plot_runs
from train.recipes import add_train_options, recipe_of


def cmd_evaluate(args) -> dict:
    """Accuracy of one weights file, or of several and of their ensemble (mean softmax)."""
    root = check_data_root(args.data)
    cache = Path(args.cache_dir) if args.cache_dir else None
    folder = root / args.split if is_split_root(root) else root
    models, logits, split = [], [], None
    found = class_names(folder)
    for weights in args.weights:
        model, ckpt = load_weights(weights)
        if args.framing:
            model.config = replace(model.config, framing=args.framing)
        model.to(resolve_device(args.device))
        if found != ckpt["classes"]:
            raise DataError(f"{folder}: class folders {found} differ from {weights}'s classes {ckpt['classes']}")
        split_here = load_for_model(folder, ckpt["classes"], model.config, cache)
        if split is not None and split_here.paths != split.paths:
            raise DataError(f"{folder}: {weights} reads other images than {args.weights[0]} (input sizes skip other files)")
        split = split_here
        models.append(model)
        logits.append(scoring.predict_logits(model, split.images))
        if len(args.weights) > 1:
            print(f"{weights}: {scoring.score(logits[-1], split)['acc']:.2f}%")
    r = scoring.score(scoring.ensemble_logits(logits) if len(logits) > 1 else logits[0], split)
    lo, hi = scoring.wilson_interval(r["correct"], r["n"])
    if len(args.weights) > 1:
        print(f"ensemble of the {len(args.weights)} (mean softmax):")
    print(f"{folder}: {r['n']} images, {len(split.skipped)} skipped" + (" (named above)" if split.skipped else "")
          + f", framed by {models[0].config.framing}")
    print(f"  accuracy {r['acc']:.2f}% (95% interval {lo:.1f}-{hi:.1f}%)")
    for c, a in r["per_class"].items():
        print(f"  {c:8s} {percent(a):>6s}")
    result = {"accuracy": round(r["acc"], 2), "ci95": [round(lo, 2), round(hi, 2)], "n": r["n"],
              "params": sum(count_parameters(m) for m in models),
              "skipped": len(split.skipped), "per_class": {c: None if a is None else round(a, 2) for c, a in r["per_class"].items()},
              "weights": args.weights[0] if len(args.weights) == 1 else args.weights, "data": str(folder),
              "framing": models[0].config.framing}
    print(json.dumps(result))
    return result


def cmd_predict(args) -> list[dict]:
    """Label and class probabilities of every image given (files, folders, glob patterns), with a
    weights file or an exported .onnx/.ort (train.classifier); each one that cannot be read is named.
    Exits non-zero when any failed. --json: one object per line and file, the keys the browser demo
    uses; --out: an annotated copy of each photo."""
    classifier = Classifier(args.weights, resolve_device(args.device))
    sys.stdout.reconfigure(errors="backslashreplace")   # a file name that is not valid UTF-8 prints escaped
    sys.stderr.reconfigure(errors="backslashreplace")
    paths = expand_inputs(args.images)
    if not paths:
        raise DataError(f"{', '.join(args.images)}: no image files found")
    if args.out:
        check_annotation_folder(Path(args.out), paths)
    results, failed = [], 0
    for path in progress(paths, desc="predict", unit="img"):
        row, img = classifier.label_file(path)
        results.append(row)
        if "error" in row:
            failed += 1
            print(json.dumps(row) if args.json else f"error: {row['error']}", file=sys.stdout if args.json else sys.stderr)
            continue
        print(json.dumps(row) if args.json else
              f"{path}: {row['label']}  " + "  ".join(f"{c} {p:.3f}" for c, p in row["probabilities"].items()))
        if args.out:
            row["annotated"] = str(plot_prediction(img, row, Path(args.out) / f"{len(results) - 1:04d}_{path.stem}.png"))
    if failed:
        raise DataError(f"{failed} of {len(paths)} images could not be read")
    return results


def check_annotation_folder(out: Path, inputs: list[Path]) -> None:
    """predict --out writes new files only: not into a file, not among the photos it reads."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a folder")
    inside = [p for p in inputs if p.resolve().is_relative_to(out.resolve())]
    if inside:
        raise DataError(f"--out {out}: holds the input {inside[0]}; annotated copies go to a folder of their own "
                        "(nothing was written)")


def cmd_compare(args) -> dict:
    """Runs side by side (val curves in one figure) and recipes ranked by mean final val over
    their seeds, +- sd, with each recipe's difference from the best and its standard error. Test
    accuracy is left out on purpose: this is for choosing between recipes, which is val's job."""
    names = [Path(d).name for d in args.runs]   # the folder name, or the whole path where two share a name
    runs = {(n if names.count(n) == 1 else str(d)): runlog.read_run(d) for n, d in zip(names, args.runs)}
    summaries = [runlog.run_summary(name, run, args.until) for name, run in runs.items()]
    rows = [{"run": s["run"], "model": s["model"], "seed": s["seed"],
             "epochs": f"{s['epoch']}/{s['epochs']}" + ("" if s["finished"] else " (running or stopped)"),
             "final val (%)": f"{s['final_val']:.2f}", "best val (%)": f"{s['best_val']:.2f} at {s['best_epoch']}",
             "minutes": f"{s['minutes']:.1f}"} for s in summaries]
    groups = runlog.recipe_groups(summaries)
    recipes = []
    for g in groups:
        d = runlog.difference(g, groups[0]) if g is not groups[0] else None
        recipes.append({"runs": ", ".join(g["runs"]), "seeds": g["n"],
                        "final val, mean +- sd (%)": f"{g['final_mean']:.2f} +- {g['final_sd']:.2f}",
                        "best val, mean (%)": f"{g['best_mean']:.2f}", "best - final": f"{g['best_minus_final']:+.2f}",
                        "vs the first (points)": "-" if d is None else
                        f"{d['diff']:+.2f} +- {d['se']:.2f} SE{' (paired)' if d['paired'] else ''}: {runlog.verdict(d)}"})
    print(markdown_table(rows))
    print("\nBy recipe (runs that differ only in seed), best mean final val first:\n")
    print(markdown_table(recipes))
    plot_runs({name: run["history"] for name, run in runs.items()}, args.out,
              f"val accuracy and loss per epoch (EMA weights); bold: running mean over {args.window} epochs",
              args.window)
    print(f"wrote {args.out}")
    return {"runs": rows, "recipes": recipes}


def get_args_parser(train_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The command line; `train_defaults` (a recipe's values) replace train's own defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = add_train_options(sub.add_parser("train", help="train from scratch; writes weights, curves, metrics under --out"))
    t.set_defaults(**(train_defaults or {}))

    for name, helptext in (("evaluate", "accuracy of a weights file on a folder of class subfolders"),
                           ("predict", "label and class probabilities for image files")):
        s = sub.add_parser(name, help=helptext)
        if name == "evaluate":
            s.add_argument("--weights", nargs="+", default=[str(SHIPPED_WEIGHTS)],
                           help="weights .pkl; several: each one's accuracy and their ensemble's (default: %(default)s)")
        else:
            s.add_argument("--weights", default=str(SHIPPED_WEIGHTS),
                           help="weights .pkl, or an exported .onnx/.ort (default: %(default)s)")
        s.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
        if name == "evaluate":
            s.add_argument("--data", default=str(DEFAULT_DATA), help="folder of <class>/ subfolders, or a split root (default: %(default)s)")
            s.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to use when --data is a split root (default: %(default)s)")
            s.add_argument("--cache-dir", default="", help="decoded-image cache folder (default: no cache)")
            s.add_argument("--framing", default="", choices=("", *FRAMINGS),
                           help="frame the photos another way than the model's own (crop or squash: what a client such "
                                "as MediaPipe does) to see what it reads there (default: the model's own)")
        else:
            s.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
            s.add_argument("--json", action="store_true", help='one JSON object per line and file: {"file", "label", '
                                                               '"probabilities"} or {"file", "error"}')
            s.add_argument("--out", default="", help="folder for an annotated copy of each photo (label and "
                                                     "probability bars; default: none)")
    c = sub.add_parser("compare", help="val curves of several training runs in one figure, and their best epochs")
    c.add_argument("runs", nargs="+", help="run folders (the --out of `train`), finished or not")
    c.add_argument("--out", default=str(ARTIFACTS / "compare.png"), help="figure to write (default: %(default)s)")
    c.add_argument("--window", type=at_least(1), default=9, help="epochs in the running mean drawn bold (default: %(default)s)")
    c.add_argument("--until", type=int, default=0, help="count epochs up to this one only, to compare schedules of "
                                                        "different lengths at equal epochs (default: all)")
    return p


COMMANDS = {"train": engine.fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "compare": cmd_compare}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line with train's --config recipe as its defaults; a bad recipe is a RecipeError."""
    return get_args_parser(recipe_of(argv[1:]) if argv[:1] == ["train"] else {}).parse_args(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    with command_errors():
        args = parse_args(argv)
        COMMANDS[args.command](args)
    teardown()


if __name__ == "__main__":
    main()
