"""Feature taps: read intermediate outputs by module path with forward hooks, never by
rewriting the model. Works the same on timm models and the kdlab zoo."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from kdlab.errors import KdlabError, did_you_mean


def module_paths(model: nn.Module) -> list[str]:
    """Every module path of ``model`` that a tap can name (``layer3``, ``blocks.2``, ...)."""
    return [name for name, _ in model.named_modules() if name]


class _Recorder:
    """A forward hook that stores its module's output (a class, not a closure, so that models
    with taps still pickle, e.g. for ``ddp_spawn``)."""

    def __init__(self, store: dict[str, Tensor], path: str):
        self.store, self.path = store, path

    def __call__(self, module: nn.Module, inputs, output) -> None:
        self.store[self.path] = output


class FeatureTaps:
    """Records the outputs of ``model``'s modules at ``paths`` on every forward pass.

    >>> taps = FeatureTaps(model, ["layer3"]); logits = model(x); taps.features["layer3"]
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model"):
        self.paths = list(dict.fromkeys(paths))
        modules = dict(model.named_modules())
        for path in self.paths:
            if path not in modules or not path:
                valid = module_paths(model)
                shown = sorted(valid, key=lambda p: (p.count("."), valid.index(p)))[:40]
                more = f" ... ({len(valid)} in all)" if len(valid) > len(shown) else ""
                raise KdlabError(
                    f"{owner} has no module '{path}'{did_you_mean(path, valid)}; "
                    f"valid tap paths: {', '.join(shown)}{more}"
                )
        self.features: dict[str, Tensor] = {}
        self._handles = [modules[p].register_forward_hook(_Recorder(self.features, p)) for p in self.paths]

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass; forgets them (so the graph can be freed)."""
        out = dict(self.features)
        self.features.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
