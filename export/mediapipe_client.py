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

import numpy as np

from train.common import command_errors
from train.data import DEFAULT_DATA, class_names, check_data_root, list_images


def centre_region(width: int, height: int, share: float):
    """The region_of_interest an app passes for a crop-framed model: the centre square of the
    photo's shorter side, `share` of it on each side (input size / stored size, 112 / 126)."""
    from mediapipe.tasks.python.components.containers.rect import RectF
    side = share * min(width, height)
    w, h = side / width, side / height
    return RectF(left=(1 - w) / 2, top=(1 - h) / 2, right=(1 + w) / 2, bottom=(1 + h) / 2)


def classify(tflite: str | Path, paths: list[str], crop_share: float | None = None) -> list[dict[str, float]]:
    """Each photo's {category name: score}, as MediaPipe's ImageClassifier returns them (every
    category; None names when the file carries no labels): with its default options (the whole
    photo scaled to the input), or, given crop_share, with the centre-crop region an app passes."""
    os.environ.setdefault("GLOG_minloglevel", "2")   # MediaPipe's C++ start-up lines say nothing to a user
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from mediapipe.tasks.python.vision.core.image_processing_options import ImageProcessingOptions
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(tflite)))
    rows = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for p in paths:
            image = mp.Image.create_from_file(str(p))
            region = None if crop_share is None else ImageProcessingOptions(
                region_of_interest=centre_region(image.width, image.height, crop_share))
            rows.append({c.category_name: c.score for c in classifier.classify(image, region).classifications[0].categories})
    return rows


CLIENT_FRAMING = "squash"   # what the ImageClassifier does with a photo under its default options (train.data.FRAMINGS)


def classify_labelled(tflite: str | Path, paths: list[str], classes: list[str],
                      crop_share: float | None = None) -> tuple[bool, np.ndarray]:
    """Whether MediaPipe names every class of `classes` on every photo, and the index in `classes`
    of its top category for each (-1 where it names none of them)."""
    results = classify(tflite, paths, crop_share)
    named = all(set(r) == set(classes) for r in results)
    top = [max(r, key=lambda c: r[c]) for r in results]
    return named, np.array([classes.index(t) if t in classes else -1 for t in top])


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
        named, top = classify_labelled(args.tflite, [str(p) for p, _ in items], classes)
        correct = int((top == np.array([y for _, y in items])).sum())
        print(f"{args.tflite} in MediaPipe's ImageClassifier (default options), {len(items)} photos of {folder}: "
              f"accuracy {100 * correct / len(items):.2f}%, class names {'all named' if named else 'MISSING'}")


if __name__ == "__main__":
    main()
