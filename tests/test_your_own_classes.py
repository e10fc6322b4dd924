"""A user's own data set end to end, with the default options of every command: 3 classes of 20
photos, no split, prepared, trained (1 epoch), evaluated, used to label photos, exported (its ONNX
files and, with the LiteRT converter, the phone's .app.tflite), the exported ONNX file run on one
photo and the .tflite in MediaPipe's ImageClassifier, the client apps use."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import litert_installed
from export import export as exporter
from export.client_metadata import read_labels
from export.mediapipe_client import classify
from train import dog_emotion, prepare_data
from train.classifier import Classifier
from train.recipes import SHIPPED_TEACHER

CLASSES = ["bird", "cat", "fox"]


def test_three_classes_of_twenty_photos_go_from_raw_folders_to_an_onnx_file(tmp_path, capsys):
    raw = tmp_path / "raw"
    for k, c in enumerate(CLASSES):
        (raw / c).mkdir(parents=True)
        for i in range(20):
            noise = np.random.default_rng(100 * k + i).integers(0, 256, (15, 17, 3), dtype=np.uint8)
            Image.fromarray(noise).resize((170, 150), Image.BILINEAR).save(raw / c / f"{c}{i}.jpg", quality=92)
    data, run, export_dir = tmp_path / "prepared", tmp_path / "run", tmp_path / "export"

    prepare_data.main(["--raw", str(raw), "--out", str(data)])
    assert sorted(p.name for p in (data / "test").iterdir()) == CLASSES
    n_test = sum(1 for _ in (data / "test").rglob("*.jpg"))
    assert f"test holds {n_test} photos: a 70% test accuracy on them has a 95% interval of" in capsys.readouterr().out

    # the shipped recipe's defaults: its dog-emotion teacher cannot teach these classes and 64 is
    # more than the photos, so it trains without the teacher and with a smaller batch, and says so
    dog_emotion.main(["train", "--data", str(data), "--out", str(run), "--epochs", "1"])
    said = capsys.readouterr().out
    assert "NOTE: training without a teacher" in said and "fewer than the default batch of 64" in said
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["args"]["train_on"] == "train" and tuple(metrics["args"]["teacher"]) == SHIPPED_TEACHER

    weights = str(run / "dog_emotion.pkl")
    evaluated = dog_emotion.cmd_evaluate(dog_emotion.parse_args(["evaluate", "--data", str(data), "--weights", weights]))
    n_test = sum(1 for _ in (data / "test").rglob("*.jpg"))
    assert evaluated["n"] == n_test and 0 <= evaluated["accuracy"] <= 100
    photo = next((data / "test" / "cat").iterdir())
    labelled = dog_emotion.cmd_predict(dog_emotion.parse_args(["predict", str(photo), "--weights", weights]))
    assert labelled[0]["label"] in CLASSES and abs(sum(labelled[0]["probabilities"].values()) - 1) < 1e-3

    # the ONNX files and the phone's .tflite: the other formats carry the classes the same way (tested
    # on the shipped model)
    phone = ["tflite_app"] if litert_installed() else []
    exporter.main(["--weights", weights, "--data", str(data), "--out", str(export_dir), "--formats", "onnx_fp32", "onnx_app", *phone])
    meta = json.loads((export_dir / exporter.METADATA_SIDECAR).read_text())
    assert meta["classes"] == CLASSES
    if phone:   # the labels file inside, and MediaPipe names this model's own three classes on every photo
        tflite = export_dir / "dog_emotion.app.tflite"
        assert read_labels(tflite) == CLASSES
        assert all(set(r) == set(CLASSES) for r in classify(tflite, sorted(map(str, (data / "test").rglob("*.jpg")))))
    # one object, one call, for the exported ONNX file and the weights it came from: the same answer
    onnx_rows = Classifier(export_dir / "dog_emotion.onnx").predict([photo, Image.open(photo)])
    pkl_row = Classifier(weights).predict(photo)[0]   # trained on val: exported uncalibrated, as the NOTE says
    for row in onnx_rows:
        assert row["label"] == pkl_row["label"] and list(row["probabilities"]) == CLASSES
        assert max(abs(row["probabilities"][c] - pkl_row["probabilities"][c]) for c in CLASSES) < 1e-3
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.open(photo).save(tmp_path / "mixed" / "ok.png")
    broken, ok = Classifier(export_dir / "dog_emotion.onnx").predict(tmp_path / "mixed")
    assert "broken.jpg" in broken["error"] and ok["label"] in CLASSES
    assert "bird" in (export_dir / "MODEL_CARD.md").read_text()


def test_the_learning_curve_trains_each_size_on_that_many_photos_a_class_and_reads_test(split_root, tmp_path):
    from train import learning_curve
    learning_curve.main(["--data", str(split_root), "--sizes", "2", "0", "--epochs", "1", "--out", str(tmp_path / "lc")])
    rows = json.loads((tmp_path / "lc" / "learning_curve.json").read_text())
    assert [(r["run"], r["train photos a class"]) for r in rows] == [("n2-s0", 2), ("nall-s0", 4)]
    linked = sorted(p.name for p in (tmp_path / "lc" / "data-2-s0" / "train" / "happy").iterdir())
    assert len(linked) == 2 and set(linked) <= {p.name for p in (split_root / "train" / "happy").iterdir()}
    assert len(list((tmp_path / "lc" / "data-2-s0" / "test").rglob("*.jpg"))) == 16   # val and test whole
    assert (tmp_path / "lc" / "learning_curve.png").stat().st_size > 0
    with pytest.raises(SystemExit):   # more photos than the class holds: one line naming the folder
        learning_curve.main(["--data", str(split_root), "--sizes", "9", "--epochs", "1", "--out", str(tmp_path / "lc")])
