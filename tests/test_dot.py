"""kdlab.optim.DOT against an independent float64 re-statement of the authors' optimizer
(mdistiller/engine/dot.py with m_task = momentum - delta, m_kd = momentum + delta as their
trainer), its checkpoint round trip, SGD at delta = 0, and dot_step (plain and under Lightning)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from kdlab.errors import KdlabError
from kdlab.optim import DOT, dot_step

NAMES = ("W", "Ht", "Hk", "S", "U")
# which loss reaches the switching parameter S at each step: its category changes from step to
# step (distillation only, both, task only, distillation only, neither)
S_TASK = {1, 2}
S_KD = {0, 1, 3}


def inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x, yt, yk = (torch.randn(*s, generator=g, dtype=dtype) for s in ((4, 3), (4, 2), (4, 2)))
    return x, yt, yk


def initial(dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"W": (3, 3), "Ht": (3, 2), "Hk": (3, 2), "S": (3,), "U": (2,)}
    return {n: torch.randn(*s, generator=g, dtype=dtype) for n, s in shapes.items()}


def losses(P: dict[str, torch.Tensor], step: int, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(task, distillation) losses: W reaches both, Ht the task only, Hk the distillation only,
    S changes with ``step`` (S_TASK, S_KD), U neither."""
    x, yt, yk = data
    h = torch.tanh(x @ P["W"])  # (4, 3)
    task = ((h @ P["Ht"] - yt) ** 2).mean()
    kd = ((h @ P["Hk"] - yk) ** 2).mean()
    s = (h * P["S"]).sum(1)  # (4,)
    if step in S_TASK:
        task = task + (s**2).mean()
    if step in S_KD:
        kd = kd + ((s - 0.5) ** 2).mean()
    return task, kd


def make_params(dtype=torch.float64) -> dict[str, nn.Parameter]:
    return {n: nn.Parameter(v) for n, v in initial(dtype).items()}


def run_dot(P, opt, steps, data, lrs=None, start=0):
    for step in range(start, start + steps):
        if lrs is not None:  # as an LR scheduler would
            opt.param_groups[0]["lr"] = lrs[step]
        task, kd = losses(P, step, data)
        opt.zero_grad(set_to_none=True)
        kd.backward(retain_graph=True)
        opt.step_kd()
        opt.zero_grad(set_to_none=True)
        task.backward()
        opt.step()


def reference(steps, lrs, momentum, delta, wd, damp, data):
    """The authors' update written out (float64): per parameter, the task gradient g (with weight
    decay) in the task buffer, the distillation gradient k in the distillation buffer; momentum
    m_task / m_kd when both losses reach the parameter, their mean when one does; a buffer starts
    as the gradient itself, the distillation-only one without weight decay; no task buffer at all
    when m_task == 0; the task update, then the distillation one."""
    m_task, m_kd = momentum - delta, momentum + delta
    m_one = (m_kd + m_task) / 2
    P = initial()
    buf_t: dict[str, torch.Tensor] = {}
    buf_k: dict[str, torch.Tensor] = {}
    history = []
    for step in range(steps):
        leaves = {n: v.clone().requires_grad_(True) for n, v in P.items()}
        task, kd = losses(leaves, step, data)
        order = list(NAMES)
        gt = dict(
            zip(order, torch.autograd.grad(task, [leaves[n] for n in order], allow_unused=True, retain_graph=True))
        )
        gk = dict(zip(order, torch.autograd.grad(kd, [leaves[n] for n in order], allow_unused=True)))
        lr = lrs[step]
        for n in order:
            p, g, k = P[n], gt[n], gk[n]
            if g is not None:
                g = g + wd * p
                if m_task != 0:
                    if n not in buf_t:
                        buf_t[n] = g.clone()
                    else:
                        buf_t[n] = (m_task if k is not None else m_one) * buf_t[n] + (1 - damp) * g
                    g = buf_t[n]
                p = p - lr * g
            if k is not None:
                if n not in buf_k:
                    buf_k[n] = k.clone()
                elif g is not None:
                    buf_k[n] = m_kd * buf_k[n] + (1 - damp) * k
                else:  # P[n]: p has not moved, no task gradient
                    buf_k[n] = m_one * buf_k[n] + (1 - damp) * (k + wd * P[n])
                p = p - lr * buf_k[n]
            P[n] = p
        history.append({n: v.clone() for n, v in P.items()})
    return history


