"""The result type of every trace measurement: a float with its standard error.

:func:`~fisherlab.trace_fisher`, :func:`~fisherlab.trace_fisher_batch`,
:func:`~fisherlab.trace_hessian`, :func:`~fisherlab.hutchinson_trace` and
:func:`~fisherlab.hutchpp_trace` all return an :class:`Estimate`. It *is* a ``float``
(``float(est)``, arithmetic, comparisons, ``f"{est:.3g}"``, ``math.isfinite``, numpy,
pandas and CSV writers all see the number), with three more attributes:

- ``value``: the number itself, ``float(est)``;
- ``stderr``: its standard error, whose meaning is stated by the function that returns
  it (for Tr(F): 0.0 when the expectation over the labels is exact; for Hutchinson:
  the spread of the probes);
- ``num_examples``: how many examples (or, for sequence outputs measured per position,
  positions) the value averages over.

``repr`` and ``str`` are the float's, so that a row of measurements written by the csv
module or printed reads as before; :meth:`Estimate.describe` spells out the error.
It pickles with its attributes; the class is registered with
``torch.serialization.add_safe_globals`` when this module is imported, so a checkpoint
holding an Estimate loads with ``torch.load(weights_only=True)`` in a process that has
imported fisherlab's measurements (store ``float(est)`` where a file must load without
fisherlab).

``HutchinsonEstimate`` (the former two-field named tuple of :func:`trace_hessian`) is this
class: ``est.estimate`` is ``est.value``, and ``value, stderr = est`` still unpacks.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Estimate", "HutchinsonEstimate"]


class Estimate(float):
    """A measured value that behaves as a float, with ``stderr`` and ``num_examples``."""

    def __new__(cls, value: float, stderr: float = 0.0, num_examples: int = 0) -> "Estimate":
        self = super().__new__(cls, value)
        self.stderr = float(stderr)
        self.num_examples = int(num_examples)
        return self

    @property
    def value(self) -> float:
        """The measured value as a plain float."""
        return float(self)

    @property
    def estimate(self) -> float:
        """The value (the field name of the former ``HutchinsonEstimate`` named tuple)."""
        return float(self)

    def __iter__(self):
        """``value, stderr = est``: unpacks like the former ``HutchinsonEstimate`` tuple."""
        return iter((float(self), self.stderr))

    def describe(self, digits: int = 4) -> str:
        """``'1.234 ± 0.05 (512 examples)'``."""
        err = "" if self.stderr == 0.0 else f" ± {self.stderr:.{max(1, digits - 2)}g}"
        n = f" ({self.num_examples} examples)" if self.num_examples else ""
        return f"{float(self):.{digits}g}{err}{n}"

    def __copy__(self) -> "Estimate":
        return self

    def __deepcopy__(self, memo) -> "Estimate":
        return self

    @classmethod
    def mean_of(cls, values, stderr: float | None = None) -> "Estimate":
        """The mean of a 1-D tensor of per-example values, with std / sqrt(n) as stderr
        unless ``stderr`` is given (nan for a single value)."""
        n = values.numel()
        if stderr is None:
            stderr = values.double().std().item() / math.sqrt(n) if n > 1 else float("nan")
        return cls(values.mean().item(), stderr, n)


HutchinsonEstimate = Estimate
"""The former result type of :func:`~fisherlab.trace_hessian`, now :class:`Estimate`."""


torch.serialization.add_safe_globals([Estimate])
