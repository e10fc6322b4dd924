"""The app form of a model (issue 46): what a phone app calls with the bitmap it holds.

In: uint8 RGB, NHWC, the centre crop after resizing the shorter side (APP_INPUT). Out: calibrated
class probabilities. Conversion to float, ImageNet normalisation, the NHWC -> NCHW layout, the
mirror-image averaging and the softmax are in the graph, so the app resizes, crops and hands over
the bytes. Every exporter (ONNX, ExecuTorch, LiteRT; FP32 and INT8) wraps the model in AppForm;
its metadata record says so in words an app developer reads.
"""
from __future__ import annotations

import torch

from export.formats import APP_INPUT
from train.data import MEAN_NCHW, STD_NCHW, center_crop


class AppForm(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config
        self.register_buffer("mean", MEAN_NCHW * 255)
        self.register_buffer("std", STD_NCHW * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.permute(0, 3, 1, 2).float() - self.mean) / self.std).softmax(1)


def app_batches(images_uint8: torch.Tensor, input_size: int, batch: int):
    """A decoded split (uint8 N, 3, S, S) as an app form takes it, in batches, in order: the crops
    themselves, uint8 NHWC (what a phone's bitmap holds)."""
    for i in range(0, len(images_uint8), batch):
        yield center_crop(images_uint8[i:i + batch], input_size).permute(0, 2, 3, 1).contiguous()


def app_metadata(meta: dict) -> dict:
    """The export's metadata record, for the app form."""
    return {**meta, "input_name": "image", "input": f"{APP_INPUT} to {meta['preprocess']['resize_shorter_side']} px",
            "input_layout": "NHWC", "input_dtype": "uint8", "output_name": "probabilities",
            "output": "calibrated class probabilities, in the order of classes",
            "in_graph": "uint8 to float, ImageNet mean/std normalisation, NHWC to NCHW, flip averaging, softmax"}
