"""Hostile inputs, round two (issue 34): weights that lie about themselves, values out of range,
recipes that are not recipes, run folders that hold other runs, images no photo has the shape of."""
import os
import struct
import time
import zlib

import numpy as np
import pytest
import torch

from conftest import CLASSES, TINY as TINY_TRAIN, write_split_root
from export import export as exporter
from mobile_model import build_model
from train import checkpoint, dog_emotion, engine
from train.checkpoint import CheckpointError, load_weights, save_weights
from train.data import BadImage, DataError, load_rgb, load_splits

TINY = [*TINY_TRAIN, "--epochs", "1"]


@pytest.fixture
def weights(tmp_path):
    return save_weights(build_model("nano").eval(), CLASSES, tmp_path / "w.pkl")


def tampered(path, edit) -> str:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["state_dict"]["classifier.bias"].fill_(float("nan")), "NaN or Inf"),
    (lambda c: c["state_dict"]["classifier.weight"].view(-1)[0].fill_(float("inf")), "NaN or Inf"),
    (lambda c: c["state_dict"]["classifier.bias"].add_(1e-3), "do not match the checksum"),   # one changed value
    (lambda c: c.__setitem__("classes", ["angry", "happy"]), "'classes' must be a list of 4 distinct names"),
    (lambda c: c.__setitem__("classes", "angry"), "'classes' must be a list of 4"),
    (lambda c: c.pop("classes"), "'classes' must be a list of 4"),
    (lambda c: c["config"].__setitem__("stem", "abc"), "stem = 'abc' is not an integer"),
    (lambda c: c["config"].__setitem__("input_size", -5), "input_size = -5 is not an integer in 32..1024"),
    (lambda c: c["config"].__setitem__("input_size", 4000), "input_size = 4000"),
    (lambda c: c["config"].__setitem__("stem", 30_000), "stem = 30000 is not an integer"),
    (lambda c: c["config"].__setitem__("stages", [[4000, 2, 40]]), "describes .* parameters, over the"),
    (lambda c: c.__setitem__("state_dict", {k: 1 for k in c["state_dict"]}), "not a dict of tensors"),
])
def test_weights_that_lie_about_themselves_are_refused(weights, edit, message):
    tampered(weights, edit)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=message):
        load_weights(weights)
    assert time.perf_counter() - t0 < 5


def test_weights_paths_that_are_not_files_and_oversized_archives(weights, tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo, "/dev/zero"):
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_weights(path)
    monkeypatch.setattr(checkpoint, "MAX_UNPACKED_BYTES", 1000)   # the cap is checked before torch.load reads
    with pytest.raises(CheckpointError, match="would unpack to .* MB, over the"):
        load_weights(weights)


def test_predict_with_nan_weights_says_so_and_writes_no_nan(weights, tmp_path, capsys):
    tampered(weights, lambda c: c["state_dict"]["classifier.bias"].fill_(float("nan")))
    with pytest.raises(SystemExit, match="NaN or Inf") as e:
        dog_emotion.main(["predict", "x.jpg", "--json", "--weights", str(weights)])
    assert e.value.code == 2 and "NaN" not in capsys.readouterr().out


def test_an_export_check_treats_nan_logits_as_a_failure():
    row = {"max abs logit diff": float("nan"), "top-1 agreement (%)": 100.0, "accuracy (%)": 70.0}
    assert exporter.refusal(row, exporter.FP32, 70.0) == "its logits are not finite"
    assert exporter.refusal(row, exporter.INT8, 70.0) == "its logits are not finite"


@pytest.mark.parametrize("option", ["--batch-size 0", "--batch-size -1", "--lr -1", "--lr nan", "--lr 1e308",
                                    "--threads -1", "--input-size -5", "--label-smoothing 5", "--seed -1",
                                    "--device nonsense", "--epochs 0", "--ema-decay 2", "--weight-decay -1",
                                    "--distill-temperature 0"])
def test_out_of_range_options_are_refused_by_argparse(option, capsys):
    with pytest.raises(SystemExit) as e:
        dog_emotion.parse_args(["train", *option.split()])
    assert e.value.code == 2 and f"argument {option.split()[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b"model = \"\xff\xfe\"\n", "not valid TOML"),                      # invalid UTF-8
    (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "bytes, not a recipe|nested too deeply"),
    ("/dev/zero", "/dev/zero: not a regular file"),       # a path, not content: never read
    ("fifo", "fifo: not a regular file"),
])
def test_recipes_that_are_not_recipes(tmp_path, content, message):
    os.mkfifo(tmp_path / "fifo")
    if isinstance(content, bytes):
        (tmp_path / "r.toml").write_bytes(content)
    recipe = tmp_path / "r.toml" if isinstance(content, bytes) else tmp_path / content
    with pytest.raises(SystemExit, match=message):
        dog_emotion.main(["train", "--config", str(recipe)])


