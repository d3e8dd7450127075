"""Distillation methods as weighted loss terms (built from ``conf/distill/*.yaml``)."""

from kdlab.distill.terms import KD, CrossEntropy, MSELogits, StepOutputs, Term

__all__ = ["Term", "StepOutputs", "CrossEntropy", "KD", "MSELogits"]
