"""From the data alone to every shipped file, in one command (`make reproduce`): the four teachers,
their bank of recorded views, the shipped recipe's three seeds, its train-only sibling and the
temperature fitted with it, the export (every format, parity, model card) and the bench, then a
comparison of what came out with what ships.

    python -m train.reproduce [--data DIR] [--out artifacts/reproduce] [--jobs 2] [--plan] [--smoke]

Every step writes under --out and records what it was made from (<out>/stamps/<step>.json: its
command line, the data's content and the records of the steps it read); it is skipped only when its
output is complete and loads and that record still holds, so outputs of other data, options or
`--smoke`, or made before a step they read was redone, run again, as does every step after them. A
stopped training run resumes from its last epoch, so the command picks up where a session ended. The plan, with each
step's state and its time at the run log's pace, prints first. `--smoke` runs the same chain with
a tiny model for one epoch (tests/test_reproduce.py). The steps and what they run are one table,
`steps()`, read top to bottom.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from train.common import ARTIFACTS, REPO_ROOT, RUN_LOG, SHIPPED_WEIGHTS, at_least, command_errors, markdown_table
from train.data import DEFAULT_DATA, DataError, check_data_root, file_digest
from train.recipes import SHIP_RUN_OPTIONS, SHIPPED_TEACHERS
from train.runlog import mean_sd, read_log
from train.scoring import test_accuracy

STUDENT_SEEDS = (0, 1, 2)   # the shipped recipe's seeds: seed 0 ships (declared in advance), 1 and 2 give the spread


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def loads_json(path: Path) -> bool:
    return read_stamp(path) is not None


@dataclass
class Step:
    name: str
    argv: list[str]                       # python -m ... arguments
    output: Path                          # what the step writes
    needs: list[str] = field(default_factory=list)
    logged_as: str = ""                   # the run log's run of the same step: its minutes estimate this one
    resumable: Path | None = None         # a training run's last.ckpt
    complete: Callable[[Path], bool] = loads_json   # whether `output` says the step is done
    stamps: Path = Path()                 # the folder of every step's record of what it was made from
    data_key: str = ""
    upstream: list["Step"] = field(default_factory=list)   # the steps named in needs

    @property
    def stamp(self) -> Path:
        return self.stamps / f"{self.name}.json"

    def made_from(self) -> dict:
        """What this step is made from now: its command, the data, and the records the steps it reads left."""
        return {"argv": self.argv, "data": self.data_key,
                "needs": {n: read_stamp(self.stamps / f"{n}.json") for n in self.needs}}

    def stamp_holds(self) -> bool:
        return (read_stamp(self.stamp) or {}).get("made_from") == self.made_from()

    def done(self) -> bool:
        """Done for these inputs: what it read is done, its record holds and its output loads."""
        return all(u.done() for u in self.upstream) and self.stamp_holds() and self.complete(self.output)


def records_temperature(weights: Path) -> bool:
    """The temperature step writes into the student's weights file: done once that records one."""
    try:
        return "calibration" in torch.load(weights, weights_only=True)
    except Exception:   # missing or damaged: the step runs (again)
        return False


def data_key(root: Path) -> str:
    """The data's content: every file's path under the root and its bytes (~1 s for the shipped set;
    read in chunks, and an unreadable file counts by its error)."""
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"|{path.relative_to(root)}|".encode())
        try:
            h.update(file_digest(path).encode())
        except OSError as e:
            h.update(f"unreadable {e.errno}".encode())
    return h.hexdigest()[:16]


def train_step(name: str, out: Path, options: list[str], needs: list[str], logged_as: str, extra: list[str]) -> Step:
    run = out / "runs" / name
    return Step(name, ["train.dog_emotion", "train", *options, "--out", str(run), "--cache-dir", str(out / "cache"),
                       "--threads", "1", "--no-test", *extra],
                run / "metrics.json", needs, logged_as, run / "last.ckpt")


# --smoke: every training run a tiny model for one epoch, the ONNX files alone, a quick bench
SMOKE_TRAIN = ["--model", "nano", "--input-size", "32", "--epochs", "1", "--batch-size", "8", "--warmup-epochs", "1"]
SMOKE_EXPORT = ["--formats", "onnx_fp32", "onnx_app"]


def has_bank(cache: Path) -> bool:
    """The bank step records the teachers' bank in the chain's cache folder (train/teacher_bank.py names it
    by a hash of what decides it); the chain holds one bank."""
    return any(cache.glob("bank-*.pt"))


