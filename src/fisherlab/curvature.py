"""Curvature measurements: Tr(F) (Eq. 2), Tr(F_B) (Supplement C), Tr(H) (Supplement B),
and the gradient statistics of example subsets used in the memorisation analysis
(Section 4.1, Supplement H, Fig. 12).

Tr(F), Tr(F_B) and Tr(H) take any model, loss and data: ``data`` is a tensor, an
``(inputs, targets)`` pair, a mapping of keyword inputs or an iterable of batches (a
DataLoader; :mod:`fisherlab.batches`), ``likelihood=`` gives the loss and the label
sampler (:mod:`fisherlab.likelihoods`, cross-entropy by default), ``output_fn=`` picks
the outputs from a dict or tuple, sequence outputs (N, *P, C) count every position as an
example unless ``positions="sequence"``. Each returns an :class:`~fisherlab.Estimate`, a
float with ``.stderr`` and ``.num_examples``.

All measurements run with the model in eval mode (BatchNorm uses its running
statistics, Supplement I.2) and restore each module's mode afterwards. None of them
changes the parameters, the buffers or the ``.grad`` fields; given a generator or a
seed, none touches the global random state either.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import Inputs, OutputFn, to_device, call_model, iter_batches, model_device, split_inputs
from .batches import batch_size as batch_size_of
from .estimate import Estimate, HutchinsonEstimate  # noqa: F401  (HutchinsonEstimate: its former home)
from .hessian.spec import DISTRIBUTIONS, METHODS, Distribution, HessianSpec, Method
from .likelihoods import Categorical, Likelihood, get_likelihood, summed_loss
from .per_example import Positions, Strategy, chunk_sq_norms, event_positions, likelihood_terms

GeneratorLike = torch.Generator | int | None
_HESSIAN = HessianSpec()  # the defaults of trace_hessian: the paper's M = 30 probes (Supplement B)


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


def _check_common(chunk_size: int, method: str) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if method not in ("auto", "func", "loop"):
        raise ValueError(f"method must be 'auto' (per-layer closed forms), 'func' (torch.func vmap(grad)) or "
                         f"'loop' (a backward per example); got {method!r}")


def _first_device(inputs: Inputs) -> torch.device:
    if isinstance(inputs, Tensor):
        return inputs.device
    return next(v.device for v in inputs.values() if isinstance(v, Tensor))


def trace_fisher(
    model: nn.Module,
    data: Any,
    *,
    likelihood: Likelihood | str | None = None,
    output_fn: OutputFn | None = None,
    positions: Positions = "each",
    per_layer: bool = False,
    generator: GeneratorLike = None,
    exact: bool = False,
    chunk_size: int = 128,
    method: Literal["auto", "func", "loop"] = "auto",
    strategy: Strategy = "auto",
    return_per_example: bool = False,
    target_key: str = "labels",
    batch_fn: Callable[[Any], Any] | None = None,
) -> Estimate | Tensor | dict:
    """Trace of the Fisher information matrix over the N given examples (Eq. 2):

        Tr(F) = E_{x ~ data, yhat ~ p(y|f(x))} ||d loss(x, yhat) / d theta||^2 ,
        loss(x, y) = -log p(y | f(x)),

    with the labels sampled from the model's own predictive distribution, not taken from
    the data (any targets in ``data`` are ignored). The result is the mean over the
    examples of exact per-example squared gradient norms (no mini-batch approximation),
    computed layer by layer (:mod:`fisherlab.per_example`) ``chunk_size`` examples at a
    time.

    Args:
        model: returns the outputs f(x) (logits for the categorical likelihood); measured
            in eval mode.
        data: a tensor of inputs, an ``(inputs, targets)`` pair, a mapping of keyword
            inputs (``model(**inputs)``), or an iterable of such batches (a DataLoader);
            see :mod:`fisherlab.batches`. An iterable's result is the mean over all its
            examples (each batch weighted by its size). Inputs go to the model's device.
        likelihood: p(y|f): :class:`~fisherlab.Categorical` (default: softmax and
            cross-entropy, the paper's), :class:`~fisherlab.Gaussian` (``"gaussian"``:
            squared error / (2 sigma^2), for which Tr(F) = E_x ||J(x)||_F^2 / sigma^2),
            or any object with ``loss(output, target) -> (N,)`` and
            ``sample(output, generator)``.
        output_fn: picks the outputs from what the model returns (a tuple, a dict);
            by default a tensor, or the ``logits`` of a dict / Hugging Face output.
        positions: for outputs (N, *P, C) with position axes P (sequence logits (B, T, C)):
            ``"each"`` (default) counts every position as an example, Tr(F) = the mean
            over all (b, t) of ||d loss(x_b, yhat_{b,t}) / d theta||^2, the loss at that
            position alone (one backward per position); ``"sequence"``: an example's
            loss is summed over its positions (one example per sequence). Padding
            positions count like any other under ``"each"``.
        per_layer: return {module name: Tr(F) of that module's parameters} for every
            module owning trainable parameters ("" for the root); they sum to Tr(F).
        generator: a ``torch.Generator`` on the outputs' device, or an int seed, for
            reproducible labels; None uses the global RNG.
        exact: enumerate the labels with their weights (``likelihood.enumerate``: every
            class y weighted by p(y|x), C backward passes per chunk) instead of sampling
            one: the expectation over yhat without noise.
        chunk_size: examples per forward/backward pass; bounds the memory.
        method: "auto" (per-layer closed forms where the model decomposes, else
            ``torch.func`` vmap(grad), else a backward per example), "func" (vmap(grad)
            only) or "loop" (one backward per example).
        strategy: per-layer choice, "auto", or force "ghost" / "materialise".
        return_per_example: return the per-example values, (N,) or (N, *P), instead
            of their mean (with ``per_layer``: a dict of those).
        target_key, batch_fn: see :func:`fisherlab.batches.iter_batches`.

    Returns:
        An :class:`~fisherlab.Estimate`, a float with ``.stderr`` and ``.num_examples``.
        ``stderr`` is the Monte-Carlo error of the value as Tr(F) of these examples:
        0.0 with ``exact=True``; with sampled labels, std_i(v_i) / sqrt(N) over the N
        per-example values v_i, which contains the label noise and, on top of it, the
        spread of E_yhat v_i between the examples (so it bounds the label noise from
        above, and it is the standard error of Tr(F) over the data distribution when
        the examples are a random sample of it).

    Example:
        >>> tr = trace_fisher(model, x_fixed, generator=0)
        >>> tr = trace_fisher(hf_model, loader, output_fn=lambda out: out.logits)
    """
    _check_common(chunk_size, method)
    lik = get_likelihood(likelihood)
    labels = "exact" if exact else "sample"
    gen: torch.Generator | None = None
    started = False
    per: list[Tensor] = []
    layers: dict[str, list[Tensor]] = {}
    with eval_mode(model):
        for batch in iter_batches(data, target_key=target_key, batch_fn=batch_fn, device=model_device(model)):
            if not started:
                gen, started = _generator(generator, _first_device(batch.inputs)), True
            for xc in split_inputs(batch.inputs, chunk_size):
                shape: list[int] = []

                def terms_fn(out: Tensor, shape: list = shape):
                    T = event_positions(out, positions)
                    shape[:] = [out.shape[0], *out.shape[1:-1]] if T > 1 else [out.shape[0]]
                    return likelihood_terms(lik, out, labels, positions, gen)

                sq, lay = chunk_sq_norms(model, xc, terms_fn, output_fn=output_fn, method=method,
                                         strategy=strategy, per_layer=per_layer)  # fmt: skip
                per.append(sq.reshape(shape))
                for name, v in (lay or {}).items():
                    layers.setdefault(name, []).append(v.reshape(shape))
    if per_layer:
        return {name: _fisher_result(v, exact, return_per_example) for name, v in layers.items()}
    return _fisher_result(per, exact, return_per_example)


def _fisher_result(per: list[Tensor], exact: bool, return_per_example: bool) -> Estimate | Tensor:
    if return_per_example:
        if len({p.shape[1:] for p in per}) > 1:
            raise ValueError("return_per_example=True needs the same positions in every batch; "
                             f"got shapes {sorted({tuple(p.shape[1:]) for p in per})}")
        return torch.cat(per)
    values = per[0] if len(per) == 1 and per[0].dim() == 1 else torch.cat([p.reshape(-1) for p in per])
    return Estimate.mean_of(values, 0.0 if exact else None)


def _grad_sq_norm(model: nn.Module, loss: Tensor) -> float:
    grads = torch.autograd.grad(loss, trainable_parameters(model))
    return sum(g.pow(2).sum() for g in grads).item()


def _mean_loss(lik: Likelihood, out: Tensor, target: Tensor, positions: Positions) -> tuple[Tensor, int]:
    """The mean loss over the examples of a batch (every position an example with
    ``positions="each"``), and their number."""
    T = event_positions(out, positions)
    if T > 1:
        n = out.shape[0]
        tail = target.shape[out.dim() - 1 :]  # () for class labels, (C,) for a Gaussian's targets
        out, target = out.reshape(n * T, out.shape[-1]), target.reshape(n * T, *tail)
    if isinstance(lik, Categorical) and out.dim() == 2:
        return F.cross_entropy(out, target), out.shape[0]  # the mean: the original operation
    return summed_loss(lik, out, target) / out.shape[0], out.shape[0]


def trace_fisher_batch(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int | None = None,
    likelihood: Likelihood | str | None = None,
    output_fn: OutputFn | None = None,
    positions: Positions = "each",
    generator: GeneratorLike = None,
    target_key: str = "labels",
    batch_fn: Callable[[Any], Any] | None = None,
) -> Estimate:
    """Tr(F_B) = || (1/B) sum_i g(x_i, yhat_i) ||^2, yhat_i ~ p(y|x_i) (Supplement C, Eq. 5).

    The squared norm of the mini-batch gradient with labels sampled from the model: the
    quantity the Fisher penalty (Eq. 3) penalises (g: the gradient of the likelihood's
    loss, cross-entropy by default; with ``positions="each"`` the B examples of a batch
    of sequences are its B*T positions). ``data`` is a single batch (a tensor, a mapping,
    an (inputs, targets) pair) or an iterable of batches (:mod:`fisherlab.batches`).
    A single batch is cut, with ``batch_size`` set, into consecutive batches of that
    size (a short last batch is dropped unless it is the only one); by default it is one
    batch. An iterable's batches are used as they come (``batch_size`` must be None).
    Returns the mean of Tr(F_B) over the batches, weighted by their sizes, as an
    :class:`~fisherlab.Estimate` whose ``stderr`` is the standard deviation over the
    batches / sqrt(number of batches) (nan for one batch) and ``num_examples`` the
    examples used. Measured in eval mode.
    """
    lik = get_likelihood(likelihood)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    device = model_device(model)
    source = list(iter_batches(data, target_key=target_key, batch_fn=batch_fn, device=device))
    if len(source) == 1:
        batches = split_inputs(source[0].inputs, batch_size or len(source[0]))
        if len(batches) > 1 and batch_size_of(batches[-1]) < batch_size_of(batches[0]):
            batches.pop()
    elif batch_size is not None:
        raise ValueError("batch_size cuts a single batch; an iterable's batches are used as they are")
    else:
        batches = [b.inputs for b in source]
    gen = _generator(generator, _first_device(batches[0]))
    values, sizes = [], []
    with eval_mode(model), torch.enable_grad():
        for xb in batches:
            out = call_model(model, xb, output_fn)
            loss, n = _mean_loss(lik, out, lik.sample(out, gen), positions)
            values.append(_grad_sq_norm(model, loss))
            sizes.append(n)
    if len(set(sizes)) == 1:
        value = sum(values) / len(values)
    else:
        value = sum(v * n for v, n in zip(values, sizes)) / sum(sizes)
    v = torch.tensor(values, dtype=torch.float64)
    stderr = v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return Estimate(value, stderr, sum(sizes))


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


def _estimate(offset: float, quad: Tensor, num_examples: int = 0) -> Estimate:
    """offset + mean(quad), with standard error std(quad) / sqrt(len(quad))."""
    quad = quad.double()
    m = len(quad)
    stderr = quad.std().item() / math.sqrt(m) if m > 1 else float("nan")
    return Estimate(offset + quad.mean().item(), stderr, num_examples)


def hutchinson_trace(
    matmat: Matmat,
    dim: int,
    num_queries: int,
    *,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Estimate:
    """Hutchinson's estimator of tr(A) from M = ``num_queries`` products with A:

        tr(A) ~= (1/M) sum_m z_m^T A z_m ,   z_m i.i.d. Rademacher or Gaussian,

    unbiased, with Var = 2 (||A||_F^2 - sum_i A_ii^2) / M (Rademacher) or 2 ||A||_F^2 / M
    (Gaussian). ``matmat`` maps a (dim, k) block to A times it; it is called once, with
    all M probes. ``generator`` is a torch.Generator on ``device``, an int seed, or None
    (the global RNG). Returns an :class:`~fisherlab.Estimate` (value, stderr = std of z^T A z / sqrt(M)).
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
) -> Estimate:
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


