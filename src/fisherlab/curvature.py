"""Curvature measurements: Tr(F) (Eq. 2), Tr(F_B) (Supplement C), Tr(H) (Supplement B),
and the gradient statistics of example subsets used in the memorisation analysis
(Section 4.1, Supplement H, Fig. 12).

All measurements run with the model in eval mode (BatchNorm uses its running
statistics, Supplement I.2) and restore each module's mode afterwards. None of them
changes the parameters, the buffers or the ``.grad`` fields; given a generator or a
seed, none touches the global random state either.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .per_example import Strategy, chunk_sq_norms

GeneratorLike = torch.Generator | int | None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode, then restore each module's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _generator(gen: GeneratorLike, device: torch.device) -> torch.Generator | None:
    if isinstance(gen, int):
        return torch.Generator(device=device).manual_seed(gen)
    return gen


def sample_labels(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """yhat_i ~ p(y|x_i) = softmax(logits_i), with no gradient through the sampling.
    Raises FloatingPointError when the logits are not finite (a diverged model)."""
    probs = logits.detach().softmax(-1)
    if not torch.isfinite(probs).all():
        raise FloatingPointError("non-finite logits: p(y|x) cannot be sampled (the model has diverged)")
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def trainable_parameters(model: nn.Module) -> list[Tensor]:
    """The parameters that require a gradient, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def trace_fisher(
    model: nn.Module,
    inputs: Tensor,
    *,
    generator: GeneratorLike = None,
    exact: bool = False,
    chunk_size: int = 128,
    method: Literal["auto", "func"] = "auto",
    strategy: Strategy = "auto",
    return_per_example: bool = False,
) -> float | Tensor:
    """Trace of the Fisher information matrix over the N given examples (Eq. 2):

        Tr(F) = E_{x ~ inputs, yhat ~ p(y|x)} ||d loss(x, yhat) / d theta||^2 ,

    with the labels sampled from the model's own predictive distribution, not taken from
    the data. The result is the mean over the examples of exact per-example squared
    gradient norms (no mini-batch approximation), computed layer by layer
    (:mod:`fisherlab.per_example`) ``chunk_size`` examples at a time.

    Args:
        model: a classifier returning logits; measured in eval mode.
        inputs: (N, ...) examples.
        generator: a ``torch.Generator`` on the inputs' device, or an int seed, for
            reproducible labels; None uses the global RNG.
        exact: enumerate every label y weighted by p(y|x) instead of sampling one
            (C backward passes per chunk): the expectation over yhat without noise.
        chunk_size: examples per forward/backward pass; bounds the memory.
        method: "auto" (per-layer closed forms) or "func" (``torch.func`` vmap(grad)).
        strategy: per-layer choice, "auto", or force "ghost" / "materialise".
        return_per_example: return the (N,) per-example values instead of their mean.

    Example:
        >>> tr = trace_fisher(model, x_fixed, generator=0)
    """
    gen = _generator(generator, inputs.device)

    def label_fn(logits: Tensor):
        if not exact:
            return [(sample_labels(logits, gen), None)]
        probs = logits.softmax(-1)
        return [
            (torch.full_like(probs[:, 0], c, dtype=torch.long), probs[:, c])
            for c in range(probs.shape[1])
        ]

    with eval_mode(model):
        per = torch.cat(
            [
                chunk_sq_norms(model, xc, label_fn, method=method, strategy=strategy)
                for xc in inputs.split(chunk_size)
            ]
        )
    return per if return_per_example else per.mean().item()


def _grad_sq_norm(model: nn.Module, loss: Tensor) -> float:
    grads = torch.autograd.grad(loss, trainable_parameters(model))
    return sum(g.pow(2).sum() for g in grads).item()


