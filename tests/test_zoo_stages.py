"""The stages of every kdlab zoo model pinned to the reference code's: feature stages (post-activation),
pre-activation stages and the BatchNorms before the ReLU (``kdlab.models.feature_stages``,
``preact_stages``, ``bn_before_relu``).

The table is written by hand from reading the reference code, not from kdlab's models:
HobbitLong/RepDistiller ``models/`` (commit b84f547) ``resnet.py``, ``wrn.py``, ``vgg.py``,
``mobilenetv2.py``, ``ShuffleNetv1.py``, ``ShuffleNetv2.py``, ``resnetv2.py``: ``forward(x,
is_feat=True, preact=...)`` returns ``feats`` whose ``feats[1:-1]`` are the stages below, and
``get_bn_before_relu()``; megvii-research/mdistiller ``mdistiller/models/cifar/`` (commit a08d46f)
returns the same tensors as ``feats["feats"][1:]`` / ``feats["preact_feats"][1:]`` and has the same
``get_bn_before_relu`` (its MobileNetV2 returns no ``preact_feats``; both raise for the ShuffleNets).
Shapes are (c, h, w) on a 32x32 input (the reference's comments: ResNet 32x32, 16x16, 8x8).

How the pre-activation relates to the feature, as the reference code computes it:

- ``relu``: ``feature = relu(preact)``: the last block's sum (ResNet, ResNet50, ShuffleNetV1) or the
  block's last BN output (VGG: its blocks drop the final ReLU and ``forward`` applies ``F.relu``);
- ``bn``: WRN is pre-activation: the feature is the stage's residual sum and the reference's
  ``preact=True`` applies the next BN to it, ``block2.layer[0].bn1(f1)``, ``block3.layer[0].bn1(f2)``,
  ``bn1(f3)``: ``preact = bn(feature)``;
- ``same``: MobileNetV2's ``forward`` ignores ``preact``: ``preact is feature`` (linear bottlenecks);
- ``shuffle``: ShuffleNetV2's ``preact`` is ``cat([x1, bn3(...)])`` before the channel shuffle:
  ``feature = shuffle(relu(preact))``.
"""

from functools import cache

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

from kdlab.errors import KdlabError
from kdlab.models import INPUT, FeatureTaps, bn_before_relu, create_model, feature_stages, preact_stages

CIFAR = (3, 32, 32)


def _resnet(last: int, widths: tuple[int, int, int]) -> list[tuple]:
    """resnet.py: layer1-3 of n = (depth - 2) / 6 BasicBlocks; f<i>_pre = the last block's ``out +=
    residual`` before F.relu; get_bn_before_relu = layer<i>[-1].bn2."""
    return [
        (f"layer{i}", f"layer{i}.{last}.preact", f"layer{i}.{last}.bn2", (w, s, s))
        for i, w, s in zip((1, 2, 3), widths, (32, 16, 8))
    ]


def _wrn(k: int) -> list[tuple]:
    """wrn.py: f1-f3 = block1-3 outputs; preact and get_bn_before_relu: block2.layer[0].bn1,
    block3.layer[0].bn1, bn1."""
    bns = ("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1")
    return [(f"block{i}", bn, bn, (w * k, s, s)) for i, bn, w, s in zip((1, 2, 3), bns, (16, 32, 64), (32, 16, 8))]


def _vgg(last_bn: tuple[int, int, int, int]) -> list[tuple]:
    """vgg.py: f1-f4 = F.relu(block1-4(x)), f<i>_pre = block<i>(x), whose last layer is its last BN
    (``layers[:-1]`` drops the final ReLU) = get_bn_before_relu's block<i>[-1]. Index of that BN in a
    block of k convs: 3k - 2. f0 = relu(block0(x)) is the stem. Shapes: pool0-2 halve 32 -> 4, no pool3
    on 32x32 inputs."""
    shapes = ((128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4))
    return [(f"block{i}", f"block{i}.{j}", f"block{i}.{j}", c) for i, j, c in zip((1, 2, 3, 4), last_bn, shapes)]


