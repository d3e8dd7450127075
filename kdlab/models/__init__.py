"""Model factory (timm names + the kdlab zoo registered into timm), feature taps, checkpoints."""

from kdlab.models import cifar, zoo  # noqa: F401  (register the kdlab zoo and the CRD/DKD CIFAR zoo into timm)
from kdlab.models.factory import check_model, count_params, create_model
from kdlab.models.taps import PRE_LOGITS, FeatureTaps, feature_stages, module_paths

__all__ = [
    "create_model",
    "check_model",
    "count_params",
    "FeatureTaps",
    "feature_stages",
    "module_paths",
    "PRE_LOGITS",
]
