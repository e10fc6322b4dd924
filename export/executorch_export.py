"""ExecuTorch programs (.pte) for phones: torch.export, lowered to the XNNPACK backend (the CPU
kernels of ExecuTorch's Android and iOS builds), FP32 and INT8.

The batch dimension is dynamic within 1..MAX_BATCH, so one program serves a single photo and a
gallery. INT8 is post-training quantization with the PT2E flow: XNNPACKQuantizer with its
symmetric per-channel config, calibrated on the same training images as the INT8 ONNX file.
The metadata record (class labels, preprocessing: the ONNX file's) is inside each program as a
constant method, METADATA_METHOD, returning the record as JSON text: an app calls it like forward.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

# torchao registers an Enum with torch's pytree at import, and torch logs a deprecation addressed to
# torchao's authors (not to anyone exporting a model) on every run
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

MAX_BATCH = 32
METADATA_METHOD = "metadata"


def _export(model: torch.nn.Module, input_size: int, app: bool = False) -> torch.export.ExportedProgram:
    # the example batch is MAX_BATCH: executorch 1.5.1 sized the program's input buffer from the
    # example (a batch-2 example gave a program that refused batches over 7 with flip averaging)
    x = (torch.zeros(MAX_BATCH, input_size, input_size, 3, dtype=torch.uint8) if app   # the app form's bitmap bytes
         else torch.zeros(MAX_BATCH, 3, input_size, input_size))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})


def _quantize(model: torch.nn.Module, input_size: int, calib_batches, app: bool) -> torch.nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(_export(model, input_size, app).module(), quantizer)
    with torch.no_grad():
        for x in calib_batches:
            prepared(x)
    return convert_pt2e(prepared)


class OwnSizeOnly(torch.nn.Module):
    """An app form that refuses a bitmap of another size. The ExecuTorch runtime resizes a program's
    input to whatever an app hands it and XNNPACK answers (a 600 x 600 crop gave a confident label);
    adding a zero tensor of the input's own shape (uint8, a portable kernel) makes any other size
    a broadcast error instead."""

    def __init__(self, model: torch.nn.Module, size: int):
        super().__init__()
        self.model, self.config = model, model.config
        self.register_buffer("zero", torch.zeros(1, size, size, 3, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.zero)


def export_pte(model: torch.nn.Module, path: Path, metadata: dict, calib_batches=None, app: bool = False) -> list[str]:
    """Write the XNNPACK-lowered program, with `metadata` as its METADATA_METHOD, to `path` (INT8
    when calib_batches are given; `app`: the model is an app form, uint8 NHWC in); return the
    operators left outside XNNPACK, which a phone app must link ExecuTorch's portable kernels for."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    size = model.config.input_size
    if app:
        model = OwnSizeOnly(model, size)
    if calib_batches is not None:
        model = _quantize(model, size, calib_batches, app)
    edge = to_edge_transform_and_lower(_export(model, size, app), partitioner=[XnnpackPartitioner()],
                                       constant_methods={METADATA_METHOD: json.dumps(metadata)})
    left = sorted({_op_name(n.target) for n in edge.exported_program().graph.nodes
                   if n.op == "call_function" and _op_name(n.target).startswith("aten.")})
    path.write_bytes(edge.to_executorch().buffer)
    return left


if __name__ == "__main__":  # a library module: `python -m export.export` writes the .pte files
    import argparse
    argparse.ArgumentParser(description=__doc__ + "\nRun `python -m export.export` (make export) to write "
                            "the .pte files; this module has no command of its own.",
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    raise SystemExit("nothing to do here: run `python -m export.export` (make export); --help says more")


def _op_name(target) -> str:
    """'aten.flip.default' from an edge operator (its str() also carries the schema)."""
    match = re.search(r"(aten\.[\w.]+)", str(target))
    return match.group(1) if match else str(target)
