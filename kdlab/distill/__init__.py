"""Distillation methods as weighted loss terms (built from ``conf/distill/*.yaml``).

response: CrossEntropy, KD, MSELogits, DKD, DIST, TfKD (teacher-free); feature: FitNet, AT;
relation: SP, PKT, RKD, CRD.
"""

from kdlab.distill.base import FeatureTerm, StepOutputs, Term
from kdlab.distill.feature import AT, FitNet
from kdlab.distill.relation import CRD, PKT, RKD, SP
from kdlab.distill.response import DIST, DKD, KD, CrossEntropy, MSELogits, TfKD

__all__ = [
    "Term",
    "FeatureTerm",
    "StepOutputs",
    "CrossEntropy",
    "KD",
    "MSELogits",
    "DKD",
    "DIST",
    "TfKD",
    "FitNet",
    "AT",
    "SP",
    "PKT",
    "RKD",
    "CRD",
]