class _HessianData:
    """The batches of a Tr(H) measurement and the loss of each chunk, scaled so that the
    chunks' losses add up to the mean loss over all examples: with a single batch each
    chunk's summed loss is divided by the number of examples (the original operation,
    ``F.cross_entropy(reduction="sum") / n`` for the default), with several batches the
    sums are accumulated and :attr:`scale` (1 / total) is applied to the result."""

    def __init__(self, model, data, targets, chunk_size, likelihood, output_fn, positions, target_key, batch_fn):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
        self.model, self.lik, self.output_fn, self.positions = model, get_likelihood(likelihood), output_fn, positions
        self.device = model_device(model)
        self.batches = list(iter_batches(data, targets, target_key=target_key, batch_fn=batch_fn))
        for b in self.batches:
            if b.targets is None:
                raise ValueError("Tr(H) needs the data's targets: pass (inputs, targets), targets=, or batches "
                                 "with targets (a mapping's target_key entry)")
        self.chunk_size = chunk_size
        self.count = 0  # examples seen (positions with positions="each")

    @property
    def scale(self) -> float:
        return 1.0 if len(self.batches) == 1 else 1.0 / self.count

    def losses(self) -> Iterator[Tensor]:
        self.count = 0
        for b in self.batches:
            xs = split_inputs(to_device(b.inputs, self.device), self.chunk_size)
            ys = to_device(b.targets, self.device).split(self.chunk_size)
            for xc, yc in zip(xs, ys):
                out = call_model(self.model, xc, self.output_fn)
                n = len(b) * event_positions(out, self.positions)
                self.count += out.shape[0] * event_positions(out, self.positions)
                loss = self._summed(out, yc)
                yield loss / n if len(self.batches) == 1 else loss

    def _summed(self, out: Tensor, y: Tensor) -> Tensor:
        T = event_positions(out, self.positions)
        if T > 1:
            out, y = out.reshape(-1, out.shape[-1]), y.reshape(out.shape[0] * T, *y.shape[out.dim() - 1 :])
        return summed_loss(self.lik, out, y)


