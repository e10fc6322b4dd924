"""`make reproduce`'s chain end to end on tiny generated data (a tiny model for one epoch at every
step): the plan, every step's output, skipping what is done, and the comparison at the end."""
import json
import shutil

from conftest import write_split_root
from train import reproduce


def test_the_whole_chain_runs_and_a_second_call_skips_every_step(tmp_path, capsys):
    data, out = write_split_root(tmp_path / "data", per_class=6), tmp_path / "reproduce"
    argv = ["--data", str(data), "--out", str(out), "--smoke"]
    reproduce.main(argv)
    said = capsys.readouterr().out
    chain = reproduce.steps(str(data), out, smoke=True)
    assert all(s.done() for s in chain), [s.name for s in chain if not s.done()]
    assert all(f"done {s.name}" in said for s in chain) and "| large-s0 | - | to run |" in said
    for name in ("MODEL_CARD.md", "dog_emotion.onnx", "parity.md"):
        assert (out / "export" / name).is_file(), name
    # --smoke asks the export for the ONNX files alone: the bench times what was asked for, no more
    assert not (out / "export" / "dog_emotion.pte").exists()
    timed = {r["format"] for r in json.loads((out / "bench" / "bench.json").read_text())["inference"]}
    assert timed == {"eager", "onnx_fp32", "onnx_app"}
    assert "reproduced seeds" in said and "your data: nothing shipped to compare with" in said
    # every output complete: the plan says so and nothing runs again
    reproduce.main(argv)
    again = capsys.readouterr().out
    assert "start " not in again and again.count("| done |") == len(chain)

    # done means done for these inputs (the run above is reused, not redone)
    data_and_steps_are_checked_by_what_they_were_made_from(data, out, argv, capsys)


def data_and_steps_are_checked_by_what_they_were_made_from(data, out, argv, capsys):
    chain = {s.name: s for s in reproduce.steps(str(data), out, smoke=True)}
    # damaged files: a truncated checkpoint and export record are handled by the plan, not a traceback
    (out / "runs" / "large-s1" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    (out / "export" / "dog_emotion.meta.json").write_text("{ not json")
    reproduce.main([*argv, "--plan"])
    plan = capsys.readouterr().out
    assert "| export | temperature | to run again" in plan and "| bench | export | to run again" in plan
    assert "| large-s1 | - | done |" in plan   # its metrics and record hold; the checkpoint only resumes
    # a full run's plan never counts the smoke run's outputs: other options
    reproduce.main(["--data", str(data), "--out", str(out), "--plan"])
    assert "| done |" not in capsys.readouterr().out
    # another photo: every step is made from other data now
    shutil.copy(data / "train" / "sad" / "sad_0.jpg", data / "train" / "sad" / "sad_extra.jpg")
    assert not any(s.done() for s in reproduce.steps(str(data), out, smoke=True))
    (data / "train" / "sad" / "sad_extra.jpg").unlink()
    # a teacher to redo: the bank and every step after it are to run again, the other teachers are done
    stamp = chain["large-s2"].stamp.read_text()
    chain["large-s2"].stamp.unlink()
    reproduce.main([*argv, "--plan"])
    plan = capsys.readouterr().out
    assert "| large-s2 | - | to run again" in plan and "| large-s0 | - | done |" in plan
    assert "| bank | large-s0, large-s1, large-s2, teacher-large128-s3 | to run again" in plan
    assert "| student-s0 | bank | to run again" in plan
    chain["large-s2"].stamp.write_text(stamp)
    # the sibling to redo: it and what read it (temperature, export, bench), nothing before it
    stamp = chain["sibling"].stamp.read_text()
    chain["sibling"].stamp.unlink()
    reproduce.main([*argv, "--plan"])
    plan = capsys.readouterr().out
    again = {s for s in chain if f"| {s} |" in plan and "to run again" in plan.split(f"| {s} |")[1].split("\n")[0]}
    assert again == {"sibling", "temperature", "export", "bench"}, again
    # with its record back, a run redoes what is not done: the export whose record was damaged above, and the bench
    chain["sibling"].stamp.write_text(stamp)
    reproduce.main(argv)
    said = capsys.readouterr().out
    assert {name for name in chain if f"start {name}:" in said} == {"export", "bench"}
    assert all(s.done() for s in reproduce.steps(str(data), out, smoke=True))
