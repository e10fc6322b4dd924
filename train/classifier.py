"""One object, one call: `Classifier(path).predict(source)` labels photos with a weights file
(`.pkl`, PyTorch) or an exported one (`.onnx`, `.ort`, `.pte`, `.tflite`, each in its own runtime),
the way Ultralytics' `YOLO(path).predict(source)` does; the app forms of an export
(`dog_emotion.app.*`: uint8 in, probabilities out) work the same.

    from train.classifier import Classifier
    for row in Classifier("weights/dog_emotion.pkl").predict("photos/"):
        print(row["file"], row["label"], row["probabilities"])

`source`: an image file, a folder (searched recursively), a glob pattern, a PIL image, or a list of
any of these. Each result is {"file", "label", "probabilities"} (calibrated: the temperature a
weights file records is applied, as the export folds it), or {"file", "error"} for a file that
cannot be read. Both kinds of file preprocess the same way (train.data.preprocess) and give the
same probabilities to float rounding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.app_form import app_batches
from train.checkpoint import load_weights
from train.data import BadImage, DataError, expand_inputs, frame_image, image_rgb, load_rgb, preprocess, storage_size


def app_input(img: Image.Image, input_size: int, framing: str = "crop") -> torch.Tensor:
    """What an app form takes: the same framing as `preprocess`, left as uint8 NHWC bytes."""
    return next(app_batches(frame_image(img, storage_size(input_size, framing), framing)[None], input_size, 1))


# An exported file by its suffix: the formats registry's name of its family (export/formats.py)
EXPORTED = {".onnx": "onnx", ".ort": "ort", ".pte": "pte", ".tflite": "tflite"}


class Classifier:
    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int = 1):
        path = Path(path)
        if path.suffix in EXPORTED:
            from export.runtimes import file_metadata, make_runner   # the runtimes only when an exported file is used
            family = EXPORTED[path.suffix]
            meta = file_metadata(f"{family}_fp32", path)
            if "classes" not in meta or "preprocess" not in meta:
                raise DataError(f"{path}: no class labels and preprocessing in its metadata (not a file of `make export`)")
            spec = meta["preprocess"]   # files of earlier exports name the input size center_crop_2
            self.classes, self.input_size = meta["classes"], int(spec.get("input_size") or spec["center_crop_2"])
            self.framing = spec.get("framing", "crop")
            app = meta.get("input_layout") == "NHWC"   # the app form: the uint8 image in, probabilities out
            run = make_runner(f"{family}_{'app' if app else 'fp32'}", path, threads=threads)
            size = self.input_size
            probe = run(np.zeros((1, size, size, 3), np.uint8) if app else np.zeros((1, 3, size, size), np.float32))
            if probe.shape[-1] != len(self.classes):   # labels that do not fit the outputs would name them wrongly
                raise DataError(f"{path}: gives {probe.shape[-1]} outputs but its metadata names {len(self.classes)} classes")
            self._logits, self._input = (lambda x: run(x.numpy())), (app_input if app else preprocess)
        else:
            model, ckpt = load_weights(path)
            model.to(device)
            self.classes, self.input_size, self.framing = ckpt["classes"], model.config.input_size, model.config.framing
            temperature = (ckpt.get("calibration") or {}).get("temperature", 1.0)

            @torch.no_grad()
            def logits(x: torch.Tensor) -> np.ndarray:
                return (model(x.to(device)) / temperature).float().cpu().numpy()
            self._logits, self._input = logits, preprocess
        self.path = path

    def label(self, img: Image.Image, name: str = "") -> dict:
        """Label and probabilities of one PIL image, taken by the rules a file is (train.data.image_rgb:
        transparency composited, 16-bit scaled, sizes refused alike): a BadImage otherwise."""
        img = image_rgb(img, name or "<image>")
        logits = self._logits(self._input(img, self.input_size, self.framing))[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return {"file": name, "label": self.classes[int(probs.argmax())],
                "probabilities": {c: round(float(p), 4) for c, p in zip(self.classes, probs)}}

    def predict(self, source) -> list[dict]:
        """Results for every image in `source`, in order; a file that cannot be read is named with
        its error, and the others are still labelled."""
        items = source if isinstance(source, (list, tuple)) else [source]
        rows = []
        for item in items:
            if isinstance(item, Image.Image):
                name = getattr(item, "filename", "") or "<image>"
                try:
                    rows.append(self.label(item, name))
                except BadImage as e:
                    rows.append({"file": name, "error": str(e)})
                continue
            paths = expand_inputs([str(item)])
            if not paths:
                raise DataError(f"{item}: no image files found")
            rows += [self.label_file(path)[0] for path in paths]
        return rows

    def label_file(self, path: Path) -> tuple[dict, Image.Image | None]:
        """The result for one image file, and the image as decoded (None when it cannot be read)."""
        try:
            img = load_rgb(path, min_side=storage_size(self.input_size, self.framing))
        except BadImage as e:
            return {"file": str(path), "error": str(e)}, None
        return self.label(img, str(path)), img
