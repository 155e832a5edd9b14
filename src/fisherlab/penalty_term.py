"""The Fisher penalty (FP, Eq. 3) as a term of one's own loss.

The paper's objective (Section 2, Eq. 3) is

    L(theta) = (1/B) sum_i l(x_i, y_i)  +  alpha * || (1/B) sum_i g(x_i, yhat_i) ||^2 ,
    g(x, y) = d/d theta  -log p(y | f(x)),     yhat_i ~ p(y | x_i)  (no gradient through the sampling),

and the penalty term is the squared norm of the mean gradient for labels sampled from the
model, an estimate of Tr(F_B) (Supplement C). Here the penalty is an ordinary
differentiable scalar, so that it is *added* to whatever loss one trains with::

    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=0.1)
    loss = loss + fisher_penalty(model, outputs=logits, alpha=0.1)
    loss.backward()                      # or scaler.scale(loss).backward(), DDP, Lightning...

:func:`fisher_penalty` builds ``v = (1/B) sum_i g(x_i, yhat_i)`` with
``create_graph=True``; the backward pass of ``alpha * ||v||^2`` is the double-backprop
product ``2 alpha H_yhat v`` and runs inside the caller's own ``backward()``, so AMP's
``GradScaler``, gradient accumulation, clipping and DDP's gradient averaging treat it as
any other term of the loss.

The paper recomputes the penalty's gradient every f = 10 steps and reuses the most recent
one in between (Section 2, after Eq. 3; Fig. 16 compares f = 1). :class:`FisherPenaltyTerm`
keeps that cache: on a recompute step it returns a term whose gradient is the penalty's
gradient, and in between a term whose gradient is exactly the cached one. It produces the
same parameter updates as the :class:`fisherlab.penalties.FisherPenalty` regularizer.

Semantics worth knowing:

* **Per micro-batch.** The penalty is that of the batch it is given. With gradient
  accumulation over k micro-batches of size B/k, ``sum_j (1/k) alpha ||v_j||^2`` is
  accumulated, which is *not* alpha ||v||^2 of the whole batch (the square of a mean is not
  the mean of squares): each micro-batch is an FP batch of size B/k. With DDP, likewise,
  each rank penalises its own batch and DDP averages the gradients over ranks.
* **Outputs or inputs.** Pass ``outputs=`` (the output of the forward pass the data loss
  uses) to share that forward pass, as the regularizer does; the graph of ``outputs`` must
  be alive (not computed under ``torch.no_grad()``, not yet freed by a backward). Or pass
  ``inputs`` (a tensor, called as ``model(inputs)``, or a dict of tensors, called as
  ``model(**inputs)`` in the Hugging Face style) and the function runs its own forward
  pass in the model's current mode; BatchNorm layers update copies of their running
  statistics in that extra pass and get their own back unchanged, so the running
  statistics see each batch once, as in plain training. ``model`` may be a
  ``DistributedDataParallel`` wrapper.
* **Outputs of any shape.** ``output_fn(model_output)`` picks the tensor the likelihood
  reads (default: the output itself if it is a tensor, else its ``logits`` attribute or
  ``"logits"`` key). ``likelihood`` is a :mod:`fisherlab.likelihoods` object or name
  (default categorical = softmax cross-entropy, the paper's FP; ``"gaussian"`` for
  regression). The categorical likelihood sums the loss over all positions of an example
  (a sequence of tokens is one example); let ``output_fn`` select or flatten positions
  (e.g. the unpadded tokens) if that is not what you want.
* **Mixed precision.** Under ``torch.autocast`` with bfloat16 the penalty works as is
  (labels are sampled from float32 probabilities). With float16, note that the inner
  gradient ``v`` is computed before (and without) the GradScaler's loss scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .curvature import trainable_parameters
from .likelihoods import Categorical, Likelihood, get_likelihood

__all__ = ["fisher_penalty", "sampled_fisher_gradient", "FisherPenaltyTerm"]

Inputs = Tensor | Mapping[str, Tensor]


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number >= 0, got {type(alpha).__name__}")
    if not (alpha >= 0 and math.isfinite(alpha)):  # also refuses NaN
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    return float(alpha)


def _check_examples(examples: Any) -> int | None:
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise ValueError(f"examples must be None or an integer >= 1, got {examples!r}")
    return examples


def _check_params(params: list[Tensor]) -> list[Tensor]:
    if not params:
        raise ValueError("the model has no parameters that require a gradient: there is nothing to penalise")
    return params


def _default_output(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    raise TypeError(f"the model returned a {type(output).__name__}; pass output_fn= to pick the tensor "
                    "the likelihood reads (e.g. output_fn=lambda out: out[0])")  # fmt: skip


@contextmanager
def _running_stats_untouched(model: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm layer in training mode updates copies of its
    running statistics; on leaving it the layer has its own (unchanged) buffers back.
    (Copying the old values back into the buffers would not do: the forward pass saves
    running_mean and running_var for its backward pass, which an in-place write breaks.)"""
    names = ("running_mean", "running_var", "num_batches_tracked")
    swapped = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            own = {n: getattr(m, n) for n in names if getattr(m, n) is not None}
            for n, buf in own.items():
                setattr(m, n, buf.detach().clone())
            swapped.append((m, own))
    try:
        yield
    finally:
        for m, own in swapped:
            for n, buf in own.items():
                setattr(m, n, buf)


