"""The self strategy: Be Your Own Teacher heads on the student's stages."""

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.methods import KD, CrossEntropy, FitNet
from kdlab.models import count_params, create_model
from kdlab.strategies import SelfDistillation


def batch(n=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n)


def test_byot_heads_sit_at_the_stages_and_are_not_part_of_the_student():
    student = create_model("cnn1d", 10, (1, 40))
    module = SelfDistillation(
        student, {"ce": CrossEntropy(0.9), "kd": KD(0.1, 3.0)}, lambda p: torch.optim.SGD(p, lr=0.1), 10, (1, 40)
    )
    assert module.head_paths == ["conv1", "conv2"]
    assert count_params(module.student) == 5210 and all(count_params(h) > 0 for h in module.heads)
    exits = dict(module.exits())
    assert exits["conv1"](torch.randn(3, 1, 40)).shape == (3, 10)
    loss = module.training_step(batch(), 0)["loss"]
    loss.backward()
    assert all(p.grad is not None for p in module.heads.parameters())


def test_byot_refuses_feature_terms():
    with pytest.raises(KdlabError, match="response terms"):
        SelfDistillation(
            create_model("cnn1d", 10, (1, 40)), {"fitnet": FitNet()}, lambda p: torch.optim.SGD(p, lr=0.1), 10, (1, 40)
        )


@pytest.mark.parametrize(
    "overrides",
    [["strategy=self", "method=kd", "student=cnn1d_narrow"], ["strategy=self", "method=dist", "student=mlp"]],
    ids=["self-kd", "self-dist-mlp"],
)
def test_self_runs_end_to_end(train, overrides):
    r = train(overrides)
    assert r["strategy"] == "self"
    assert 0.0 <= r["student"]["test_acc"] <= 1.0
    assert [e["tap"] for e in r["exits"]] == (["blocks.0"] if "student=mlp" in overrides else ["conv1", "conv2"])
