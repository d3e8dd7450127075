"""Every distillation method config runs end to end, with feature taps on both models."""

import pytest
import torch

from kdlab import CONFIG_DIR
from kdlab.errors import KdlabError
from tests.conftest import compose_cfg

METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
PAIRS = {
    "mnist1d": ["teacher=cnn1d", "student=cnn_tiny"],  # 1-D maps: (b, c, L)
    "digits": ["data=digits", "teacher=cnn_small", "student=cnn_tiny"],  # 2-D maps: (b, c, h, w)
}
#: methods that need more of the pair than the defaults give: FSP pairs stages of equal widths
SAME_WIDTHS = {"mnist1d": ["student=cnn1d_narrow", "student.kwargs.channels=25"], "digits": ["student.arch=cnn_small"]}
#: MLKD trains on a strong view too (digits has none: refused, below); SimKD reuses a teacher's
#: classifier on its pooled last map (cnn1d flattens it: cnn_small pools); DeiT needs a ViT
#: student with a distillation token (images only)
PAIR_OVERRIDES = {
    "fsp": SAME_WIDTHS,
    "mlkd": {"mnist1d": ["data.strong_view=true"]},
    "simkd": {"mnist1d": ["teacher=cnn_small"]},
    "deit": {"digits": ["student=deit_nano_distilled"]},
}
#: (method, data) pairs refused in one line, and the message
REFUSED = {
    ("mlkd", "digits"): "set data.strong_view=true",
    ("deit", "mnist1d"): "no distillation token",
}
LEARNABLE = {
    "fitnet": "terms.fitnet.regressors.",
    "crd": "terms.crd.memory.memory_s",
    "vid": "terms.vid.regressors.",
    "cc": "terms.cc.embed_s.",
    "ctkd": "terms.kd.curriculum.",
    "simkd": "student.projector.",
}


@pytest.mark.parametrize("data", sorted(PAIRS))
@pytest.mark.parametrize("method", METHODS)
def test_method_runs_end_to_end(train, method, data):
    if (method, data) in REFUSED:
        with pytest.raises(KdlabError, match=REFUSED[method, data]):
            train([f"method={method}", *PAIRS[data]])
        return
    r = train([f"method={method}", *PAIRS[data], *PAIR_OVERRIDES.get(method, {}).get(data, [])])
    assert r["method"] == compose_cfg([f"method={method}"]).method.name
    assert 0.0 <= r["student"]["test_acc"] <= 1.0
    assert (r["teacher"] is None) == (method in ("none", "tfkd"))  # no term needs a teacher
    state = torch.load(r["_dir"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    if method in LEARNABLE:  # learnable method parts live in the strategy and are checkpointed
        assert any(k.startswith(LEARNABLE[method]) for k in state)


@pytest.mark.parametrize("method", ["fitnet", "sp", "pkt", "rkd", "crd", "kd", "dkd", "dist"])
def test_methods_that_take_vectors_run_with_the_mlp_student(train, method):
    r = train([f"method={method}", "method.terms.crd.nce_k=64" if method == "crd" else "seed=0"])
    assert r["student"]["arch"] == "mlp"


def test_attention_transfer_refuses_students_without_feature_maps(train):
    with pytest.raises(KdlabError, match=r"AT needs spatial feature maps.*'blocks.0' gives \(2, 100\)"):
        train(["method=at"])  # the default MLP student


def test_teacher_ensemble_runs_with_response_methods(train, caplog):
    r = train(["teacher=cnn1d_ensemble", "method=kd"])
    assert r["teacher"]["arch"] == "ensemble[cnn1d,cnn1d,cnn1d]" and r["teacher"]["params"] == 3 * 5210
