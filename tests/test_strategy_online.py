"""The online strategy: peers trained together, each teaching the others (DML, KDCL)."""

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.methods import KD, CrossEntropy, FitNet
from kdlab.models import create_model
from kdlab.strategies import OnlineDistillation


def online(peers=("mlp", "mlp"), terms=None, mode="mutual"):
    torch.manual_seed(0)
    models = [create_model(a, 10, (1, 40)) for a in peers]
    terms = terms or {"ce": CrossEntropy(1.0), "kd": KD(1.0, temperature=1.0)}
    return OnlineDistillation(
        models, terms, [lambda p: torch.optim.SGD(p, lr=0.1)] * len(models), 10, (1, 40), mode=mode
    )


def batch(n=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n)


def grads(model):
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("mode", ["mutual", "ensemble"])
def test_peers_learn_from_each_others_targets_but_not_through_them(mode):
    module = online(mode=mode)
    x, y, idx = batch()
    totals, parts, logits = module.peer_losses(x, y, idx)
    totals[0].backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads(module.peers[0])[:1])
    assert all(g is None for g in grads(module.peers[1]))  # the teacher side is detached
    # peer 0's KD term moves with peer 1's predictions: it does learn from them
    kd_before = parts[0]["loss_kd"].item()
    with torch.no_grad():
        for p in module.peers[1].parameters():
            p.mul_(3.0)
    kd_after = module.peer_losses(x, y, idx)[1][0]["loss_kd"].item()
    assert kd_after != pytest.approx(kd_before)


def test_mutual_terms_average_over_the_other_peers():
    module = online(peers=("mlp", "mlp", "mlp"))
    x, y, idx = batch()
    _, parts, logits = module.peer_losses(x, y, idx)
    from kdlab.losses import kd_loss

    expected = sum(kd_loss(logits[0], logits[j].detach(), 1.0) for j in (1, 2)) / 2
    torch.testing.assert_close(parts[0]["loss_kd"], expected)
    assert module.sources(0) == ["1", "2"] and len(module.objectives[0]) == 2


def test_each_peer_has_its_own_optimizer_over_its_own_parameters():
    module = online(peers=("mlp", "cnn1d"), terms={"ce": CrossEntropy(), "fitnet": FitNet(hint_stage=-1)})
    optimizers, _ = module.configure_optimizers()
    assert len(optimizers) == 2
    own = [{id(p) for g in opt.param_groups for p in g["params"]} for opt in optimizers]
    assert {id(p) for p in module.peers[0].parameters()} <= own[0] and not own[0] & own[1]
    # the FitNet regressor of (student 0, teacher 1) is optimised with peer 0
    reg = module.objectives[0]["1"]["fitnet"].regressors
    assert {id(p) for p in reg.parameters()} <= own[0]


def test_bad_online_settings_fail_clearly():
    with pytest.raises(KdlabError, match="at least 2 peers"):
        online(peers=("mlp",))
    with pytest.raises(KdlabError, match="strategy.mode=median"):
        online(mode="median")
    with pytest.raises(KdlabError, match="feature terms need one teacher model"):
        online(terms={"ce": CrossEntropy(), "fitnet": FitNet()}, mode="ensemble")


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=online", "method=kd"],
        ["strategy=online", "strategy.mode=ensemble", "strategy.peers=3", "method=dkd"],
        ["strategy=online", "strategy.peers=[{},{arch:cnn1d}]", "method=fitnet"],
    ],
    ids=["online-kd", "online-ensemble-dkd", "online-heterogeneous-fitnet"],
)
def test_online_runs_end_to_end(train, overrides):
    r = train(overrides)
    assert r["strategy"] == "online"
    assert 0.0 <= r["student"]["test_acc"] <= 1.0
    assert len(r["peers"]) == (3 if "strategy.peers=3" in overrides else 2)
    assert r["student"]["test_acc"] == r["peers"][r["deployed_peer"]]["test_acc"]
    assert r["teacher"] is None
