"""SimKD (Chen et al., CVPR 2022; DefangChen/SimKD): the projector and the loss against a float64
re-statement of the authors' ``SimKD.forward`` (value and gradient), the deployable student (its
logits, what it trains, its parameters), its rebuild through ``create_model("simkd", ...)``, and the
one-line refusals of teachers and students SimKD cannot use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import KdlabError
from kdlab.methods.base import StepOutputs
from kdlab.methods.simkd import SimKD, simkd_loss
from kdlab.models import count_params, create_model
from kdlab.models.checkpoint import load_weights, save_weights
from kdlab.models.simkd import SimKDStudent, project, simkd_projector, student_pool_size
from kdlab.strategies.offline import OfflineDistillation

IMG, SEQ = (1, 8, 8), (1, 40)


def make(arch: str, shape, **kwargs) -> nn.Module:
    """A model as the run builds it, with the arch and kwargs that rebuild it."""
    model = create_model(arch, 10, shape, **kwargs)
    if not hasattr(model, "kdlab_arch"):
        model.kdlab_arch, model.kdlab_kwargs = arch, dict(kwargs)
    return model


def offline(student, teacher, shape, **term) -> OfflineDistillation:
    return OfflineDistillation(student, {"simkd": SimKD(**term)}, torch.optim.SGD, 10, shape, teacher=teacher)


def batch(shape, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


# --- an independent float64 re-statement of the authors' SimKD.forward (models/util.py) ---------


def ref_pool(x, size):
    """adaptive_avg_pool2d to ``size`` when it divides the map: block means."""
    b, c, H, W = x.shape
    h, w = size
    return x.reshape(b, c, h, H // h, w, W // w).mean((3, 5))


def ref_bn(x, gamma, beta, running_mean, running_var, training, eps=1e-5):
    mean, var = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)) if training else (running_mean, running_var)
    return (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps) * gamma[:, None, None] + beta[:, None, None]


def authors_simkd(feat_s, feat_t, layers, cls_w, cls_b, training):
    """(trans_feat_s, trans_feat_t, pred_feat_s) of the authors' SimKD.forward: pool the taller map to
    the other's (H, H), conv1x1-BN-ReLU, conv3x3-BN-ReLU, conv1x1-BN-ReLU, then the teacher's
    classifier on the global average."""
    s_H, t_H = feat_s.shape[2], feat_t.shape[2]
    if s_H > t_H:
        source, target = ref_pool(feat_s, (t_H, t_H)), feat_t
    else:
        source, target = feat_s, ref_pool(feat_t, (s_H, s_H))
    h = source
    for w, pad, gamma, beta, rm, rv in layers:
        h = torch.relu(ref_bn(F.conv2d(h, w, padding=pad), gamma, beta, rm, rv, training))
    return h, target, F.linear(h.mean((2, 3)), cls_w, cls_b)


def layers_of(projector):
    """The projector's weights in the reference's order (conv weight, padding, BN affine and statistics)."""
    convs = [m for m in projector if isinstance(m, nn.Conv2d)]
    bns = [m for m in projector if isinstance(m, nn.BatchNorm2d)]
    return [
        (c.weight, c.padding[0], b.weight, b.bias, b.running_mean.clone(), b.running_var.clone())
        for c, b in zip(convs, bns)
    ]


def test_projector_is_the_authors_bottleneck():
    p = simkd_projector(256, 256, 2)  # resnet8x4 -> resnet32x4, the README's pair: 256 -> 128 -> 128 -> 256
    kinds = [type(m).__name__ for m in p]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 3
    convs = [p[0], p[3], p[6]]
    assert [tuple(c.weight.shape) for c in convs] == [(128, 256, 1, 1), (128, 128, 3, 3), (256, 128, 1, 1)]
    assert [c.padding for c in convs] == [(0, 0), (1, 1), (0, 0)]
    assert all(c.bias is None and c.groups == 1 and c.stride == (1, 1) for c in convs)  # groups 1: not depthwise
    assert [m.num_features for m in (p[1], p[4], p[7])] == [128, 128, 256]
    # 256*128 + 128*128*9 + 128*256 convolution weights, 2 * (128 + 128 + 256) BN weights and biases
    assert count_params(p) == 32768 + 147456 + 32768 + 1024 == 214016
    assert count_params(simkd_projector(256, 256, 4)) == 256 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256)
    assert count_params(simkd_projector(80, 256, 8)) == 80 * 32 + 32 * 32 * 9 + 32 * 256 + 2 * (32 + 32 + 256)
    assert [type(m).__name__ for m in simkd_projector(8, 16, 2, dims=1)][:2] == ["Conv1d", "BatchNorm1d"]
    with pytest.raises(KdlabError, match=r"factor=32 leaves no channels.*factor to 1\.\.16"):
        simkd_projector(8, 16, 32)


@pytest.mark.parametrize("s_size,t_size", [(8, 4), (4, 8), (4, 4)])  # student pooled / teacher pooled / neither
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_loss_match_the_authors_in_float64(s_size, t_size, training):
    torch.manual_seed(0)
    projector = simkd_projector(6, 12, 2).double()
    for m in projector:
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics and affine parameters
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    head = nn.Linear(12, 5).double()
    layers = layers_of(projector)  # copied before train mode updates the statistics
    model = SimKDStudent(
        nn.Sequential(nn.Identity()), projector, head, "0", student_pool_size((s_size, s_size), (t_size, t_size))
    )
    model.train(training)
    feat_s = torch.randn(4, 6, s_size, s_size, dtype=torch.float64, requires_grad=True)
    feat_t = torch.randn(4, 12, t_size, t_size, dtype=torch.float64)
    r = torch.randn(4, 5, dtype=torch.float64)

    logits = model(feat_s)
    proj = model.pop_projection() if training else model.project(feat_s)
    loss = simkd_loss(proj, feat_t)
    ours = torch.autograd.grad(loss + (logits * r).sum(), [feat_s, *projector.parameters()])

    ref_s = feat_s.detach().clone().requires_grad_(True)
    ref_layers = [(w.detach().clone().requires_grad_(True), p, g.detach().clone().requires_grad_(True),
                   b.detach().clone().requires_grad_(True), rm, rv) for w, p, g, b, rm, rv in layers]  # fmt: skip
    trans_s, trans_t, pred = authors_simkd(
        ref_s, feat_t, ref_layers, head.weight.detach(), head.bias.detach(), training
    )
    ref_loss = ((trans_s - trans_t) ** 2).mean()  # nn.MSELoss()
    ref_params = [t for w, _, g, b, _, _ in ref_layers for t in (w, g, b)]
    theirs = torch.autograd.grad(ref_loss + (pred * r).sum(), [ref_s, *ref_params])

    assert proj.shape == trans_s.shape == (4, 12, min(s_size, t_size), min(s_size, t_size))
    torch.testing.assert_close(proj, trans_s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, pred, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_loss_on_a_hand_built_case():
    proj = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    # 4x4 teacher map whose 2x2 block means are [[0, 2], [3, 6]]: pooled to the projected 2x2 map
    teacher = torch.tensor(
        [[[[1.0, -1.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 6.0, 8.0], [3.0, 3.0, 4.0, 6.0]]]],
        dtype=torch.float64,
    )
    loss = simkd_loss(proj, teacher)
    assert loss.item() == pytest.approx((1.0 + 0.0 + 0.0 + 4.0) / 4)  # differences 1, 0, 0, -2
    (grad,) = torch.autograd.grad(loss, proj)
    torch.testing.assert_close(grad, torch.tensor([[[[0.5, 0.0], [0.0, -1.0]]]], dtype=torch.float64))  # 2 (p - t) / 4


@pytest.mark.parametrize(
    "shape,student_kwargs,teacher_kwargs,pool_to",
    [
        (IMG, {"widths": (8, 16)}, {}, (2, 2)),  # student 4x4 > teacher 2x2: the student map is pooled
        (IMG, {}, {"widths": (16, 32)}, None),  # student 2x2 < teacher 4x4: the teacher map is pooled in the loss
        (SEQ, {}, {}, None),  # 1-D maps of MNIST-1D, equal lengths
    ],
)
def test_deployable_student_trains_and_predicts_through_the_teacher_classifier(
    shape, student_kwargs, teacher_kwargs, pool_to
):
    torch.manual_seed(0)
    teacher, student = make("cnn_small", shape, **teacher_kwargs), make("cnn_tiny", shape, **student_kwargs)
    backbone_params = count_params(student) - count_params(student.get_classifier())
    module = offline(student, teacher, shape)
    model, term = module.student, module.terms["simkd"]
    assert isinstance(model, SimKDStudent) and model.backbone is student and model.pool_to == pool_to
    assert term.student_taps == [student.feature_taps[-1]] and term.teacher_taps == [teacher.feature_taps[-1]]
    assert model.kdlab_arch == "simkd" and model.kdlab_kwargs == {
        "student": {"arch": "cnn_tiny", "kwargs": {k: list(v) for k, v in student_kwargs.items()}},
        "teacher": {"arch": "cnn_small", "kwargs": {k: list(v) for k, v in teacher_kwargs.items()}},
        "factor": 2,
        "student_tap": "stages.2" if not student_kwargs else "stages.1",
        "teacher_tap": "stages.2" if not teacher_kwargs else "stages.1",
    }
    # the teacher's classifier, copied and frozen; the student's own classifier is gone
    t_head = teacher.get_classifier()
    assert model.head is not t_head and torch.equal(model.head.weight, t_head.weight)
    assert not any(p.requires_grad for p in model.head.parameters())
    assert isinstance(student.get_classifier(), nn.Identity)
    assert count_params(model) == backbone_params + count_params(model.projector) + count_params(t_head)
    trained = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert {id(p) for p in model.projector.parameters()} <= trained
    assert {id(p) for p in student.parameters()} <= trained
    assert not trained & {id(p) for p in [*model.head.parameters(), *teacher.parameters()]}
    state = module.state_dict()
    assert any(k.startswith("student.projector.") for k in state) and not any(k.startswith("terms.") for k in state)

    # eval: logits = teacher head(global average(projector(pooled student map)))
    x, y = batch(shape)
    module.eval()
    feats = {}
    hook = student.get_submodule(term.student_taps[0]).register_forward_hook(lambda m, i, o: feats.update(s=o))
    with torch.no_grad():
        logits = module.outputs(x)["student"]
        proj = model.projector(F.adaptive_avg_pool2d(feats["s"], pool_to) if pool_to else feats["s"])
        expected = t_head(proj.flatten(2).mean(-1))
    hook.remove()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    assert model.last_projection is None  # nothing kept in eval mode

    # a training step: the projector runs once, the loss is the MSE of that projection and the teacher map
    module.train()
    calls = []
    counter = model.projector.register_forward_hook(lambda m, i, o: calls.append(o))
    step = module.losses(x, y, None)
    counter.remove()
    assert len(calls) == 1 and model.last_projection is None
    with torch.no_grad():
        teacher_map = {}
        h = teacher.get_submodule(term.teacher_taps[0]).register_forward_hook(lambda m, i, o: teacher_map.update(t=o))
        teacher(x)
        h.remove()
        t_map = teacher_map["t"]
        if t_map.shape[2:] != calls[0].shape[2:]:
            t_map = F.adaptive_avg_pool2d(t_map, calls[0].shape[2:]) if t_map.dim() == 4 else t_map
    torch.testing.assert_close(step.terms["loss_simkd"], ((calls[0] - t_map) ** 2).mean())
    step.loss.backward()
    assert model.projector[0].weight.grad is not None and student.stages[0][0].weight.grad is not None
    assert model.head.weight.grad is None


def test_rebuild_through_create_model_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    module = offline(make("cnn_tiny", IMG, widths=(8, 16)), make("cnn_small", IMG), IMG, factor=4)
    model = module.student
    x, y = batch(IMG)
    module.train()
    module.losses(x, y, None)  # a training step: BN statistics move
    with torch.no_grad():
        for p in model.parameters():  # weights and statistics away from their initial values
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    rebuilt = create_model("simkd", 10, IMG, **model.kdlab_kwargs)
    assert isinstance(rebuilt, SimKDStudent) and rebuilt.kdlab_kwargs == model.kdlab_kwargs
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert count_params(rebuilt) == count_params(model) and not rebuilt.head.weight.requires_grad
    path = save_weights(model, tmp_path / "student.safetensors", "simkd", 10, IMG, model.kdlab_kwargs)
    loaded = load_weights(path, "simkd", 10, IMG).eval()  # arch kwargs from the file's metadata, as exported
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_timm_and_cifar_zoo_teachers_with_a_linear_head_work():
    shape = (3, 32, 32)
    torch.manual_seed(0)
    module = offline(make("cnn_tiny", shape), make("test_resnet", shape), shape)  # timm: layer4 -> pool -> fc
    assert module.terms["simkd"].teacher_taps == ["layer4"] and module.student.pool_to == (1, 1)
    module = offline(make("resnet8", shape), make("resnet20", shape), shape)  # CIFAR ResNets: layer3 -> pool -> fc
    assert module.student.kdlab_kwargs["teacher_tap"] == "layer3" and module.student.pool_to is None
    assert module.student.projector[0].in_channels == 64 and module.student.projector[6].out_channels == 64


def test_wrn_teacher_is_refused_on_its_last_stage_and_works_on_the_map_its_classifier_pools():
    torch.manual_seed(0)
    shape = (3, 8, 8)
    with pytest.raises(
        KdlabError, match=r"not the average of tap 'block3'; set method\.terms\.simkd\.teacher_taps=\[relu\]"
    ):
        offline(make("cnn_tiny", shape), make("wrn_16_1", shape), shape)
    module = offline(make("cnn_tiny", shape), make("wrn_16_1", shape), shape, teacher_taps=["relu"])
    assert module.student.kdlab_kwargs["teacher_tap"] == "relu"


class Plain(nn.Module):
    """A conv net without feature stages; ``head`` is its classifier when ``classifier`` is set."""

    def __init__(self, classifier: bool):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)
        if classifier:
            self.get_classifier = lambda: self.head

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize(
    "student,teacher,shape,kwargs,message",
    [
        ("cnn_tiny", "cnn1d", SEQ, {}, r"not the average of tap 'conv3'; no map of the teacher is, use kdlab CIFAR zoo"),
        ("cnn_tiny", "test_convnext", (3, 32, 32), {}, r"ConvNeXt classifier's input is not the average of tap 'stages\.3'"),
        ("cnn_tiny", Plain(False), IMG, {}, r"the teacher \(Plain\) has no get_classifier\(\); use kdlab CIFAR zoo"),
        ("cnn_tiny", Plain(True), IMG, {}, r"the teacher \(Plain\) declares no feature stages.*teacher_taps"),
        ("mlp", "cnn_small", SEQ, {}, r"SimKD needs feature maps.*student tap 'blocks\.1' gives \(2, 100\)"),
        ("cnn_tiny", "cnn_small", SEQ, {"student_taps": ["stages.1", "stages.2"], "teacher_taps": ["stages.1", "stages.2"]},
         r"SimKD reads one map of each model"),
    ],
)  # fmt: skip
def test_models_simkd_cannot_use_are_refused_in_one_line(student, teacher, shape, kwargs, message):
    torch.manual_seed(0)
    t = make(teacher, shape) if isinstance(teacher, str) else teacher
    with pytest.raises(KdlabError, match=message) as e:
        offline(make(student, shape), t, shape, **kwargs)
    assert "\n" not in str(e.value)


def test_deployable_needs_the_models_arch_and_a_teacher():
    torch.manual_seed(0)
    student = create_model("cnn_tiny", 10, SEQ)
    student.__dict__.pop("kdlab_arch", None)
    with pytest.raises(
        KdlabError, match=r"needs the student's arch: build the student with kdlab\.models\.create_model"
    ):
        offline(student, make("cnn_small", SEQ), SEQ)
    with pytest.raises(KdlabError, match="no teacher"):
        SimKD().select_taps(make("cnn_tiny", SEQ), None)


def test_without_a_deployable_model_the_term_projects_the_student_map_itself():
    torch.manual_seed(0)
    term, student, teacher = SimKD(), make("cnn_tiny", IMG, widths=(8, 16)), make("cnn_small", IMG)
    term.select_taps(student, teacher)
    x, _ = batch(IMG)
    feats = {}
    hs = student.get_submodule("stages.1").register_forward_hook(lambda m, i, o: feats.update(s=o))
    ht = teacher.get_submodule("stages.2").register_forward_hook(lambda m, i, o: feats.update(t=o))
    student(x), teacher(x)
    hs.remove(), ht.remove()
    term.build({"stages.1": feats["s"]}, {"stages.2": feats["t"]})
    out = StepOutputs(torch.zeros(4, 10), torch.zeros(4), None, {"stages.1": feats["s"]}, {"stages.2": feats["t"]})
    expected = F.mse_loss(project(term.projector, feats["s"], (2, 2)), feats["t"])
    torch.testing.assert_close(term(out), expected)


def test_ddp_looks_for_unused_parameters_in_a_simkd_run():
    """MobileNetV2 and the ShuffleNets run layers after the tapped stage whose output SimKD never
    reads: DDP must look for unused parameters (without it, a DDP run of simkd with mobilenetv2 stops
    with Lightning's unused-parameter error, seen on 2 CPU processes); plain KD does not need it."""
    from torch import nn

    from kdlab.cluster import unused_in_a_fit
    from kdlab.methods import KD, SimKD

    assert unused_in_a_fit(nn.ModuleDict({"simkd": SimKD()}))
    assert not unused_in_a_fit(nn.ModuleDict({"kd": KD()}))
