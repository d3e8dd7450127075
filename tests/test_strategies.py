"""Online and self-distillation strategies beside offline, on the same method terms."""

import pytest
import torch

from kdlab.distill import KD, CrossEntropy, FitNet
from kdlab.errors import KdlabError
from kdlab.models import count_params, create_model
from kdlab.strategies import OnlineDistillation, SelfDistillation
from tests.conftest import compose_cfg


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


def test_byot_heads_sit_at_the_stages_and_are_not_part_of_the_student():
    student = create_model("cnn1d", 10, (1, 40))
    module = SelfDistillation(
        student, {"ce": CrossEntropy(0.9), "kd": KD(0.1, 3.0)}, lambda p: torch.optim.SGD(p, lr=0.1), 10, (1, 40)
    )
    assert module.head_paths == ["conv1", "conv2"]
    assert count_params(module.student) == 5210 and all(count_params(h) > 0 for h in module.heads)
    exits = dict(module.exits())
    assert exits["conv1"](torch.randn(3, 1, 40)).shape == (3, 10)
    loss = module.training_step(batch(), 0)
    loss.backward()
    assert all(p.grad is not None for p in module.heads.parameters())


def test_byot_refuses_feature_terms():
    with pytest.raises(KdlabError, match="response terms"):
        SelfDistillation(
            create_model("cnn1d", 10, (1, 40)), {"fitnet": FitNet()}, lambda p: torch.optim.SGD(p, lr=0.1), 10, (1, 40)
        )


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=online", "distill=kd"],
        ["strategy=online", "strategy.mode=ensemble", "strategy.peers=3", "distill=dkd"],
        ["strategy=online", "strategy.peers=[{},{arch:cnn1d}]", "distill=fitnet"],
        ["strategy=self", "distill=kd", "student=cnn1d_narrow"],
        ["strategy=self", "distill=dist", "student=mlp"],
        ["strategy=born_again", "strategy.generations=2", "distill=kd"],
        ["distill=tfkd"],
    ],
    ids=[
        "online-kd",
        "online-ensemble-dkd",
        "online-heterogeneous-fitnet",
        "self-kd",
        "self-dist-mlp",
        "born-again",
        "tfkd",
    ],
)
def test_strategy_runs_end_to_end(train, overrides):
    r = train(overrides)
    strategy = compose_cfg(overrides).strategy._target_.rsplit(".", 1)[1]
    assert (
        r["strategy"]
        == {
            "OnlineDistillation": "online",
            "SelfDistillation": "self",
            "BornAgain": "born_again",
            "OfflineDistillation": "offline",
        }[strategy]
    )
    assert 0.0 <= r["student"]["test_acc"] <= 1.0
    if r["strategy"] == "online":
        assert len(r["peers"]) == (3 if "strategy.peers=3" in overrides else 2)
        assert r["student"]["test_acc"] == r["peers"][r["deployed_peer"]]["test_acc"]
        assert r["teacher"] is None
    if r["strategy"] == "self":
        assert [e["tap"] for e in r["exits"]] == (["blocks.0"] if "student=mlp" in overrides else ["conv1", "conv2"])
    if r["strategy"] == "born_again":
        assert [g["generation"] for g in r["generations"]] == [0, 1] and r["ensemble"]["params"] == 2 * 15210
        assert r["teacher"]["test_acc"] == r["generations"][0]["test_acc"]
    if r["method"] == "tfkd":
        assert r["teacher"] is None


def test_born_again_generation_g_is_taught_by_a_frozen_generation_g_minus_1(train):
    r = train(["strategy=born_again", "strategy.generations=3", "distill=kd"])
    ckpt = {
        g: torch.load(r["_dir"] / f"gen{g}" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for g in range(3)
    }
    assert not any(k.startswith("teacher.") for k in ckpt[0])  # generation 0 learns from the labels alone
    for g in (1, 2):
        for k, v in ckpt[g].items():
            if k.startswith("teacher."):  # g's teacher holds g-1's final weights, untouched by g's training
                torch.testing.assert_close(v, ckpt[g - 1]["student." + k[len("teacher.") :]])
