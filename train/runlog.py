"""Training runs after the fact: read a run folder, compare recipes by their seeds, keep the run log.

A recipe is judged by the mean over its seeds of the final epoch's val accuracy (the EMA weights
at the end of a fixed schedule: docs/results.md, "Protocol"), shown with its standard deviation;
two recipes by the difference of their means with its standard error, paired by seed where both
ran the same seeds. The best-val epoch is reported beside it, with how far it sat above the final
epoch: picking the best of hundreds of epochs on 400 images flatters val.

The run log (docs/runs.jsonl) holds one row per run of the search; `python -m train.results`
renders docs/results.md's tables from it.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mobile_model import count_macs
from train.checkpoint import load_weights, safe_load
from train.common import REPO_ROOT, atomic_write, cpu_description, exclusive
from train.data import DataError
from train.recipes import recipe_key, recipe_overrides, recipe_record


def read_run(run_dir: str | Path) -> dict:
    """A training run's options and per-epoch history: metrics.json once it has finished,
    last.ckpt while it is still going (or was stopped)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        run = read_metrics(run_dir)
    elif (run_dir / "last.ckpt").is_file():
        run = safe_load(run_dir / "last.ckpt")
    elif run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a folder (a training run folder is the --out of `train`)")
    else:
        raise DataError(f"{run_dir}: not a training run folder (no metrics.json or last.ckpt in it)")
    if not run.get("history"):
        raise DataError(f"{run_dir}: the run has no finished epoch yet")
    if not isinstance(run.get("args"), dict) or not all(isinstance(h, dict) and "val_acc" in h for h in run["history"]):
        raise DataError(f"{run_dir}: not a run this trainer wrote (no 'args', or epochs without 'val_acc')")
    return {"args": run["args"], "history": run["history"], "finished": "val_acc" in run,
            "test_acc": run.get("test_acc")}


def read_json_table(path: Path, what: str) -> dict:
    """A run file that holds one JSON table, or a DataError naming the file and what is wrong with it."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(table, dict):
        raise DataError(f"{path}: holds a {type(table).__name__}, not {what}")
    return table


def read_metrics(run_dir: Path) -> dict:
    """A finished run's metrics.json."""
    return read_json_table(run_dir / "metrics.json", "a run's metrics")


def read_recipe_record(run_dir: Path) -> dict | None:
    """The recipe as the run started (recipe.json, written by train), or None for older runs."""
    path = run_dir / "recipe.json"
    if not path.is_file():
        return None
    record = read_json_table(path, "a recipe record")
    if not isinstance(record.get("recipe"), str) or not isinstance(record.get("values"), dict):
        raise DataError(f"{path}: not a recipe record (needs 'recipe', a path, and 'values', a table)")
    return record


def run_summary(name: str, run: dict, until: int = 0) -> dict:
    """Final and best val of one run, counting epochs up to `until` (0: all)."""
    h = [r for r in run["history"] if not until or r["epoch"] <= until]
    if not h:
        raise DataError(f"{name}: no epoch up to --until {until}")
    best = max(h, key=lambda r: r["val_acc"])
    return {"run": name, "model": run["args"]["model"], "seed": run["args"]["seed"],
            "epoch": h[-1]["epoch"], "epochs": run["args"]["epochs"],
            "finished": run["finished"],
            "final_val": h[-1]["val_acc"], "best_val": best["val_acc"], "best_epoch": best["epoch"],
            "minutes": sum(r["seconds"] for r in h) / 60, "key": recipe_key(run["args"])}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value: one seed says nothing of the spread)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def recipe_groups(summaries: list[dict]) -> list[dict]:
    """Runs that differ only in seed, as one row each: mean +- sd of final and best val, best first."""
    groups: dict[str, list[dict]] = {}
    for s in summaries:
        groups.setdefault(s["key"], []).append(s)
    rows = []
    for runs in groups.values():
        final, final_sd = mean_sd([r["final_val"] for r in runs])
        best, _ = mean_sd([r["best_val"] for r in runs])
        rows.append({"runs": [r["run"] for r in runs], "seeds": {r["seed"]: r["final_val"] for r in runs},
                     "model": runs[0]["model"], "n": len(runs), "final_mean": final, "final_sd": final_sd,
                     "best_mean": best, "best_minus_final": best - final})
    return sorted(rows, key=lambda g: -g["final_mean"])


def difference(a: dict, b: dict) -> dict:
    """Mean final val of recipe a minus recipe b, with its standard error: paired by seed when
    both ran the same seeds (the seed's own luck cancels), else Welch's unpaired error."""
    shared = sorted(set(a["seeds"]) & set(b["seeds"]))
    if len(shared) >= 2 and len(shared) == len(a["seeds"]) == len(b["seeds"]):
        d = [a["seeds"][s] - b["seeds"][s] for s in shared]
        return {"diff": float(np.mean(d)), "se": float(np.std(d, ddof=1) / math.sqrt(len(d))), "paired": True}
    se = math.sqrt(a["final_sd"] ** 2 / a["n"] + b["final_sd"] ** 2 / b["n"]) if min(a["n"], b["n"]) > 1 else float("nan")
    return {"diff": a["final_mean"] - b["final_mean"], "se": se, "paired": False}


