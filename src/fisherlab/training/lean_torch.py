"""A training job without ``torch._dynamo``: 1.5 s of CPU less per pipeline job.

PyTorch's optimizers import ``torch._dynamo`` (the ``torch.compile`` front end, about
1.5 s of CPU, as much again as ``import torch``) on their first call, only to mark their
methods as not to be compiled: ``Optimizer.zero_grad``, ``state_dict``,
``load_state_dict`` and ``add_param_group`` are wrapped by ``torch._disable_dynamo``,
and ``SGD.step`` by ``_use_grad_for_differentiable``, which calls
``torch._dynamo.graph_break()`` around the step. Outside ``torch.compile`` both are
no-ops: the disabled function is the function itself, and a graph break outside a
graph does nothing. A job of the pipeline (workflow/scripts/train.py) never compiles,
yet pays the import once per run, for each of the hundreds of runs of a sweep or of a
miniature (fisherlab.plan.miniature).

:func:`skip_dynamo_import` hands those wrappers their function directly, so that the
process never imports ``torch._dynamo``; the optimizer's arithmetic is untouched (the
same step, bit for bit; tests/test_lean_torch.py). It is for a process that never calls
``torch.compile``: it does nothing when ``torch._dynamo`` is already imported, and the
library never calls it; the pipeline's training script does.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch._compile
import torch.optim.optimizer as _optimizer

_DISABLE_INNER = torch._compile._disable_dynamo(lambda: None).__code__  # the wrapper torch._disable_dynamo makes
_USE_GRAD_INNER = _optimizer._use_grad_for_differentiable(lambda self: None).__code__


def _use_grad(step):
    """``_use_grad_for_differentiable`` without its graph breaks: the step runs with
    autograd on exactly when the optimizer is ``differentiable``."""

    @functools.wraps(step)
    def _step(self, *args, **kwargs):
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return step(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(prev)

    return _step


def skip_dynamo_import(optimizers: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.SGD,)) -> list[str]:
    """Let ``torch.optim.Optimizer``'s methods and ``optimizers``' ``step`` run without
    importing ``torch._dynamo`` (see the module docstring). Call it before the first
    optimizer is built. Returns the methods changed (none when ``torch._dynamo`` is
    already imported, or when this torch wraps them otherwise)."""
    if "torch._dynamo" in sys.modules:
        return []
    changed = []
    for name, attr in vars(_optimizer.Optimizer).items():
        fn = getattr(attr, "__wrapped__", None)
        if fn is not None and getattr(attr, "__code__", None) is _DISABLE_INNER:
            fn.__dynamo_disable = fn  # torch._compile._disable_dynamo's cache: the function itself
            changed.append(f"Optimizer.{name}")
    for cls in optimizers:
        step = vars(cls).get("step")
        if step is not None and getattr(step, "__code__", None) is _USE_GRAD_INNER and not getattr(step, "hooked", 0):
            cls.step = _use_grad(step.__wrapped__)
            changed.append(f"{cls.__name__}.step")
    return changed
