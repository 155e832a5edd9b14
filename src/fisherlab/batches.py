"""What the curvature measurements accept as data, and how they call the model.

Every measurement (:func:`~fisherlab.trace_fisher`, :func:`~fisherlab.trace_fisher_batch`,
:func:`~fisherlab.trace_hessian`, :func:`~fisherlab.per_example_grad_sq_norms`) takes
``data`` in one of these forms:

- a tensor ``x`` of inputs, the example on the first axis: one batch, ``model(x)``;
- a mapping of keyword inputs (a Hugging Face batch ``{"input_ids": ..., "attention_mask":
  ...}``): one batch, ``model(**inputs)``. Its ``target_key`` entry (default
  ``"labels"``), if present, is taken out and used as the targets, never passed to the
  model. Tensor entries whose first axis is the batch size are split into chunks and
  sliced per example; other entries are passed unchanged to every call;
- a tuple or list ``(inputs, targets)`` (or ``(inputs,)``) whose first item is a tensor or
  a mapping and whose second is a tensor or None: one batch (``next(iter(loader))``);
- any other iterable of such batches (a ``DataLoader`` yielding tensors, ``(x, y)`` pairs
  or dicts, a list of pairs, a generator): every batch is measured and the result is
  the example-weighted mean over the batches. A list of exactly two tensors is read as
  one ``(inputs, targets)`` pair; wrap a list of tensor batches in ``iter(...)``.

``batch_fn``, if given, maps each batch (as the iterable yields it) to ``(inputs,
targets)`` first, for any other structure. Inputs and targets are moved to the device of
the model's parameters. Where the labels are sampled (Tr(F), Tr(F_B)), the targets are
ignored.

The model's output goes through ``output_fn`` if given (``output_fn=lambda out:
out["logits"]``); without one, a tensor is used as it is, and a mapping with a
``"logits"`` key or an object with a ``.logits`` attribute (a Hugging Face
``ModelOutput``) gives its logits. Anything else raises a TypeError asking for
``output_fn``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["Batch", "batch_size", "call_model", "iter_batches", "model_device", "pick_output", "split_inputs", "to_device"]

Inputs = Tensor | Mapping[str, Any]
OutputFn = Callable[[Any], Tensor]

ACCEPTED = (
    "a tensor of inputs, a mapping of keyword inputs (model(**inputs)), an (inputs, targets) "
    "tuple or list, or an iterable (e.g. a DataLoader) of those"
)


@dataclass
class Batch:
    """One batch: ``inputs`` (a tensor, or a mapping passed as keyword arguments) and
    ``targets`` (a tensor with the example on the first axis, or None)."""

    inputs: Inputs
    targets: Tensor | None = None

    def __len__(self) -> int:
        return batch_size(self.inputs)


def batch_size(inputs: Inputs) -> int:
    """The number of examples: the first axis of the tensor, or of the mapping's first tensor."""
    if isinstance(inputs, Tensor):
        return inputs.shape[0] if inputs.dim() else 0
    for v in inputs.values():
        if isinstance(v, Tensor) and v.dim():
            return v.shape[0]
    raise ValueError(f"a mapping of inputs needs at least one tensor with a batch axis; got keys {list(inputs)}")


def _is_inputs(x: Any) -> bool:
    return isinstance(x, (Tensor, Mapping))


def _is_pair(x: Any) -> bool:
    return (
        isinstance(x, (tuple, list))
        and len(x) in (1, 2)
        and _is_inputs(x[0])
        and (len(x) == 1 or x[1] is None or isinstance(x[1], Tensor))
    )


def _as_batch(item: Any, target_key: str) -> Batch:
    if isinstance(item, Tensor):
        if item.dim() == 0:
            raise ValueError("inputs must have the example on a first axis; got a 0-dim tensor")
        return Batch(item)
    if isinstance(item, Mapping):
        inputs = {k: v for k, v in item.items() if k != target_key}
        return Batch(inputs, item.get(target_key))
    if _is_pair(item):
        x, y = item[0], item[1] if len(item) == 2 else None
        if isinstance(x, Mapping):
            inner = _as_batch(x, target_key)  # its target_key entry is never passed to the model
            return Batch(inner.inputs, inner.targets if y is None else y)
        return Batch(x, y)
    raise TypeError(f"a batch must be {ACCEPTED}; got {_describe(item)}")