@pytest.mark.parametrize(
    "momentum,delta,wd,damp",
    [(0.9, 0.075, 5e-3, 0.0), (0.9, 0.09, 1e-2, 0.2), (0.5, 0.5, 1e-2, 0.0)],  # the last: m_task = 0
)
def test_matches_the_authors_update(momentum, delta, wd, damp):
    data = inputs()
    lrs = [0.05, 0.05, 0.02, 0.1, 0.05, 0.03]
    expected = reference(len(lrs), lrs, momentum, delta, wd, damp, data)
    P = make_params()
    opt = DOT(list(P.values()), lr=lrs[0], momentum=momentum, delta=delta, weight_decay=wd, dampening=damp)
    start = {n: p.detach().clone() for n, p in P.items()}
    for step, want in enumerate(expected):
        run_dot(P, opt, 1, data, lrs, start=step)
        for n in NAMES:
            torch.testing.assert_close(P[n].detach(), want[n], rtol=0, atol=1e-13, msg=f"{n} at step {step}")
    assert torch.equal(P["U"].detach(), start["U"])  # no gradient: untouched
    assert not (P["Hk"].detach() - start["Hk"]).abs().max() < 1e-6  # every kind of parameter moved
    # the authors' state keys, and nothing pending after step()
    state = opt.state_dict()["state"]
    keys = {NAMES[i]: set(s) for i, s in state.items()}
    assert keys["W"] == ({"momentum_kd_buffer"} if momentum == delta else {"momentum_buffer", "momentum_kd_buffer"})
    assert keys["Hk"] == {"momentum_kd_buffer"}
    assert "U" not in keys


def test_state_dict_round_trip_gives_the_same_later_steps():
    data = inputs()
    P = make_params()
    opt = DOT(list(P.values()), lr=0.05, weight_decay=5e-3)
    run_dot(P, opt, 2, data)
    # a checkpoint (to bytes and back, weights_only as Lightning reads them), half-way through step 2 too
    task, kd = losses(P, 2, data)
    opt.zero_grad(set_to_none=True)
    kd.backward(retain_graph=True)
    opt.step_kd()
    blob = io.BytesIO()
    torch.save({"params": {n: p.detach() for n, p in P.items()}, "opt": opt.state_dict()}, blob)
    blob.seek(0)
    saved = torch.load(blob, weights_only=True)
    opt.zero_grad(set_to_none=True)
    task.backward()
    opt.step()
    run_dot(P, opt, 3, data, start=3)

    Q = {n: nn.Parameter(v.clone()) for n, v in saved["params"].items()}
    resumed = DOT(list(Q.values()), lr=0.05, weight_decay=5e-3)
    resumed.load_state_dict(saved["opt"])
    task, _ = losses(Q, 2, data)
    resumed.zero_grad(set_to_none=True)
    task.backward()
    resumed.step()  # the distillation gradient came from the checkpoint
    run_dot(Q, resumed, 3, data, start=3)
    for n in NAMES:
        assert torch.equal(P[n], Q[n]), n


