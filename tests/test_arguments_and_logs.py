"""Nothing lost, nothing mixed (arguments and the run log): every bad option or broken file is
`error: <file or option>: <problem>` with exit status 2, and a log row never overwrites another run's."""
import json
import subprocess
import sys

import pytest

from conftest import write_split_root
from test_train import TINY, run_train
from train import dog_emotion, results, runlog
from train.common import REPO_ROOT


@pytest.mark.parametrize("argv, message", [
    (["train.dog_emotion", "predict", "x.jpg", "--device", "bogus"], "--device: 'bogus' is not a device"),
    (["train.dog_emotion", "evaluate", "--device", "bogus"], "--device: 'bogus' is not a device"),
    (["train.dog_emotion", "compare", "run", "--window", "0"], "--window: 0 is less than 1"),
    (["export.export", "--calib-count", "0"], "--calib-count: 0 is less than 1"),
    (["export.export", "--calib-count", "-3"], "--calib-count: -3 is less than 1"),
    (["train.mnist_scratch", "train", "--epochs", "0"], "--epochs: 0 is less than 1"),
    (["train.mnist_scratch", "train", "--batch-size", "-5"], "--batch-size: -5 is less than 1"),
    (["train.mnist_scratch", "train", "--seed", "-1"], "--seed: -1 is less than 0"),
    (["train.mnist_scratch", "train", "--lr", "nan"], "--lr: nan is not a finite number"),
    (["train.prepare_data", "--raw", "r", "--out", "o", "--near-bits", "256"], "--near-bits: 256 is more than 128"),
])
def test_bad_options_are_named_before_any_work(argv, message):
    p = subprocess.run([sys.executable, "-m", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_a_cache_folder_that_is_a_file_is_named(split_root, tmp_path, capsys):
    (tmp_path / "cachefile").write_text("x")
    with pytest.raises(SystemExit):
        dog_emotion.main(["train", "--data", str(split_root), "--out", str(tmp_path / "o"), *TINY,
                          "--cache-dir", str(tmp_path / "cachefile")])
    assert "--cache-dir " + str(tmp_path / "cachefile") + ": is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b'[1, 2]\n', "line 1 is not a run row (a list)"),
    (b'{"run": "x"}\n', "line 1 is not a run row (lacks recipe, options"),
    (b'{"run": \xff}\n', "not UTF-8 text"),
    (b'{"run"\n', "line 1 is not JSON"),
])
def test_broken_run_logs_are_named(tmp_path, content, message, capsys):
    log = tmp_path / "runs.jsonl"
    log.write_bytes(content)
    with pytest.raises(SystemExit):
        results.main(["--log", str(log), "render"])
    assert message in capsys.readouterr().err
    assert log.read_bytes() == content


@pytest.fixture
def finished_run(tmp_path):
    root = write_split_root(tmp_path / "data")
    run_train(root, tmp_path / "a" / "train", "--epochs", "1")
    return tmp_path / "a" / "train"


@pytest.mark.parametrize("metrics, message", [
    ("{not json", "metrics.json: not a JSON file"),
    ("[1]", "metrics.json: holds a list, not a run's metrics"),
    ('{"args": {}}', "metrics.json: lacks params"),
])
def test_broken_metrics_are_named_by_add_and_compare(finished_run, tmp_path, metrics, message, capsys):
    (finished_run / "metrics.json").write_text(metrics)
    with pytest.raises(SystemExit):
        results.main(["--log", str(tmp_path / "log.jsonl"), "add", str(finished_run)])
    assert message in capsys.readouterr().err
    if message.endswith("lacks params"):
        return   # compare reads a run's history and args only
    with pytest.raises(SystemExit):
        dog_emotion.main(["compare", str(finished_run), "--out", str(tmp_path / "c.png")])
    assert message in capsys.readouterr().err


def test_log_rows_never_replace_another_folders_run_and_names_are_escaped(finished_run, tmp_path, monkeypatch, capsys):
    log = tmp_path / "log.jsonl"
    results.main(["--log", str(log), "add", str(finished_run)])
    other = tmp_path / "b" / "train"                      # the same folder name, another run
    other.parent.mkdir()
    import shutil
    shutil.copytree(finished_run, other)
    with pytest.raises(SystemExit):
        results.main(["--log", str(log), "add", str(other)])
    assert "a run named 'train' from" in capsys.readouterr().err
    assert len(runlog.read_log(log)) == 1
    results.main(["--log", str(log), "add", str(finished_run)])   # the same folder again: its row is refreshed
    monkeypatch.chdir(finished_run)
    results.main(["--log", str(log), "add", "."])                 # '.' is the folder's own name, not ''
    assert [r["run"] for r in runlog.read_log(log)] == ["train"]
    row = runlog.read_log(log)[0]
    row["run"] = "a|b <!-- end: size-table -->"
    log.write_text(json.dumps(row) + "\n")
    page = tmp_path / "results.md"
    page.write_text("<!-- generated: size-table -->\n<!-- end: size-table -->\n")
    for _ in range(2):   # rendering twice gives the same page: the name cannot end the block early
        results.render(log, page, tmp_path / "f.png", tmp_path / "runs.md")
    text = page.read_text()
    assert text.count("<!-- end: size-table -->") == 1
    assert "a\\|b &lt;!-- end" in (tmp_path / "runs.md").read_text()
