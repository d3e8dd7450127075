"""Cross-cutting checks over the DKD, DIST, hint, AT, RKD, SP, PKT and CRD losses: the gradient reaches
the student, and all-zero student (and teacher) features give a finite value and gradient.

Values are checked against the papers' formulas in ``test_losses_response.py``, ``test_losses_feature.py``
and ``test_losses_relation.py``; here only the shape, finiteness and flow of the gradient matter.
"""

from __future__ import annotations

import pytest
import torch

from kdlab.losses import at_loss, crd_loss, dist_loss, dkd_loss, hint_loss, pkt_loss, rkd_loss, sp_loss
from tests.reference import randn

GRAD_CASES = {
    "dkd": (lambda s, t: dkd_loss(s, t, torch.tensor([0, 1, 2, 3]), 1.0, 8.0, 4.0), (4, 5), (4, 5)),
    "dist": (lambda s, t: dist_loss(s, t, 1.0, 2.0, 4.0), (4, 5), (4, 5)),
    "hint": (hint_loss, (2, 3, 4), (2, 3, 4)),
    "at_1d": (at_loss, (2, 3, 8), (2, 4, 4)),
    "at_2d": (at_loss, (2, 3, 4, 4), (2, 5, 4, 4)),
    "rkd": (lambda s, t: rkd_loss(s, t, 25.0, 50.0), (5, 4), (5, 6)),
    "sp": (sp_loss, (4, 3, 2, 2), (4, 6)),
    "pkt": (pkt_loss, (5, 4), (5, 3)),
    "crd": (lambda s, t: crd_loss(s.abs() + 0.01, t.abs() + 0.01, 100), (3, 5), (3, 5)),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradient_reaches_student(name):
    fn, shape_s, shape_t = GRAD_CASES[name]
    s = randn(*shape_s, seed=44, dtype=torch.float32).requires_grad_()
    t = randn(*shape_t, seed=45, dtype=torch.float32)
    loss = fn(s, t)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["hint", "at_1d", "at_2d", "sp", "pkt"])
def test_zero_student_features_finite_value_and_gradient(name):
    fn, shape_s, shape_t = GRAD_CASES[name]
    s = torch.zeros(*shape_s, requires_grad=True)
    t = randn(*shape_t, seed=46, dtype=torch.float32)
    loss = fn(s, t)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.isfinite(fn(torch.zeros(*shape_s), torch.zeros(*shape_t)))