def trace_fisher_batch(
    model: nn.Module,
    inputs: Tensor,
    *,
    batch_size: int | None = None,
    generator: GeneratorLike = None,
) -> float:
    """Tr(F_B) = || (1/B) sum_i g(x_i, yhat_i) ||^2, yhat_i ~ p(y|x_i) (Supplement C, Eq. 5).

    The squared norm of the mini-batch gradient with labels sampled from the model: the
    quantity the Fisher penalty (Eq. 3) penalises. With ``batch_size`` set, ``inputs``
    is cut into consecutive batches of that size (a short last batch is dropped unless
    it is the only one) and the mean of Tr(F_B) over the batches is returned; by
    default the whole of ``inputs`` is one batch. Measured in eval mode.
    """
    gen = _generator(generator, inputs.device)
    batches = list(inputs.split(batch_size or len(inputs)))
    if len(batches) > 1 and len(batches[-1]) < len(batches[0]):
        batches.pop()
    values = []
    with eval_mode(model), torch.enable_grad():
        for xb in batches:
            logits = model(xb)
            loss = F.cross_entropy(logits, sample_labels(logits, gen))
            values.append(_grad_sq_norm(model, loss))
    return sum(values) / len(values)


class HutchinsonEstimate(NamedTuple):
    """A Monte-Carlo trace estimate and its standard error: std over the probes /
    sqrt(M) for Hutchinson; for Hutch++ the same over the probes of its deflated
    Hutchinson part (see :func:`hutchpp_trace`)."""

    estimate: float
    stderr: float


def _probe(like: list[Tensor], seed: int, distribution: str) -> list[Tensor]:
    gen = torch.Generator(device=like[0].device).manual_seed(seed)
    if distribution == "rademacher":
        return [
            torch.randint(0, 2, p.shape, generator=gen, device=p.device).to(p.dtype) * 2 - 1
            for p in like
        ]
    return [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in like]


Matmat = Callable[[Tensor], Tensor]  # V (dim, k) -> A @ V (dim, k), A symmetric


def _probe_block(
    dim: int, k: int, distribution: str, gen: torch.Generator | None, dtype, device
) -> Tensor:
    """(dim, k) i.i.d. Rademacher (+-1) or standard Gaussian entries."""
    if distribution == "rademacher":
        bits = torch.randint(0, 2, (dim, k), generator=gen, device=device)
        return bits.to(dtype) * 2 - 1
    if distribution == "gaussian":
        return torch.randn(dim, k, generator=gen, device=device, dtype=dtype)
    raise ValueError(f"unknown probe distribution {distribution!r}")


def _estimate(offset: float, quad: Tensor) -> HutchinsonEstimate:
    """offset + mean(quad), with standard error std(quad) / sqrt(len(quad))."""
    quad = quad.double()
    m = len(quad)
    stderr = quad.std().item() / math.sqrt(m) if m > 1 else float("nan")
    return HutchinsonEstimate(offset + quad.mean().item(), stderr)