def verdict(d: dict) -> str:
    if math.isnan(d["se"]):
        return "unknown spread (one seed)"
    return "larger than the noise" if abs(d["diff"]) > 2 * d["se"] else "within the noise (under 2 SE)"


# ---------------------------------------------------------------- the run log

def machine() -> str:
    return f"{cpu_description()}, {os.cpu_count()} CPUs"


def log_row(run_dir: str | Path, note: str = "") -> dict:
    """One run log row of a finished run folder (metrics.json): what it trained and what it read."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise DataError(f"{run_dir}: no metrics.json (not a finished training run)")
    m = read_metrics(run_dir)
    missing = [k for k in ("args", "params", "train_params", "history", "best_epoch", "train_minutes", "config") if k not in m]
    if missing or not m.get("history"):
        raise DataError(f"{run_dir / 'metrics.json'}: lacks {', '.join(missing) or 'history'} (not a finished run of this trainer)")
    a = m["args"]
    model, _ = load_weights(run_dir / "dog_emotion.pkl")
    recorded = read_recipe_record(run_dir)
    if recorded is None and a.get("config") and not Path(a["config"]).is_file():   # e.g. a seed file (they went)
        raise DataError(f"{run_dir}: its recipe {a['config']} is gone and the run (from before runs kept recipe.json) "
                        "has no record of it: restore the file to log the run")
    if recorded is None:   # a run from before runs kept recipe.json: its recipe file as it is now
        recorded = recipe_record(a.get("config", ""))
    recipe = Path(recorded["recipe"]).resolve() if recorded["recipe"] else None
    return {"run": run_dir.resolve().name, "folder": folder_name(run_dir), "recipe": str(recipe.relative_to(REPO_ROOT)) if recipe and recipe.is_relative_to(REPO_ROOT)
            else str(recipe or ""), "options": recipe_overrides(a, recorded), "recipe_values": recorded["values"],
            "model": a["model"], "seed": a["seed"], "teacher": [teacher_name(t) for t in a.get("teacher", [])],
            "train_on": a.get("train_on", "train"), "params": m["params"], "train_params": m["train_params"],
            "macs": count_macs(model),
            "epochs": a["epochs"], "final_val": m["history"][-1]["val_acc"],
            "best_val": max(h["val_acc"] for h in m["history"]),
            "best_epoch": m["best_epoch"], "test": m.get("test_acc"), "minutes": round(m["train_minutes"], 1),
            "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "input_size": m["config"]["input_size"], "note": note}


def folder_name(run_dir: Path) -> str:
    """Where a run was, relative to the project when inside it: two folders of one name stay apart."""
    full = run_dir.resolve()
    return str(full.relative_to(REPO_ROOT)) if full.is_relative_to(REPO_ROOT) else str(full)


def teacher_name(path: str) -> str:
    """weights/teacher_large.pkl -> teacher_large; artifacts/runs/X/dog_emotion.pkl -> X."""
    p = Path(path)
    return p.parent.name if p.stem == "dog_emotion" else p.stem


def append_log(row: dict, log: Path) -> None:
    """Add (or replace, by run name) one row of the JSON-lines log, atomically; concurrent adds take
    turns (read, change, write under one lock), so none is lost."""
    with exclusive(log.parent / f".{log.name}.lock", f"{log}: busy", wait=True):
        rows = read_log(log)
        twin = next((r for r in rows if r["run"] == row["run"] and r.get("folder", row.get("folder")) != row.get("folder")), None)
        if twin:
            raise DataError(f"{log}: a run named {row['run']!r} from {twin['folder']} is already logged; "
                            f"{row['folder']} is another run: rename its folder")
        rows = [r for r in rows if r["run"] != row["run"]] + [row]
        atomic_write(log, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows)), mode="w")


LOG_KEYS = ("run", "recipe", "options", "model", "seed", "teacher", "params", "macs", "epochs", "final_val", "best_val",
            "test", "minutes", "date")   # what the tables read of every row


def read_log(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    try:
        text = log.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{log}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{log}: line {i} is not JSON ({e.msg})") from None
            missing = [k for k in LOG_KEYS if not isinstance(row, dict) or k not in row]
            if missing:
                raise DataError(f"{log}: line {i} is not a run row (" + (f"lacks {', '.join(missing)}" if isinstance(row, dict)
                                                                         else f"a {type(row).__name__}") + ")")
            rows.append(row)
    return rows
