"""Validation metrics against hand-computed cases."""

import math

import pytest
import torch

from kdlab.report import accuracy, agreement, expected_calibration_error, latency_ms, mean_kl


def two_class_logits(p_first: float) -> list[float]:
    return [math.log(p_first / (1 - p_first)), 0.0]  # softmax -> (p_first, 1 - p_first)


def test_ece_on_a_constructed_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right):
    # bin of 0.9: |0.5 - 0.9| * 2/4 = 0.2; bin of 0.6: |1.0 - 0.6| * 2/4 = 0.2 -> ECE 0.4
    logits = torch.tensor([two_class_logits(0.9), two_class_logits(0.9), two_class_logits(0.6), two_class_logits(0.6)])
    target = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(logits, target) == pytest.approx(0.4, abs=1e-6)


def test_ece_is_zero_when_confidence_equals_accuracy():
    logits = torch.tensor([two_class_logits(0.75)] * 4)
    assert expected_calibration_error(logits, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-6)


def test_accuracy_and_agreement():
    s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert accuracy(s, torch.tensor([0, 1, 2, 2])) == 0.75
    assert agreement(s, t) == 0.75 and agreement(s, s) == 1.0


def test_mean_kl_by_hand():
    # teacher q = (3/4, 1/4), student uniform: KL = 3/4 ln 1.5 - 1/4 ln 2
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    s = torch.zeros(2, 2)
    assert mean_kl(t, s) == pytest.approx((0.75 * math.log(1.5) - 0.25 * math.log(2.0)) / 2, rel=1e-6)
    assert mean_kl(s, s) == 0.0


def test_latency_is_a_positive_median():
    model = torch.nn.Linear(4, 2)
    assert 0 < latency_ms(model, (4,), repeats=5, warmup=1) < 1000
    assert model.training  # mode restored
