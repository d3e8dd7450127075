"""Pure loss functions: tensors in, scalar tensor out; each docstring names its paper.

Grouped as in the survey literature: ``response`` (outputs), ``feature`` (intermediate
maps), ``relation`` (relations between samples).
"""

from kdlab.losses.connector import ab_loss, ft_factor, ft_loss, hcl_loss, ofd_loss, ofd_margin
from kdlab.losses.feature import (
    at_loss,
    attention_map,
    fsp_loss,
    fsp_matrix,
    hint_loss,
    match_spatial,
    nst_loss,
    vid_log_scale,
    vid_loss,
)
from kdlab.losses.multilevel import (
    batch_level_loss,
    class_level_loss,
    confidence_masks,
    instance_level_loss,
    mlkd_loss,
)
from kdlab.losses.relation import cc_kernel_loss, cc_loss, crd_loss, pkt_loss, rkd_loss, sp_loss
from kdlab.losses.response import (
    dist_loss,
    dkd_loss,
    kd_loss,
    mse_logits_loss,
    standardize_logits,
    tf_kd_loss,
)

__all__ = [
    "kd_loss",
    "standardize_logits",
    "mse_logits_loss",
    "dkd_loss",
    "dist_loss",
    "tf_kd_loss",
    "mlkd_loss",
    "instance_level_loss",
    "batch_level_loss",
    "class_level_loss",
    "confidence_masks",
    "hint_loss",
    "at_loss",
    "attention_map",
    "match_spatial",
    "vid_loss",
    "vid_log_scale",
    "fsp_matrix",
    "fsp_loss",
    "nst_loss",
    "rkd_loss",
    "sp_loss",
    "pkt_loss",
    "crd_loss",
    "cc_loss",
    "cc_kernel_loss",
    "ab_loss",
    "ft_factor",
    "ft_loss",
    "ofd_margin",
    "ofd_loss",
    "hcl_loss",
]
