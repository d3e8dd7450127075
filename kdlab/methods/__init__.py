"""Distillation methods as weighted loss terms (built from ``conf/method/*.yaml``).

response: CrossEntropy, KD, MSELogits, DKD, DIST, TfKD (teacher-free); feature: FitNet, AT;
relation: SP, PKT, RKD, CRD.
"""

from kdlab.methods.base import FeatureTerm, StepOutputs, Term
from kdlab.methods.feature import AT, FitNet
from kdlab.methods.relation import CRD, PKT, RKD, SP
from kdlab.methods.response import DIST, DKD, KD, CrossEntropy, MSELogits, TfKD

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