def _model_outputs(model: nn.Module, inputs: Inputs | None, outputs: Any, output_fn: Callable | None,
                   examples: int | None) -> Tensor:  # fmt: skip
    """The tensor the likelihood reads, for the first ``examples`` examples."""
    if not torch.is_grad_enabled():
        raise RuntimeError("the Fisher penalty needs autograd (a gradient of a gradient): it was called under "
                           "torch.no_grad() or torch.inference_mode(); call it in the training step only")
    pick = _default_output if output_fn is None else output_fn
    if outputs is not None:
        out = pick(outputs)
        if not isinstance(out, Tensor):
            raise TypeError(f"output_fn must return a tensor, got {type(out).__name__}")
        if not out.requires_grad:
            raise ValueError("outputs carry no autograd graph (computed under torch.no_grad() or detached); "
                             "pass the outputs of a forward pass with gradients, or inputs= instead")
        return out if examples is None else out[:examples]
    if isinstance(inputs, Tensor):
        call = lambda: model(inputs if examples is None else inputs[:examples])  # noqa: E731
    elif isinstance(inputs, Mapping):
        if not all(isinstance(v, Tensor) for v in inputs.values()):
            raise TypeError("a dict of inputs must hold tensors only (they are passed as model(**inputs))")
        sub = inputs if examples is None else {k: v[:examples] for k, v in inputs.items()}
        call = lambda: model(**sub)  # noqa: E731
    elif inputs is None:
        raise TypeError("fisher_penalty needs inputs (a tensor or a dict of tensors) or outputs=")
    else:
        raise TypeError(f"inputs must be a tensor or a dict of tensors (model(**inputs)), got {type(inputs).__name__}")
    with _running_stats_untouched(model):
        out = pick(call())
    if not isinstance(out, Tensor):
        raise TypeError(f"output_fn must return a tensor, got {type(out).__name__}")
    return out


def _mean_nll(likelihood: Likelihood, output: Tensor, target: Tensor) -> Tensor:
    """(1/N) sum_i -log p(target_i | output_i). Categorical (N, C) outputs go through
    F.cross_entropy: the same number, by the fused kernel the regularizers use."""
    if isinstance(likelihood, Categorical) and output.dim() == 2:
        return F.cross_entropy(output, target)
    return likelihood.loss(output, target).mean()


def sampled_fisher_gradient(
    outputs: Tensor,
    params: list[Tensor],
    *,
    likelihood: Likelihood | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ...]:
    """v = (1/N) sum_i g(x_i, yhat_i) with yhat_i ~ p(y | outputs_i) (Eq. 3), one tensor per
    parameter (zeros where unused), differentiable again (``create_graph=True``).

    ``outputs`` (N, ...) must depend on ``params`` through a live graph; the labels are drawn
    by ``likelihood.sample(outputs, generator)`` (the global RNG when ``generator`` is None)."""
    lik = get_likelihood(likelihood)
    yhat = lik.sample(outputs, generator)
    loss = _mean_nll(lik, outputs, yhat)
    return torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)


def _squared_norm(v) -> Tensor:
    return sum(vi.pow(2).sum() for vi in v)


