"""The CIFAR model zoo of the CRD and DKD benchmarks (Tian et al. ICLR 2020, *Contrastive
Representation Distillation*, code HobbitLong/RepDistiller ``models/``; Zhao et al. CVPR 2022,
*Decoupled Knowledge Distillation*, code megvii-research/mdistiller ``mdistiller/models/cifar/``).

Widths, depths, BN placement, strides and initialisation are the reference's, so the parameter
counts are the ones of the papers' tables (see ``tests/test_cifar_zoo.py``). Module names
follow the reference too: a RepDistiller / mdistiller checkpoint loads once its classifier
keys are renamed to ``head.`` (reference ``fc.``, ``classifier.``, ``classifier.0.`` or
``linear.``). Differences, none of which changes a 32x32 forward pass or a parameter:

- global average pooling is adaptive (the reference's fixed windows, ``AvgPool2d(8)`` etc.,
  cover the whole last map of a 32x32 input), so other input sizes also work;
- ``in_chans`` sets the first convolution's input channels (the reference fixes 3);
- blocks return one tensor (the reference returns ``(out, preact)`` from last blocks) and the
  VGG blocks end with their ReLU, so ``feature_taps`` record post-activation outputs.

Taps (module paths whose output a forward hook records; ``kdlab.models.taps``):

- ``feature_taps``: the reference's ``feats[1:-1]`` of ``forward(x, is_feat=True)`` (RepDistiller;
  mdistiller ``feats["feats"][1:]``), the stem ``f0`` and the pooled vector left out;
- ``preact_taps``: the same stages as ``forward(x, is_feat=True, preact=True)`` returns them
  (mdistiller ``feats["preact_feats"][1:]``), one per feature stage. Where the pre-activation is
  no module's output, a parameter-free ``nn.Identity()`` named ``preact`` marks it (no state-dict
  key, no change to the forward values), and no in-place ReLU follows a recorded pre-activation,
  so it keeps its negative values after the forward pass;
- ``bn_taps``: the BatchNorm modules of the reference's ``get_bn_before_relu()`` (OFD's margins),
  one per pre-activation stage; identical in RepDistiller and mdistiller, which both raise for
  the ShuffleNets (declared empty here).

The VGGs are registered as ``vgg8_cifar`` ... ``vgg19_cifar`` (and ResNet50 as
``resnet50_cifar``) so that timm's ImageNet ``vgg11``-``vgg19`` and ``resnet50`` keep their
names; the config presets ``teacher=vgg13`` and ``student=vgg8`` point at the CIFAR ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import register_model
from torch import Tensor, nn
from torch.nn import functional as F

from kdlab.models.zoo import ZOO, ClassifierMixin, _entrypoint


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, groups=groups, bias=False)


def _init_like_reference(model: nn.Module, linear: str = "torch") -> None:
    """The reference initialisation: convolutions N(0, 2 / (k*k*cout)) (He fan-out), BN weight 1
    and bias 0; the classifier keeps torch's init (``torch``), gets a zero bias (``zero_bias``,
    WRN) or N(0, 0.01) weights and a zero bias (``normal``, VGG and MobileNetV2)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "torch":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class _CifarNet(ClassifierMixin, nn.Module):
    """timm's contract for the CIFAR zoo: ``forward_features`` pools the last map to (b, C).
    Besides ``feature_taps``, each model declares ``preact_taps`` and ``bn_taps`` (see above)."""

    preact_taps: tuple[str, ...] = ()
    bn_taps: tuple[str, ...] = ()

    def _set_head(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.reset_classifier(num_classes)


# --- CIFAR ResNets (He et al. CVPR 2016, the CIFAR-10 variant of section 4.2) -----------------


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (1x1 conv-BN) shortcut, then ReLU. ``preact`` (an
    identity) outputs the sum before that ReLU, the reference's ``preact``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return F.relu(self.preact(out + (x if self.downsample is None else self.downsample(x))))


class CifarResNet(_CifarNet):
    """The CIFAR ResNet of depth 6n+2 (He et al. 2016): a 3x3 stem of ``widths[0]`` channels,
    three stages of n basic blocks of ``widths[1:]`` channels (strides 1, 2, 2), global average
    pooling, one linear layer. ``resnet8x4`` / ``resnet32x4`` are the CRD paper's 4x wider nets
    (widths 32/64/128/256). Taps: ``layer1..3`` (post-ReLU; 32x32, 16x16, 8x8 on CIFAR);
    pre-activation: ``layer<i>.<n-1>.preact`` (the last block's residual sum before its ReLU);
    BN before ReLU: ``layer<i>.<n-1>.bn2`` (RepDistiller / mdistiller ``resnet.py``)."""

    feature_taps = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int = 20,
        widths: Sequence[int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
        input_size: Sequence[int] = (32, 32),
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[1], n, 1)
        self.layer2 = self._stage(widths[1], widths[2], n, 2)
        self.layer3 = self._stage(widths[2], widths[3], n, 2)
        self.preact_taps = tuple(f"layer{i}.{n - 1}.preact" for i in (1, 2, 3))
        self.bn_taps = tuple(f"layer{i}.{n - 1}.bn2" for i in (1, 2, 3))
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # reference: AvgPool2d(8) over the 8x8 map
        self._set_head(widths[3], num_classes)
        _init_like_reference(self)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*(BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.avgpool(x).flatten(1)  # (b, widths[3])


# --- Wide ResNets (Zagoruyko & Komodakis BMVC 2016) --------------------------------------------


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut (identity,
    or a 1x1 conv of the activated input when the width changes). ``relu1`` is not in place, so
    that a tap on ``bn1`` (a pre-activation stage) keeps its values."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.drop_rate = drop_rate
        # the reference's name, kept so that its checkpoints load
        self.convShortcut = None if cin == cout else _conv1x1(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """n wide blocks, the first with ``stride`` (the reference's ``NetworkBlock``)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate) for i in range(n))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(_CifarNet):
    """WRN-depth-k (Zagoruyko & Komodakis 2016): a 3x3 stem of 16 channels, three stages of
    (depth-4)/6 pre-activation blocks of 16k, 32k, 64k channels (strides 1, 2, 2), BN-ReLU,
    global average pooling, one linear layer.
    Taps: ``block1..3``, the stage outputs (32x32, 16x16, 8x8 on CIFAR). The network is
    pre-activation, so they are residual sums before the next BN-ReLU, the reference's ``feats``
    f1-f3; the post-BN-ReLU map of the last stage is the tap ``relu``.
    Pre-activation (``preact=True``): the reference applies the BN that follows each stage,
    ``block2.layer[0].bn1(f1)``, ``block3.layer[0].bn1(f2)``, ``bn1(f3)``: taps ``block2.layer.0.bn1``,
    ``block3.layer.0.bn1``, ``bn1`` (here the outputs of those BNs in the forward pass itself; the
    reference calls them a second time, which in training mode updates their running statistics
    twice per step). So ``relu(preact) != feature``: ``preact = bn(feature)``. BN before ReLU: the
    same three BNs (RepDistiller / mdistiller ``wrn.py``)."""

    feature_taps = ("block1", "block2", "block3")
    preact_taps = ("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1")
    bn_taps = ("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1")

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        input_size: Sequence[int] = (32, 32),
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WRN has depth 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n, k = (depth - 4) // 6, widen_factor
        self.conv1 = _conv3x3(in_chans, 16)
        self.block1 = WideStage(n, 16, 16 * k, 1, drop_rate)
        self.block2 = WideStage(n, 16 * k, 32 * k, 2, drop_rate)
        self.block3 = WideStage(n, 32 * k, 64 * k, 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(64 * k)
        self.relu = nn.ReLU()  # not in place: bn1 is a pre-activation tap
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # reference: avg_pool2d(8) over the 8x8 map
        self._set_head(64 * k, num_classes)
        _init_like_reference(self, linear="zero_bias")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.avgpool(self.relu(self.bn1(x))).flatten(1)  # (b, 64k)


# --- VGG with batch norm (Simonyan & Zisserman ICLR 2015), CIFAR variant -----------------------

#: Conv widths of the five blocks: "S" (vgg8_cifar), "A" (vgg11), "B" (vgg13), "D" (vgg16), "E" (vgg19).
VGG_CFGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(_CifarNet):
    """The CIFAR VGG of RepDistiller with batch norm: five blocks of conv3x3(bias)-BN-ReLU,
    2x2 max-pooling after blocks 0-2 (and after block 3 only for 64x64 inputs, as the
    reference), global average pooling and one linear layer on 512 features (no FC stack).
    Taps: ``block1..4`` (post-ReLU; 16, 8, 4, 4 pixels wide on CIFAR), the reference's f1-f4;
    ``block0`` is its stem f0, left out like the other models' stems. The reference's blocks end
    with their last BN and ``forward`` applies the ReLU (``f<i>_pre`` is the BN output); here the
    blocks end with that ReLU, not in place, so the pre-activation taps are the blocks' last BNs
    (``block<i>.<3 * convs - 2>``), which are also the BNs of ``get_bn_before_relu``."""

    feature_taps = ("block1", "block2", "block3", "block4")

    def __init__(
        self,
        depth: int = 13,
        num_classes: int = 100,
        in_chans: int = 3,
        input_size: Sequence[int] = (32, 32),
    ):
        super().__init__()
        if depth not in VGG_CFGS:
            raise ValueError(f"VGG depth is one of {sorted(VGG_CFGS)}, got {depth}")
        cin = in_chans
        for i, widths in enumerate(VGG_CFGS[depth]):
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            # the reference drops the block's last ReLU and applies it in forward (same indices
            # here); not in place, so that the block's last BN output (the pre-activation) survives
            layers[-1] = nn.ReLU()
            setattr(self, f"block{i}", nn.Sequential(*layers))
        self.preact_taps = tuple(f"block{i}.{3 * len(VGG_CFGS[depth][i]) - 2}" for i in (1, 2, 3, 4))
        self.bn_taps = self.preact_taps
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self._set_head(cin, num_classes)
        _init_like_reference(self, linear="normal")

    def forward_features(self, x: Tensor) -> Tensor:
        h = x.shape[2]
        x = self.pool0(self.block0(x))  # (b, 64, 16, 16) on CIFAR
        x = self.pool1(self.block1(x))  # (b, 128, 8, 8)
        x = self.pool2(self.block2(x))  # (b, 256, 4, 4)
        x = self.block3(x)  # (b, 512, 4, 4)
        if h == 64:  # the reference pools here for Tiny-ImageNet only
            x = self.pool3(x)
        return self.pool4(self.block4(x)).flatten(1)  # (b, 512)


# --- MobileNetV2 (Sandler et al. CVPR 2018), the CRD paper's width-0.5 CIFAR variant ----------


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear bottleneck), plus the
    identity when the shape is kept. The expansion conv is kept for ratio 1 too (reference)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv1x1(cin, hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            _conv1x1(hidden, cout),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(_CifarNet):
    """MobileNetV2 for CIFAR as in RepDistiller (from *Knowledge Distillation via Route
    Constrained Optimization*): a stride-2 3x3 stem, the seven inverted-residual stages of the
    paper (expansion ``expand``, widths times ``width_mult``), a 1x1 conv to 1280 channels,
    global average pooling, one linear layer. ``mobilenetv2`` is the reference ``mobile_half``
    (expand 6, width 0.5), the "MobileNetV2" of the CRD / DKD tables.
    Taps: ``blocks.1``, ``blocks.2``, ``blocks.4``, ``blocks.6`` (16, 8, 4, 2 pixels wide on
    CIFAR), the reference's f1-f4; MobileNetV2's stage outputs are linear (no activation), and
    the pre-activation taps are the same modules: RepDistiller's ``forward`` ignores ``preact``
    (mdistiller's returns no ``preact_feats`` for MobileNetV2 at all). BN before ReLU: the last
    block's projection BN of each stage, ``blocks.<i>.<n-1>.conv.7`` (RepDistiller / mdistiller
    ``get_bn_before_relu``: ``blocks[i][-1].conv[-1]``)."""

    feature_taps = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
    preact_taps = feature_taps

    #: (expansion, width, blocks, first stride) per stage; ``None`` means ``expand``.
    SETTING = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        input_size: Sequence[int] = (32, 32),
        expand: int = 6,
        width_mult: float = 0.5,
    ):
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTING:
            cout, layers = int(c * width_mult), []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, expand if t is None else t))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        self.bn_taps = tuple(f"blocks.{i}.{self.SETTING[i][2] - 1}.conv.7" for i in (1, 2, 4, 6))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # reference: AvgPool2d(2, ceil_mode=True) over 2x2
        self._set_head(last, num_classes)
        _init_like_reference(self, linear="normal")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)  # (b, 16, 16, 16) on CIFAR
        for block in self.blocks:
            x = block(x)  # ... (b, 160, 2, 2)
        return self.avgpool(self.conv2(x)).flatten(1)  # (b, 1280)


# --- ShuffleNets (Zhang et al. CVPR 2018; Ma et al. ECCV 2018), CIFAR variants -----------------


class ChannelShuffle(nn.Module):
    """(b, g*c, h, w) -> (b, c*g, h, w): interleave the channels of ``groups`` groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Block(nn.Module):
    """ShuffleNet unit: grouped 1x1-BN-ReLU, channel shuffle, depthwise 3x3-BN, grouped 1x1-BN;
    added to the input (stride 1) or concatenated with its 3x3 average pool (stride 2), then ReLU.
    The first 1x1 of the first unit (on the 24-channel stem) is not grouped, as the reference.
    ``preact`` (an identity) outputs the sum / concatenation before that ReLU (reference ``preact``)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first: bool = False):
        super().__init__()
        mid, g = cout // 4, 1 if first else groups
        self.stride = stride
        self.conv1 = _conv1x1(cin, mid, groups=g)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(g)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv1x1(mid, cout, groups=groups)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return F.relu(self.preact(torch.cat([out, res], 1) if self.stride == 2 else out + res))


class ShuffleNetV1(_CifarNet):
    """ShuffleNet (g=3) for CIFAR as in RepDistiller: a 1x1 stem of 24 channels (no stride, no
    pooling), three stages of 4/8/4 units of 240/480/960 channels (each starting with a stride-2
    unit), global average pooling, one linear layer.
    Taps: ``layer1..3`` (post-ReLU; 16, 8, 4 pixels wide on CIFAR); pre-activation:
    ``layer<i>.<n-1>.preact``. No BN before ReLU: the reference's ``get_bn_before_relu`` raises
    ("ShuffleNet currently is not supported for Overhaul teacher"), so ``bn_taps`` is empty."""

    feature_taps = ("layer1", "layer2", "layer3")
    bn_taps = ()

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        input_size: Sequence[int] = (32, 32),
        widths: Sequence[int] = (240, 480, 960),
        depths: Sequence[int] = (4, 8, 4),
        groups: int = 3,
    ):
        super().__init__()
        self.conv1 = _conv1x1(in_chans, 24)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (w, n) in enumerate(zip(widths, depths)):
            # the stride-2 unit concatenates its input, so its branch makes w - cin channels
            units = [ShuffleV1Block(cin, w - cin, 2, groups, first=i == 0)]
            units += [ShuffleV1Block(w, w, 1, groups) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            cin = w
        self.preact_taps = tuple(f"layer{i + 1}.{n - 1}.preact" for i, n in enumerate(depths))
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # reference: avg_pool2d(4) over the 4x4 map
        self._set_head(cin, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (b, 24, 32, 32) on CIFAR
        x = self.layer3(self.layer2(self.layer1(x)))  # (b, 960, 4, 4)
        return self.avgpool(x).flatten(1)  # (b, 960)


class SplitBlock(nn.Module):
    """Split the channels at ``ratio``: (first part, rest)."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.shape[1] * self.ratio)
        return x[:, :c], x[:, c:]


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit: keep half the channels, pass the other half through 1x1-BN-ReLU,
    depthwise 3x3-BN, 1x1-BN-ReLU; concatenate and shuffle (2 groups). ``preact`` (an identity)
    outputs the reference's ``preact``: the kept half concatenated with the last BN's output
    before its ReLU, NOT shuffled (so ``shuffle(relu(preact))`` is the unit's output)."""

    def __init__(self, channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(channels * split_ratio)
        self.conv1 = _conv1x1(c, c)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = _conv1x1(c, c)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ChannelShuffle(2)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.split(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
        pre = self.bn3(self.conv3(out))
        self.preact(torch.cat([x1, pre], 1))  # only for taps; the reference's preact is unshuffled
        return self.shuffle(torch.cat([x1, F.relu(pre)], 1))


class ShuffleV2Down(nn.Module):
    """ShuffleNetV2 stride-2 unit: depthwise 3x3 s2-BN, 1x1-BN-ReLU on the left; 1x1-BN-ReLU,
    depthwise 3x3 s2-BN, 1x1-BN-ReLU on the right (cout / 2 each); concatenate and shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = _conv1x1(cin, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv1x1(cin, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(_CifarNet):
    """ShuffleNetV2 1x for CIFAR as in RepDistiller: a 1x1 stem of 24 channels (no stride, no
    pooling), three stages (a stride-2 unit, then 3/7/3 units) of 116/232/464 channels, a 1x1
    conv-BN-ReLU to 1024, global average pooling, one linear layer.
    Taps: ``layer1..3`` (post-ReLU halves, shuffled; 16, 8, 4 pixels wide on CIFAR);
    pre-activation: ``layer<i>.<n>.preact`` (unshuffled, as the reference: see ``ShuffleV2Block``).
    No BN before ReLU: the reference's ``get_bn_before_relu`` raises, so ``bn_taps`` is empty."""

    feature_taps = ("layer1", "layer2", "layer3")
    bn_taps = ()

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        input_size: Sequence[int] = (32, 32),
        widths: Sequence[int] = (116, 232, 464, 1024),
        depths: Sequence[int] = (3, 7, 3),
    ):
        super().__init__()
        self.conv1 = _conv1x1(in_chans, 24)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (w, n) in enumerate(zip(widths, depths)):
            units = [ShuffleV2Down(cin, w), *(ShuffleV2Block(w) for _ in range(n))]
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            cin = w
        self.preact_taps = tuple(f"layer{i + 1}.{n}.preact" for i, n in enumerate(depths))
        self.conv2 = _conv1x1(cin, widths[3])
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # reference: avg_pool2d(4) over the 4x4 map
        self._set_head(widths[3], num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (b, 24, 32, 32) on CIFAR
        x = self.layer3(self.layer2(self.layer1(x)))  # (b, 464, 4, 4)
        return self.avgpool(F.relu(self.bn2(self.conv2(x)))).flatten(1)  # (b, 1024)


# --- ResNet50 for CIFAR (He et al. 2016, bottleneck blocks, RepDistiller resnetv2.py) ----------


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3 (stride)-BN-ReLU, 1x1 (4x)-BN plus the (1x1 conv-BN) shortcut, then ReLU.
    ``preact`` (an identity) outputs the sum before that ReLU, the reference's ``preact``."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(self.preact(out + self.shortcut(x)))


class ResNetBottleneck(_CifarNet):
    """ResNet50 for CIFAR (RepDistiller ``ResNet50``): the ImageNet ResNet50's four bottleneck
    stages (3/4/6/3 blocks, 256-2048 channels, strides 1, 2, 2, 2) on a 3x3 stride-1 stem with
    no max-pool, global average pooling, one linear layer on 2048 features.
    Taps: ``layer1..4`` (post-ReLU; 32, 16, 8, 4 pixels wide on CIFAR); pre-activation:
    ``layer<i>.<n-1>.preact``; BN before ReLU: ``layer<i>.<n-1>.bn3`` (RepDistiller / mdistiller
    ``resnetv2.py``)."""

    feature_taps = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 100,
        in_chans: int = 3,
        input_size: Sequence[int] = (32, 32),
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_chans, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, n in enumerate(depths):
            planes, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = [Bottleneck(cin if j == 0 else planes * 4, planes, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes * 4
        self.preact_taps = tuple(f"layer{i + 1}.{n - 1}.preact" for i, n in enumerate(depths))
        self.bn_taps = tuple(f"layer{i + 1}.{n - 1}.bn3" for i, n in enumerate(depths))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self._set_head(cin, num_classes)
        _init_like_reference(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (b, 64, 32, 32) on CIFAR
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (b, 2048, 4, 4)
        return self.avgpool(x).flatten(1)  # (b, 2048)


# --- registration ------------------------------------------------------------------------------


def _register(name: str, cls, doc: str, **defaults) -> None:
    """Register ``cls`` into timm as ``name`` (entrypoint in this module) and into ``ZOO``."""
    fn = _entrypoint(cls, **defaults)
    fn.__name__, fn.__qualname__, fn.__doc__, fn.__module__ = name, name, doc, __name__
    register_model(fn)
    ZOO.add(name)
    globals()[name] = fn


_X1, _X4 = (16, 16, 32, 64), (32, 64, 128, 256)
for _d in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_d}", CifarResNet, f"CIFAR ResNet-{_d} (He et al. 2016; CRD/DKD zoo).", depth=_d, widths=_X1)
for _d in (8, 32):
    _register(
        f"resnet{_d}x4",
        CifarResNet,
        f"CIFAR ResNet-{_d}x4, widths 32/64/128/256 (CRD/DKD zoo).",
        depth=_d,
        widths=_X4,
    )
for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(f"wrn_{_d}_{_k}", WideResNet, f"WRN-{_d}-{_k} (CRD/DKD zoo).", depth=_d, widen_factor=_k)
for _d in VGG_CFGS:
    _register(
        f"vgg{_d}_cifar",
        VGG,
        f"CIFAR VGG-{_d} with batch norm (RepDistiller vgg{_d}_bn; CRD/DKD zoo).",
        depth=_d,
    )
_register("mobilenetv2", MobileNetV2, "MobileNetV2, width 0.5, for CIFAR (RepDistiller mobile_half; CRD/DKD zoo).")
_register("shufflenetv1", ShuffleNetV1, "ShuffleNet V1 (g=3) for CIFAR (RepDistiller ShuffleV1; CRD/DKD zoo).")
_register("shufflenetv2", ShuffleNetV2, "ShuffleNet V2 1x for CIFAR (RepDistiller ShuffleV2; CRD/DKD zoo).")
_register("resnet50_cifar", ResNetBottleneck, "ResNet50 for CIFAR (RepDistiller ResNet50; CRD/DKD zoo).")
