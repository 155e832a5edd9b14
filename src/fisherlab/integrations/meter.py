"""The framework-free core of the training-loop instruments: Tr(F) (Eq. 2) and Tr(F_B)
(Supplement C, Eq. 5) of a model on a FIXED probe set, on a step schedule.

The probe set is fixed once (the paper measures Tr(F) on the same examples throughout
training, Section 3), and the labels yhat ~ p(y|x) of the measurement at step ``t`` are
drawn from a generator seeded by ``seed * 1_000_003 + t``, as in
:func:`fisherlab.training.trainer.train`: a measurement is reproducible from the weights at that
step alone, and never touches the training RNG. Values are exactly those of

    fisherlab.trace_fisher(model, probe, generator=seed * 1_000_003 + step)

(and ``trace_fisher_batch`` likewise) on the weights at that step.

Inputs a model takes as keyword tensors (``model(input_ids=..., attention_mask=...)``,
Hugging Face models) are measured through :class:`ProbedModel`, a thin module that
holds the probe's tensors and maps example indices to the model's output logits, so the
per-example machinery of :mod:`fisherlab.per_example` sees one (N,) integer input and
splits it into chunks like any other.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: keys of a dict batch that hold targets, not inputs: left out of the probe
LABEL_KEYS = ("labels", "label", "label_ids")

OutputFn = Callable[[Any], Tensor]


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: a tensor as it is, else its ``logits`` attribute or
    key (Hugging Face ``ModelOutput``). Anything else needs an ``output_fn``."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}, not a tensor of logits nor an object with "
            "`.logits`; pass output_fn=... mapping the output to the (N, C) logits"
        )
    return logits


class ProbedModel(nn.Module):
    """``x -> logits``: the wrapped model on the inputs it understands.

    Without ``fields``, ``x`` is the model's own input and the output goes through
    ``output_fn`` (default :func:`logits_of`). With ``fields`` (name -> (N, ...) tensor),
    ``x`` is a tensor of example indices and the model is called as
    ``model(**{name: t[x] for name, t in fields.items()})``. The fields are plain
    attributes (not buffers), so the wrapped model's parameters and buffers are the only
    state, under the prefix ``model.``.
    """

    def __init__(self, model: nn.Module, fields: Mapping[str, Tensor] | None = None,
                 output_fn: OutputFn | None = None) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.fields = dict(fields) if fields is not None else None
        self.output_fn = output_fn or logits_of

    def forward(self, x: Tensor) -> Tensor:
        if self.fields is None:
            return self.output_fn(self.model(x))
        return self.output_fn(self.model(**{k: v[x] for k, v in self.fields.items()}))


def _batch_inputs(batch: Any) -> Tensor | dict[str, Tensor]:
    """The inputs of one batch: a tensor, a dict (label keys dropped), or the first item
    of an (inputs, targets) tuple/list."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        out = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        bad = [k for k, v in out.items() if not isinstance(v, Tensor)]
        if bad or not out:
            raise TypeError(f"a dict probe needs tensor values (besides {LABEL_KEYS}); got non-tensors at {bad}"
                            if bad else "a dict probe has no input tensors")  # fmt: skip
        return out
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (Tensor, Mapping)):
        return _batch_inputs(batch[0])
    raise TypeError(
        f"probe batches must be tensors, dicts of tensors, or (inputs, targets) pairs; got {type(batch).__name__}"
    )


