"""The formats `make export` writes: one table, one row per format (Ultralytics' export_formats()).
Export (its writer per row: export.export.WRITERS), the benchmark (a row per format), the runners
(export.runtimes.make_runner, by `runtime`), the model card (`use`), the browser demo (`web`) and
the Makefile (`python -m export.formats --web-files`) all read it. Adding a format is one row here
plus its writer and, for a new runtime, its runner. Standard library only: the demo server imports it.

    python -m export.formats               # the table
    python -m export.formats --web-files   # the files the browser demo serves, one a line
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

FP32, INT8 = "fp32", "int8"
LITERT_ENV = ".venv-litert (make venv-litert)"   # the LiteRT converter's own environment
METADATA_SIDECAR = "dog_emotion.meta.json"  # the metadata record (inside every file too) as JSON: for the web demo, bench and any app


@dataclass(frozen=True)
class Format:
    name: str            # the key in parity and bench rows
    file: str            # its file in the export folder
    precision: str       # FP32 (within 1e-4 of eager) or INT8 (at most 1 point under FP32)
    runtime: str         # what runs it: torch, onnxruntime, executorch, litert
    use: str             # where it goes (the model card, docs/deployment.md)
    environment: str = ""   # what the export needs beyond the main environment
    optional: bool = False  # an export may lack it (an INT8 file refused by the rule, or the environment missing)
    web: bool = False       # served by the browser demo
    app: bool = False       # the app form: uint8 RGB NHWC image in, probabilities out (export/app_form.py)
    needs: tuple[str, ...] = ()   # the rows whose files (or choices) its writer starts from
    client: str = ""        # the app-side client that must load it, checked by the export on the test photos


FORMAT_TABLE = (
    Format("torchscript", "dog_emotion.pt", FP32, "torch", "apps that still load TorchScript (deprecated in torch 2.14)"),
    Format("onnx_fp32", "dog_emotion.onnx", FP32, "onnxruntime", "onnxruntime on servers and desktops"),
    Format("ort_fp32", "dog_emotion.ort", FP32, "onnxruntime", "onnxruntime Mobile in an Android or iOS app",
           needs=("onnx_fp32",)),
    Format("onnx_app", "dog_emotion.app.onnx", FP32, "onnxruntime", "apps that hand over a bitmap's bytes (uint8 crop in, "
           "probabilities out), the browser demo", web=True, app=True),
    Format("ort_app", "dog_emotion.app.ort", FP32, "onnxruntime", "the same for onnxruntime Mobile", app=True,
           needs=("onnx_app",)),
    Format("onnx_int8", "dog_emotion.int8.onnx", INT8, "onnxruntime", "onnxruntime where size matters most (INT8)", optional=True,
           needs=("onnx_fp32",)),
    Format("onnx_app_int8", "dog_emotion.app.int8.onnx", INT8, "onnxruntime", "the app form where size matters most, "
           "the browser demo's INT8 choice", optional=True, web=True, app=True, needs=("onnx_app",)),
    Format("pte_fp32", "dog_emotion.pte", FP32, "executorch", "the ExecuTorch runtime (XNNPACK) in an Android or iOS app"),
    Format("pte_app", "dog_emotion.app.pte", FP32, "executorch", "the app form for ExecuTorch", app=True),
    Format("pte_int8", "dog_emotion.int8.pte", INT8, "executorch", "ExecuTorch (XNNPACK) where size matters most (INT8)", optional=True),
    Format("pte_app_int8", "dog_emotion.app.int8.pte", INT8, "executorch", "the ExecuTorch app form, INT8", optional=True, app=True),
    Format("tflite_fp32", "dog_emotion.tflite", FP32, "litert", "LiteRT's Interpreter API on Android (NCHW float in, logits "
           "out, batch 1); not MediaPipe, which takes NHWC images: the app form is its file", LITERT_ENV, optional=True),
    Format("tflite_app", "dog_emotion.app.tflite", FP32, "litert", "MediaPipe Tasks' ImageClassifier on Android, iOS and "
           "the web (labels inside), or LiteRT directly (batch 1)", LITERT_ENV, optional=True, app=True, client="MediaPipe"),
    Format("tflite_int8", "dog_emotion.int8.tflite", INT8, "litert", "LiteRT's Interpreter API where size matters most: int8 "
           "in and out, scale and zero point in the file; not MediaPipe (it takes uint8 or float input)", LITERT_ENV, optional=True),
    Format("tflite_app_int8", "dog_emotion.app.int8.tflite", INT8, "litert", "the LiteRT app form, INT8 inside, for LiteRT's "
           "Interpreter API: its int8 output (scale and zero point in the file) is one MediaPipe refuses", LITERT_ENV,
           optional=True, app=True),
)
FORMATS = {f.name: f for f in FORMAT_TABLE}


def with_needs(names) -> list[str]:
    """The rows named and every row they start from, in the table's order (the order they are written)."""
    chosen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in FORMATS:
            raise ValueError(f"no format {name!r} (the formats: {', '.join(FORMATS)})")
        if name not in chosen:
            chosen.add(name)
            todo += FORMATS[name].needs
    return [f.name for f in FORMAT_TABLE if f.name in chosen]


def web_files() -> list[str]:
    """What the browser demo loads from the export: its model files and the metadata record."""
    return [f.file for f in FORMAT_TABLE if f.web] + [METADATA_SIDECAR]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web-files", action="store_true", help="print the files the browser demo serves, one a line")
    args = ap.parse_args(argv)
    if args.web_files:
        print("\n".join(web_files()))
        return
    for f in FORMAT_TABLE:
        print(f"{f.name:15s} {f.file:28s} {f.precision:5s} {f.runtime:12s} {f.environment or '-':32s} {f.use}")


if __name__ == "__main__":
    main()
