"""The MNIST-1D paper's baselines: kdlab's models against the paper's code (greydanus/mnist1d
notebooks/models.py, re-implemented in kdlab.reproduce), the paper's training loop, and the
paper_* recipes' protocol."""

import numpy as np
import pytest
import torch

from kdlab import reproduce
from kdlab.models import create_model
from tests.conftest import compose_cfg

SHAPE = (1, 40)


def np_relu(a):
    return np.maximum(a, 0.0)


def np_mlp(x, layers, residual):
    """float64 reference: ``layers`` is [(W, b), ...] for the hidden layers, then the classifier."""
    h = x.reshape(len(x), -1)
    for i, (w, b) in enumerate(layers[:-1]):
        z = np_relu(h @ w.T + b)
        h = h + z if residual and i > 0 else z
    w, b = layers[-1]
    return h @ w.T + b


def linears(model):
    return [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_matches_the_float64_formula(residual, depth):
    torch.manual_seed(depth)
    model = create_model("mlp", 10, SHAPE, depth=depth, hidden=16, residual=residual)
    x = torch.randn(7, *SHAPE)
    ref = np_mlp(x.double().numpy(), linears(model), residual)
    np.testing.assert_allclose(model(x).detach().double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_residual_mlp_differs_from_plain_only_in_its_forward():
    torch.manual_seed(0)
    plain, res = create_model("mlp", 10, SHAPE), create_model("mlp", 10, SHAPE, residual=True)
    assert not plain.residual and res.residual
    res.load_state_dict(plain.state_dict())  # same parameter names and shapes
    n = sum(p.numel() for p in res.parameters())
    assert n == sum(p.numel() for p in plain.parameters()) == 15210
    x = torch.randn(5, *SHAPE)
    assert not torch.allclose(plain(x), res(x))
    # a hand-built case: W1 = I on the first 2 inputs, W2 = 2 I: h1 = relu(x), h2 = h1 + relu(2 h1) = 3 h1
    m = create_model("mlp", 2, (1, 2), hidden=2, residual=True)
    with torch.no_grad():
        for lin, w in ((m.blocks[0][0], torch.eye(2)), (m.blocks[1][0], 2 * torch.eye(2)), (m.head, torch.eye(2))):
            lin.weight.copy_(w)
            lin.bias.zero_()
    assert m(torch.tensor([[[1.0, -4.0]]])).tolist() == [[3.0, 0.0]]


def copy_in_order(src, dst):
    """Copy ``src``'s parameters into ``dst`` position by position (same layer order and shapes)."""
    ps, pd = list(src.parameters()), list(dst.parameters())
    assert [p.shape for p in ps] == [p.shape for p in pd]
    with torch.no_grad():
        for a, b in zip(ps, pd):
            b.copy_(a)


@pytest.mark.parametrize(
    "arch, kwargs",
    [("logistic", {}), ("mlp", {"residual": True}), ("cnn1d", {})],
)
def test_kdlab_models_compute_the_paper_code_models(arch, kwargs):
    torch.manual_seed(1)
    paper = reproduce.PAPER_MODELS[arch]()
    ours = create_model(arch, 10, SHAPE, **kwargs)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in paper.parameters())
    copy_in_order(paper, ours)
    x = torch.randn(9, *SHAPE)
    torch.testing.assert_close(ours(x), paper(x.reshape(9, 40)), rtol=1e-5, atol=1e-6)


def test_paper_models_have_the_published_sizes():
    sizes = {arch: sum(p.numel() for p in cls().parameters()) for arch, cls in reproduce.PAPER_MODELS.items()}
    assert sizes == {"logistic": 410, "mlp": 15210, "cnn1d": 5210}


class Recorder(torch.nn.Module):
    """Logits from the first feature; remembers which samples (their index, stored as feature 1) it saw."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.seen = []

    def forward(self, x):
        if torch.is_grad_enabled():  # training steps only (the evaluation runs under no_grad)
            self.seen.append(x[:, 1].long().tolist())
        return x[:, :1] * self.w  # (b, 2)


def test_paper_loop_walks_the_training_set_in_order_and_reports_the_last_eval():
    n = 10
    x = torch.stack([torch.ones(n), torch.arange(n, dtype=torch.float32)], 1)  # feature 1 = the index
    y = torch.zeros(n, dtype=torch.long)
    model = Recorder()
    out = reproduce.paper_train(model, x, y, x[:4], y[:4], batch_size=4, total_steps=4, eval_every=2)
    # 5 updates (range(total_steps + 1)); bix = step * 4 % 10: 0, 4, 8 (a short batch), 2, 6; no shuffling
    assert model.seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert out["updates"] == 5 and len(out["test_acc_curve"]) == 3  # after steps 0, 2, 4
    assert out["test_acc"] == out["test_acc_curve"][-1] == 1.0  # class 0 wins once w[0] > w[1]


def test_paper_loop_uses_adam_1e2_without_weight_decay():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    w0 = lin.weight.detach().clone()
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    reproduce.paper_train(lin, x, y, x, y, batch_size=4, total_steps=0, eval_every=0)
    # Adam's first step moves every weight with a nonzero gradient by lr * sign(grad) (bias-corrected)
    assert torch.allclose((lin.weight - w0).abs(), torch.full_like(w0, 1e-2), rtol=1e-3)


@pytest.mark.parametrize("label, name, arch, published", reproduce.BASELINES)
def test_paper_recipes_follow_the_paper_protocol(label, name, arch, published):
    cfg = compose_cfg([f"experiments={name}"])
    assert cfg.method.name == "none" and list(cfg.method.terms) == ["ce"]
    assert cfg.student.arch == arch and cfg.published.student_acc == published
    assert dict(cfg.student.kwargs) == ({"residual": True} if arch == "mlp" else {})
    d = cfg.data
    assert (d.val_fraction, d.batch_size, d.noise_std, d.max_shift, d.num_samples) == (0, 100, 0, 0, 5000)
    # 4000 training samples / 100 = 40 batches a pass: 200 passes are the paper's 8000 steps
    assert cfg.trainer.max_epochs == 200 and 4000 // d.batch_size * cfg.trainer.max_epochs == 8000
    assert cfg.student.scheduler is None
    from hydra.utils import instantiate

    opt = instantiate(cfg.student.optimizer)(torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, torch.optim.Adam)
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (0.01, 0, (0.9, 0.999))


def test_paper_mlp_recipe_trains_and_reports_the_final_test_accuracy(train):
    r = train(["experiments=mnist1d/paper_mlp", "measure_speed=false"])
    assert r["student"]["arch"] == "mlp" and r["student"]["params"] == 15210
    assert 0 <= r["student"]["test_acc"] <= 1 and r["teacher"] is None
