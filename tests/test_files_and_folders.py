"""Nothing lost, nothing mixed (files and folders): every command writes only what it owns, one
writer at a time, and a refusal changes nothing. Each test asserts the message and the untouched files."""
import json
import shutil
import threading

import pytest

from conftest import write_split_root
from test_train import TINY, run_train
from train import dog_emotion, runlog
from train.common import exclusive


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_never_writes_among_its_inputs_or_into_a_file(split_root, tmp_path, capsys):
    run_train(split_root, tmp_path / "run", "--epochs", "1")
    weights = str(tmp_path / "run" / "dog_emotion.pkl")
    photos = split_root / "test"
    before = snapshot(photos)
    for out, message in ((photos, "holds the input"), (photos / "sad" / "sad_0.jpg", "is a file, not a folder")):
        with pytest.raises(SystemExit):
            dog_emotion.main(["predict", str(photos), "--weights", weights, "--out", str(out)])
        assert message in capsys.readouterr().err
        assert snapshot(photos) == before


def test_one_training_run_at_a_time_in_a_folder(split_root, tmp_path, capsys):
    out = tmp_path / "run"
    with exclusive(out / ".run.lock", "held by the test"):   # as a run that is still training would hold it
        with pytest.raises(SystemExit):
            run_train(split_root, out, "--epochs", "1", "--force")
    assert "another training run is writing to it now" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    run_train(split_root, out, "--epochs", "1")              # released: the next run goes ahead


def test_force_leaves_only_the_new_runs_files(split_root, tmp_path):
    out = tmp_path / "run"
    run_train(split_root, out, "--epochs", "1", "--keep", "best")   # writes best.pkl, confusion_test.png
    (out / "notes.txt").write_text("the user's own")
    run_train(split_root, out, "--epochs", "1", "--no-test", "--force")
    names = {p.name for p in out.iterdir()}
    assert "confusion_test.png" not in names and "best.pkl" in names   # best.pkl: the new run writes one too
    assert (out / "notes.txt").read_text() == "the user's own"
    assert json.loads((out / "metrics.json").read_text())["test_acc"] is None


def test_concurrent_run_log_adds_keep_every_row(tmp_path):
    log = tmp_path / "runs.jsonl"
    row = dict.fromkeys(runlog.LOG_KEYS)
    threads = [threading.Thread(target=runlog.append_log, args=({**row, "run": f"r{i}", "folder": f"/runs/r{i}"}, log))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["run"] for r in runlog.read_log(log)) == [f"r{i}" for i in range(8)]


def test_training_refuses_what_it_could_not_save_before_the_first_epoch(tmp_path, capsys):
    root = write_split_root(tmp_path / "data")
    for split in ("train", "val", "test"):
        for c in ("happy", "relaxed", "sad"):
            shutil.rmtree(root / split / c)
    with pytest.raises(SystemExit):
        dog_emotion.main(["train", "--data", str(root), "--out", str(tmp_path / "one"), *TINY])
    assert "1 class folder(s) (angry...); a classifier here takes 2 to 1000" in capsys.readouterr().err
    assert not (tmp_path / "one" / "last.ckpt").exists()
    with pytest.raises(SystemExit):
        dog_emotion.parse_args(["train", "--teacher-views", "2000"])
    assert "2000 is more than 1024" in capsys.readouterr().err