def fixed_probe(probe: Any) -> Tensor | dict[str, Tensor]:
    """The probe set as one tensor or one dict of tensors (detached, on the CPU side of
    nothing: devices are left as given). ``probe``: a tensor, a dict of tensors, or an
    iterable of batches (a list, a DataLoader) of any of those or of (inputs, targets)
    pairs, concatenated along dim 0 once, here."""
    if isinstance(probe, (Tensor, Mapping)):
        probe = _batch_inputs(probe)
    elif isinstance(probe, Iterable) and not isinstance(probe, (str, bytes)):
        batches = [_batch_inputs(b) for b in probe]
        if not batches:
            raise ValueError("the probe set is empty")
        if all(isinstance(b, Tensor) for b in batches):
            probe = torch.cat(batches)
        elif all(isinstance(b, Mapping) for b in batches):
            keys = set(batches[0])
            if any(set(b) != keys for b in batches):
                raise ValueError("the probe's dict batches have different keys")
            try:
                probe = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
            except RuntimeError as e:  # e.g. padded to different lengths
                raise ValueError(f"the probe's dict batches cannot be concatenated ({e}); pad them to one "
                                 "length or pass one dict of tensors") from e  # fmt: skip
        else:
            raise TypeError("the probe's batches mix tensors and dicts")
    else:
        raise TypeError(f"probe must be a tensor, a dict of tensors or an iterable of batches; got {type(probe).__name__}")
    if isinstance(probe, Tensor):
        probe = probe.detach()
        n = len(probe)
    else:
        probe = {k: v.detach() for k, v in probe.items()}
        sizes = {k: len(v) for k, v in probe.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the probe's tensors hold different numbers of examples: {sizes}")
        n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("the probe set is empty")
    return probe


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


class FisherTraceMeter:
    """Tr(F) and optionally Tr(F_B) of a model on a fixed probe set, every
    ``every_n_steps`` optimizer steps (and at step 0 with ``at_start``).

    Args:
        probe: the fixed examples (see :func:`fixed_probe`); moved to the model's device
            when measured (once per device).
        every_n_steps: measure after optimizer steps t with t % every_n_steps == 0.
        batch_trace: also measure Tr(F_B) = ||(1/B) sum_i g(x_i, yhat_i)||^2 (Supplement C),
            the probe cut into batches of ``batch_size`` (default: the whole probe).
        likelihood: passed to ``trace_fisher`` / ``trace_fisher_batch`` only when given
            (versions of fisherlab whose measurements take a likelihood); default:
            categorical (softmax cross-entropy), the paper's.
        output_fn: maps the model's output to the logits (default: the output itself, or
            its ``.logits``).
        seed: the labels of the measurement at step t come from ``seed * 1_000_003 + t``.
        chunk_size: examples per forward/backward pass of Tr(F).
        prefix: put before the metric names (``trace_fisher``, ``trace_fisher_batch``).
    """

    def __init__(self, probe: Any, every_n_steps: int = 50, *, batch_trace: bool = False,
                 batch_size: int | None = None, likelihood: Any = None, output_fn: OutputFn | None = None,
                 seed: int = 0, chunk_size: int = 128, at_start: bool = True, prefix: str = "") -> None:  # fmt: skip
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if output_fn is not None and not callable(output_fn):
            raise TypeError(f"output_fn must be callable, got {type(output_fn).__name__}")
        self.probe = fixed_probe(probe)
        self.every_n_steps = every_n_steps
        self.batch_trace = batch_trace
        self.batch_size = batch_size
        self.likelihood = likelihood
        self.output_fn = output_fn
        self.seed = int(seed)
        self.chunk_size = chunk_size
        self.at_start = at_start
        self.prefix = prefix
        self._on: tuple[torch.device, Any] | None = None  # the probe on the last device used

    def due(self, step: int) -> bool:
        return step % self.every_n_steps == 0 if step > 0 else self.at_start

    def _inputs(self, device: torch.device) -> Any:
        if self._on is None or self._on[0] != device:
            p = self.probe
            moved = p.to(device) if isinstance(p, Tensor) else {k: v.to(device) for k, v in p.items()}
            self._on = (device, moved)
        return self._on[1]

    def measure(self, model: nn.Module, step: int) -> dict[str, float]:
        """{prefix + "trace_fisher": ..., [prefix + "trace_fisher_batch": ...]} of ``model``
        now, with the labels of step ``step``."""
        from ..curvature import trace_fisher, trace_fisher_batch

        device = model_device(model)
        probe = self._inputs(device)
        if isinstance(probe, Tensor):
            wrapped, x = ProbedModel(model, None, self.output_fn), probe
        else:
            wrapped = ProbedModel(model, probe, self.output_fn)
            x = torch.arange(len(next(iter(probe.values()))), device=device)
        extra = {} if self.likelihood is None else {"likelihood": self.likelihood}
        seed = self.seed * 1_000_003 + step
        names = [self.prefix + "trace_fisher"] + ([self.prefix + "trace_fisher_batch"] if self.batch_trace else [])
        try:
            out = {names[0]: float(trace_fisher(wrapped, x, generator=seed, chunk_size=self.chunk_size, **extra))}
            if self.batch_trace:
                out[names[1]] = float(trace_fisher_batch(wrapped, x, batch_size=self.batch_size, generator=seed,
                                                         **extra))  # fmt: skip
        except FloatingPointError as e:  # non-finite logits: a diverged model has no finite Tr(F)
            warnings.warn(f"Tr(F) at step {step}: {e}; logged as NaN", RuntimeWarning, stacklevel=2)
            out = dict.fromkeys(names, math.nan)
        return out
