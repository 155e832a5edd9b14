"""The model registry: ``register`` a constructor under a name, ``build_model`` by name."""

from __future__ import annotations

from typing import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Class or function decorator: make ``build_model(name, ...)`` construct it."""

    def deco(ctor):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ctor
        return ctor

    return deco


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Construct a registered model for ``num_classes`` classes."""
    try:
        ctor = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return ctor(num_classes=num_classes, **kwargs)
