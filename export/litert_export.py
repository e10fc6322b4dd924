"""LiteRT (.tflite, formerly TensorFlow Lite: Android's own runtime, also under MediaPipe), FP32
and INT8, converted in the converter's own environment.

litert-torch (the PyTorch -> LiteRT converter) brings jax, transformers and its own MLIR
converter, about 0.9 GB beside torch, and pins versions the project's environment does not
(xdsl wants typing-extensions < 4.13). So it lives in `.venv-litert` (`make venv-litert`, from
requirements-litert.lock), and `python -m export.export` runs this module there as a subprocess;
the file it writes comes back to the export, which checks it in ai-edge-litert's interpreter
(installed in the main environment, small) before it keeps it, by the rule every format passes.

    .venv-litert/bin/python -m export.litert_export fp32 --weights W.pkl --out m.tflite
    .venv-litert/bin/python -m export.litert_export int8 --tflite m.tflite --calib images.pt --out m.int8.tflite

FP32: litert_torch.convert of the inference model, flip averaging included, at a fixed batch of
1 (litert-torch 0.10 cannot trace this graph with a dynamic batch; a phone classifies one photo
at a time). INT8: the ai-edge-quantizer's static recipe (int8 weights and activations) on the FP32
file, calibrated on the same training images as the INT8 ONNX file, with each activation's range
taken one of two ways: the quantizer's default, a moving average (0.95) of each photo's min and
max, or the calibration set's own min and max (`--ranges`; export.py keeps the one more faithful
to FP32 on val). The program is integer end to end: its input and output are int8 with the scale
and zero point stored in the file (export/runtimes.py applies them).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from train.checkpoint import load_weights
from train.data import eval_batches


def convert_fp32(weights: str, out: Path) -> None:
    import litert_torch
    model, _ = load_weights(weights)   # the graph as the file's config has it, flip averaging or not
    size = model.config.input_size
    litert_torch.convert(model.eval(), (torch.zeros(1, 3, size, size),)).export(str(out))


RANGES = ("moving-average", "min-max")


def quantize_int8(tflite: Path, calib: Path, out: Path, ranges: str) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe
    from ai_edge_quantizer.utils import qsv_utils
    images = torch.load(calib, weights_only=True)   # uint8 (N, 3, S, S), decoded by the export
    probe = Interpreter(str(tflite))
    (key, io), = probe.get_signature_list().items()
    size = int(probe.get_input_details()[0]["shape"][-1])
    samples = [{io["inputs"][0]: x.numpy()} for x in eval_batches(images, size, 1)]
    q = quantizer.Quantizer(str(tflite))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    # Quantizer.calibrate has no choice of range update; its Calibrator does (the same call inside)
    update = qsv_utils.moving_average_update if ranges == "moving-average" else qsv_utils.min_max_update
    calib = calibrator.Calibrator(q._float_model_buffer, num_threads=1, qsv_update_func=update)
    calib.calibrate({key: samples}, q._recipe_manager)
    q.quantize(calib.get_model_qsvs(), enable_progress_report=False).export_model(str(out), overwrite=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="precision", required=True)
    fp32 = sub.add_parser("fp32", help="convert a weights file to a FP32 .tflite")
    fp32.add_argument("--weights", required=True, help="weights .pkl (the export's, temperature folded in)")
    int8 = sub.add_parser("int8", help="quantize a FP32 .tflite to static INT8")
    int8.add_argument("--tflite", required=True, help="the FP32 .tflite to quantize")
    int8.add_argument("--calib", required=True, help="calibration images: a uint8 tensor saved with torch.save")
    int8.add_argument("--ranges", choices=RANGES, default=RANGES[0],
                      help="how each activation's range is taken from the calibration images (default: %(default)s)")
    for p in (fp32, int8):
        p.add_argument("--out", required=True, help="the .tflite file to write")
    args = ap.parse_args(argv)
    if args.precision == "fp32":
        convert_fp32(args.weights, Path(args.out))
    else:
        quantize_int8(Path(args.tflite), Path(args.calib), Path(args.out), args.ranges)


if __name__ == "__main__":
    main()
