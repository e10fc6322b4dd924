"""MediaPipe Tasks' ImageClassifier: the client an Android or iOS app runs a .tflite in (the same C++
task runs on the web and in Python), so the judge of whether an exported .tflite works in an app.
Our own parity checks feed the model our own crops; this feeds MediaPipe the photo files, with
its default options (the whole photo scaled to the model's input, no region of interest), and
reads the class names and scores it returns.

    python -m export.mediapipe_client artifacts/export/dog_emotion.app.tflite [--data DIR] [--split test]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from train.common import command_errors
from train.data import DEFAULT_DATA, class_names, check_data_root, list_images


def classify(tflite: str | Path, paths: list[str]) -> list[dict[str, float]]:
    """Each photo's {category name: score}, as MediaPipe's ImageClassifier returns them with its
    default options (every category; None names when the file carries no labels)."""
    os.environ.setdefault("GLOG_minloglevel", "2")   # MediaPipe's C++ start-up lines say nothing to a user
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(tflite)))
    with vision.ImageClassifier.create_from_options(options) as classifier:
        return [{c.category_name: c.score for c in classifier.classify(mp.Image.create_from_file(str(p))).classifications[0].categories}
                for p in paths]


def client_accuracy(tflite: str | Path, paths: list[str], labels: list[int], classes: list[str]) -> dict:
    """What MediaPipe makes of a file on labelled photos: its accuracy, and whether it names every
    class of the file's own labels on every photo."""
    results = classify(tflite, paths)
    correct = sum(max(r, key=lambda c: r[c]) == classes[y] for r, y in zip(results, labels))
    return {"MediaPipe accuracy (%)": round(100 * correct / len(paths), 2),
            "MediaPipe names the classes": all(set(r) == set(classes) for r in results)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tflite", help="a .tflite with its labels inside (the app form of `make export`)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root (default: %(default)s)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to read (default: %(default)s)")
    args = ap.parse_args(argv)
    with command_errors():
        folder = check_data_root(args.data) / args.split
        classes = class_names(folder)
        items = list_images(folder, classes)
        r = client_accuracy(args.tflite, [str(p) for p, _ in items], [y for _, y in items], classes)
        print(f"{args.tflite} in MediaPipe's ImageClassifier (default options), {len(items)} photos of {folder}: "
              f"accuracy {r['MediaPipe accuracy (%)']:.2f}%, class names {'all named' if r['MediaPipe names the classes'] else 'MISSING'}")


if __name__ == "__main__":
    main()
