"""Distillation methods as weighted loss terms (built from ``conf/method/*.yaml``).

response: CrossEntropy, KD, MSELogits, DKD, DIST, TfKD (teacher-free); feature: FitNet, AT, VID,
FSP, NST; relation: SP, PKT, RKD, CRD, CC; connector (learned modules between the models'
features): AB, FT, OFD, ReviewKD.
"""

from kdlab.methods.base import FeatureTerm, StepOutputs, Term
from kdlab.methods.connector import AB, FT, OFD, ReviewKD
from kdlab.methods.feature import AT, FSP, NST, VID, FitNet
from kdlab.methods.relation import CC, CRD, PKT, RKD, SP
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
    "VID",
    "FSP",
    "NST",
    "SP",
    "PKT",
    "RKD",
    "CRD",
    "CC",
    "AB",
    "FT",
    "OFD",
    "ReviewKD",
]