def fisher_penalty(
    model: nn.Module,
    inputs: Inputs | None = None,
    *,
    alpha: float,
    likelihood: Likelihood | str | None = None,
    output_fn: Callable[[Any], Tensor] | None = None,
    generator: torch.Generator | None = None,
    outputs: Any = None,
    examples: int | None = None,
    params: list[Tensor] | None = None,
) -> Tensor:
    """The Fisher penalty of Eq. 3 as a differentiable scalar:

        alpha * || (1/B) sum_i g(x_i, yhat_i) ||^2 ,   yhat_i ~ p(y | x_i),

    to be added to one's loss before ``backward()`` (its gradient, by double backprop, is
    ``2 alpha H_yhat v``). ``alpha * Tr(F_B)`` in the paper's notation (Supplement C).

    Args:
        model: the model; ``params`` (default: its parameters that require a gradient) are
            what the gradients g are taken with respect to.
        inputs: a tensor (``model(inputs)``) or a dict of tensors (``model(**inputs)``); a
            forward pass of its own is run (it leaves BatchNorm running statistics as they
            were). Not needed when ``outputs`` is given.
        alpha: the penalty's weight, >= 0.
        likelihood: a :mod:`fisherlab.likelihoods` object or name; None = categorical
            (cross-entropy, the paper's FP), ``"gaussian"`` for mean-squared-error regression.
        output_fn: picks the likelihood's tensor out of the model's output (a dict, tuple or
            Hugging Face ``ModelOutput``); default: the tensor itself, or ``.logits``.
        generator: the torch.Generator the labels yhat are drawn with (None: global RNG);
            it must be on the outputs' device.
        outputs: the model's output from the caller's own forward pass (graph alive), to
            share it instead of running another forward pass.
        examples: m: the penalty of the first m examples only (Supplement E: "use the first
            128 examples when computing the penalty"). With ``inputs``, only those m are
            forwarded (every tensor of a dict is cut along its first axis) (in train mode BatchNorm then normalises them by their own statistics;
            pass ``outputs`` to take them from the full batch's forward pass, as the
            regularizer does).

    The penalty is per batch given (see the module docstring on gradient accumulation).
    """
    alpha = _check_alpha(alpha)
    examples = _check_examples(examples)
    params = _check_params(trainable_parameters(model) if params is None else list(params))
    out = _model_outputs(model, inputs, outputs, output_fn, examples)
    v = sampled_fisher_gradient(out, params, likelihood=likelihood, generator=generator)
    return alpha * _squared_norm(v)


class _LazyGenerator:
    """A torch.Generator created on first use on the data's device, with a saved state
    (the same stream as the regularizers' generator for the same seed)."""

    def __init__(self, seed: int):
        self.seed, self.gen, self._pending = seed, None, None

    def get(self, device: torch.device) -> torch.Generator:
        if self.gen is None:
            self.gen = torch.Generator(device=device).manual_seed(self.seed)
            if self._pending is not None:
                self.gen.set_state(self._pending)
        return self.gen

    def state(self):
        return self.gen.get_state() if self.gen is not None else self._pending

    def load(self, state) -> None:
        self._pending, self.gen = state, None


