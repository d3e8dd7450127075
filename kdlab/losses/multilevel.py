"""Multi-Level Logit Distillation (MLKD; Jin, Wang & Lin, CVPR 2023): the student's logits match
the teacher's at three levels, each over several temperatures ("prediction augmentation"):
instances (KD), the batch (the (b, b) Gram matrix of the predictions) and the classes (their
(c, c) Gram matrix), on a weakly and a strongly augmented view of the same samples.

Written from the authors' code (Jin-Ying/Multi-Level-Logit-Distillation,
mdistiller/distillers/KD_ours.py ``KD_ours.forward_train``), and its copy with logit
standardization (Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD,
mdistiller/distillers/MLKD.py), quirks included: see ``mlkd_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import KdlabError
from kdlab.losses.response import kd_loss, standardize_logits

#: The temperatures the authors add to the configured one, in their order: every level sums
#: over (T, 3, 5, 2, 6). The strong view's instance-level sum takes its first three on the strong
#: view and the last two (2 and 6) on the weak one (``mlkd_loss``).
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
#: how many of the temperatures (T, 3, 5, 2, 6), from the first, the strong view's KD reads on the strong view
STRONG_VIEW_TEMPERATURES = 3


def instance_level_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """MLKD's instance-level alignment: Hinton's KD, KL(softmax(t / T) || softmax(s / T)) summed over
    classes, averaged over the batch, times T^2 (the authors' ``kd_loss`` with ``reduce=True``).
    (b, c), (b, c) -> scalar"""
    return kd_loss(student_logits, teacher_logits, temperature)


def batch_level_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """MLKD's batch-level alignment (the authors' ``bc_loss``): the squared Frobenius distance
    between the (b, b) Gram matrices p p^T of the two models' predictions p = softmax(z / T),
    divided by the batch size; no T^2 factor. (b, c), (b, c) -> scalar"""
    p_s = F.softmax(student_logits / temperature, dim=1)  # (b, c)
    p_t = F.softmax(teacher_logits / temperature, dim=1)  # (b, c)
    gram_s, gram_t = p_s @ p_s.t(), p_t @ p_t.t()  # (b, b): sample-to-sample similarities
    return (gram_t - gram_s).pow(2).sum() / student_logits.shape[0]


def class_level_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """MLKD's class-level alignment (the authors' ``cc_loss``): the squared Frobenius distance
    between the (c, c) Gram matrices p^T p of the two models' predictions p = softmax(z / T),
    divided by the number of classes; no T^2 factor. (b, c), (b, c) -> scalar"""
    p_s = F.softmax(student_logits / temperature, dim=1)  # (b, c)
    p_t = F.softmax(teacher_logits / temperature, dim=1)  # (b, c)
    gram_s, gram_t = p_s.t() @ p_s, p_t.t() @ p_t  # (c, c): class-to-class co-activations
    return (gram_t - gram_s).pow(2).sum() / student_logits.shape[1]


def _at_or_below_median(values: Tensor) -> Tensor:
    """values <= their median, the median as ``np.percentile(values, 50)`` (linear interpolation:
    the mean of the two middle values of an even count). (n,) -> (n,) bool"""
    v = values.detach()
    v = v.to(torch.promote_types(v.dtype, torch.float32))  # quantile takes float32 / float64 only
    return v <= torch.quantile(v, 0.5, interpolation="linear")


def confidence_masks(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The authors' confidence masks, from the teacher's weak-view softmax (no temperature, no
    standardization): samples whose top probability is at or below the batch's median, and classes
    whose probability summed over the batch is at or below the median over classes, the medians
    linearly interpolated (``np.percentile(., 50)``). No value lies strictly between the two middle
    ones, so a mask keeps the values at or below the lower middle one (up to the rounding of the
    interpolation): ceil(n / 2) of n distinct values, more with ties. (b, c) -> (b,) bool, (c,) bool"""
    p_t = F.softmax(teacher_logits.detach(), dim=1)  # (b, c)
    return _at_or_below_median(p_t.max(dim=1).values), _at_or_below_median(p_t.sum(dim=0))


def _check_shapes(**logits: Tensor) -> None:
    shapes = {name: tuple(z.shape) for name, z in logits.items()}
    if len(set(shapes.values())) != 1 or any(len(s) != 2 for s in shapes.values()):
        got = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise KdlabError(f"MLKD compares (batch, classes) logits of one shape on both views; got {got}")