def hutchinson_trace(
    matmat: Matmat,
    dim: int,
    num_queries: int,
    *,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> HutchinsonEstimate:
    """Hutchinson's estimator of tr(A) from M = ``num_queries`` products with A:

        tr(A) ~= (1/M) sum_m z_m^T A z_m ,   z_m i.i.d. Rademacher or Gaussian,

    unbiased, with Var = 2 (||A||_F^2 - sum_i A_ii^2) / M (Rademacher) or 2 ||A||_F^2 / M
    (Gaussian). ``matmat`` maps a (dim, k) block to A times it; it is called once, with
    all M probes. ``generator`` is a torch.Generator on ``device``, an int seed, or None
    (the global RNG). Returns ``HutchinsonEstimate(estimate, std of z^T A z / sqrt(M))``.
    """
    if num_queries < 1:
        raise ValueError("num_queries must be >= 1")
    gen = _generator(generator, torch.device(device))
    Z = _probe_block(dim, num_queries, distribution, gen, dtype, device)
    return _estimate(0.0, (Z * matmat(Z)).sum(0))


def hutchpp_trace(
    matmat: Matmat,
    dim: int,
    num_queries: int,
    *,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> HutchinsonEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic Trace
    Estimation", SOSA 2021, Algorithm 1) with the same budget of M = ``num_queries``
    products with A as Hutchinson:

        S (dim x k), G (dim x m) random probes,  k = floor(M / 3),  m = M - 2k
        Q = orthonormal basis of A S                                  (k products)
        tr(A) ~= tr(Q^T A Q)                                          (k products)
                 + (1/m) sum_j g_j^T (I - Q Q^T) A (I - Q Q^T) g_j    (m products)

    When M is not divisible by 3, the one or two products left over go to the deflated
    Hutchinson part (M = 31: k = 10, m = 11); M < 3 gives k = 0, plain Hutchinson. When
    k >= dim, Q spans the whole space and the result is exact (stderr 0).

    The estimate is unbiased for any Q (tr(A) = tr(Q^T A Q) + tr((I-P) A (I-P)) for the
    projector P = Q Q^T), and its variance ~ 2 ||A - A_k||_F^2 / m, with A_k the best
    rank-k approximation: far below Hutchinson's 2 ||A||_F^2 / M when the spectrum
    decays. The standard error is std_j(g_j^T (I-P) A (I-P) g_j) / sqrt(m): the m
    deflated probes are independent repeats given Q, and since E[estimate | Q] = tr(A)
    for every Q, Var(estimate) = E_Q[Var(estimate | Q)], of which this stderr^2 is an
    unbiased estimate (the whole budget stays in one sketch instead of being split
    into independent Hutch++ runs, which would raise the variance). Needs m >= 2 (M >= 4)
    for a finite stderr.

    ``matmat`` maps a (dim, k) block to A times it (A symmetric); it is called twice:
    with S, then with [Q, (I - P) G]. ``generator``, ``dtype``, ``device``: as in
    :func:`hutchinson_trace`; S is drawn first, then G, from the one generator.
    """
    if num_queries < 1:
        raise ValueError("num_queries must be >= 1")
    gen = _generator(generator, torch.device(device))
    k = num_queries // 3
    m = num_queries - 2 * k
    S = _probe_block(dim, k, distribution, gen, dtype, device)
    G = _probe_block(dim, m, distribution, gen, dtype, device)
    if k == 0:
        return _estimate(0.0, (G * matmat(G)).sum(0))
    Q = torch.linalg.qr(matmat(S)).Q  # (dim, min(k, dim)), orthonormal columns
    G = G - Q @ (Q.T @ G)
    AV = matmat(torch.cat([Q, G], dim=1))
    low_rank = (Q * AV[:, : Q.shape[1]]).sum().item()
    return _estimate(low_rank, (G * AV[:, Q.shape[1] :]).sum(0))


def hessian_matmat(
    model: nn.Module, inputs: Tensor, targets: Tensor, *, chunk_size: int = 256
) -> tuple[Matmat, int]:
    """The Hessian H of the mean cross-entropy over (inputs, targets) (true labels, eval
    mode) w.r.t. the flattened trainable parameters, as a block product V -> H V over
    (P, k) blocks, and P. Each column is a double-backprop Hessian-vector product; the
    gradient is computed once per chunk of ``chunk_size`` examples per call and reused
    for the k columns, and the chunks' products are summed."""
    params = trainable_parameters(model)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    n = len(inputs)

    def matmat(V: Tensor) -> Tensor:
        out = torch.zeros_like(V)
        with eval_mode(model), torch.enable_grad():
            for xc, yc in zip(inputs.split(chunk_size), targets.split(chunk_size)):
                loss = F.cross_entropy(model(xc), yc, reduction="sum") / n
                grads = torch.autograd.grad(loss, params, create_graph=True)
                for j in range(V.shape[1]):
                    v = [c.reshape(s) for c, s in zip(V[:, j].split(sizes), shapes)]
                    hv = torch.autograd.grad(
                        grads, params, grad_outputs=v, retain_graph=True, materialize_grads=True
                    )
                    out[:, j] += torch.cat([h.reshape(-1) for h in hv])
        return out

    return matmat, sum(sizes)


def trace_hessian(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    num_probes: int = 30,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    generator: GeneratorLike = None,
    chunk_size: int = 256,
    method: Literal["hutchinson", "hutchpp"] = "hutchinson",
) -> HutchinsonEstimate:
    """Hutchinson's estimator of the trace of the Hessian (Supplement B):

        Tr(H) = E_z[z^T H z] ~= (1/M) sum_{m=1}^{M} z_m^T H z_m ,

    where H is the Hessian of the mean cross-entropy loss over the given examples with
    their true labels, and z_m are Rademacher (default) or standard Gaussian probes. The
    paper uses M = 30. Each H z_m is a double-backprop Hessian-vector product; the
    gradient is computed once per chunk and reused for all probes. The data are
    processed ``chunk_size`` examples at a time, with the same probes in every chunk.

    ``method="hutchpp"``: Hutch++ (:func:`hutchpp_trace`) with the same budget of M
    Hessian-vector products (floor(M/3) for the sketch H S, floor(M/3) for tr(Q^T H Q),
    the rest for Hutchinson on the deflated remainder), over the flattened trainable
    parameters (:func:`hessian_matmat`); its probes come from a generator on the
    parameters' device seeded by one draw ``torch.randint(0, 2**62, (1,))`` from
    ``generator``. The default, ``"hutchinson"``, is this function's original loop
    (per-parameter probes, one seed per probe drawn the same way; per-chunk float64
    accumulation of z^T H z) and gives bit-identical results to earlier versions; it is
    the estimator :func:`hutchinson_trace` computes on flat probes.

    Returns ``HutchinsonEstimate(estimate, stderr)``.
    """
    if num_probes < 1:
        raise ValueError("num_probes must be >= 1")
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown probe distribution {distribution!r}")
    if method not in ("hutchinson", "hutchpp"):
        raise ValueError(f"unknown trace estimator {method!r}; known: 'hutchinson', 'hutchpp'")
    gen = _generator(generator, torch.device("cpu")) or torch.default_generator
    if method == "hutchpp":
        seed = torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item()
        matmat, dim = hessian_matmat(model, inputs, targets, chunk_size=chunk_size)
        like = trainable_parameters(model)[0]
        return hutchpp_trace(matmat, dim, num_probes, distribution=distribution, generator=seed,
                             dtype=like.dtype, device=like.device)  # fmt: skip
    seeds = torch.randint(0, 2**62, (num_probes,), generator=gen, device=gen.device).tolist()
    params = trainable_parameters(model)
    quad = torch.zeros(num_probes, dtype=torch.float64)
    n = len(inputs)
    with eval_mode(model), torch.enable_grad():
        for xc, yc in zip(inputs.split(chunk_size), targets.split(chunk_size)):
            loss = F.cross_entropy(model(xc), yc, reduction="sum") / n
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for m, seed in enumerate(seeds):
                z = _probe(params, seed, distribution)
                hz = torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=True)
                quad[m] += sum((zi * hi).sum() for zi, hi in zip(z, hz)).item()
    stderr = quad.std().item() / math.sqrt(num_probes) if num_probes > 1 else float("nan")
    return HutchinsonEstimate(quad.mean().item(), stderr)


def mean_gradient(
    model: nn.Module, inputs: Tensor, targets: Tensor, *, chunk_size: int = 256
) -> Tensor:
    """The mean gradient over a subset, (1/|S|) sum_{i in S} g(x_i, y_i), as one flat
    vector (true labels; eval mode). Used for the clean/noisy analysis (Fig. 12)."""
    params = trainable_parameters(model)
    total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype,
                        device=params[0].device)
    with eval_mode(model), torch.enable_grad():
        for xc, yc in zip(inputs.split(chunk_size), targets.split(chunk_size)):
            loss = F.cross_entropy(model(xc), yc, reduction="sum") / len(inputs)
            total += torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    return total


def mean_gradient_sq_norm(
    model: nn.Module, inputs: Tensor, targets: Tensor, *, chunk_size: int = 256
) -> float:
    """|| (1/|S|) sum_{i in S} g(x_i, y_i) ||^2 over a subset S (for example the examples
    with noisy labels, Section 4.1)."""
    return mean_gradient(model, inputs, targets, chunk_size=chunk_size).pow(2).sum().item()


def gradient_cosine(
    model: nn.Module,
    subset_a: tuple[Tensor, Tensor],
    subset_b: tuple[Tensor, Tensor],
    *,
    chunk_size: int = 256,
) -> float:
    """cos(g_A, g_B) between the mean gradients of two subsets, each given as
    (inputs, targets): for example the clean and the noisy examples (Fig. 12)."""
    ga = mean_gradient(model, *subset_a, chunk_size=chunk_size)
    gb = mean_gradient(model, *subset_b, chunk_size=chunk_size)
    return F.cosine_similarity(ga, gb, dim=0).item()