def hessian_matmat(
    model: nn.Module,
    data: Any,
    targets: Tensor | None = None,
    *,
    chunk_size: int = 256,
    likelihood: Likelihood | str | None = None,
    output_fn: OutputFn | None = None,
    positions: Positions = "each",
    target_key: str = "labels",
    batch_fn: Callable[[Any], Any] | None = None,
) -> tuple[Matmat, int]:
    """The Hessian H of the mean loss over the data with their true targets (eval
    mode; the likelihood's loss, cross-entropy by default; ``data``, ``positions`` as in
    :func:`trace_hessian`) w.r.t. the flattened trainable parameters, as a block product
    V -> H V over (P, k) blocks, and P. Each column is a double-backprop Hessian-vector
    product; the gradient is computed once per chunk of ``chunk_size`` examples per call
    and reused for the k columns, and the chunks' products are summed."""
    hd = _HessianData(model, data, targets, chunk_size, likelihood, output_fn, positions, target_key, batch_fn)
    return _matmat_of(hd)


def _matmat_of(hd: _HessianData) -> tuple[Matmat, int]:
    model = hd.model
    params = trainable_parameters(model)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def matmat(V: Tensor) -> Tensor:
        out = torch.zeros_like(V)
        with eval_mode(model), torch.enable_grad():
            for loss in hd.losses():
                grads = torch.autograd.grad(loss, params, create_graph=True)
                for j in range(V.shape[1]):
                    v = [c.reshape(s) for c, s in zip(V[:, j].split(sizes), shapes)]
                    hv = torch.autograd.grad(
                        grads, params, grad_outputs=v, retain_graph=True, materialize_grads=True
                    )
                    out[:, j] += torch.cat([h.reshape(-1) for h in hv])
        return out if hd.scale == 1.0 else out * hd.scale

    return matmat, sum(sizes)


