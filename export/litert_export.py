"""LiteRT (.tflite, formerly TensorFlow Lite: Android's own runtime, also under MediaPipe), FP32
and INT8, converted in the converter's own environment.

litert-torch (the PyTorch -> LiteRT converter) brings jax, transformers and its own MLIR
converter, about 0.9 GB beside torch, and pins versions the project's environment does not
(xdsl wants typing-extensions < 4.13). So it lives in `.venv-litert` (`make venv-litert`, from
requirements-litert.lock), and `python -m export.export` runs this module there as a subprocess;
the file it writes comes back to the export, which checks it in ai-edge-litert's interpreter
(installed in the main environment, small) before it keeps it, by the rule every format passes.
One call makes every file the export asks for (the float model and/or its app form, and with
--int8 each one's INT8 file), so the environment's start (~10 s of imports) is paid once:

    .venv-litert/bin/python -m export.litert_export --weights W.pkl --calib images.pt --out-dir DIR [--forms app] [--int8]

FP32: litert_torch.convert of the inference model, flip averaging included, at a fixed batch of
1 (litert-torch 0.10 cannot trace this graph with a dynamic batch; a phone classifies one photo
at a time). INT8: the ai-edge-quantizer's static recipe (int8 weights and activations) on the FP32
file, calibrated on the same training images as the INT8 ONNX file, each activation's range the
quantizer's default moving average (0.95) of each photo's min and max. The program is integer end
to end: its input and output are int8 with the scale and zero point stored in the file
(export/runtimes.py applies them).

The metadata record (class labels, preprocessing: the ONNX file's) goes into each file as a LiteRT
metadata buffer named METADATA_NAME (`embed_metadata`, run by export.py in the main environment:
ai-edge-litert ships the flatbuffer schema), where an Android app reads it with the Interpreter's
metadata API or any flatbuffer reader.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from export.app_form import AppForm, app_batches
from train.checkpoint import load_weights
from train.data import eval_batches


def convert_fp32(weights: str, out: Path, app: bool) -> None:
    """`app`: the app form (export/app_form.py), uint8 NHWC in, probabilities out."""
    import litert_torch
    model, _ = load_weights(weights)   # the graph as the file's config has it, flip averaging or not
    size = model.config.input_size
    if app:
        model, example = AppForm(model), torch.zeros(1, size, size, 3, dtype=torch.uint8)
    else:
        example = torch.zeros(1, 3, size, size)
    litert_torch.convert(model.eval(), (example,)).export(str(out))


def candidate_name(app: bool, int8: bool = False) -> str:
    """The name of one file in --out-dir."""
    return ("app" if app else "model") + (".int8" if int8 else "") + ".tflite"


def convert_all(weights: str, calib: Path, out_dir: Path, forms: list[str], int8: bool) -> None:
    """The FP32 file of each form asked for ("model", "app") and, with int8, its INT8 candidates."""
    for app in (form == "app" for form in forms):
        fp32 = out_dir / candidate_name(app)
        convert_fp32(weights, fp32, app)
        if int8:
            quantize_int8(fp32, calib, out_dir / candidate_name(app, int8=True), app)


METADATA_NAME = "dog_emotion.meta.json"


def embed_metadata(path: Path, meta: dict) -> None:
    """Add the record as the model's metadata entry METADATA_NAME (a buffer of JSON text), and the
    same record as the standard metadata that MediaPipe and the Task Library read (labels file
    included: export/client_metadata.py)."""
    from ai_edge_litert import schema_py_generated as schema
    from export.client_metadata import add_client_metadata
    model_buffer = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(model_buffer, 0)
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(meta).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    path.write_bytes(add_client_metadata(model, model_buffer, meta, schema))


def read_metadata(path: Path) -> dict | None:
    """The record embed_metadata wrote, or None when the file has none."""
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def quantize_int8(tflite: Path, calib: Path, out: Path, app: bool) -> None:
    """ai-edge-quantizer's static int8 recipe, activation ranges by its default moving average of
    each photo's min and max (a choice between that and the set's own min-max, measured on val for
    the shipped model, kept the moving average for the .int8.tflite)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe
    images = torch.load(calib, weights_only=True)   # uint8 (N, 3, S, S), decoded by the export
    probe = Interpreter(str(tflite))
    (key, io), = probe.get_signature_list().items()
    size = int(probe.get_input_details()[0]["shape"][2])   # (1, 3, S, S), or an app form's (1, S, S, 3)
    batches = app_batches(images, size, 1) if app else eval_batches(images, size, 1)
    samples = [{io["inputs"][0]: x.numpy()} for x in batches]
    q = quantizer.Quantizer(str(tflite))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    q.quantize(q.calibrate({key: samples}), enable_progress_report=False).export_model(str(out), overwrite=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="weights .pkl (the export's, temperature folded in)")
    ap.add_argument("--calib", required=True, help="INT8 calibration images: a uint8 tensor saved with torch.save")
    ap.add_argument("--out-dir", required=True, help="an existing folder for the candidate files (candidate_name)")
    ap.add_argument("--forms", nargs="+", choices=("model", "app"), default=["model", "app"],
                    help="the model (NCHW float in) and/or its app form (default: both)")
    ap.add_argument("--int8", action="store_true", help="also the INT8 candidates of each form (default: FP32 only)")
    args = ap.parse_args(argv)
    convert_all(args.weights, Path(args.calib), Path(args.out_dir), args.forms, args.int8)


if __name__ == "__main__":
    main()
