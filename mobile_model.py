"""The dog-emotion model: a small depthwise-separable CNN, built from a config.

Every model the repo names (the shipped one and the sizes in README's trade-off table) is an
instance of `MobileCNN` built from an entry of `CONFIGS`. The block is MobileNet-v1's
depthwise 3x3 + pointwise 1x1, each followed by BatchNorm and ReLU. ReLU (not SiLU/Hardswish)
because it exports to every ONNX opset as one op, fuses into Conv in onnxruntime, and its
output range [0, inf) quantizes to uint8 without wasting half the levels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (stored with the weights)."""

    stem: int = 16                      # channels of the first, full 3x3 stride-2 conv
    # one (channels, stride, blocks) triple per stage; the first block of a stage has the stride
    stages: tuple = ((24, 2, 1), (48, 2, 2), (64, 2, 2))
    input_size: int = 112               # square input resolution in pixels
    num_classes: int = 4
    dropout: float = 0.1
    # Eval-time horizontal-flip averaging, inside the network so every exported format has it:
    # twice the MACs, no extra parameters; it helps most of the trained models but not every one
    # (README's flip-averaging table has the measured numbers, kept there only so they cannot drift).
    flip_average: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "stages" in known:
            known["stages"] = tuple(tuple(int(v) for v in s) for s in known["stages"])
        return cls(**known)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1; a residual add when shapes allow (stride 1, same width)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.depthwise = conv_bn_relu(cin, cin, 3, stride, groups=cin)
        self.pointwise = conv_bn_relu(cin, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class MobileCNN(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        layers = [conv_bn_relu(3, config.stem, 3, stride=2)]
        cin = config.stem
        for cout, stride, blocks in config.stages:
            for i in range(blocks):
                layers.append(SeparableBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(cin, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.flip_average and not self.training:
            both = self.classify(torch.cat([x, x.flip(3)]))  # one batch of 2B: one pass, not two
            return 0.5 * (both[: x.shape[0]] + both[x.shape[0]:])
        return self.classify(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def count_parameters(model: nn.Module) -> int:
    """Learned parameters, frozen or not (BatchNorm running stats are buffers and are not counted)."""
    return sum(p.numel() for p in model.parameters())


# The named sizes. "large" ships in weights/; README's trade-off table has rows for each.
CONFIGS: dict[str, ModelConfig] = {
    "nano": ModelConfig(stem=12, stages=((16, 2, 1), (32, 2, 2), (48, 2, 2)), flip_average=True),
    "small": ModelConfig(stem=16, stages=((24, 2, 1), (48, 2, 2), (96, 2, 2)), flip_average=True),
    # the phone-sized candidate: wider and one block deeper at 56x56 and 28x28, where channels
    # cost MACs but few parameters; narrow at 7x7, where each channel costs the most parameters
    "phone": ModelConfig(stem=24, stages=((32, 1, 1), (48, 2, 2), (64, 2, 2), (120, 2, 1)), flip_average=True),
    "base": ModelConfig(stem=16, stages=((32, 2, 1), (64, 2, 2), (160, 2, 2)), flip_average=True),
    # the shipped one: wide only where the feature maps are small (14x14, 7x7), so it has 8.8x
    # the parameters of small for 1.7x its time per training step (one thread)
    "large": ModelConfig(stem=16, stages=((32, 2, 1), (96, 2, 3), (256, 2, 3)), flip_average=True),
}
SHIPPED = "large"


def get_config(name: str, input_size: int = 0) -> ModelConfig:
    """A named config, optionally at another input resolution."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], input_size=input_size) if input_size else CONFIGS[name]


def build_model(config: ModelConfig | str = SHIPPED) -> MobileCNN:
    return MobileCNN(get_config(config) if isinstance(config, str) else config)


if __name__ == "__main__":
    for name, cfg in CONFIGS.items():
        print(f"{name:6s} {count_parameters(build_model(cfg)):>8,d} params  {cfg}")
