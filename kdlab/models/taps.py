"""Feature taps: read intermediate outputs by module path with forward hooks, never by
rewriting the model. Works the same on timm models and the kdlab zoo."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from kdlab.errors import KdlabError, did_you_mean

#: A tap on the classifier's input: the penultimate embedding (timm's "pre-logits" features).
PRE_LOGITS = "pre_logits"


def module_paths(model: nn.Module) -> list[str]:
    """Every module path of ``model`` that a tap can name (``layer3``, ``blocks.2``, ...)."""
    return [name for name, _ in model.named_modules() if name]


def feature_stages(model: nn.Module, owner: str = "model") -> list[str]:
    """The module paths of ``model``'s feature stages, shallow to deep: the kdlab zoo declares
    them (``feature_taps``); timm models list them in ``feature_info`` (the stem, at
    reduction 2 or less, is left out)."""
    declared = getattr(model, "feature_taps", None)
    if declared:
        return list(declared)
    info = getattr(model, "feature_info", None)
    if info:
        stages = [f["module"] for f in info if f.get("reduction", 4) > 2]
        if stages:
            return stages
    raise KdlabError(
        f"{owner} ({type(model).__name__}) declares no feature stages; name the tap paths of the "
        f"feature terms (method.terms.<term>.{owner}_taps=[...]), e.g. from: {', '.join(module_paths(model)[:12])}"
    )


class _Recorder:
    """A forward hook that stores its module's output (a class, not a closure, so that models
    with taps still pickle, e.g. for ``ddp_spawn``)."""

    def __init__(self, store: dict[str, Tensor], path: str):
        self.store, self.path = store, path

    def __call__(self, module: nn.Module, inputs, output) -> None:
        self.store[self.path] = output


class _InputRecorder(_Recorder):
    """A forward pre-hook that stores its module's (first) input."""

    def __call__(self, module: nn.Module, inputs) -> None:
        self.store[self.path] = inputs[0]


class FeatureTaps:
    """Records the outputs of ``model``'s modules at ``paths`` on every forward pass;
    ``pre_logits`` records the classifier's input (the penultimate embedding).

    >>> taps = FeatureTaps(model, ["layer3"]); logits = model(x); taps.features["layer3"]
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model"):
        self.paths = list(dict.fromkeys(paths))
        modules = dict(model.named_modules())
        for path in self.paths:
            if path == PRE_LOGITS and path not in modules:
                continue
            if path not in modules or not path:
                valid = module_paths(model)
                shown = sorted(valid, key=lambda p: (p.count("."), valid.index(p)))[:40]
                more = f" ... ({len(valid)} in all)" if len(valid) > len(shown) else ""
                raise KdlabError(
                    f"{owner} has no module '{path}'{did_you_mean(path, valid)}; "
                    f"valid tap paths: {', '.join(shown)}{more}"
                )
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for p in self.paths:
            if p == PRE_LOGITS and p not in modules:
                head = _classifier(model, owner)
                self._handles.append(head.register_forward_pre_hook(_InputRecorder(self.features, p)))
            else:
                self._handles.append(modules[p].register_forward_hook(_Recorder(self.features, p)))

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass; forgets them (so the graph can be freed)."""
        out = dict(self.features)
        self.features.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _classifier(model: nn.Module, owner: str) -> nn.Module:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        raise KdlabError(f"{owner} has no classifier module to tap '{PRE_LOGITS}' at; name a module path instead")
    return head
