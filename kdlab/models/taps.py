"""Feature taps: read intermediate outputs by module path with forward hooks, never by
rewriting the model. Works the same on timm models and the kdlab zoo.

A tap path names a module whose output is recorded (``layer3``, ``blocks.2``), or, with the
suffix ``:input``, a module whose (first) input is recorded (``layer1.1.act2:input``: the value
an activation receives, i.e. a pre-activation; cloned when the module works in place).

On a timm ViT-family model (``kdlab.models.vit.is_token_model``) every recorded 3-D value is a
token sequence (b, n, d) and is marked as one (``kdlab.models.vit.is_token_sequence``), so that
the terms built from it can tell it from a 1-D feature map (b, c, L).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdlab.errors import KdlabError, did_you_mean
from kdlab.models.vit import is_token_model, mark_token_sequence

#: A tap on the classifier's input: the penultimate embedding (timm's "pre-logits" features).
PRE_LOGITS = "pre_logits"
#: Suffix of a tap path that records the module's input instead of its output.
INPUT = ":input"


def module_paths(model: nn.Module) -> list[str]:
    """Every module path of ``model`` that a tap can name (``layer3``, ``blocks.2``, ...)."""
    return [name for name, _ in model.named_modules() if name]


def _info_stages(model: nn.Module) -> list[str]:
    """The stages a timm model lists in ``feature_info``: the stem (reduction 2 or less) left out,
    except in a ViT, whose every block is a stage at the patch size's reduction (2 or 1 on small
    images: see ``kdlab.models.vit``)."""
    info = getattr(model, "feature_info", None)
    if not info:
        return []
    tokens = is_token_model(model)
    return [f["module"] for f in info if tokens or f.get("reduction", 4) > 2]


def feature_stages(model: nn.Module, owner: str = "model") -> list[str]:
    """The module paths of ``model``'s feature stages, shallow to deep: the kdlab zoo declares
    them (``feature_taps``); timm models list them in ``feature_info`` (the stem, at
    reduction 2 or less, is left out; a ViT's stages are its blocks, ``blocks.0`` to the last,
    whatever its patch size)."""
    declared = getattr(model, "feature_taps", None)
    if declared:
        return list(declared)
    stages = _info_stages(model)
    if stages:
        return stages
    raise KdlabError(
        f"{owner} ({type(model).__name__}) declares no feature stages; name the tap paths of the "
        f"feature terms (method.terms.<term>.{owner}_taps=[...]), e.g. from: {', '.join(module_paths(model)[:12])}"
    )


def preact_stages(model: nn.Module, owner: str = "model") -> list[str]:
    """The tap paths of ``model``'s pre-activation stages: the values of ``feature_stages``
    before their final activation (the reference code's ``forward(x, is_feat=True,
    preact=True)[0][1:-1]``, RepDistiller; mdistiller's ``feats["preact_feats"][1:]``), same
    order and length. The kdlab zoo declares them (``preact_taps``; see
    ``kdlab.models.cifar``). For timm models, one dummy forward pass (eval mode, no grad)
    finds, in each ``feature_info`` stage, the activation module whose output is the stage's
    output (timm ResNets: the last block's ``act3`` / ``act2``); the tap is that activation's
    input (``<path>:input``). Raises a one-line ``KdlabError`` when there is none (a stage
    that ends in a normalisation or a linear projection, as EfficientNets, ConvNeXts, ViTs)."""
    declared = getattr(model, "preact_taps", None)
    if declared:
        return list(declared)
    found = _probe_preacts(model) if not getattr(model, "feature_taps", None) else None
    if found:
        return [act + INPUT for act, _ in found]
    raise KdlabError(
        f"{owner} ({type(model).__name__}) declares no pre-activation stages; name the pre-activation tap paths "
        f"of the term (method.terms.<term>.{owner}_taps=[...]: a module path whose output is a stage before its "
        f"activation, or '<activation path>{INPUT}'), e.g. from: {', '.join(module_paths(model)[:12])}"
    )


def bn_before_relu(model: nn.Module, owner: str = "model") -> list[str]:
    """The paths of the BatchNorm modules whose outputs feed ``model``'s pre-activation stages,
    one per ``preact_stages`` entry: the reference code's ``get_bn_before_relu()`` (RepDistiller
    and mdistiller agree on every CIFAR model; both raise for the ShuffleNets, which declare
    none here). The kdlab zoo declares them (``bn_taps``). For timm models: in the block whose
    activation ends the stage (see ``preact_stages``), the last BatchNorm run before that
    activation outside the shortcut (``downsample`` / ``shortcut``), with as many channels as
    the stage (timm ResNets: ``bn3`` / ``bn2``). Raises a one-line ``KdlabError`` otherwise."""
    declared = getattr(model, "bn_taps", None)
    if declared:
        return list(declared)
    found = _probe_preacts(model) if not getattr(model, "feature_taps", None) else None
    if found and all(bn is not None for _, bn in found):
        return [bn for _, bn in found]
    bns = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    raise KdlabError(
        f"{owner} ({type(model).__name__}) declares no BatchNorm before its stages' activations "
        f"(get_bn_before_relu); name the BatchNorm module paths in the term's config, one per pre-activation "
        f"stage, e.g. from: {', '.join(bns[:12]) if bns else f'none ({owner} has no BatchNorm)'}"
    )


#: Element-wise activation modules a stage may end with (timm also uses its own, from
#: ``timm.layers.activations``).
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)
_SHORTCUTS = ("downsample", "shortcut")


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, _ACTIVATIONS) or type(m).__module__.startswith("timm.layers.activations")


class _CallLog:
    """A forward hook that appends ``(path, output)`` to a shared call log."""

    def __init__(self, log: list, path: str):
        self.log, self.path = log, path

    def __call__(self, module: nn.Module, inputs, output) -> None:
        self.log.append((self.path, output))


@torch.no_grad()
def _probe_preacts(model: nn.Module) -> list[tuple[str, str | None]] | None:
    """For each ``feature_info`` stage: (the activation module whose output is the stage's
    output, the BatchNorm before it or None), from one dummy forward pass; None when a stage
    has no such activation or the model has no ``feature_info``."""
    stages = _info_stages(model)
    if not stages:
        return None
    modules = dict(model.named_modules())
    param = next(model.parameters(), None)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    chans = first_conv.in_channels if first_conv is not None else size[0]
    log: list[tuple[str, Tensor]] = []
    ends: dict[str, tuple[int, Tensor]] = {}  # stage -> (calls logged when it ended, its output)
    handles = [
        m.register_forward_hook(_CallLog(log, p))
        for p, m in modules.items()
        if p and (_is_activation(m) or isinstance(m, _BatchNorm))
    ]
    handles += [modules[s].register_forward_hook(_StageEnd(ends, log, s)) for s in stages if s in modules]
    was_training = model.training
    model.eval()
    try:
        kw = {"device": param.device, "dtype": param.dtype} if param is not None and param.is_floating_point() else {}
        model(torch.zeros(1, chans, *size[1:], **kw))
    except Exception:
        return None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    found = []
    for s in stages:
        if s not in ends:
            return None
        end, out = ends[s]
        # the activation that produced the very tensor the stage returns (usually inside the stage;
        # outside when the stage module is an identity, e.g. a ByobNet without a final conv)
        hits = [i for i in range(end) if log[i][1] is out and _is_activation(modules[log[i][0]])]
        if not hits:
            return None
        i = hits[-1]
        act = log[i][0]
        if any(p == act for p, _ in log[i + 1 :]):  # a shared module called again later: its tap would move
            return None
        found.append((act, _bn_before(log[:i], modules, act.rpartition(".")[0], out.shape[1])))
    return found


def _bn_before(log: list[tuple[str, Tensor]], modules: dict[str, nn.Module], block: str, chans: int) -> str | None:
    """The last BatchNorm (without an activation of its own) that ran in ``block`` outside its
    shortcut, if it has ``chans`` channels."""
    for path, _ in reversed(log):
        if not path.startswith(block + "."):
            continue
        m = modules[path]
        rest = path[len(block) + 1 :].split(".")
        if not isinstance(m, _BatchNorm) or any(r in _SHORTCUTS for r in rest):
            continue
        if not isinstance(getattr(m, "act", nn.Identity()), nn.Identity):
            continue  # timm's BatchNormAct applies its own activation
        return path if m.num_features == chans else None
    return None


class _StageEnd:
    """A forward hook that notes where a stage ended in the call log, and its output."""

    def __init__(self, ends: dict, log: list, path: str):
        self.ends, self.log, self.path = ends, log, path

    def __call__(self, module: nn.Module, inputs, output) -> None:
        self.ends[self.path] = (len(self.log), output)


class _Recorder:
    """A forward hook that stores its module's output (a class, not a closure, so that models
    with taps still pickle, e.g. for ``ddp_spawn``). ``tokens``: the model is a ViT, its 3-D
    values are marked as token sequences (not while torch.compile traces: only the probe's
    eager pass, which terms build from, needs the mark)."""

    def __init__(self, store: dict[str, Tensor], path: str, tokens: bool = False):
        self.store, self.path, self.tokens = store, path, tokens

    def record(self, value: Tensor) -> None:
        if self.tokens and isinstance(value, Tensor) and value.dim() == 3 and not torch.compiler.is_compiling():
            mark_token_sequence(value)
        self.store[self.path] = value

    def __call__(self, module: nn.Module, inputs, output) -> None:
        self.record(output)


class _InputRecorder(_Recorder):
    """A forward pre-hook that stores its module's (first) input, a copy of it when the module
    works in place (an in-place ReLU would otherwise overwrite the recorded pre-activation)."""

    def __init__(self, store: dict[str, Tensor], path: str, clone: bool = False, tokens: bool = False):
        super().__init__(store, path, tokens)
        self.clone = clone

    def __call__(self, module: nn.Module, inputs) -> None:
        self.record(inputs[0].clone() if self.clone else inputs[0])


class _HeadsInputMean(_Recorder):
    """Forward pre-hooks on the heads of a model with several (timm's distilled DeiT: ``head`` on
    the class token, ``head_dist`` on the distillation token), called in order each forward pass:
    stores the mean of their inputs, timm's ``forward_head(x, pre_logits=True)`` of that model."""

    def __init__(self, store: dict[str, Tensor], path: str, heads: int):
        super().__init__(store, path)
        self.heads, self.seen = heads, []

    def __call__(self, module: nn.Module, inputs) -> None:
        self.seen.append(inputs[0])
        if len(self.seen) == self.heads:
            self.record(torch.stack(self.seen).mean(0))
            self.seen = []


