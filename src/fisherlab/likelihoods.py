"""Likelihoods p(y | f(x)): the loss whose gradients the Fisher is made of, and how a
label is sampled from the model's own predictive distribution (Eq. 2).

The Fisher information matrix of a model with output f(x) and likelihood p(y | f) is

    F = E_{x} E_{yhat ~ p(y|f(x))} [ g(x, yhat) g(x, yhat)^T ],
    g(x, y) = d/d theta  -log p(y | f(x)) ,

so a measurement of Tr(F) (or the Fisher penalty, Eq. 3) needs two things of a
likelihood: the per-example negative log-likelihood ``loss(output, target)`` and a
sampler ``sample(output, generator)`` for yhat. Any object with these two methods is a
likelihood (:class:`Likelihood`, a ``typing.Protocol``). ``enumerate(output)``, where
it exists, gives K (targets, weights) pairs with the same second moment of the
gradient as yhat ~ p(y | f),

    sum_k w_k g(x, y_k) g(x, y_k)^T = E_{yhat ~ p(y|f(x))} [ g(x, yhat) g(x, yhat)^T ] ,

for measurements exact in the labels (``trace_fisher(exact=True)``): every class with
its probability for :class:`Categorical`, the K output directions with weight 1 for
:class:`Gaussian`.

The default everywhere is :class:`Categorical` (softmax and cross-entropy), as in the
paper. :class:`Gaussian` is regression with a mean-squared-error loss.

Shapes: ``output`` is (N, ...) with the example on the first axis. The categorical
likelihood reads the class scores on the last axis; the per-example loss is summed over
the other axes (a sequence of T tokens counts as one example unless the caller flattens
the positions into the example axis first, as the measurements' ``positions="each"``
does). :func:`summed_loss` is the sum over the examples that gradients are taken of.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Likelihood", "Categorical", "Gaussian", "get_likelihood", "summed_loss"]


@runtime_checkable
class Likelihood(Protocol):
    """What a measurement needs of p(y | f(x))."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-example -log p(target | output) up to a constant: shape (N,)."""
        ...

    def sample(self, output: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """yhat ~ p(y | output), no gradient through it: one target per example."""
        ...


def _check_finite(output: Tensor) -> None:
    if not torch.isfinite(output).all():
        raise FloatingPointError("non-finite model output: p(y|x) cannot be sampled (the model has diverged)")


class Categorical:
    """p(y | f) = softmax(f)_y over the last axis; loss = cross-entropy (the paper's)."""

    name = "categorical"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if output.dim() == 2:
            return F.cross_entropy(output, target, reduction="none")
        nll = F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="none")
        return nll.reshape(output.shape[0], -1).sum(1)

    def sample(self, output: Tensor, generator: torch.Generator | None = None) -> Tensor:
        out = output.detach()
        probs = out.to(torch.promote_types(out.dtype, torch.float32)).softmax(-1)  # bf16/fp16: sample in fp32
        _check_finite(probs)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])

    def enumerate(self, output: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every class c with its probability p(c | output): (targets, weights) pairs."""
        if output.dim() != 2:
            raise ValueError("the exact expectation over labels needs (N, C) outputs")
        probs = output.detach().softmax(-1)
        return [(torch.full_like(probs[:, 0], c, dtype=torch.long), probs[:, c]) for c in range(probs.shape[1])]

    def __repr__(self) -> str:
        return "Categorical()"


class Gaussian:
    """p(y | f) = N(y; f, sigma^2 I); loss = ||y - f||^2 / (2 sigma^2) per example
    (mean-squared-error regression; the constant of the normaliser is dropped)."""

    name = "gaussian"

    def __init__(self, sigma: float = 1.0):
        if not (sigma > 0 and sigma < float("inf")):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        self.sigma = float(sigma)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        sq = (output - target).pow(2)
        return sq.reshape(sq.shape[0], -1).sum(1) / (2 * self.sigma**2)

    def enumerate(self, output: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """The targets y_k = f - sigma e_k, k over the K = prod(output.shape[1:]) outputs,
        weight 1: g(x, y_k) = J^T e_k / sigma, so sum_k g g^T = J^T J / sigma^2, the
        Fisher of the Gaussian (E[eps eps^T] = I for yhat = f + sigma eps)."""
        out = output.detach()
        flat = out.reshape(out.shape[0], -1)
        pairs = []
        for k in range(flat.shape[1]):
            y = flat.clone()
            y[:, k] -= self.sigma
            pairs.append((y.reshape(out.shape), None))
        return pairs

    def sample(self, output: Tensor, generator: torch.Generator | None = None) -> Tensor:
        out = output.detach()
        _check_finite(out)
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        return out + self.sigma * noise

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma})"


_NAMED = {"categorical": Categorical, "cross_entropy": Categorical, "gaussian": Gaussian, "mse": Gaussian}


def get_likelihood(likelihood: "Likelihood | str | None") -> Likelihood:
    """A likelihood from an object, a name ("categorical", "gaussian") or None (categorical)."""
    if likelihood is None:
        return Categorical()
    if isinstance(likelihood, str):
        try:
            return _NAMED[likelihood.lower()]()
        except KeyError:
            raise ValueError(f"unknown likelihood {likelihood!r}: use one of {sorted(_NAMED)} "
                             "or an object with loss(output, target) and sample(output, generator)") from None
    if not (callable(getattr(likelihood, "loss", None)) and callable(getattr(likelihood, "sample", None))):
        raise TypeError(f"a likelihood needs loss(output, target) and sample(output, generator) methods; "
                        f"got {type(likelihood).__name__}")
    return likelihood


def summed_loss(likelihood: Likelihood, output: Tensor, target: Tensor) -> Tensor:
    """sum_i loss(output_i, target_i): the loss whose gradient the measurements take.
    For :class:`Categorical` on (N, C) outputs this is ``F.cross_entropy(output, target,
    reduction="sum")``, the very operation of the earlier releases (bit-identical results)."""
    if isinstance(likelihood, Categorical) and output.dim() == 2:
        return F.cross_entropy(output, target, reduction="sum")
    loss = likelihood.loss(output, target)
    if loss.dim() != 1 or loss.shape[0] != output.shape[0]:
        raise ValueError(f"{likelihood!r}.loss must return one value per example, shape ({output.shape[0]},); "
                         f"got {tuple(loss.shape)}")
    return loss.sum()