#: model -> (input shape, relation, [(feature path, preact path, bn path or None, (c, h, w) or (c, L))]).
TABLE = {
    "resnet8": (CIFAR, "relu", _resnet(0, (16, 32, 64))),
    "resnet14": (CIFAR, "relu", _resnet(1, (16, 32, 64))),
    "resnet20": (CIFAR, "relu", _resnet(2, (16, 32, 64))),
    "resnet32": (CIFAR, "relu", _resnet(4, (16, 32, 64))),
    "resnet44": (CIFAR, "relu", _resnet(6, (16, 32, 64))),
    "resnet56": (CIFAR, "relu", _resnet(8, (16, 32, 64))),
    "resnet110": (CIFAR, "relu", _resnet(17, (16, 32, 64))),
    "resnet8x4": (CIFAR, "relu", _resnet(0, (64, 128, 256))),
    "resnet32x4": (CIFAR, "relu", _resnet(4, (64, 128, 256))),
    "wrn_16_1": (CIFAR, "bn", _wrn(1)),
    "wrn_16_2": (CIFAR, "bn", _wrn(2)),
    "wrn_40_1": (CIFAR, "bn", _wrn(1)),
    "wrn_40_2": (CIFAR, "bn", _wrn(2)),
    # cfg 'S' [[64], [128], [256], [512], [512]], 'A' [[64], [128], [256, 256], [512, 512], [512, 512]],
    # 'B' all pairs, 'D' [.., [128, 128], [256] * 3, [512] * 3, [512] * 3], 'E' [.., [128, 128], 4, 4, 4]
    "vgg8_cifar": (CIFAR, "relu", _vgg((1, 1, 1, 1))),
    "vgg11_cifar": (CIFAR, "relu", _vgg((1, 4, 4, 4))),
    "vgg13_cifar": (CIFAR, "relu", _vgg((4, 4, 4, 4))),
    "vgg16_cifar": (CIFAR, "relu", _vgg((4, 7, 7, 7))),
    "vgg19_cifar": (CIFAR, "relu", _vgg((4, 10, 10, 10))),
    # mobilenetv2.py (mobile_half: T=6, width 0.5): f1 = blocks[1], f2 = blocks[2], f3 = blocks[4],
    # f4 = blocks[6] (stride-2 stem 32 -> 16; strides 1, 1, 2, 2, 1, 2, 1; widths 24, 32, 96, 320 x 0.5);
    # get_bn_before_relu = blocks[i][-1].conv[-1], the last block's projection BN (2, 3, 3, 1 blocks)
    "mobilenetv2": (
        CIFAR,
        "same",
        [
            ("blocks.1", "blocks.1", "blocks.1.1.conv.7", (12, 16, 16)),
            ("blocks.2", "blocks.2", "blocks.2.2.conv.7", (16, 8, 8)),
            ("blocks.4", "blocks.4", "blocks.4.2.conv.7", (48, 4, 4)),
            ("blocks.6", "blocks.6", "blocks.6.0.conv.7", (160, 2, 2)),
        ],
    ),
    # ShuffleNetv1.py (ShuffleV1: 240/480/960, 4/8/4 units, each stage starting with stride 2; 1x1 stem
    # on 32x32): f<i>_pre = the last unit's ``out + res`` before F.relu; get_bn_before_relu raises
    "shufflenetv1": (
        CIFAR,
        "relu",
        [
            ("layer1", "layer1.3.preact", None, (240, 16, 16)),
            ("layer2", "layer2.7.preact", None, (480, 8, 8)),
            ("layer3", "layer3.3.preact", None, (960, 4, 4)),
        ],
    ),
    # ShuffleNetv2.py (net_size 1: 116/232/464; DownBlock then 3/7/3 BasicBlocks): f<i>_pre =
    # cat([x1, bn3(conv3(..))]) of the last block, unshuffled; get_bn_before_relu raises
    "shufflenetv2": (
        CIFAR,
        "shuffle",
        [
            ("layer1", "layer1.3.preact", None, (116, 16, 16)),
            ("layer2", "layer2.7.preact", None, (232, 8, 8)),
            ("layer3", "layer3.3.preact", None, (464, 4, 4)),
        ],
    ),
    # resnetv2.py ResNet50 (Bottleneck x 3/4/6/3, 3x3 stride-1 stem, no max-pool): f<i>_pre = the last
    # block's sum before F.relu; get_bn_before_relu = layer<i>[-1].bn3
    "resnet50_cifar": (
        CIFAR,
        "relu",
        [
            ("layer1", "layer1.2.preact", "layer1.2.bn3", (256, 32, 32)),
            ("layer2", "layer2.3.preact", "layer2.3.bn3", (512, 16, 16)),
            ("layer3", "layer3.5.preact", "layer3.5.bn3", (1024, 8, 8)),
            ("layer4", "layer4.2.preact", "layer4.2.bn3", (2048, 4, 4)),
        ],
    ),
    # the small zoo (kdlab.models.zoo; no reference): conv(-BN)-ReLU stages, pre-activation = the conv
    # (cnn1d, no BN) or the BN output (ConvNet). MNIST-1D: 40 -> 19 -> 10 -> 5 (k 5/3/3, stride 2, pad 1)
    "cnn1d": (
        (1, 40),
        "relu",
        [
            ("conv1", "conv1.0", None, (25, 19)),
            ("conv2", "conv2.0", None, (25, 10)),
            ("conv3", "conv3.0", None, (25, 5)),
        ],
    ),
    "cnn_small": (
        (1, 40),
        "relu",
        [
            ("stages.0", "stages.0.1", "stages.0.1", (16, 40)),
            ("stages.1", "stages.1.1", "stages.1.1", (32, 20)),
            ("stages.2", "stages.2.1", "stages.2.1", (64, 10)),
        ],
    ),
    "cnn_tiny": (
        (1, 8, 8),
        "relu",
        [
            ("stages.0", "stages.0.1", "stages.0.1", (8, 8, 8)),
            ("stages.1", "stages.1.1", "stages.1.1", (16, 4, 4)),
            ("stages.2", "stages.2.1", "stages.2.1", (32, 2, 2)),
        ],
    ),
}


@cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    shape = TABLE[name][0]
    return create_model(name, 100 if shape == CIFAR else 10, shape).eval()


@cache
def _features(name: str) -> dict[str, torch.Tensor]:
    """Feature and pre-activation taps of one eval-mode forward pass of two random inputs."""
    model = _model(name)
    taps = FeatureTaps(model, feature_stages(model) + preact_stages(model))
    with torch.no_grad():
        model(torch.randn(2, *TABLE[name][0], generator=torch.Generator().manual_seed(1)))
    taps.remove()
    return taps.pop()


@pytest.mark.parametrize("name", list(TABLE))
def test_declared_stages_match_the_reference(name):
    model = _model(name)
    _, _, rows = TABLE[name]
    assert feature_stages(model) == [r[0] for r in rows]
    assert preact_stages(model) == [r[1] for r in rows]
    bns = [r[2] for r in rows]
    if all(bns):
        assert bn_before_relu(model) == bns
    else:
        with pytest.raises(KdlabError, match="declares no BatchNorm before") as e:
            bn_before_relu(model)
        assert "\n" not in str(e.value)
    feats = _features(name)
    for feat, pre, _, shape in rows:
        assert tuple(feats[feat].shape) == (2, *shape), feat
        assert tuple(feats[pre].shape) == (2, *shape), pre


@pytest.mark.parametrize("name", list(TABLE))
def test_preact_relates_to_the_feature_as_the_reference_says(name):
    model = _model(name)
    _, relation, rows = TABLE[name]
    feats = _features(name)
    for feat_path, pre_path, _, _ in rows:
        feat, pre = feats[feat_path], feats[pre_path]
        # recorded before the ReLU and still so after the whole forward pass (nothing in place)
        assert (pre < 0).any(), pre_path
        if relation == "relu":
            assert torch.equal(F.relu(pre), feat), pre_path
            assert (feat >= 0).all()
        elif relation == "bn":  # WRN: the reference's preact is the next BN applied to the feature
            assert torch.allclose(model.get_submodule(pre_path)(feat), pre, atol=1e-6), pre_path
            assert (feat < 0).any()  # the feature itself is a pre-activation residual sum
        elif relation == "same":  # MobileNetV2: preact is ignored
            assert pre is feat
        elif relation == "shuffle":  # ShuffleNetV2: cat([x1, bn3 out]), unshuffled
            c = pre.shape[1] // 2
            assert torch.equal(feat, _shuffle2(F.relu(pre)))
            assert (pre[:, :c] >= 0).all() and (pre[:, c:] < 0).any()
        else:
            raise AssertionError(relation)


