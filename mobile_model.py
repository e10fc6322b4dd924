"""The dog-emotion model: a small depthwise-separable CNN, built from a config.

Every model the repo names (the shipped one and the sizes in README's trade-off table) is an
instance of `MobileCNN` built from an entry of `CONFIGS`. The block is MobileNet-v1's
depthwise 3x3 + pointwise 1x1, each followed by BatchNorm and ReLU. ReLU (not SiLU/Hardswish)
because it exports to every ONNX opset as one op, fuses into Conv in onnxruntime, and its
output range [0, inf) quantizes to uint8 without wasting half the levels.

Two forms of one network share a config. The *training* form has BatchNorm after every
convolution and, with `branches > 0`, MobileOne-style parallel branches (Vasu et al. 2023):
extra k x k conv+BN branches, a 1x1 conv+BN branch and a BN-only identity branch, all summed
before the ReLU. They add capacity while training and cost nothing at inference, because
`fold()` turns every such unit into one convolution with a bias (the *inference* form,
`folded=True`). Weights ship folded, and `count_parameters()` of the folded model is the count
of the exported ONNX file's conv/linear initializers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
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
    # ShuffleNet's grouped pointwise convs (issue 43 item 3): every pointwise conv with at least
    # GROUPED_MIN weights (cin x cout) split into this many groups, its output channels shuffled
    # so that the next block's groups each read from every group of this one. 1 = plain.
    pointwise_groups: int = 1
    # How a photo becomes the input square (train.data.FRAMINGS): "crop" (shorter side, centre
    # square) or "squash" (the whole photo scaled to the input, as MediaPipe and most apps do)
    framing: str = "crop"
    branches: int = 0                   # extra parallel conv+BN branches per conv while training (0 = plain)
    folded: bool = False                # inference form: BN and branches folded into one conv with a bias

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


class RepConvBN(nn.Module):
    """Training-time conv unit with parallel branches whose outputs are summed (MobileOne):
    `1 + extra` k x k conv+BN, one 1x1 conv+BN (k > 1) and one BN identity (shape-preserving)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, extra: int):
        super().__init__()
        self.convs = nn.ModuleList(conv_bn(cin, cout, kernel, stride, groups) for _ in range(1 + extra))
        self.scale = conv_bn(cin, cout, 1, stride, groups) if kernel > 1 else None
        self.identity = nn.BatchNorm2d(cout) if stride == 1 and cin == cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = sum(c(x) for c in self.convs)
        if self.scale is not None:
            y = y + self.scale(x)
        return y + self.identity(x) if self.identity is not None else y


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 config: ModelConfig = ModelConfig()) -> nn.Sequential:
    """One conv unit in the form the config asks for; the ReLU is always the last module."""
    if config.folded:
        conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=True)
        return nn.Sequential(conv, nn.ReLU(inplace=True))
    if config.branches:
        return nn.Sequential(RepConvBN(cin, cout, kernel, stride, groups, config.branches), nn.ReLU(inplace=True))
    return nn.Sequential(*conv_bn(cin, cout, kernel, stride, groups), nn.ReLU(inplace=True))


GROUPED_MIN = 5_000   # the pointwise convs worth splitting: the wide ones at 14x14 and 7x7


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel g * n + i goes to i * groups + g (ShuffleNet): a reshape and a transpose, which every
    export format has."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1; a residual add when shapes allow (stride 1, same width)."""

    def __init__(self, cin: int, cout: int, stride: int, config: ModelConfig):
        super().__init__()
        g = config.pointwise_groups if cin * cout >= GROUPED_MIN else 1
        if cin % g or cout % g:
            raise ValueError(f"pointwise_groups = {g} does not divide a {cin} -> {cout} pointwise conv")
        self.depthwise = conv_bn_relu(cin, cin, 3, stride, groups=cin, config=config)
        self.pointwise = conv_bn_relu(cin, cout, 1, groups=g, config=config)
        self.shuffle = g
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        if self.shuffle > 1:
            y = channel_shuffle(y, self.shuffle)
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


