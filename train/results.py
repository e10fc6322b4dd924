"""The run log and the tables made from it: docs/runs.jsonl -> docs/results.md's size table, docs/runs.md, docs/frontier.png.

    python -m train.results add RUN_DIR... [--note TEXT] [--read-test DATA]   # a finished run's row into the log
    python -m train.results render                          # make results: the tables and the plot

Every run of the search is one JSON line (recipe, options, seed, teacher, params, MACs, epochs,
final and best val, test if read, minutes, machine). `render` rewrites what lies between the
`<!-- generated: size-table -->` and `<!-- end: size-table -->` markers of docs/results.md (nothing
else of that page is touched), docs/runs.md whole, and the frontier plot.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from train.common import REPO_ROOT, RUN_LOG, command_errors, markdown_table, save_text
from train.data import DataError
from train.plots import plot_frontier
from train.recipes import SHIPPED_TEACHER, recipe_record, run_values

SHIPPED_VALUES = recipe_record("")["values"]   # the train command's defaults: the shipped recipe
from train.runlog import append_log, log_row, mean_sd, read_log
from train.scoring import test_accuracy

RESULTS = REPO_ROOT / "docs" / "results.md"
RUNS_PAGE = REPO_ROOT / "docs" / "runs.md"
FRONTIER = REPO_ROOT / "docs" / "frontier.png"


def cell(text: str) -> str:
    """A name as a Markdown table cell: '|' would split the column, '<' could open a comment or close a block."""
    return str(text).replace("|", "\\|").replace("<", "&lt;")


def recipe_name(row: dict) -> str:
    name = Path(row["recipe"]).stem if row["recipe"] else row["model"]
    return f"{name} {row['options']}".strip() + (" (train+val)" if row.get("train_on") == "train+val" else "")


def by_recipe(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(recipe_name(r), []).append(r)
    return groups


def spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, sd = mean_sd(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} +- {sd:.2f}"


def teacher_cell(names: list[str]) -> str:
    """The teachers of a run as the table names them: the shipped four by a short name."""
    return "the four `large`" if list(names) == [Path(t).stem for t in SHIPPED_TEACHER] else ", ".join(names) or "-"


def size_table(rows: list[dict]) -> str:
    """One row per recipe, smallest model first: its seeds' val (final weights where the run log
    has them; best-val epoch for runs from before the protocol) and test, mean +- sd."""
    table = []
    for name, runs in sorted(by_recipe(rows).items(), key=lambda kv: (kv[1][0]["params"], kv[0])):
        finals = [r["final_val"] for r in runs if r["final_val"] is not None]
        table.append({"recipe": cell(name), "model": runs[0]["model"], "teacher": teacher_cell(runs[0]["teacher"]),
                      "params": f"{runs[0]['params']:,}", "MACs": f"{runs[0]['macs'] / 1e6:.2f} M",
                      "epochs": runs[0]["epochs"], "seeds": ", ".join(str(r["seed"]) for r in runs),
                      "final val (%)": spread(finals),
                      "best val (%)": spread([r["best_val"] for r in runs]),
                      "test (%)": spread([r["test"] for r in runs]),
                      "minutes per run": f"{np.mean([r['minutes'] for r in runs]):.0f}"})
    return markdown_table(table)


def run_table(rows: list[dict]) -> str:
    return markdown_table([{"run": cell(r["run"]), "seed": r["seed"], "params": f"{r['params']:,}", "epochs": r["epochs"],
                            "final val": "-" if r["final_val"] is None else f"{r['final_val']:.2f}",
                            "best val": f"{r['best_val']:.2f}" + (f" at {r['best_epoch']}" if r.get("best_epoch") else ""),
                            "test": "-" if r["test"] is None else f"{r['test']:.2f}", "minutes": r["minutes"],
                            "date": r["date"]} for r in rows])


def replace_block(text: str, name: str, body: str, path: Path) -> str:
    pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)", re.S)
    if not pattern.search(text):
        raise DataError(f"{path}: no '<!-- generated: {name} -->' ... '<!-- end: {name} -->' block to fill")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def frontier_points(rows: list[dict]) -> list[dict]:
    """One point per recipe: its seeds' test accuracy where test was read, else their final val
    where val was held out (train-only runs with final weights); recipes that trained on val and
    read no test, or were judged by a best-val epoch, say nothing about new photos and are left out."""
    points = []
    for name, runs in by_recipe(rows).items():
        tests = [r["test"] for r in runs if r["test"] is not None]
        held_out = [r["final_val"] for r in runs if r["final_val"] is not None and r.get("train_on", "train") == "train"]
        values, kind = (tests, "test") if tests else (held_out, "val") if len(held_out) == len(runs) else ([], "")
        if values:
            points.append({"name": name, "params": runs[0]["params"], "mean": float(np.mean(values)),
                           "lo": min(values), "hi": max(values), "kind": kind, "seeds": len(values),
                           "teacher": runs[0]["model"] == "large",   # the teachers, apart from the students
                           "shipped": any(run_values(r) == SHIPPED_VALUES for r in runs if "recipe_values" in r)})
    return points


def render(log: Path = RUN_LOG, page: Path = RESULTS, figure: Path = FRONTIER, runs_page: Path = RUNS_PAGE) -> None:
    rows = read_log(log)
    if not rows:
        raise DataError(f"{log}: no runs logged")
    save_text(replace_block(page.read_text(), "size-table", size_table(rows), page), page)
    save_text(f"# Every run\n\nOne row per run of the run log, [runs.jsonl](runs.jsonl), generated by `make results`; "
              f"each row there also keeps the run's recipe values, options and note.\n\n{run_table(rows)}", runs_page)
    plot_frontier(frontier_points(rows), figure)
    print(f"rendered {len(rows)} runs of {log} into {page}, {runs_page} and {figure}")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", default=str(RUN_LOG), help="the run log, JSON lines (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="add finished runs (their metrics.json) to the log, replacing rows of the same name")
    a.add_argument("runs", nargs="+", help="run folders (the --out of `train`)")
    a.add_argument("--note", default="", help="what the run was for (default: none)")
    a.add_argument("--read-test", metavar="DATA", default=None,
                   help="evaluate each run's weights on the test split of this split root and log that "
                        "(runs trained with --no-test; the protocol reads a size's seeds at once) (default: the "
                        "test the run itself read, if any)")
    sub.add_parser("render", help="rewrite docs/results.md's size table, docs/runs.md and docs/frontier.png from the log")
    return p


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    with command_errors():
        if args.command == "add":
            for run in args.runs:
                row = log_row(run, args.note)
                if args.read_test:
                    row["test"] = test_accuracy(Path(run) / "dog_emotion.pkl", args.read_test)
                append_log(row, Path(args.log))
                print(f"logged {run}" + (f": test {row['test']:.2f}%" if row["test"] is not None else ""))
        else:
            render(Path(args.log))


if __name__ == "__main__":
    main()