def trace_hessian(
    model: nn.Module,
    data: Any,
    targets: Tensor | None = None,
    *,
    likelihood: Likelihood | str | None = None,
    output_fn: OutputFn | None = None,
    positions: Positions = "each",
    num_probes: int = _HESSIAN.num_probes,
    distribution: Distribution = _HESSIAN.distribution,
    generator: GeneratorLike = None,
    chunk_size: int = 256,
    method: Method = _HESSIAN.method,
    target_key: str = "labels",
    batch_fn: Callable[[Any], Any] | None = None,
) -> Estimate:
    """Hutchinson's estimator of the trace of the Hessian (Supplement B):

        Tr(H) = E_z[z^T H z] ~= (1/M) sum_{m=1}^{M} z_m^T H z_m ,

    where H is the Hessian of the mean loss over the given examples with their true
    labels (cross-entropy by default; ``likelihood`` as in :func:`trace_fisher`), and
    z_m are Rademacher (default) or standard Gaussian probes. The paper uses M = 30.
    The defaults are :class:`~fisherlab.hessian.HessianSpec`'s.
    Each H z_m is a double-backprop Hessian-vector product; the gradient is computed
    once per chunk and reused for all probes. The data are processed ``chunk_size``
    examples at a time, with the same probes in every chunk.

    ``data``: ``(model, inputs, targets)`` as before, an ``(inputs, targets)`` pair, a
    mapping with a ``target_key`` entry, or an iterable of such batches
    (:mod:`fisherlab.batches`); the mean is over all examples of all batches (all
    positions of sequence outputs with ``positions="each"``, as in :func:`trace_fisher`).
    The batches are held (on their own device) until the end.

    ``method="hutchpp"``: Hutch++ (:func:`hutchpp_trace`) with the same budget of M
    Hessian-vector products (floor(M/3) for the sketch H S, floor(M/3) for tr(Q^T H Q),
    the rest for Hutchinson on the deflated remainder), over the flattened trainable
    parameters (:func:`hessian_matmat`); its probes come from a generator on the
    parameters' device seeded by one draw ``torch.randint(0, 2**62, (1,))`` from
    ``generator``. The default, ``"hutchinson"``, is this function's original loop
    (per-parameter probes, one seed per probe drawn the same way; per-chunk float64
    accumulation of z^T H z) and gives bit-identical results to earlier versions; it is
    the estimator :func:`hutchinson_trace` computes on flat probes.

    Returns an :class:`~fisherlab.Estimate`: the value, ``stderr`` = std over the probes
    of z^T H z / sqrt(M) (the probe noise only; the examples are fixed), and
    ``num_examples``. ``value, stderr = trace_hessian(...)`` unpacks as before.
    """
    if num_probes < 1:
        raise ValueError("num_probes must be >= 1")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown probe distribution {distribution!r}; known: {list(DISTRIBUTIONS)}")
    if method not in METHODS:
        raise ValueError(f"unknown trace estimator {method!r}; known: {list(METHODS)}")
    gen = _generator(generator, torch.device("cpu")) or torch.default_generator
    if method == "hutchpp":
        seed = torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item()
        hd = _HessianData(model, data, targets, chunk_size, likelihood, output_fn, positions, target_key, batch_fn)
        matmat, dim = _matmat_of(hd)
        like = trainable_parameters(model)[0]
        est = hutchpp_trace(matmat, dim, num_probes, distribution=distribution, generator=seed,
                            dtype=like.dtype, device=like.device)  # fmt: skip
        return Estimate(est, est.stderr, hd.count)
    seeds = torch.randint(0, 2**62, (num_probes,), generator=gen, device=gen.device).tolist()
    params = trainable_parameters(model)
    quad = torch.zeros(num_probes, dtype=torch.float64)
    hd = _HessianData(model, data, targets, chunk_size, likelihood, output_fn, positions, target_key, batch_fn)
    with eval_mode(model), torch.enable_grad():
        for loss in hd.losses():
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for m, seed in enumerate(seeds):
                z = _probe(params, seed, distribution)
                hz = torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=True)
                quad[m] += sum((zi * hi).sum() for zi, hi in zip(z, hz)).item()
    if hd.scale != 1.0:
        quad *= hd.scale
    stderr = quad.std().item() / math.sqrt(num_probes) if num_probes > 1 else float("nan")
    return Estimate(quad.mean().item(), stderr, hd.count)


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
