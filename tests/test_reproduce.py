"""`make reproduce`'s chain end to end on tiny generated data (a tiny model for one epoch at every
step): the plan, every step's output, skipping what is done, and the comparison at the end."""
import json

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
