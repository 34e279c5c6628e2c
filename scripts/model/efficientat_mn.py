"""EfficientAT's "mn" MobileNetV3 (Schmid et al.), inference only, for the AudioSet (`mnXX_as`) checkpoints.

Written from a reading of upstream `models/mn/` (fschmid56/EfficientAT, MIT licence). Module names and nesting
mirror upstream so its checkpoints load with `strict=True`; everything that only matters for training (dropout,
init, other heads, dilation, concurrent frequency/time squeeze-excitation) is left out. The `_as` checkpoints use
the MLP head and channel-only squeeze-excitation, which is all this file builds.

Input: log-mel (batch, 1, n_mels, frames); any number of frames, since the network average-pools over time.
Output: (logits, embedding); the embedding is the globally average-pooled output of the last conv layer, the
vector upstream returns as `features` and feeds to the classifier.
"""

import re

import torch
from torch import nn

__all__ = ["MobileNetV3", "width_from_name"]

NUM_CLASSES = 527  # AudioSet
BN_EPS = 1e-3  # upstream's BatchNorm2d(eps=0.001); torch's default 1e-5 would shift the logits

# MobileNetV3-Large blocks at width 1.0, from the paper's table 1 (as upstream lists them):
# (in channels, kernel, expanded channels, out channels, squeeze-excite, hardswish, stride)
BLOCKS = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)
HIDDEN = 1280  # width of the classifier's hidden layer at width 1.0


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10 % below `value` (TF MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def width_from_name(name: str) -> float:
    """Width multiplier from an upstream model name: "mn04_as" -> 0.4, "mn10_as" -> 1.0, "mn40_as" -> 4.0."""
    match = re.fullmatch(r"mn(\d\d)_as", name)
    if not match:
        raise ValueError(f"expected a model name like 'mn04_as' (mn01_as ... mn40_as), got {name!r}")
    return int(match.group(1)) / 10


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act=None) -> nn.Sequential:
    """Conv (no bias, "same" padding) + BatchNorm [+ activation]; keys "0"/"1" as torchvision's ConvNormActivation."""
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class ChannelSE(nn.Module):
    """Squeeze-and-excitation over channels: mean over (freq, time), bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = make_divisible(channels // 4)
        self.fc1 = nn.Linear(channels, squeezed)
        self.fc2 = nn.Linear(squeezed, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * gate[:, :, None, None]


class SEHolder(nn.Module):
    """Upstream's ConcurrentSEBlock with its only `_as` setting: one channel SE (max-fusing one output is a no-op).

    Kept as a module of its own so the checkpoint keys `...conc_se_layers.0.fc1.weight` match.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([ChannelSE(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project, residual when shapes allow."""

    def __init__(self, c_in: int, kernel: int, c_mid: int, c_out: int, use_se: bool, hardswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers = []
        if c_mid != c_in:
            layers.append(conv_bn(c_in, c_mid, 1, act=act))
        layers.append(conv_bn(c_mid, c_mid, kernel, stride, groups=c_mid, act=act))
        if use_se:
            layers.append(SEHolder(c_mid))
        layers.append(conv_bn(c_mid, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MobileNetV3(nn.Module):
    """The `mnXX_as` network at a given width multiplier; `forward` returns (logits, embedding)."""

    def __init__(self, width: float = 0.4, num_classes: int = NUM_CLASSES):
        super().__init__()

        def ch(channels: int) -> int:
            return make_divisible(channels * width)

        layers = [conv_bn(1, ch(16), 3, stride=2, act=nn.Hardswish)]
        for c_in, kernel, c_mid, c_out, use_se, hardswish, stride in BLOCKS:
            layers.append(InvertedResidual(ch(c_in), kernel, ch(c_mid), ch(c_out), use_se, hardswish, stride))
        last = 6 * ch(BLOCKS[-1][3])
        layers.append(conv_bn(ch(BLOCKS[-1][3]), last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        # Upstream's head is Sequential(pool, flatten, linear, hardswish, dropout, linear). Pooling happens in
        # forward (its result is the embedding) and dropout is a no-op at inference, so those slots are Identity
        # placeholders that keep the keys `classifier.2.*` and `classifier.5.*`.
        self.classifier = nn.Sequential(
            nn.Identity(),
            nn.Identity(),
            nn.Linear(last, ch(HIDDEN)),
            nn.Hardswish(),
            nn.Identity(),
            nn.Linear(ch(HIDDEN), num_classes),
        )

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.features(mel).mean((2, 3))
        return self.classifier(embedding), embedding