def steps(data: str, out: Path, smoke: bool = False) -> list[Step]:
    """The chain. Names are the run folders under <out>/runs; `logged_as` is the run log's row of
    the same recipe (its minutes, one thread, two side by side, are the estimate)."""
    runs, d, extra = out / "runs", ["--data", data], SMOKE_TRAIN if smoke else []
    chain = [train_step(t.name, out, [*d, "--config", f"recipes/{t.recipe}.toml", "--seed", str(t.seed)], [],
                        "teacher-large-s1" if t.recipe == "large" else t.recipe, extra) for t in SHIPPED_TEACHERS]
    teachers = ["--teacher", *(str(runs / t.name / "dog_emotion.pkl") for t in SHIPPED_TEACHERS)]
    # the bank once, on both cores, before the students that read it start side by side
    chain.append(Step("bank", ["train.bank", *d, *teachers, "--cache-dir", str(out / "cache"), "--threads", "0", *extra],
                      out / "cache", [t.name for t in SHIPPED_TEACHERS], complete=has_bank))
    chain += [train_step(f"student-s{s}", out, [*d, *teachers, *SHIP_RUN_OPTIONS, "--seed", str(s)], ["bank"],
                         f"mini14-bank-tv-s{s}", extra)
              for s in STUDENT_SEEDS]
    chain.append(train_step("sibling", out, [*d, *teachers], ["bank"],
                            "mini14-bank-s0", extra))
    student = str(runs / "student-s0" / "dog_emotion.pkl")
    chain.append(Step("temperature", ["export.calibration", "--weights", student, "--data", data,
                                      "--sibling", str(runs / "sibling" / "dog_emotion.pkl")],
                      Path(student), ["student-s0", "sibling"], complete=records_temperature))
    chain.append(Step("export", ["export.export", "--weights", student, "--data", data, "--out", str(out / "export"),
                                 *(SMOKE_EXPORT if smoke else [])],
                      out / "export" / "dog_emotion.meta.json", ["temperature"]))
    chain.append(Step("bench", ["benchmark.bench", "--weights", student, "--data", data, "--export-dir", str(out / "export"),
                                "--out", str(out / "bench"), *(["--quick"] if smoke else [])],
                      out / "bench" / "bench.json", ["export"]))
    key, by_name = data_key(Path(data)), {s.name: s for s in chain}
    for s in chain:
        s.stamps, s.data_key, s.upstream = out / "stamps", key, [by_name[n] for n in s.needs]
    return chain


def logged_minutes() -> dict[str, float]:
    return {r["run"]: r["minutes"] for r in read_log(RUN_LOG)}


def resume_epoch(step: Step) -> int | None:
    """The epoch a stopped training run of this very step would resume after, or None: no
    checkpoint, one of other inputs, or a damaged one (the run then starts afresh)."""
    if step.resumable is None or not step.resumable.is_file() or not step.stamp_holds() \
            or not all(u.done() for u in step.upstream):
        return None
    try:
        return torch.load(step.resumable, weights_only=True, map_location="cpu").get("epoch", 0)
    except Exception:
        return None


def state(step: Step) -> str:
    if step.done():
        return "done"
    epoch = resume_epoch(step)
    if epoch is not None:
        return f"resumes at epoch {epoch + 1}"
    if step.stamp.is_file() or step.output.exists():
        return "to run again (made from other inputs, or incomplete)"
    return "to run"


def plan(chain: list[Step], jobs: int, tiny: bool) -> str:
    minutes = logged_minutes()
    rows = [{"step": s.name, "needs": ", ".join(s.needs) or "-", "state": state(s),
             "minutes at the run log's pace": ("-" if tiny or not s.logged_as else f"{minutes.get(s.logged_as, float('nan')):.0f}"),
             "command": "python -m " + shlex.join(s.argv[:2]) + " ..."} for s in chain]
    return markdown_table(rows) + ("" if tiny else
                                   f"\nTime left: about {wall_minutes(chain, minutes, jobs) / 60:.1f} h with {jobs} runs side by "
                                   "side, one thread each (the run log's minutes; the bank adds up to ~35 min, the export and bench ~10).\n")


def wall_minutes(chain: list[Step], minutes: dict[str, float], jobs: int) -> float:
    """The chain's time left as run_chain schedules it (each step as soon as its needs are done,
    `jobs` at a time), each step taking its logged run's minutes."""
    end = {s.name: 0.0 for s in chain if s.done()}
    slots = [0.0] * jobs
    for s in [s for s in chain if not s.done()]:   # the table is in an order where needs come first
        slot = min(range(jobs), key=slots.__getitem__)
        start = max([slots[slot]] + [end[n] for n in s.needs])
        end[s.name] = slots[slot] = start + minutes.get(s.logged_as, 0.0)
    return max(end.values(), default=0.0)


