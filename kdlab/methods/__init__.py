"""Distillation methods as weighted loss terms (built from ``conf/method/*.yaml``).

response: CrossEntropy, KD, MSELogits, DKD, DIST, TfKD (teacher-free), MLKD (multi-level, on a
strong view too), DistillationToken (DeiT); feature: FitNet, AT, VID, FSP, NST, SimKD (reused
teacher classifier); relation: SP, PKT, RKD, CRD, CC; connector (learned modules between the
models' features): AB, FT, OFD, ReviewKD. Modifiers of the logit terms: ``standardize`` (logit
standardization) and ``curriculum`` (CTKD's learnable temperature, ``CurriculumTemperature``).
"""

from kdlab.methods.base import FeatureTerm, StepOutputs, Term
from kdlab.methods.connector import AB, FT, OFD, ReviewKD
from kdlab.methods.curriculum import CurriculumTemperature
from kdlab.methods.deit import DistillationToken
from kdlab.methods.feature import AT, FSP, NST, VID, FitNet
from kdlab.methods.multilevel import MLKD, StrongViewCrossEntropy
from kdlab.methods.relation import CC, CRD, PKT, RKD, SP
from kdlab.methods.response import DIST, DKD, KD, CrossEntropy, MSELogits, TfKD
from kdlab.methods.simkd import SimKD

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
    "MLKD",
    "StrongViewCrossEntropy",
    "DistillationToken",
    "CurriculumTemperature",
    "SimKD",
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
