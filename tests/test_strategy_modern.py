"""The offline strategy's support for the 2022-2024 methods: DOT's two backward passes, the strong
view (MLKD), the distillation token (DeiT) and a deployable model (SimKD); what only the offline
strategy runs is refused at composition for the others."""

import pytest
import torch

from kdlab.errors import KdlabError

DOT = ["student.optimizer._target_=kdlab.optim.DOT", "+student.optimizer.momentum=0.9"]
SGD = ["student.optimizer._target_=torch.optim.SGD", "+student.optimizer.momentum=0.9"]


def student_weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("student.")}


def test_dot_trains_with_two_momenta_and_is_sgd_when_they_are_equal(train):
    """Both momentum buffers are checkpointed (resume continues DOT as it was). With delta=0, no
    weight decay and every student parameter reached by both losses (KD), the authors' update is
    SGD with momentum on CE + KD, up to float rounding (two updates where SGD makes one)."""
    r = train(["method=kd", *DOT, "+student.optimizer.delta=0.075"])
    ckpt = torch.load(r["_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["optimizer_states"][0]["state"]
    assert state and all({"momentum_buffer", "momentum_kd_buffer"} <= set(s) for s in state.values())
    assert ckpt["optimizer_states"][0]["param_groups"][0]["delta"] == 0.075
    dot = student_weights(train(["method=kd", *DOT, "+student.optimizer.delta=0.0"])["_dir"])
    sgd = student_weights(train(["method=kd", *SGD])["_dir"])
    assert dot.keys() == sgd.keys()
    for k in dot:
        torch.testing.assert_close(dot[k], sgd[k], rtol=1e-4, atol=1e-5)
    moved = student_weights(r["_dir"])
    assert any(not torch.allclose(moved[k], sgd[k], atol=1e-5) for k in sgd)  # delta changes the update


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=none", *DOT], "need both"),  # DOT needs task and distillation terms
        (["method=deit"], "no distillation token"),  # the MLP student, refused before a teacher trains
        (["method=kd", "strategy=online", *DOT], "only strategy=offline"),
    ],
)
def test_dot_refusals(train, overrides, message):
    with pytest.raises(KdlabError, match=message):
        train(overrides)


def test_dot_scheduler_steps_per_epoch(train):
    """Manual optimisation steps the epoch scheduler by hand: cosine annealing reaches 0 at the end."""
    r = train(["method=kd", *DOT, "trainer.max_epochs=2"])
    ckpt = torch.load(r["_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_offline_only_terms_are_refused_under_other_strategies(train):
    with pytest.raises(KdlabError, match="only strategy=offline"):
        train(["method=mlkd", "data.strong_view=true", "strategy=online"])