def run_chain(chain: list[Step], out: Path, jobs: int) -> None:
    """Each step once its needs are done, `jobs` at a time; a step that fails stops the chain after
    the running ones end (their logs: <out>/logs/<step>.log)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending = [s for s in chain if state(s) != "done"]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    failed = []
    while (pending or running) and not failed:
        done = {s.name for s in chain if s.name not in running and s.done()}
        for s in [s for s in pending if set(s.needs) <= done][:jobs - len(running)]:
            if resume_epoch(s) is not None:
                argv = s.argv + ["--resume"]
            else:   # afresh: a training run replaces what its folder held (another run of this chain's)
                argv = s.argv + (["--force"] if s.resumable is not None and s.resumable.parent.exists() else [])
                s.stamps.mkdir(parents=True, exist_ok=True)
                s.stamp.write_text(json.dumps({"made_from": s.made_from(), "started": time.time()}))
            print(f"[{time.strftime('%H:%M:%S')}] start {s.name}: python -m {shlex.join(argv)}", flush=True)
            log = open(out / "logs" / f"{s.name}.log", "a")
            running[s.name] = (subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT), time.time())
            pending.remove(s)
        time.sleep(0.2)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            ok = proc.returncode == 0 and next(s for s in chain if s.name == name).done()
            print(f"[{time.strftime('%H:%M:%S')}] {'done' if ok else 'FAILED'} {name} ({(time.time() - t0) / 60:.1f} min)", flush=True)
            if not ok:
                failed.append(name)
    for proc, _ in running.values():
        proc.wait()
    if failed:
        tail = (out / "logs" / f"{failed[0]}.log").read_text(errors="replace").strip().splitlines()[-15:]
        raise DataError(f"step {failed[0]} failed; its log, {out / 'logs' / (failed[0] + '.log')}, ends:\n" + "\n".join(tail))


def compare(out: Path, data: Path) -> str:
    """The reproduced seeds' test accuracy beside the run log's seeds of the shipped recipe: a
    reproduction holds when its mean lies within two of the logged seeds' standard deviations (plus
    the reproduced mean's own) of theirs; equality is not expected (seeds and machines differ)."""
    tests = [test_accuracy(out / "runs" / f"student-s{s}" / "dog_emotion.pkl", data) for s in STUDENT_SEEDS]
    mean, sd = mean_sd(tests)
    text = f"reproduced seeds {', '.join(f'{t:.2f}' for t in tests)}% on {data / 'test'}: mean {mean:.2f} +- {sd:.2f}"
    if data.resolve() != DEFAULT_DATA.resolve():
        return text + "; your data: nothing shipped to compare with"
    logged = [r["test"] for r in read_log(RUN_LOG) if r["run"] in [f"mini14-bank-tv-s{s}" for s in STUDENT_SEEDS]]
    lmean, lsd = mean_sd(logged)
    text += f"; the shipped file {test_accuracy(SHIPPED_WEIGHTS, data):.2f}%"
    holds = abs(mean - lmean) <= 2 * (lsd + sd)
    return text + (f"; the run log's seeds {lmean:.2f} +- {lsd:.2f}: "
                   + ("HOLDS (within two standard deviations)" if holds else "DIFFERS by more than two standard deviations"))


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root: the shipped data, or yours (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "reproduce"), help="every step's output (default: %(default)s)")
    ap.add_argument("--jobs", type=at_least(1, 8), default=2, help="training runs side by side, one thread each (default: %(default)s)")
    ap.add_argument("--plan", action="store_true", help="print the plan and stop")
    ap.add_argument("--smoke", action="store_true", help="check the chain, not the model: every training run a tiny "
                                                         "model for 1 epoch, the ONNX files alone, a quick bench (about "
                                                         "a minute on tiny data)")
    return ap


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    with command_errors():
        data, out = check_data_root(args.data), Path(args.out)
        chain = steps(str(data), out, args.smoke)
        print(f"make reproduce: {data} -> {out}\n\n{plan(chain, args.jobs, args.smoke)}", flush=True)
        if args.plan:
            return
        run_chain(chain, out, max(1, args.jobs))
        print(compare(out, data))


if __name__ == "__main__":
    main()