def _shuffle2(x: torch.Tensor) -> torch.Tensor:
    """ShuffleBlock(groups=2) of ShuffleNetv2.py: [N, 2, C/2, ...] -> [N, C/2, 2, ...] -> [N, C, ...]."""
    b, c = x.shape[:2]
    return x.reshape(b, 2, c // 2, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("name", [n for n in TABLE if all(r[2] for r in TABLE[n][2])])
def test_bn_taps_are_batchnorms_as_wide_as_their_preact_stage(name):
    model = _model(name)
    feats = _features(name)
    for pre, bn in zip(preact_stages(model), bn_before_relu(model)):
        module = model.get_submodule(bn)
        assert isinstance(module, nn.modules.batchnorm._BatchNorm), bn
        assert module.num_features == feats[pre].shape[1], (bn, pre)


def test_the_new_identities_change_no_state_dict_key():
    """``preact`` identities have no parameters and the VGG blocks keep the reference's indices."""
    for name in ("resnet8", "shufflenetv1", "shufflenetv2", "resnet50_cifar"):
        assert not any("preact" in k for k in _model(name).state_dict()), name
    keys = set(_model("vgg13_cifar").state_dict())
    assert {"block1.4.running_mean", "block4.3.weight"} <= keys  # RepDistiller vgg13_bn: conv 3, BN 4


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8_cifar", "mobilenetv2", "shufflenetv2", "cnn_small"])
def test_preact_taps_backpropagate_in_training_mode(name):
    """No in-place op overwrites a recorded pre-activation that autograd needs (a fresh model each)."""
    torch.manual_seed(0)
    shape = TABLE[name][0]
    model = create_model(name, 10, shape).train()
    bns = bn_before_relu(model) if all(r[2] for r in TABLE[name][2]) else []
    taps = FeatureTaps(model, preact_stages(model) + bns)
    logits = model(torch.randn(2, *shape))
    feats = taps.pop()
    taps.remove()
    loss = logits.sum() + sum(f.pow(2).mean() for f in feats.values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_mlp_has_no_preact_stages():
    model = create_model("mlp", 10, (1, 40))
    with pytest.raises(KdlabError, match=r"student \(MLP\) declares no pre-activation stages") as e:
        preact_stages(model, "student")
    assert "\n" not in str(e.value) and "student_taps" in str(e.value)
    with pytest.raises(KdlabError, match="has no BatchNorm") as e:
        bn_before_relu(model, "student")
    assert "\n" not in str(e.value)


# --- timm models: found by one probe forward pass ----------------------------------------------


def test_timm_resnet_preact_is_the_last_activations_input():
    """timm's ResNet: each stage ends with its last block's ``act2`` (BasicBlock) / ``act3``
    (Bottleneck), an in-place ReLU after ``x += shortcut``: the tap is that ReLU's input, cloned."""
    torch.manual_seed(0)
    # one block per stage, layer3 a bottleneck; zero_init_last=False: timm zero-initialises the last BN
    # of each residual branch, which would leave layer1's pre-activation (= its input) non-negative
    model = timm.create_model("test_resnet", num_classes=10, zero_init_last=False).eval()
    pre = preact_stages(model, "teacher")
    assert pre == ["layer1.0.act2:input", "layer2.0.act2:input", "layer3.0.act3:input", "layer4.0.act2:input"]
    # the residual branch's last BN, not the shortcut's (layer2-4 downsample after bn2 / bn3)
    assert bn_before_relu(model, "teacher") == ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn3", "layer4.0.bn2"]
    taps = FeatureTaps(model, feature_stages(model) + pre)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    feats = taps.pop()
    taps.remove()
    for stage, p in zip(feature_stages(model), pre):
        assert (feats[p] < 0).any() and torch.equal(F.relu(feats[p]), feats[stage]), p
    for p, bn in zip(pre, bn_before_relu(model)):
        assert model.get_submodule(bn).num_features == feats[p].shape[1]


def test_input_taps_clone_only_in_place_modules():
    model = create_model("cnn1d", 10, (1, 40)).eval()  # ReLU not in place: no copy needed
    taps = FeatureTaps(model, ["conv1.1:input", "conv1.0"])
    with torch.no_grad():
        model(torch.randn(2, 1, 40))
    assert taps.features["conv1.1:input"] is taps.features["conv1.0"]
    with pytest.raises(KdlabError, match="has no module 'conv9.1'") as e:
        FeatureTaps(model, ["conv9.1" + INPUT])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_vit"])
def test_timm_models_without_a_final_activation_refuse(arch):
    """EfficientNet stages end with a linear projection BN, ViT blocks with a residual sum."""
    model = timm.create_model(arch, num_classes=10)
    with pytest.raises(KdlabError, match="declares no pre-activation stages") as e:
        preact_stages(model, "teacher")
    assert "\n" not in str(e.value) and "teacher_taps" in str(e.value)
    with pytest.raises(KdlabError, match="declares no BatchNorm before"):
        bn_before_relu(model, "teacher")
