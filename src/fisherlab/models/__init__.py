"""The paper's models, one file each, behind one registry.

``build_model(name, num_classes=..., **kwargs)`` makes a model by its registered name;
``MODELS`` lists the names. A new model is a new file in this package that decorates
its constructor with ``@register("name")`` and is imported below.
"""

from __future__ import annotations

from . import densenet, fixup, resnet, simple_cnn, vgg, wrn  # noqa: F401  (each file registers its models)
from .registry import MODELS, build_model, register

__all__ = ["MODELS", "build_model", "register"]