def test_predict_prints_a_file_name_that_is_not_utf8(split_root, tmp_path):
    import os
    import subprocess
    import sys
    from train.common import REPO_ROOT
    run_train(split_root, tmp_path / "run", "--epochs", "1")
    odd = tmp_path / "photos"
    odd.mkdir()
    shutil.copy(split_root / "test" / "sad" / "sad_0.jpg", os.fsencode(odd) + b"/\xff.jpg")
    shutil.copy(split_root / "test" / "sad" / "sad_1.jpg", odd / "z.jpg")
    p = subprocess.run([sys.executable, "-m", "train.dog_emotion", "predict", str(odd), "--weights",
                        str(tmp_path / "run" / "dog_emotion.pkl")], cwd=REPO_ROOT, capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    out = p.stdout.decode()
    assert p.returncode == 0 and "\\udcff.jpg" in out and "z.jpg" in out   # and the files after it still run


def test_the_run_log_describes_a_run_by_the_recipe_it_ran_not_the_file_as_it_is_now(split_root, tmp_path):
    from train import results
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "nano"\ninput_size = 32\nbatch_size = 8\nwarmup_epochs = 1\nepochs = 1\n')
    dog_emotion.main(["train", "--data", str(split_root), "--config", str(recipe), "--erase-prob", "0.5", "--threads", "1",
                      "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    recipe.write_text('model = "nano"\ninput_size = 32\nbatch_size = 8\nwarmup_epochs = 1\nepochs = 1\nerase_prob = 0.5\n')
    log = tmp_path / "runs.jsonl"
    results.main(["--log", str(log), "add", str(tmp_path / "run")])
    row = json.loads(log.read_text())
    assert row["options"] == "--erase-prob 0.5", "the edit came after the run: its --erase-prob 0.5 was still an option"
    recipe.unlink()
    results.main(["--log", str(log), "add", str(tmp_path / "run")])   # the file gone: the run still logs
    assert json.loads(log.read_text()) == row and row["recipe"].endswith("r.toml")


def test_a_users_own_classes_train_with_the_default_recipe_without_its_teacher(tmp_path, capsys):
    root = write_split_root(tmp_path / "data")
    for split in ("train", "val", "test"):
        shutil.rmtree(root / split / "sad")   # three classes of their own
    out = tmp_path / "run"
    dog_emotion.main(["train", "--data", str(root), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                      "--model", "nano", "--input-size", "32", "--batch-size", "8", "--epochs", "1",
                      "--warmup-epochs", "1", "--threads", "1"])   # the shipped recipe otherwise, its teacher included
    printed = capsys.readouterr().out
    assert "NOTE: training without a teacher" in printed and "make teacher DATA=" in printed
    assert json.loads((out / "metrics.json").read_text())["classes"] == ["angry", "happy", "relaxed"]
    with pytest.raises(SystemExit):   # a teacher the user names is never dropped silently
        dog_emotion.main(["train", "--data", str(root), "--out", str(tmp_path / "named"), "--train-on", "train",
                          "--teacher", "weights/teacher_large.pkl", "--model", "nano", "--input-size", "32",
                          "--batch-size", "8", "--epochs", "1", "--threads", "1"])
    assert "teacher has classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dog_emotion.main(["train", "--data", str(root), "--out", str(tmp_path / "big"), "--teacher", "--train-on", "train",
                          "--model", "nano", "--input-size", "32", "--batch-size", "512", "--epochs", "1"])
    assert "pass --batch-size" in capsys.readouterr().err


@pytest.mark.parametrize("raised, said", [
    (PermissionError(13, "Permission denied", "/data/out/metrics.json"), "error: /data/out/metrics.json: Permission denied"),
    (OSError(28, "No space left on device", "/data/out/last.ckpt"), "error: /data/out/last.ckpt: No space left on device"),
    (NotADirectoryError(20, "Not a directory", "/data/out"), "error: /data/out: Not a directory"),
    (KeyboardInterrupt(), "error: stopped by the user (Ctrl-C)"),
])
def test_the_file_system_and_ctrl_c_end_a_command_in_one_line(raised, said, capsys):
    """Every command's error boundary (common.command_errors): a full disk, an unwritable folder, a
    file where a folder was asked for, or Ctrl-C is one line naming the path, exit status 2."""
    from train.common import CommandFailed, command_errors
    with pytest.raises(CommandFailed) as failed, command_errors():
        raise raised
    err = capsys.readouterr().err
    assert failed.value.code == 2 and err.startswith(said) and err.count("\n") == 1 and "Traceback" not in err


def test_an_os_error_about_no_path_is_a_bug_and_shows_whole():
    from train.common import command_errors
    with pytest.raises(OSError, match="device busy"), command_errors():
        raise OSError(16, "device busy")


def test_predict_into_a_closed_pipe_ends_quietly(split_root, tmp_path):
    import subprocess
    import sys
    from train.common import REPO_ROOT
    run_train(split_root, tmp_path / "run", "--epochs", "1")
    # `true` reads nothing and is gone before Python's start-up is over: every write meets a closed pipe
    done = subprocess.run(f"{sys.executable} -m train.dog_emotion predict {split_root / 'test'} --weights "
                          f"{tmp_path / 'run' / 'dog_emotion.pkl'} | true; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_outputs_built_aside_get_the_users_umask_not_a_private_mode(tmp_path):
    """A set built in a staging folder (export) or a file written aside and renamed (every writer)
    takes the user's umask, as a plain mkdir or open would."""
    import os
    import stat
    from train.common import temp_path
    old = os.umask(0o022)
    try:
        folder, file = temp_path(tmp_path / "export", folder=True), temp_path(tmp_path / "metrics.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755 and stat.S_IMODE(file.stat().st_mode) == 0o644
