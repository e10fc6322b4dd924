"""The dog-emotion model: a small depthwise-separable CNN, built from a config.

Every model the repo names (the shipped one and the sizes in README's trade-off table) is an
instance of `MobileCNN` built from an entry of `CONFIGS`. The block is MobileNet-v1's
depthwise 3x3 + pointwise 1x1, each followed by BatchNorm and ReLU. ReLU (not SiLU/Hardswish)
because it exports to every ONNX opset as one op, fuses into Conv in onnxruntime, and its
output range [0, inf) quantizes to uint8 without wasting half the levels.

Two forms of one network share a config. The *training* form has BatchNorm after every
convolution; `fold()` turns every conv + BN into one convolution with a bias (the *inference*
form, `folded=True`). Weights ship folded, and `count_parameters()` of the folded model is the
count of the exported ONNX file's conv/linear initializers.
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
    # twice the MACs, no extra parameters (docs/results.md says what it is worth).
    flip_average: bool = False
    # How a photo becomes the input square (train.data.FRAMINGS): "crop" (shorter side, centre
    # square) or "squash" (the whole photo scaled to the input, as MediaPipe and most apps do)
    framing: str = "crop"
    folded: bool = False                # inference form: each conv + BN folded into one conv with a bias

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


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 config: ModelConfig = ModelConfig()) -> nn.Sequential:
    """One conv unit in the form the config asks for; the ReLU is always the last module."""
    if config.folded:
        conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=True)
        return nn.Sequential(conv, nn.ReLU(inplace=True))
    return nn.Sequential(*conv_bn(cin, cout, kernel, stride, groups), nn.ReLU(inplace=True))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1; a residual add when shapes allow (stride 1, same width)."""

    def __init__(self, cin: int, cout: int, stride: int, config: ModelConfig):
        super().__init__()
        self.depthwise = conv_bn_relu(cin, cin, 3, stride, groups=cin, config=config)
        self.pointwise = conv_bn_relu(cin, cout, 1, config=config)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class MobileCNN(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        layers = [conv_bn_relu(3, config.stem, 3, stride=2, config=config)]
        cin = config.stem
        for cout, stride, blocks in config.stages:
            for i in range(blocks):
                layers.append(SeparableBlock(cin, cout, stride if i == 0 else 1, config))
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

    def conv_units(self) -> list[nn.Sequential]:
        """The conv units (conv ... ReLU) in network order: the same order in every form."""
        return [m for m in self.modules() if isinstance(m, nn.Sequential) and isinstance(m[-1], nn.ReLU)]


def _bn_fold(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv (no bias) followed by BN in eval mode == conv with weight * s and bias beta - mean * s."""
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * s.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * s


def _unit_kernel(unit: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """One conv unit of the training form (conv, BN, ReLU) as a single (weight, bias)."""
    return _bn_fold(unit[0].weight, unit[1])


@torch.no_grad()
def fold(model: MobileCNN) -> MobileCNN:
    """The inference form of a model: every conv unit one convolution with a bias, same outputs
    in eval mode (to float rounding). A folded model is returned unchanged."""
    if model.config.folded:
        return model
    folded = MobileCNN(replace(model.config, folded=True)).eval()
    for src, dst in zip(model.conv_units(), folded.conv_units(), strict=True):
        w, b = _unit_kernel(src)
        dst[0].weight.copy_(w)
        dst[0].bias.copy_(b)
    folded.classifier.load_state_dict(model.classifier.state_dict())
    return folded


def count_parameters(model: nn.Module) -> int:
    """Learned parameters, frozen or not (BatchNorm running stats are buffers and are not counted).
    Of a folded model, this is the count that ships; `inference_parameters` gives it for any form."""
    return sum(p.numel() for p in model.parameters())


def thop_counts(model: nn.Module) -> tuple[float, float, dict]:
    """thop's (MACs, parameters, per-layer tree) of one photo through `model` (flip averaging
    included where the config has it); on a deep copy, so the model never gains thop's counter buffers."""
    import copy
    import thop
    size = model.config.input_size
    return thop.profile(copy.deepcopy(model), inputs=(torch.zeros(1, 3, size, size),), verbose=False,
                        ret_layer_info=True)


def count_macs(model: nn.Module) -> int:
    return int(thop_counts(model)[0])


def inference_parameters(model: MobileCNN) -> int:
    """Parameters of the model as it ships: BN folded (the exported ONNX file's count).
    Built on the meta device: no memory, and no draw from the global RNG that training relies on."""
    with torch.device("meta"):
        return count_parameters(MobileCNN(replace(model.config, folded=True)))


# The named sizes: the shipped model, its teachers, the <= 10k candidate and the tests' tiny one.
# Sizes measured and retired (small, phone, micro, mini, mid, ...) are rows of docs/results.md and
# the run log, which keeps every run's config; git history keeps their definitions.
CONFIGS: dict[str, ModelConfig] = {
    "nano": ModelConfig(stem=12, stages=((16, 2, 1), (32, 2, 2), (48, 2, 2)), flip_average=True),
    # the <= 10k candidate: the five-stage layout, narrow, with its 40-channel stage at 28x28 and its
    # last at 14x14 (a stride late: more MACs at no parameters) (9,946 params)
    "micro14": ModelConfig(stem=16, stages=((24, 1, 1), (32, 2, 2), (40, 1, 2), (54, 2, 1)), flip_average=True),
    # the shipped model: micro14's layout, wider (17,208 params, 25.20 M MACs)
    "mini14": ModelConfig(stem=20, stages=((28, 1, 1), (40, 2, 2), (56, 1, 2), (88, 2, 1)), flip_average=True),
    # the teacher (weights/teacher_large*.pkl): wide only where the feature maps are small (14x14, 7x7),
    # where channels cost parameters but few MACs
    "large": ModelConfig(stem=16, stages=((32, 2, 1), (96, 2, 3), (256, 2, 3)), flip_average=True),
}
SHIPPED = "mini14"


def get_config(name: str, input_size: int = 0) -> ModelConfig:
    """A named config, optionally at another input resolution."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], input_size=input_size) if input_size else CONFIGS[name]


def build_model(config: ModelConfig | str = SHIPPED) -> MobileCNN:
    return MobileCNN(get_config(config) if isinstance(config, str) else config)


def main(argv=None) -> None:
    """python mobile_model.py: every named config with its parameters as it ships and while training."""
    import argparse
    argparse.ArgumentParser(description="The named model configs: parameters as they ship (BatchNorm "
                            "folded), while training, and MACs per photo. No options.").parse_args(argv)
    print(f"{'config':8s} {'shipped':>9s} {'training':>9s} {'MACs':>9s}  input  layout")
    for name, cfg in CONFIGS.items():
        model = build_model(cfg)
        macs = count_macs(fold(model.eval()))
        print(f"{name + ('*' if name == SHIPPED else ''):8s} {inference_parameters(model):>9,d} {count_parameters(model):>9,d} "
              f"{macs / 1e6:>8.2f}M  {cfg.input_size:>4d}px  stem {cfg.stem}, stages {list(cfg.stages)}")
    print("* the shipped config")


if __name__ == "__main__":
    main()