def test_all_state_is_in_self_state_and_follows_the_params_dtype():
    data = inputs(torch.float32)
    P = make_params(torch.float32)
    opt = DOT(list(P.values()), lr=0.05, weight_decay=5e-3)
    run_dot(P, opt, 2, data)
    task, kd = losses(P, 2, data)
    kd.backward(retain_graph=True)
    opt.step_kd()

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            return 1
        if isinstance(obj, dict):
            return sum(tensors(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(tensors(v) for v in obj)
        return 0

    assert tensors({k: v for k, v in vars(opt).items() if k not in ("state", "param_groups")}) == 0
    assert {"kd_grad", "momentum_kd_buffer"} <= set(opt.state[P["Hk"]])
    # load_state_dict casts the state to the parameters' dtype and device (as for torch's optimizers)
    Q = make_params(torch.float64)
    other = DOT(list(Q.values()), lr=0.05)
    other.load_state_dict(opt.state_dict())
    assert all(v.dtype == torch.float64 for s in other.state.values() for v in s.values())


def sgd_pair(wd: float, steps: int, switching: bool):
    """(DOT with delta = 0, SGD with momentum on task + distillation) after ``steps`` steps;
    without ``switching`` the losses of step 0 every step: S reached by the distillation only."""
    data = inputs()
    A, B = make_params(), make_params()
    dot = DOT(list(A.values()), lr=0.05, momentum=0.9, delta=0.0, weight_decay=wd)
    sgd = torch.optim.SGD(list(B.values()), lr=0.05, momentum=0.9, weight_decay=wd)
    for step in range(steps):
        which = step if switching else 0
        task, kd = losses(A, which, data)
        dot_step(dot, task, kd)
        task, kd = losses(B, which, data)
        sgd.zero_grad()
        (task + kd).backward()
        sgd.step()
    return A, B


def test_delta_zero_without_weight_decay_is_sgd_on_the_summed_loss():
    """The two buffers add up to SGD's, for parameters reached by both losses, one or neither,
    as long as which losses reach a parameter does not change."""
    A, B = sgd_pair(wd=0.0, steps=5, switching=False)
    for n in NAMES:
        torch.testing.assert_close(A[n].detach(), B[n].detach(), rtol=0, atol=1e-14, msg=n)


def test_delta_zero_is_not_sgd_where_the_losses_reaching_a_parameter_change():
    """S: distillation only, both, task only, then distillation only again. At step 2 (task only)
    DOT neither decays nor applies S's distillation buffer, where SGD's one buffer carries it."""
    A, B = sgd_pair(wd=0.0, steps=2, switching=True)
    for n in NAMES:
        torch.testing.assert_close(A[n].detach(), B[n].detach(), rtol=0, atol=1e-14, msg=n)
    A, B = sgd_pair(wd=0.0, steps=3, switching=True)
    assert (A["S"] - B["S"]).abs().max() > 1e-3
    torch.testing.assert_close(A["Hk"].detach(), B["Hk"].detach(), rtol=0, atol=1e-14)


def test_delta_zero_with_weight_decay_differs_from_sgd_where_only_distillation_reaches():
    """The authors' first distillation buffer has no weight decay: a parameter reached by the
    distillation loss only moves lr * wd * p less than SGD's on its first step; the others agree."""
    wd, lr = 1e-2, 0.05
    A, B = sgd_pair(wd=wd, steps=1, switching=False)
    p0 = initial()
    for n in ("W", "Ht", "U"):  # both, task only, neither
        torch.testing.assert_close(A[n].detach(), B[n].detach(), rtol=0, atol=1e-15, msg=n)
    for n in ("Hk", "S"):  # distillation only
        torch.testing.assert_close(A[n].detach() - B[n].detach(), lr * wd * p0[n], rtol=0, atol=1e-15, msg=n)


def test_bad_hyperparameters_are_refused_in_one_line():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(KdlabError, match="delta"):
        DOT(p, lr=0.1, momentum=0.05, delta=0.075)
    with pytest.raises(KdlabError, match="lr"):
        DOT(p, lr=-0.1)
    with pytest.raises(KdlabError, match="weight_decay"):
        DOT(p, lr=0.1, weight_decay=-1.0)
    opt = DOT(p, lr=0.1)
    with pytest.raises(KdlabError, match="delta"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "delta": 1.0})
    with pytest.raises(KdlabError, match="DOT optimizer"):
        dot_step(torch.optim.SGD(p, lr=0.1), p[0].sum(), p[0].sum())


def test_param_groups_each_with_their_hyperparameters():
    """Two groups step as two DOTs side by side (the authors allow one group)."""
    data = inputs()
    A, B = make_params(), make_params()
    groups = [
        {"params": [A["W"], A["Ht"], A["U"]]},
        {"params": [A["Hk"], A["S"]], "lr": 0.02, "delta": 0.05, "weight_decay": 0.0},
    ]
    two = DOT(groups, lr=0.05, weight_decay=5e-3)
    one_a = DOT([B["W"], B["Ht"], B["U"]], lr=0.05, weight_decay=5e-3)
    one_b = DOT([B["Hk"], B["S"]], lr=0.02, delta=0.05, weight_decay=0.0)
    for step in range(4):
        run_dot(A, two, 1, data, start=step)
        task, kd = losses(B, step, data)
        for o in (one_a, one_b):
            o.zero_grad(set_to_none=True)
        kd.backward(retain_graph=True)
        one_a.step_kd()
        one_b.step_kd()
        for o in (one_a, one_b):
            o.zero_grad(set_to_none=True)
        task.backward()
        one_a.step()
        one_b.step()
    for n in NAMES:
        assert torch.equal(A[n], B[n]), n


def test_dot_step_is_the_authors_sequence_plain_and_under_lightning():
    import lightning.pytorch as pl

    data = inputs(torch.float32)
    steps = 3

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.P = nn.ParameterDict(make_params(torch.float32))

        def training_step(self, batch, batch_idx):
            task, kd = losses(dict(self.P), batch_idx, data)
            dot_step(self.optimizers(), task, kd, self.manual_backward)

        def configure_optimizers(self):
            return DOT(self.parameters(), lr=0.05, weight_decay=5e-3)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(steps, 1)), batch_size=1)

    module = Module()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert trainer.global_step == steps  # Lightning counted the optimizer steps

    P = make_params(torch.float32)
    plain = DOT(list(P.values()), lr=0.05, weight_decay=5e-3)
    manual = make_params(torch.float32)
    by_hand = DOT(list(manual.values()), lr=0.05, weight_decay=5e-3)
    for step in range(steps):
        task, kd = losses(P, step, data)
        dot_step(plain, task, kd)
    run_dot(manual, by_hand, steps, data)
    for n in NAMES:
        assert torch.equal(P[n], manual[n]), n
        assert torch.equal(module.P[n].detach(), P[n].detach()), n


