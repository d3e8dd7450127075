"""Pure loss functions: tensors in, scalar tensor out; each docstring names its paper.

Grouped as in the survey literature: ``response`` (outputs), ``feature`` (intermediate
maps), ``relation`` (relations between samples or layers).
"""

from kdlab.losses.response import kd_loss, mse_logits_loss

__all__ = ["kd_loss", "mse_logits_loss"]