def mlkd_loss(
    student_weak: Tensor,
    teacher_weak: Tensor,
    student_strong: Tensor,
    teacher_strong: Tensor,
    temperature: float,
    standardize: bool = False,
) -> dict[str, Tensor]:
    """Multi-Level Logit Distillation (Jin, Wang & Lin, CVPR 2023), as the authors' code computes it.

    Returns the unweighted named parts ``kd_weak``, ``kd_strong``, ``cc`` and ``bc`` (the authors'
    ``loss_kd`` is ``kd_weak + kd_strong``; their ``KD_WEIGHT`` multiplies all four, the
    cross-entropies are apart). With temperatures Ts = (T, 3, 5, 2, 6), KD = ``instance_level_loss``,
    BC = ``batch_level_loss``, CC = ``class_level_loss``, (s, t) the weak view's and (s', t') the
    strong view's logits, ``f_b`` and ``f_c`` the fractions of samples and classes the masks keep:

    - ``kd_weak = f_b * sum_{T in Ts} KD(s, t, T)``
    - ``kd_strong = sum_{T in (T, 3, 5)} KD(s', t', T) + KD(s, t, 2) + KD(s, t, 6)``
    - ``cc = f_c * sum_{T in Ts} CC(s, t, T)``, ``bc = f_b * sum_{T in Ts} BC(s, t, T)``

    Quirks of the authors' code, reproduced:

    - the masks do not select samples: ``kd_loss`` / ``cc_loss`` / ``bc_loss`` are called with
      ``reduce=True``, so ``(loss * mask).mean()`` multiplies the batch's (scalar) loss by the
      fraction of masked entries (``f_b``, ``f_c``), not a mean over the masked samples;
    - the masks (``confidence_masks``) keep what is at or below the median (``np.percentile(., 50)``,
      linearly interpolated: with an even batch of distinct confidences, half of it; with ties at
      the median, more) of the teacher's weak-view max softmax probability (samples) and of its
      weak-view softmax summed over the batch (classes); the sample mask serves KD and BC;
    - the "strong" KD sum takes its temperatures 2 and 6 on the weak view's logits, unmasked;
    - the strong view's CC and BC (``loss_cc_strong`` / ``loss_bc_strong``) are computed by the
      authors but not in their loss: they are left out here;
    - the temperatures are (T, 3, 5, 2, 6) whatever T is (T = 4 on CIFAR-100, 1 on ImageNet);
    - (the cross-entropy on both views, ``CE_WEIGHT * (CE(s, y) + CE(s', y))``, is the terms
      ``CrossEntropy`` and ``kdlab.methods.multilevel.StrongViewCrossEntropy``).

    ``standardize``: MLKD+LS (Sun et al., CVPR 2024): as their MLKD.py, only the instance-level KD
    sees Z-scored logits (``standardize_logits``, before every temperature); CC, BC and the masks
    read the raw logits.

    (b, c) x 4 -> {name: scalar}
    """
    _check_shapes(
        student_weak=student_weak,
        teacher_weak=teacher_weak,
        student_strong=student_strong,
        teacher_strong=teacher_strong,
    )
    temperatures = (float(temperature), *EXTRA_TEMPERATURES)
    teacher_weak, teacher_strong = teacher_weak.detach(), teacher_strong.detach()
    sample_mask, class_mask = confidence_masks(teacher_weak)  # (b,), (c,)
    dtype = torch.promote_types(student_weak.dtype, torch.float32)
    f_b, f_c = sample_mask.to(dtype).mean(), class_mask.to(dtype).mean()

    kd_w, kd_t = student_weak, teacher_weak
    kd_ws, kd_ts = student_strong, teacher_strong
    if standardize:
        kd_w, kd_t = standardize_logits(kd_w), standardize_logits(kd_t)
        kd_ws, kd_ts = standardize_logits(kd_ws), standardize_logits(kd_ts)
    kd_on_weak = [instance_level_loss(kd_w, kd_t, T) for T in temperatures]
    kd_on_strong = [instance_level_loss(kd_ws, kd_ts, T) for T in temperatures[:STRONG_VIEW_TEMPERATURES]]
    return {
        "kd_weak": f_b * torch.stack(kd_on_weak).sum(),
        "kd_strong": torch.stack(kd_on_strong + kd_on_weak[STRONG_VIEW_TEMPERATURES:]).sum(),
        "cc": f_c * torch.stack([class_level_loss(student_weak, teacher_weak, T) for T in temperatures]).sum(),
        "bc": f_b * torch.stack([batch_level_loss(student_weak, teacher_weak, T) for T in temperatures]).sum(),
    }