class FisherPenaltyTerm:
    """FP (Eq. 3) with the paper's cache: the penalty's gradient is recomputed every
    ``every`` steps (f = 10 in the paper; ``every=1``: every step, Fig. 16) and the most
    recently computed one is reused in between.

        term = FisherPenaltyTerm(alpha=0.1, every=10, seed=0)
        logits = model(x)
        loss = F.cross_entropy(logits, y) + term(model, outputs=logits)   # or term(model, x)
        loss.backward()

    Each call returns a scalar whose **gradient** is

    * on a recompute step: ``G = d/d theta alpha ||(1/B) sum_i g(x_i, yhat_i)||^2`` of this
      batch, computed here (double backprop) and cached;
    * otherwise: the cached ``G``, exactly, through the surrogate ``sum_p <p, G_p>`` (so
      the step's update is that of the ``FisherPenalty`` regularizer: grad CE + cached G).

    Its **value** is the penalty alpha ||v||^2 computed at the last recompute step (on a
    recompute step, this batch's), so a logged ``loss`` is the data term plus the most
    recent penalty (stale by up to ``every - 1`` steps); :attr:`last_penalty` holds it and
    :attr:`recomputed` says whether the last call recomputed. No graph of the penalty
    outlives the call (the term depends on the parameters only linearly).

    Steps: with ``step=None`` every call is a step (as the regularizer counts). With
    ``step`` given (the optimizer step), the penalty is recomputed when ``step`` is at
    least ``every`` past the last recompute step, or earlier than it (a restart); calls
    with the same ``step`` as the last recompute are further micro-batches of that step
    (gradient accumulation): each gets its own penalty, and the cache becomes their mean
    gradient, so that with the loss divided by k over k micro-batches every step adds
    the same penalty gradient. The labels are drawn from a generator seeded with ``seed``
    on the outputs' device, advanced only on recompute steps (the regularizer's stream).

    The gradients are taken with respect to ``model``'s trainable parameters, in
    ``model.parameters()`` order; keep that set fixed while a cache is in use.
    :meth:`state_dict` / :meth:`load_state_dict` save and restore the cache and the
    label stream for an exact resume.
    """

    def __init__(
        self,
        alpha: float,
        every: int = 10,
        *,
        likelihood: Likelihood | str | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
        examples: int | None = None,
        seed: int = 0,
    ):
        self.alpha = _check_alpha(alpha)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every = every
        self.likelihood = get_likelihood(likelihood)
        self.output_fn = output_fn
        self.examples = _check_examples(examples)
        self.seed = seed
        self._rng = _LazyGenerator(seed)
        self._cache: list[Tensor] | None = None  # the penalty gradient G, one tensor per parameter
        self._age = 0  # calls since the last recompute (step=None)
        self._step: int | None = None  # the step of the last recompute (step given)
        self._count = 0  # micro-batches averaged into the cache at that step
        self.last_penalty: Tensor | None = None
        self.recomputed = False

    def _due(self, step: int | None) -> bool:
        if self._cache is None:
            return True
        if step is None:
            return self._age >= self.every
        return self._step is None or step <= self._step or step - self._step >= self.every

    def __call__(self, model: nn.Module, inputs: Inputs | None = None, *, outputs: Any = None,
                 step: int | None = None) -> Tensor:  # fmt: skip
        """The term to add to the loss (see the class docstring); ``inputs``/``outputs`` as in
        :func:`fisher_penalty` (only read on recompute steps)."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise TypeError(f"step must be None or an int, got {type(step).__name__}")
        params = _check_params(trainable_parameters(model))
        self.recomputed = self._due(step)
        if not self.recomputed:
            if len(params) != len(self._cache) or any(
                (p.shape, p.dtype, p.device) != (c.shape, c.dtype, c.device) for p, c in zip(params, self._cache)
            ):
                raise ValueError("the model's trainable parameters (their number, shapes, dtypes or devices) changed "
                                 "since the cached penalty gradient was computed; call reset() to recompute it")
            self._age += 1
            return self._term(params, self._cache, self.last_penalty)
        out = _model_outputs(model, inputs, outputs, self.output_fn, self.examples)
        v = sampled_fisher_gradient(out, params, likelihood=self.likelihood, generator=self._rng.get(out.device))
        penalty = self.alpha * _squared_norm(v)
        if penalty.requires_grad:  # a shared forward graph must survive for the caller's loss
            grads = torch.autograd.grad(penalty, params, retain_graph=outputs is not None, allow_unused=True)
        else:  # no parameter reaches the output
            grads = [None] * len(params)
        grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        penalty = penalty.detach()
        if step is not None and step == self._step and self._cache is not None:  # another micro-batch
            n = self._count
            self._cache = [(c * n + g) / (n + 1) for c, g in zip(self._cache, grads)]
            self.last_penalty = (self.last_penalty * n + penalty) / (n + 1)
            self._count = n + 1
        else:
            self._cache, self.last_penalty, self._count = grads, penalty, 1
        self._age, self._step = 1, step
        return self._term(params, grads, penalty)

    @staticmethod
    def _term(params: list[Tensor], grads: list[Tensor], value: Tensor) -> Tensor:
        """value + (s - s.detach()) with s = sum_p <p, G_p>: equal to ``value``, gradient G."""
        s = sum((p * g).sum() for p, g in zip(params, grads))
        return value + (s - s.detach())

    def reset(self) -> None:
        """Forget the cache: the next call recomputes (the label stream continues)."""
        self._cache, self._age, self._step, self._count = None, 0, None, 0
        self.last_penalty, self.recomputed = None, False

    def state_dict(self) -> dict[str, Any]:
        """The cache, its age and step, and the label generator's state."""
        return {"cache": self._cache, "age": self._age, "step": self._step, "count": self._count,
                "last_penalty": self.last_penalty, "rng": self._rng.state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cache, self._age, self._step = state["cache"], state["age"], state["step"]
        self._count, self.last_penalty = state["count"], state["last_penalty"]
        self._rng.load(state["rng"])

    def __repr__(self) -> str:
        return (f"FisherPenaltyTerm(alpha={self.alpha}, every={self.every}, likelihood={self.likelihood!r}, "
                f"examples={self.examples}, seed={self.seed})")