def test_a_run_folder_of_another_run_is_not_overwritten(tmp_path):
    root = write_split_root(tmp_path / "data")
    args = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"), *TINY]
    dog_emotion.main(args)
    before = (tmp_path / "run" / "dog_emotion.pkl").read_bytes()
    with pytest.raises(SystemExit, match="holds another run.*--resume continues it, --force replaces it"):
        dog_emotion.main(args + ["--seed", "3"])
    assert (tmp_path / "run" / "dog_emotion.pkl").read_bytes() == before
    (tmp_path / "run" / ".last.ckpt.abc.tmp").write_bytes(b"half")            # left by a killed run
    dog_emotion.main(args + ["--seed", "3", "--force"])
    assert not list((tmp_path / "run").glob(".*.tmp"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="--out .*file: is a file"):
        dog_emotion.main(["train", "--data", str(root), "--out", str(tmp_path / "file"), *TINY])


def test_the_class_count_comes_from_the_data_and_case_twins_are_refused(tmp_path):
    root = write_split_root(tmp_path / "three")
    for split in ("train", "val", "test"):
        for f in (root / split / "sad").iterdir():
            f.unlink()
        (root / split / "sad").rmdir()
    dog_emotion.main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"), *TINY])
    model, ckpt = load_weights(tmp_path / "run" / "dog_emotion.pkl")
    assert ckpt["classes"] == ["angry", "happy", "relaxed"] and model.config.num_classes == 3
    twins = write_split_root(tmp_path / "twins")
    (twins / "val" / "sad").rename(twins / "val" / "Sad")
    with pytest.raises(DataError, match=r"\['Sad', 'sad'\] differ only in case"):
        load_splits(twins, 36)


def test_ctrl_c_and_a_nan_loss_end_a_run_with_a_message(tmp_path, monkeypatch):
    root = write_split_root(tmp_path / "data")
    args = ["train", "--data", str(root), "--cache-dir", str(tmp_path / "c"), *TINY]

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit, match="stopped by the user in epoch 1.*--resume continues"):
        dog_emotion.main(args + ["--out", str(tmp_path / "a")])
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: ({"loss": float("nan"), "acc": 0.0, "lr": 0.0}, 1))
    with pytest.raises(SystemExit, match="training loss became nan in epoch 1"):
        dog_emotion.main(args + ["--out", str(tmp_path / "b")])
    assert not (tmp_path / "b" / "metrics.json").exists()


def tall_png(path, w: int, h: int):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * (w + 1) * h, 9)) + chunk(b"IEND", b""))
    return path


def test_an_image_of_no_photo_s_shape_is_refused_from_its_header(tmp_path):
    path = tall_png(tmp_path / "tall.png", 32, 1_500_000)        # the 48 kB file
    t0 = time.perf_counter()
    with pytest.raises(BadImage, match="32x1500000 px is more than 10:1"):
        load_rgb(path, min_side=126)
    assert time.perf_counter() - t0 < 2
    assert load_rgb(tall_png(tmp_path / "wide.png", 400, 100)).size == (400, 100)   # a panorama is a photo


def test_evaluate_writes_null_not_nan_for_a_class_with_no_images(weights, tmp_path, capsys):
    root = write_split_root(tmp_path / "data", per_class=2)
    for f in (root / "test" / "sad").iterdir():
        f.unlink()
    dog_emotion.main(["evaluate", "--data", str(root), "--weights", str(weights)])
    out = capsys.readouterr().out
    assert "n/a" in out and "NaN" not in out and '"sad": null' in out.splitlines()[-1]
    assert np.isfinite(float(out.split("accuracy ")[1].split("%")[0]))


@pytest.mark.parametrize("manifest, used", [
    ("split,label,file,source_width,source_height\n" + "train,sad,x.jpg,300,200\n" * 3, True),
    ("split,label,file,source_width,source_height\ntrain,sad,x.jpg,300,abc\n", False),   # not a number
    ("split,label,file,source_width,source_height\ntrain,sad,x.jpg,0,200\n", False),     # not a size
    ("split,label,file\ntrain,sad,x.jpg\n", False),                                       # no size columns
    (b"\xff\xfe\x00garbage", False),                                                      # not UTF-8
])
def test_eda_survives_a_malformed_manifest(tmp_path, monkeypatch, capsys, manifest, used):
    from train import eda
    root = write_split_root(tmp_path / "data", per_class=2)
    (root / "MANIFEST.csv").write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    monkeypatch.setattr(eda, "ARTIFACTS", tmp_path / "artifacts")  # its cache stays in the test's folder
    text = eda.run(root, tmp_path / "eda")
    assert len(list((tmp_path / "eda").glob("*.png"))) == 4 and (tmp_path / "eda" / "summary.md").is_file()
    err = capsys.readouterr().err
    if used:
        assert "3 images; width mean 300.0 px" in text and "MANIFEST" not in err
    else:  # the files' own headers: 24 images of 48 x 40
        assert "24 images; width mean 48.0 px, height mean 40.0 px" in text
        assert "MANIFEST.csv" in err and "reading the sizes from the images instead" in err