def test_dot_step_refuses_a_gradient_scaler():
    class Plugin:
        scaler = object()

    class Strategy:
        precision_plugin = Plugin()

    class Wrapper:  # the attributes dot_step reads of Lightning's LightningOptimizer
        def __init__(self, opt):
            self.optimizer, self._strategy = opt, Strategy()

    p = nn.Parameter(torch.ones(2))
    with pytest.raises(KdlabError, match="bf16-mixed"):
        dot_step(Wrapper(DOT([p], lr=0.1)), p.sum(), p.sum())
    assert torch.equal(p.detach(), torch.ones(2))


def test_the_recorded_distillation_gradient_survives_zero_grad_in_place():
    """step_kd keeps a copy: zero_grad(set_to_none=False) and the task backward, which write into
    .grad in place, leave it alone (the authors keep a reference to .grad, which they would not)."""
    data = inputs()
    P = make_params()
    opt = DOT(list(P.values()), lr=0.05)
    task, kd = losses(P, 1, data)
    want = torch.autograd.grad(kd, [P["W"], P["S"]], retain_graph=True)
    kd.backward(retain_graph=True)
    opt.step_kd()
    opt.zero_grad(set_to_none=False)
    task.backward()
    assert torch.equal(opt.state[P["W"]]["kd_grad"], want[0])
    assert torch.equal(opt.state[P["S"]]["kd_grad"], want[1])
    opt.step()
    assert all("kd_grad" not in s for s in opt.state.values())
