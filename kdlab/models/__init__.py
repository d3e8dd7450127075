"""Model factory (timm names + the kdlab zoo registered into timm), feature taps, checkpoints."""

# register into timm: the kdlab zoo, the CRD/DKD CIFAR zoo, SimKD's deployable student (arch "simkd")
from kdlab.models import cifar, simkd, zoo  # noqa: F401
from kdlab.models.factory import check_model, count_params, create_model
from kdlab.models.taps import (
    INPUT,
    PRE_LOGITS,
    FeatureTaps,
    bn_before_relu,
    feature_stages,
    module_paths,
    preact_stages,
)

__all__ = [
    "create_model",
    "check_model",
    "count_params",
    "FeatureTaps",
    "feature_stages",
    "preact_stages",
    "bn_before_relu",
    "module_paths",
    "PRE_LOGITS",
    "INPUT",
]