class FeatureTaps:
    """Records the outputs of ``model``'s modules at ``paths`` on every forward pass;
    ``<path>:input`` records the module's input instead (cloned if the module is in place),
    ``pre_logits`` the classifier's input (the penultimate embedding).

    >>> taps = FeatureTaps(model, ["layer3"]); logits = model(x); taps.features["layer3"]
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model"):
        self.paths = list(dict.fromkeys(paths))
        modules = dict(model.named_modules())
        for path in self.paths:
            if path == PRE_LOGITS and path not in modules:
                continue
            name = path.removesuffix(INPUT)
            if name not in modules or not name:
                valid = module_paths(model)
                shown = sorted(valid, key=lambda p: (p.count("."), valid.index(p)))[:40]
                more = f" ... ({len(valid)} in all)" if len(valid) > len(shown) else ""
                raise KdlabError(
                    f"{owner} has no module '{name}'{did_you_mean(name, valid)}; "
                    f"valid tap paths: {', '.join(shown)}{more} (or '<path>{INPUT}' for a module's input)"
                )
        self.features: dict[str, Tensor] = {}
        self._handles = []
        tokens = is_token_model(model)
        for p in self.paths:
            if p == PRE_LOGITS and p not in modules:
                heads = _classifiers(model, owner)
                recorder = (
                    _InputRecorder(self.features, p)
                    if len(heads) == 1
                    else _HeadsInputMean(self.features, p, len(heads))
                )
                self._handles += [head.register_forward_pre_hook(recorder) for head in heads]
            elif p.endswith(INPUT):
                m = modules[p.removesuffix(INPUT)]
                recorder = _InputRecorder(self.features, p, clone=bool(getattr(m, "inplace", False)), tokens=tokens)
                self._handles.append(m.register_forward_pre_hook(recorder))
            else:
                self._handles.append(modules[p].register_forward_hook(_Recorder(self.features, p, tokens)))

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass; forgets them (so the graph can be freed)."""
        out = dict(self.features)
        self.features.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _classifiers(model: nn.Module, owner: str) -> list[nn.Module]:
    """The classifier module(s) whose input is ``pre_logits``: one, or timm's distilled DeiT's two
    (``get_classifier()`` gives ``(head, head_dist)``)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    heads = list(head) if isinstance(head, tuple) else [head]
    if not heads or any(not isinstance(h, nn.Module) or isinstance(h, nn.Identity) for h in heads):
        raise KdlabError(f"{owner} has no classifier module to tap '{PRE_LOGITS}' at; name a module path instead")
    return heads