def _identity_kernel(conv_shape: torch.Size) -> torch.Tensor:
    """The kernel of a conv that passes its input through unchanged (channel i -> channel i)."""
    cout, cin_per_group, k, _ = conv_shape
    w = torch.zeros(conv_shape)
    idx = torch.arange(cout)
    w[idx, idx % cin_per_group, k // 2, k // 2] = 1.0
    return w


def _unit_kernel(unit: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """One conv unit of the training form as a single (weight, bias)."""
    first = unit[0]
    if isinstance(first, nn.Conv2d):          # plain: conv, BN, ReLU
        return _bn_fold(first.weight, unit[1])
    conv = first.convs[0][0]
    k = conv.kernel_size[0]
    pairs = [_bn_fold(c[0].weight, c[1]) for c in first.convs]
    if first.scale is not None:
        w, b = _bn_fold(first.scale[0].weight, first.scale[1])
        pairs.append((F.pad(w, [k // 2] * 4), b))  # a 1x1 kernel is the centre of a k x k one
    if first.identity is not None:
        pairs.append(_bn_fold(_identity_kernel(conv.weight.shape), first.identity))
    return sum(w for w, _ in pairs), sum(b for _, b in pairs)


@torch.no_grad()
def fold(model: MobileCNN) -> MobileCNN:
    """The inference form of a model: every conv unit one convolution with a bias, same outputs
    in eval mode (to float rounding). A folded model is returned unchanged."""
    if model.config.folded:
        return model
    folded = MobileCNN(replace(model.config, folded=True, branches=0)).eval()
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
    """Parameters of the model as it ships: BN and branches folded (the exported ONNX file's count).
    Built on the meta device: no memory, and no draw from the global RNG that training relies on."""
    with torch.device("meta"):
        return count_parameters(MobileCNN(replace(model.config, folded=True, branches=0)))


# The named sizes; docs/results.md has a row for each. "mini14" ships in weights/; four "large" are
# its teachers.
CONFIGS: dict[str, ModelConfig] = {
    "nano": ModelConfig(stem=12, stages=((16, 2, 1), (32, 2, 2), (48, 2, 2)), flip_average=True),
    "small": ModelConfig(stem=16, stages=((24, 2, 1), (48, 2, 2), (96, 2, 2)), flip_average=True),
    # the phone-sized candidate: wider and one block deeper at 56x56 and 28x28, where channels
    # cost MACs but few parameters; narrow at 7x7, where each channel costs the most parameters
    "phone": ModelConfig(stem=24, stages=((32, 1, 1), (48, 2, 2), (64, 2, 2), (120, 2, 1)), flip_average=True),
    # phone's layout under 10,000 parameters: the same five stages, narrower everywhere
    "micro": ModelConfig(stem=16, stages=((24, 1, 1), (32, 2, 2), (40, 2, 2), (54, 2, 1)), flip_average=True),
    # micro with its 40-channel stage at 28x28 and its last at 14x14 (one stride later): the same
    # parameters for more MACs, spending budget that micro leaves unused
    "micro14": ModelConfig(stem=16, stages=((24, 1, 1), (32, 2, 2), (40, 1, 2), (54, 2, 1)), flip_average=True),
    # micro14 with one more stride later (its 32-channel stage at 56x56, the 40 at 28x28): the same
    # 9,946 parameters for 1.7x the MACs, the student's compute rather than its size (issue 55)
    "micro28": ModelConfig(stem=16, stages=((24, 1, 1), (32, 1, 2), (40, 2, 2), (54, 2, 1)), flip_average=True),
    # between micro and phone: phone's layout, narrower
    "mini": ModelConfig(stem=20, stages=((28, 1, 1), (40, 2, 2), (56, 2, 2), (88, 2, 1)), flip_average=True),
    # mini with micro14's stride move (its 56-channel stage at 28x28, its last at 14x14): the shipped
    # model (17,208 params, 25.20 M MACs)
    "mini14": ModelConfig(stem=20, stages=((28, 1, 1), (40, 2, 2), (56, 1, 2), (88, 2, 1)), flip_average=True),
    # the <= 50k candidate: mini14 with its 14x14 stage at 96 channels and one more block at 7x7 of
    # 224 channels, where a channel costs parameters but few MACs (40,896 params, 27.56 M MACs)
    "mid": ModelConfig(stem=20, stages=((28, 1, 1), (40, 2, 2), (56, 1, 2), (96, 2, 1), (224, 2, 1)), flip_average=True),
    # issue 43 item 3, width where it pays: mid's exact shape with its wide pointwise convs in 8
    # groups and shuffled, at mini14's parameters (17,376 vs 17,208)
    "mid-g8": ModelConfig(stem=20, stages=((28, 1, 1), (40, 2, 2), (56, 1, 2), (96, 2, 1), (224, 2, 1)),
                          flip_average=True, pointwise_groups=8),
    "base": ModelConfig(stem=16, stages=((32, 2, 1), (64, 2, 2), (160, 2, 2)), flip_average=True),
    # the teacher (weights/teacher_large.pkl): wide only where the feature maps are small (14x14, 7x7),
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