def _describe(x: Any) -> str:
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} ({', '.join(type(v).__name__ for v in x[:4])})"
    return type(x).__name__


def to_device(x: Any, device: torch.device | None) -> Any:
    """A tensor, or a mapping's tensors, moved to ``device`` (None: left where they are)."""
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); None for neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def iter_batches(
    data: Any,
    targets: Tensor | None = None,
    *,
    target_key: str = "labels",
    batch_fn: Callable[[Any], Any] | None = None,
    device: torch.device | None = None,
) -> Iterator[Batch]:
    """The batches of ``data`` (see the module docstring), on ``device``. ``targets``, if
    given, belong to a single batch ``data`` (the ``(model, inputs, targets)`` form)."""
    if isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"data must be {ACCEPTED}; got {type(data).__name__}")
    if targets is not None:
        if not isinstance(targets, Tensor):
            raise TypeError(f"targets must be a tensor; got {type(targets).__name__}")
        if not _is_inputs(data):
            raise TypeError("targets= goes with a single batch of inputs (a tensor or a mapping); "
                            f"got {_describe(data)}: put the targets into the batches instead")
        batches: Iterable = [(data, targets)]
    elif batch_fn is None and (_is_inputs(data) or _is_pair(data)):
        batches = [data]
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise TypeError(f"data must be {ACCEPTED}; got {type(data).__name__}")
    empty = True
    for item in batches:
        b = _as_batch(batch_fn(item) if batch_fn is not None else item, target_key)
        n = len(b)
        if b.targets is not None and b.targets.dim() and b.targets.shape[0] != n:
            raise ValueError(f"targets have {b.targets.shape[0]} rows for {n} examples")
        empty = False
        yield Batch(to_device(b.inputs, device), to_device(b.targets, device))
    if empty:
        raise ValueError("no batches: the data are empty")


def split_inputs(inputs: Inputs, size: int) -> list[Inputs]:
    """Consecutive chunks of ``size`` examples (a mapping: its tensors with the batch on
    the first axis are split, every other entry goes to every chunk unchanged)."""
    if isinstance(inputs, Tensor):
        return list(inputs.split(size))
    n = batch_size(inputs)
    starts = range(0, n, size)
    return [
        {k: v[s : s + size] if _batched(v, n) else v for k, v in inputs.items()} for s in starts
    ]


def _batched(v: Any, n: int) -> bool:
    return isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n


def batched_keys(inputs: Mapping[str, Any]) -> list[str]:
    """The keys of a mapping's tensors that carry the batch on their first axis."""
    n = batch_size(inputs)
    return [k for k, v in inputs.items() if _batched(v, n)]


def pick_output(out: Any, output_fn: OutputFn | None = None) -> Tensor:
    """The tensor the likelihood reads (logits) from a model's raw output."""
    if output_fn is not None:
        out = output_fn(out)
        if not isinstance(out, Tensor):
            raise TypeError(f"output_fn must return a tensor; it returned {type(out).__name__}")
        return out
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        logits = out["logits"]
    elif not isinstance(out, Mapping) and isinstance(getattr(out, "logits", None), Tensor):
        logits = out.logits
    else:
        keys = f" with keys {list(out)}" if isinstance(out, Mapping) else ""
        raise TypeError(f"the model returned a {type(out).__name__}{keys}, not a tensor of outputs: pass "
                        "output_fn= to pick it (e.g. output_fn=lambda out: out[0])")
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model output's 'logits' is a {type(logits).__name__}, not a tensor")
    return logits


def call_model(model: nn.Module, inputs: Inputs, output_fn: OutputFn | None = None) -> Tensor:
    """``model(inputs)`` or ``model(**inputs)``, then :func:`pick_output`."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return pick_output(out, output_fn)
