"""Per-example squared gradient norms ||g(x_i, y_i)||^2, computed layer by layer.

What is differentiated is a list of terms (:class:`Term`): a loss (the likelihood's,
cross-entropy by default, :mod:`fisherlab.likelihoods`) with its targets, an optional per-example
weight and the column of the result it adds to; :func:`likelihood_terms` builds them for
sampled labels (Eq. 2), every label with its probability (exact), or the data's targets,
with one column per position of a sequence output.

This is the engine behind :func:`fisherlab.trace_fisher` (Eq. 2). The parameters of a
network split into disjoint layers, so for every example

    ||g(x_i, y_i)||^2 = sum over layers l of ||g_l(x_i, y_i)||^2 .

One forward pass records each layer's input ``a``; one backward pass of the summed
per-example losses, taken w.r.t. the input only, gives each layer's output gradient
``delta`` (and no parameter gradient at all, which saves the weight-gradient work of an
ordinary backward). A hook on each layer output turns ``delta`` into that layer's
per-example squared norms as soon as autograd has it, so no output or output gradient is
kept beyond its use (keeping them costs more than the arithmetic on large networks). A
layer's per-example gradient is a contraction of ``a`` and ``delta`` over its ``T``
positions (the spatial positions of a convolution, 1 for a dense layer):

    G_i = sum_t delta_{i,t} a_{i,t}^T .

Two ways give ||G_i||^2, and each layer takes the cheaper one:

- *materialise*: build G_i (O x D numbers per example), cost ~ T*D*O (for a conv, as a
  grouped convolution with one group per example, or, with few output channels, as one
  matrix product per example of the scattered ``delta`` and the input, no im2col);
- *ghost norm* (Goodfellow 2015; Li et al. 2022):
  ||G_i||^2 = sum_{t,s} (a_t . a_s)(delta_t . delta_s), cost ~ T^2*(D+O), and it never
  builds G_i.

Layers handled in closed form: ``nn.Linear``, ``nn.Conv2d`` (any stride, padding,
dilation and groups, zero padding), the affine parameters of BatchNorm in eval mode, and
the scalar layers of :mod:`fisherlab.models.layers` (SkipInit/Fixup): for ``x + beta``,
d loss / d beta = sum of delta over all positions; for ``alpha * x``, sum(delta * x).
Any other module with its own parameters gets a per-example vector-Jacobian product
through ``torch.func`` on that module alone. A model in which a parameter enters the
graph more than once (shared between modules, a module called twice, weight tying
through ``F.linear(..., self.fc.weight)``), which modifies a layer's input in place after
the layer read it, or in which some layer's output is unused or not reached from the
input, is handled whole by ``torch.func`` (``vmap(grad)``), which is always correct. (A
layer output modified in place is fine: the hook sees the gradient w.r.t. the value the
layer returned.)
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .batches import (Inputs, OutputFn, batch_size, batched_keys, call_model, iter_batches, model_device, pick_output,
                      split_inputs)
from .likelihoods import Likelihood, get_likelihood, summed_loss
from .models.layers import Bias, Scale

Strategy = Literal["auto", "ghost", "materialise"]
Positions = Literal["each", "sequence"]


@dataclass
class Term:
    """One loss whose per-example squared gradient norms are wanted:
    ``loss(output, targets)`` is the sum over the chunk's examples of their losses
    (the examples must not interact: eval-mode BatchNorm), ``targets`` has the example on
    its first axis (sliced per example on the torch.func path). The norms, times
    ``weight`` (N,) if given, are added into column ``slot`` of the result."""

    targets: Tensor
    loss: Callable[[Tensor, Tensor], Tensor]
    weight: Tensor | None = None
    slot: int = 0


TermsFn = Callable[[Tensor], Sequence[Term]]
"""Given the chunk's detached output, the terms to measure (labels are sampled or
enumerated from it)."""


@dataclass
class _Call:
    """What one parameterised module saw in the forward pass, and later d loss / d output."""

    module: nn.Module
    args: tuple  # () for a scalar Bias, whose closed form needs the output gradient only
    kwargs: dict
    versions: tuple  # of the tensor arguments: an in-place change later is detected
    output: Tensor | None = None  # held only when gradients are taken w.r.t. the outputs
    version: int = 0


@dataclass
class _Recorder:
    modules: list[nn.Module]
    keep_outputs: bool = False
    strategy: Strategy = "auto"
    calls: list[_Call] = field(default_factory=list)
    handles: list = field(default_factory=list)
    usable: bool = True  # False: a module was called twice or returned a non-tensor
    sq: Tensor | float = 0.0  # sum over the layers seen so far in the current backward
    fired: int = 0  # how many layer-output hooks ran in the current backward
    cache: dict = field(default_factory=dict)  # scratch buffers shared between layers
    batch: int = 0  # examples in the chunk (0: not checked)
    per_layer: bool = False  # also keep each layer's norms (in ``layer_sq``)
    layer_sq: dict = field(default_factory=dict)  # module -> (N,) of the current backward

    def hook(self, module, args, kwargs, output):
        if (
            not isinstance(output, Tensor)
            or not output.requires_grad
            or any(c.module is module for c in self.calls)
        ):
            self.usable = False
            return
        replaced = None
        if self.batch > 1 and output.dim() >= 1 and output.shape[0] == 1:
            # A layer applied once to a batch of one whose output is broadcast to every
            # example (a position embedding of arange(L)[None], as in BERT): make the
            # broadcast explicit, so that d loss / d output, and hence the layer's
            # per-example gradient J^T delta_i, is per example rather than summed.
            n = self.batch
            output = replaced = output.expand(n, *output.shape[1:])
            args = tuple(a.expand(n, *a.shape[1:]) if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == 1
                         else a for a in args)  # fmt: skip
        elif self.batch and (output.dim() == 0 or output.shape[0] != self.batch):
            self.usable = False  # the leading dimension is not the examples' (e.g. sequence-first)
            return
        if type(module) is Bias:
            args = ()
        versions = tuple(a._version for a in args if isinstance(a, Tensor))
        call = _Call(module, args, kwargs, versions)
        if self.keep_outputs:
            call.output, call.version = output, output._version
        else:
            # A tensor hook receives d loss / d output during the backward, also if the
            # output is modified in place later (the gradient w.r.t. the value the module
            # returned). The layer's norms are computed right there, so neither the output
            # nor its gradient outlives its use: the memory held is what autograd holds.
            output.register_hook(functools.partial(self.on_grad, call))
        self.calls.append(call)
        return replaced

    def changed(self) -> bool:
        """Whether an input (or a held output) of a recorded module changed in place."""
        for c in self.calls:
            now = tuple(a._version for a in c.args if isinstance(a, Tensor))
            if now != c.versions or (c.output is not None and c.output._version != c.version):
                return True
        return False

    def on_grad(self, call: _Call, g: Tensor) -> None:
        self.fired += 1
        sq = _layer_sq_norms(call, g.detach(), self.strategy, self.cache)
        self.sq = self.sq + sq
        if self.per_layer:
            self.layer_sq[call.module] = sq


def parameterised_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that own trainable parameters directly (``recurse=False``)."""
    return [
        m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Each parameterised module's name in ``model.named_modules()`` ("" for the root)."""
    return {m: n for n, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))}


@contextlib.contextmanager
def _recording(
    model: nn.Module, keep_outputs: bool = False, strategy: Strategy = "auto", per_layer: bool = False
) -> Iterator[_Recorder]:
    rec = _Recorder(parameterised_modules(model), keep_outputs, strategy, per_layer=per_layer)
    try:
        for m in rec.modules:
            rec.handles.append(m.register_forward_hook(rec.hook, with_kwargs=True))
        yield rec
    finally:
        for h in rec.handles:
            h.remove()


# --------------------------------------------------------------------------- layers


def _sq_rows(x: Tensor) -> Tensor:
    """Row-wise squared norms of a (B, K) tensor, without a (B, K) temporary."""
    return torch.linalg.vector_norm(x, dim=1).square()


def _choose(strategy: Strategy, T: int, D: int, O: int) -> Strategy:
    """Ghost norm costs ~T^2 (D + O) per example, materialising ~T D O: take the cheaper."""
    if strategy != "auto":
        return strategy
    return "ghost" if T * (D + O) < D * O else "materialise"


def _ghost_sq_norms(a: Tensor, d: Tensor) -> Tensor:
    """sum_{t,s} (a_t . a_s)(d_t . d_s) per example; a: (B, T, D), d: (B, T, O) -> (B,)."""
    if a.shape[1] == 1:
        return a.pow(2).sum((1, 2)) * d.pow(2).sum((1, 2))
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(d, d.transpose(1, 2))).sum((1, 2))


def _linear_sq_norms(m: nn.Linear, a: Tensor, d: Tensor, strategy: Strategy) -> Tensor:
    B = a.shape[0]
    a = a.reshape(B, -1, a.shape[-1])
    d = d.reshape(B, -1, d.shape[-1])
    sq = 0.0
    if m.weight.requires_grad:
        if _choose(strategy, a.shape[1], a.shape[2], d.shape[2]) == "ghost":
            sq = _ghost_sq_norms(a, d)
        else:
            sq = torch.bmm(d.transpose(1, 2), a).pow(2).sum((1, 2))
    if m.bias is not None and m.bias.requires_grad:
        sq = sq + d.sum(1).pow(2).sum(1)
    return sq


def _conv2d_sq_norms(
    m: nn.Conv2d, a: Tensor, d: Tensor, strategy: Strategy, cache: dict | None = None
) -> Tensor:
    B, G = a.shape[0], m.groups
    sq = 0.0
    if m.weight.requires_grad:
        T, (O, D) = d.shape[2] * d.shape[3], (m.out_channels // G, m.weight[0].numel())
        pointwise = (
            G == 1 and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
        )
        if pointwise:  # a 1x1 convolution is a Linear layer applied at the T positions
            at, dt = a.reshape(B, a.shape[1], T).transpose(1, 2), d.reshape(B, O, T)
            if _choose(strategy, T, D, O) == "ghost":
                sq = _ghost_sq_norms(at, dt.transpose(1, 2))
            else:
                sq = _sq_rows(torch.bmm(dt, at).reshape(B, -1))
        elif (how := _conv_method(strategy, m, a, T, D, O)) == "pixel gram":
            sq = _pixel_gram_sq_norms(m, a, d)
        elif how == "ghost":
            u = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, G*D, T)
            u = u.reshape(B * G, D, T).transpose(1, 2)
            dg = d.reshape(B * G, O, T).transpose(1, 2)
            sq = _ghost_sq_norms(u, dg).reshape(B, G).sum(1)
        elif how == "scatter":  # a matrix product per example
            sq = _shifted_delta_sq_norms(m, a, d, {} if cache is None else cache)
        else:  # the per-example weight gradients as one convolution with B*G groups
            w = torch.nn.grad.conv2d_weight(
                a.reshape(1, -1, *a.shape[2:]), (B * m.out_channels, *m.weight.shape[1:]),
                d.reshape(1, -1, *d.shape[2:]), m.stride, m.padding, m.dilation, B * G,
            )  # fmt: skip
            sq = _sq_rows(w.reshape(B, -1))
    return sq + _conv_bias_sq_norms(m, d)


_MEMORY_OP = 40  # on the CPU: an element copied or added in a strided pass, in multiply-adds (fitted)


def _conv_method(strategy: Strategy, m: nn.Conv2d, a: Tensor, T: int, D: int, O: int) -> str:
    """How a convolution (not a pointwise one) gets its per-example weight norms: the
    ghost norm, from unfolded patches ("ghost") or from the pixels' Gram matrix ("pixel
    gram", :func:`_pixel_gram_sq_norms`), or materialised, by the scattered output
    gradient ("scatter", :func:`_shifted_delta_sq_norms`) or one grouped convolution
    ("grouped"). Costs per example and group, in multiply-adds, with k taps, D = k C/G:

    - ghost: T^2 (D + O), plus the unfolding of T D numbers;
    - pixel gram: (H W)^2 C/G + T^2 O, plus k shifted sums of T^2 numbers;
    - materialised: T D O.

    On the CPU the cheapest counts, a number moved by a strided copy or sum costing
    ``_MEMORY_OP`` multiply-adds (fitted to per-layer timings, issue 14: the pixel Gram
    wins at 8x8 and below, 5-9x faster than the unfolded ghost norm and 2-7x faster than
    materialising at WRN's and VGG-11's widths, and loses at 16x16). On a GPU the pixel
    Gram is not used (not measured there) and the ghost norm is taken when
    T (D + O) < D O, as before."""
    H, W = a.shape[2:]
    taps, cpu = m.kernel_size[0] * m.kernel_size[1], a.device.type == "cpu"
    costs = {"ghost": T * T * (D + O) + (_MEMORY_OP * T * D if cpu else 0), "materialise": T * D * O}
    if cpu:
        costs["pixel gram"] = (H * W) ** 2 * (a.shape[1] // m.groups) + T * T * (O + _MEMORY_OP * taps)
    if strategy == "ghost":
        costs.pop("materialise")
    elif strategy == "materialise":
        costs = {"materialise": 0}
    how = min(costs, key=costs.get)
    if how != "materialise":
        return how
    return "scatter" if m.groups == 1 and _scatter_delta_wins(m, T, O, a.device) else "grouped"


_PIXEL_GRAM_ELEMS = 1 << 25  # bound on the pixel Gram matrices built at once (elements)


def _pixel_gram_sq_norms(m: nn.Conv2d, a: Tensor, d: Tensor) -> Tensor:
    """The ghost norm of a convolution without unfolding its patches.

    Output position t reads, at tap k, the (zero-padded) input pixel s t + k (stride s,
    k = dilation (ky, kx)), so for the patch vectors a_t of one example

        a_t . a_s = sum_k P[s t + k, s s' + k],   P[u, v] = sum_c x_c[u] x_c[v],

    with P the Gram matrix of the input's pixels over the channels c of the group, and
    ||G||^2 = sum_{t,s} (a_t . a_s)(delta_t . delta_s) (Goodfellow 2015). P costs
    (H W)^2 C/G multiply-adds per example, against T^2 k^2 C/G for the Gram matrix of
    the unfolded patches (9x more for a 3x3 convolution of stride 1) and T k^2 C/G O
    for the materialised gradient; the k shifted copies of P are summed in place."""
    B, C, H, W = a.shape
    G, (Ho, Wo) = m.groups, d.shape[2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    step = max(1, _PIXEL_GRAM_ELEMS // (G * ((H + 2 * ph) * (W + 2 * pw)) ** 2))
    out = []
    for i in range(0, B, step):
        x = a[i : i + step].reshape(-1, C // G, H * W)  # (b G, C/G, H W)
        dg = d[i : i + step].reshape(x.shape[0], -1, Ho * Wo)  # (b G, O, T)
        pixels = torch.bmm(x.transpose(1, 2), x).view(-1, H, W, H, W)
        pixels = F.pad(pixels, (pw, pw, ph, ph, pw, pw, ph, ph))  # padded coordinates: zero pixels
        patches = None
        for ky in range(kh):
            ys = slice(ky * dh, ky * dh + sh * (Ho - 1) + 1, sh)
            for kx in range(kw):
                xs = slice(kx * dw, kx * dw + sw * (Wo - 1) + 1, sw)
                tap = pixels[:, ys, xs, ys, xs]
                patches = tap.clone() if patches is None else patches.add_(tap)
        deltas = torch.bmm(dg.transpose(1, 2), dg).view_as(patches)
        out.append(torch.linalg.vecdot(patches.flatten(1), deltas.flatten(1)).view(-1, G).sum(1))
    return torch.cat(out)


def _conv_bias_sq_norms(m: nn.Conv2d, d: Tensor) -> Tensor | float:
    if m.bias is not None and m.bias.requires_grad:
        return _sq_rows(d.sum((2, 3)))
    return 0.0


_SHIFT_ELEMS = 1 << 25  # bound on the scattered output gradients built at once (elements)
_SHIFT_MAX_OUT = 32  # on a GPU: output channels up to which a conv is materialised by scattering delta


def _scatter_delta_wins(m: nn.Conv2d, T: int, O: int, device: torch.device) -> bool:
    """Whether a convolution's (groups 1) per-example weight gradients come cheaper from
    the scattered output gradient (:func:`_shifted_delta_sq_norms`) than from one grouped
    convolution with a group per example.

    On the CPU (measured per layer geometry at 128 examples, 1 thread, issue 14): the
    grouped convolution runs about as fast as the batch's own weight gradient at 32x32
    with few input channels (ResNet-26's and WRN's first stages, SimpleCNN), but 2-7x
    slower when each example's product is small in one dimension: few output channels
    for many input channels (DenseNet's k = 12 layers: C >= 2 O), or few positions with
    many channels (T <= 256 and C >= 64: ResNet-26's 8x8 stage, WRN's 16x16 stage,
    VGG-11's 16x16 layer), where the scattered product is 1.1-4x faster. The scattered
    product works at the input's resolution, so a stride s costs it s^2 times the work:
    never taken with a stride. On a GPU: up to ``_SHIFT_MAX_OUT`` output channels."""
    if device.type != "cpu":
        return O <= _SHIFT_MAX_OUT
    C = m.in_channels
    return m.stride == (1, 1) and (C >= 2 * O or (T <= 256 and C >= 64))


def _taps(n_out: int, n_in: int, offset: int, stride: int) -> tuple[int, int, int]:
    """Output positions o in [lo, hi) whose tap at ``offset - padding`` lands inside the
    input, s*o + offset in [0, n_in); and the first input position they read."""
    lo = max(0, -(offset // stride))
    hi = min(n_out, (n_in - 1 - offset) // stride + 1) if n_in - 1 - offset >= 0 else 0
    return lo, max(lo, hi), stride * lo + offset


def _shifted_delta_sq_norms(m: nn.Conv2d, a: Tensor, d: Tensor, cache: dict) -> Tensor:
    """Materialised per-example weight gradients of a conv with few output channels.

    The weight gradient is G[o, c, ky, kx] = sum_p E[ky, kx, o, p] a[c, p] over the
    P = H*W input positions, where E scatters the output gradient d[o, y, x] to the input
    position (s*y + dil*ky - pad, s*x + dil*kx - pad) it read (taps that fall in the
    zero padding read nothing and are dropped). So each example's G is one
    (k*k*O, P) x (P, C) matrix product, with no im2col of the (usually much wider) input:
    about as fast as the batch's own weight gradient when O is small (DenseNet's k=12
    layers), where a grouped convolution with one group per example is several times
    slower on CPU. E's zeros are written once per geometry and the buffer reused (``cache``):
    the scattered positions are the same for every layer of that geometry.
    groups == 1, zero padding.
    """
    B, C, H, W = a.shape
    O, Ho, Wo = d.shape[1:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    at = a.reshape(B, C, H * W).transpose(1, 2)
    rows = [_taps(Ho, H, y * dh - ph, sh) for y in range(kh)]
    cols = [_taps(Wo, W, x * dw - pw, sw) for x in range(kw)]
    step = max(1, _SHIFT_ELEMS // (kh * kw * O * H * W))
    out = []
    for i in range(0, B, step):
        dc = d[i : i + step]
        b = dc.shape[0]
        key = ("shift", b, O, H, W, Ho, Wo, tuple(rows), tuple(cols), d.dtype, d.device)
        E = cache.get(key)
        if E is None:
            E = cache[key] = d.new_zeros(b, kh, kw, O, H, W)
        for y, (ylo, yhi, y0) in enumerate(rows):
            for x, (xlo, xhi, x0) in enumerate(cols):
                if yhi > ylo and xhi > xlo:
                    E[:, y, x, :, y0 : y0 + sh * (yhi - ylo - 1) + 1 : sh,
                      x0 : x0 + sw * (xhi - xlo - 1) + 1 : sw] = dc[:, :, ylo:yhi, xlo:xhi]  # fmt: skip
        g = torch.bmm(E.reshape(b, -1, H * W), at[i : i + step])
        out.append(_sq_rows(g.reshape(b, -1)))
    return torch.cat(out)


def _batchnorm_sq_norms(m: nn.modules.batchnorm._BatchNorm, a: Tensor, d: Tensor) -> Tensor:
    """Eval-mode BN, y = gamma * (a - mu) / sigma + beta per channel c, summed over the
    positions t: dL/dgamma_c = (sum_t d a - mu_c sum_t d) / sigma_c, dL/dbeta_c = sum_t d
    (two reductions over the activations; x-hat is never built)."""
    B, C = d.shape[:2]
    d3, sd = d.reshape(B, C, -1), d.reshape(B, C, -1).sum(2)
    sq = 0.0
    if m.weight is not None and m.weight.requires_grad:
        sda = torch.linalg.vecdot(d3, a.reshape(B, C, -1))
        sq = sq + _sq_rows((sda - m.running_mean * sd) * torch.rsqrt(m.running_var + m.eps))
    if m.bias is not None and m.bias.requires_grad:
        sq = sq + _sq_rows(sd)
    return sq


def _check_batchnorm(modules: list[nn.Module]) -> None:
    for m in modules:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            raise ValueError(
                f"{type(m).__name__} uses batch statistics, so per-example gradients are not "
                "defined; measure with the model in eval mode and running statistics "
                "(Supplement I.2)"
            )


def _parameter_uses(root: Tensor) -> Counter:
    """How many times each leaf tensor (by id) enters the autograd graph of ``root``."""
    uses: Counter = Counter()
    seen, stack = set(), [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is not None and hasattr(nxt, "variable"):
                uses[id(nxt.variable)] += 1
            elif nxt is not None:
                stack.append(nxt)
    return uses


def _generic_sq_norms(m: nn.Module, args: tuple, kwargs: dict, d: Tensor) -> Tensor:
    """Per-example vector-Jacobian product on one module, through torch.func."""
    params = {n: p.detach() for n, p in m.named_parameters(recurse=False) if p.requires_grad}
    pos = [i for i, x in enumerate(args) if isinstance(x, Tensor)]

    def inner(p, d_i, *xs):
        full = list(args)
        for i, x in zip(pos, xs):
            full[i] = x.unsqueeze(0)
        out = functional_call(m, p, tuple(full), kwargs, strict=False)
        return (out * d_i.unsqueeze(0)).sum()

    xs = [args[i].detach() for i in pos]
    per = vmap(grad(inner), in_dims=(None, 0, *[0] * len(xs)))(params, d, *xs)
    return sum(v.reshape(v.shape[0], -1).pow(2).sum(1) for v in per.values())


def _layer_sq_norms(
    call: _Call, d: Tensor, strategy: Strategy, cache: dict | None = None
) -> Tensor:
    m, a = call.module, call.args[0] if call.args else None
    own = {n for n, _ in m.named_parameters(recurse=False)}
    if isinstance(m, nn.Linear) and own <= {"weight", "bias"}:
        return _linear_sq_norms(m, a.detach(), d, strategy)
    if (
        isinstance(m, nn.Conv2d)
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and own <= {"weight", "bias"}
    ):
        return _conv2d_sq_norms(m, a.detach(), d, strategy, cache)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and own <= {"weight", "bias"}:
        return _batchnorm_sq_norms(m, a.detach(), d)
    if type(m) is Bias:
        return _sq_rows(d.reshape(d.shape[0], -1).sum(1, keepdim=True))
    if type(m) is Scale and a is not None and a.shape == d.shape:
        return _sq_rows((d * a.detach()).reshape(d.shape[0], -1).sum(1, keepdim=True))
    return _generic_sq_norms(m, call.args, call.kwargs, d)


# --------------------------------------------------------------------------- models

SqNorms = tuple[Tensor, dict[str, Tensor] | None]
"""(N, S) per-example squared norms per slot, and with ``per_layer`` the same per
parameterised module (name -> (N, S)), which sum to the first."""


def _per_layer_sq_norms(
    model: nn.Module,
    inputs: Inputs,
    terms_fn: TermsFn,
    strategy: Strategy,
    output_fn: OutputFn | None = None,
    per_layer: bool = False,
) -> SqNorms | None:
    """One forward, one backward per term; None if the model is not decomposable.

    Each backward computes the gradient w.r.t. the (floating-point) input only, so
    autograd skips every weight gradient, and a hook on each layer output turns
    d loss / d output into that layer's per-example squared norms as soon as it exists.
    With a non-float input (token ids) or a mapping of inputs the gradients are taken
    w.r.t. the layer outputs instead, which then stay alive until the end.
    """
    x = inputs if isinstance(inputs, Tensor) and inputs.is_floating_point() else None
    xg = x.detach().requires_grad_() if x is not None else None
    with _recording(model, keep_outputs=xg is None, strategy=strategy, per_layer=per_layer) as rec:
        _check_batchnorm(rec.modules)
        rec.batch = batch_size(inputs)
        out = call_model(model, inputs if xg is None else xg.clone(), output_fn)  # clone: the model may edit x in place
    try:
        return _backward_sq_norms(rec, batch_size(inputs), xg, out, terms_fn, strategy, model)
    finally:
        # The output hooks hold the recorder, and the recorder holds the layers' inputs,
        # which are the hooked outputs of earlier layers: a reference cycle through the
        # autograd graph that the garbage collector cannot see. Break it, or every call
        # leaks its activations.
        rec.calls.clear()
        rec.cache.clear()
        rec.layer_sq.clear()


def _backward_sq_norms(
    rec: _Recorder,
    n: int,
    xg: Tensor | None,
    out: Tensor,
    terms_fn: TermsFn,
    strategy: Strategy,
    model: nn.Module,
) -> SqNorms | None:
    if not rec.usable or not rec.calls or rec.changed():
        return None
    if max(_parameter_uses(out).values(), default=0) > 1:
        return None  # a parameter enters the graph twice (weight tying): not decomposable
    terms = terms_fn(out.detach())
    total = torch.zeros(n, max(t.slot for t in terms) + 1, dtype=out.dtype, device=out.device)
    names = module_names(model) if rec.per_layer else None
    layers = {name: torch.zeros_like(total) for name in names.values()} if names is not None else None
    for k, term in enumerate(terms):
        loss = term.loss(out, term.targets)
        last = k == len(terms) - 1
        if xg is None:
            outputs = [c.output for c in rec.calls]
            deltas = torch.autograd.grad(loss, outputs, retain_graph=not last, allow_unused=True)
            rec.layer_sq = {
                c.module: _layer_sq_norms(c, dl.detach(), strategy, rec.cache)
                for c, dl in zip(rec.calls, deltas)
                if dl is not None
            }
            sq = sum(rec.layer_sq.values())
        else:
            rec.sq, rec.fired = 0.0, 0
            torch.autograd.grad(loss, xg, retain_graph=not last, allow_unused=True)
            if rec.fired != len(rec.calls):
                # a layer the input does not reach, or whose output the loss does not use:
                # the two cannot be told apart here, so take the whole-model path
                return None
            sq = rec.sq
        _add_term(total, layers, term, sq, ((names[m], lsq) for m, lsq in rec.layer_sq.items()))
    return total, layers


def _add_term(total: Tensor, layers: dict[str, Tensor] | None, term: Term, sq: Tensor, parts) -> None:
    """Add one term's per-example squared norms ``sq`` (N,), times its weight if any, into
    column ``term.slot`` of ``total``, and each ``(module name, its part)`` of ``parts``
    into that module's table of ``layers`` (when per-layer norms are wanted)."""
    w = term.weight
    total[:, term.slot] += sq if w is None else w * sq
    if layers is not None:
        for name, part in parts:
            layers[name][:, term.slot] += part if w is None else w * part


def _accumulators(model: nn.Module, inputs: Inputs, terms_fn: TermsFn, output_fn: OutputFn | None,
                  modules, per_layer: bool):
    """What the whole-model paths start from: the output of a no-grad forward pass, its
    terms, the (N, slots) total and, with ``per_layer``, one such table per module name."""
    with torch.no_grad():
        out = call_model(model, inputs, output_fn)
    terms = terms_fn(out)
    total = torch.zeros(batch_size(inputs), max(t.slot for t in terms) + 1, dtype=out.dtype, device=out.device)
    layers = {m: torch.zeros_like(total) for m in modules} if per_layer else None
    return out, terms, total, layers


def _func_sq_norms(
    model: nn.Module,
    inputs: Inputs,
    terms_fn: TermsFn,
    output_fn: OutputFn | None = None,
    per_layer: bool = False,
) -> SqNorms:
    """The always-correct path: vmap(grad) over the whole model (torch.func)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    if isinstance(inputs, Tensor):
        batched, static = inputs, {}
    else:
        keys = batched_keys(inputs)
        batched = {k: inputs[k] for k in keys}
        static = {k: v for k, v in inputs.items() if k not in keys}

    def loss_i(p, x_i, y_i, loss):
        if isinstance(x_i, Tensor):
            raw = functional_call(model, (p, buffers), (x_i.unsqueeze(0),))
        else:
            kwargs = {**static, **{k: v.unsqueeze(0) for k, v in x_i.items()}}
            raw = functional_call(model, (p, buffers), (), kwargs)
        return loss(pick_output(raw, output_fn), y_i.unsqueeze(0))

    owner = {name: name.rpartition(".")[0] for name in params}
    out, terms, total, layers = _accumulators(model, inputs, terms_fn, output_fn, owner.values(), per_layer)
    for term in terms:
        per = vmap(grad(functools.partial(_call_loss, loss_i, term.loss)), in_dims=(None, 0, 0))(
            params, batched, term.targets
        )
        sqs = {name: v.reshape(v.shape[0], -1).pow(2).sum(1) for name, v in per.items()}
        _add_term(total, layers, term, sum(sqs.values()), ((owner[name], psq) for name, psq in sqs.items()))
    return total, layers


def _call_loss(loss_i, loss, p, x_i, y_i):
    return loss_i(p, x_i, y_i, loss)


def _loop_sq_norms(
    model: nn.Module,
    inputs: Inputs,
    terms_fn: TermsFn,
    output_fn: OutputFn | None = None,
    per_layer: bool = False,
) -> SqNorms:
    """The last resort: one forward and one ordinary backward per example and term, for
    models that ``vmap`` cannot batch (data-dependent control flow, such as the attention
    masks of Hugging Face models)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    owner = [name.rpartition(".")[0] for name, _ in named]
    out, terms, total, layers = _accumulators(model, inputs, terms_fn, output_fn, owner, per_layer)
    for i, x_i in enumerate(split_inputs(inputs, 1)):
        out_i = call_model(model, x_i, output_fn)
        for k, term in enumerate(terms):
            grads = torch.autograd.grad(term.loss(out_i, term.targets[i : i + 1]), params,
                                        retain_graph=k < len(terms) - 1, allow_unused=True)  # fmt: skip
            sqs = [torch.zeros((), dtype=out.dtype, device=out.device) if g is None else g.pow(2).sum() for g in grads]
            w = 1.0 if term.weight is None else term.weight[i]
            total[i, term.slot] += w * sum(sqs)
            if layers is not None:
                for m, psq in zip(owner, sqs):
                    layers[m][i, term.slot] += w * psq
    return total, layers


def chunk_sq_norms(
    model: nn.Module,
    inputs: Inputs,
    terms_fn: TermsFn,
    *,
    output_fn: OutputFn | None = None,
    method: Literal["auto", "func", "loop"] = "auto",
    strategy: Strategy = "auto",
    per_layer: bool = False,
) -> SqNorms:
    """sum_k w_k * ||g_k(x_i)||^2 for one chunk, one column per slot, over the terms
    from ``terms_fn`` (g_k: the gradient of term k's loss for example i).

    ``method="auto"``: layer by layer where the model decomposes, else ``vmap(grad)``
    over the whole model, else (a model vmap cannot batch) one backward per example;
    ``"func"``: ``vmap(grad)`` only; ``"loop"``: one backward per example only.

    ``terms_fn`` receives the detached output of the chunk, so labels can be sampled
    from p(y|x) (Eq. 2) or enumerated with weights p(y|x).
    """
    if method not in ("auto", "func", "loop"):
        raise ValueError(f"method must be 'auto', 'func' or 'loop'; got {method!r}")
    terms_fn = _once(terms_fn)  # a path that gives up must not draw the labels again
    with torch.enable_grad():
        if method == "auto":
            got = _per_layer_sq_norms(model, inputs, terms_fn, strategy, output_fn, per_layer)
            if got is not None:
                return _detached(got)
        if method in ("auto", "func"):
            try:
                return _detached(_func_sq_norms(model, inputs, terms_fn, output_fn, per_layer))
            except RuntimeError as e:
                if method == "func" or "vmap" not in str(e):
                    raise
        return _detached(_loop_sq_norms(model, inputs, terms_fn, output_fn, per_layer))


def _once(terms_fn: TermsFn) -> TermsFn:
    """``terms_fn`` evaluated on the first output it gets; later calls reuse its terms."""
    memo: list = []

    def once(out: Tensor) -> Sequence[Term]:
        if not memo:
            memo.append(terms_fn(out))
        return memo[0]

    return once


def _detached(got: SqNorms) -> SqNorms:
    sq, layers = got
    return sq.detach(), None if layers is None else {k: v.detach() for k, v in layers.items()}


# --------------------------------------------------------------------------- likelihood terms


def event_positions(output: Tensor, positions: Positions) -> int:
    """How many positions an output (N, *P, C) has as examples: prod(P) with
    ``positions="each"`` (1 for an (N, C) output), 1 with ``positions="sequence"``."""
    if positions not in ("each", "sequence"):
        raise ValueError(f"positions must be 'each' (every position of an (N, *P, C) output is an example) "
                         f"or 'sequence' (an example's loss is summed over its positions); got {positions!r}")
    if output.dim() < 2:
        raise ValueError(f"the model output must be (N, C) or (N, *P, C); got shape {tuple(output.shape)}")
    if positions == "sequence" or output.dim() == 2:
        return 1
    return output[0, ..., 0].numel()


def likelihood_terms(
    likelihood: Likelihood,
    output: Tensor,
    labels: str | Tensor,
    positions: Positions = "each",
    generator: torch.Generator | None = None,
) -> list[Term]:
    """The terms of a measurement on the (detached) ``output`` (N, C) or (N, *P, C):

    - ``labels="sample"``: one label per example (per position) drawn from the
      likelihood, yhat ~ p(y | output) (Eq. 2);
    - ``labels="exact"``: every label the likelihood enumerates, each weighted
      (``likelihood.enumerate``), so the sum is the expectation over yhat;
    - a tensor: these targets (the data's labels).

    With ``positions="each"`` and an output with position axes P, position t of every
    example is its own example: slot t of the result is ||d loss(x, y_t) / d theta||^2
    with loss(x, y_t) the loss of the output at position t alone. Otherwise one slot:
    the loss of an example summed over its positions."""
    T = event_positions(output, positions)
    if isinstance(labels, Tensor):
        target = labels
    elif labels == "sample":
        target = likelihood.sample(output, generator)
    elif labels == "exact":
        target = None
        if not callable(getattr(likelihood, "enumerate", None)):
            raise ValueError(f"exact=True needs a likelihood with enumerate(output); {likelihood!r} has none")
    else:
        raise ValueError(f"labels must be 'sample', 'exact' or a tensor; got {labels!r}")
    if target is not None and target.shape[0] != output.shape[0]:
        raise ValueError(f"{target.shape[0]} targets for {output.shape[0]} outputs")
    if T == 1:
        loss = functools.partial(summed_loss, likelihood)
        if target is not None:
            return [Term(target, loss)]
        return [Term(y, loss, w) for y, w in likelihood.enumerate(output)]
    lead = target.dim() - (output.dim() - 1) if target is not None else 0
    terms = []
    for t in range(T):
        loss = functools.partial(_position_loss, likelihood, t, T)
        if target is not None:
            terms.append(Term(target.reshape(target.shape[0], T, *target.shape[target.dim() - lead :])[:, t], loss,
                              slot=t))  # fmt: skip
        else:
            out_t = output.reshape(output.shape[0], T, output.shape[-1])[:, t]
            terms += [Term(y, loss, w, slot=t) for y, w in likelihood.enumerate(out_t)]
    return terms


def _position_loss(likelihood: Likelihood, t: int, T: int, output: Tensor, target: Tensor) -> Tensor:
    return summed_loss(likelihood, output.reshape(output.shape[0], T, output.shape[-1])[:, t], target)


def per_example_grad_sq_norms(
    model: nn.Module,
    data: Any,
    targets: Tensor | None = None,
    *,
    likelihood: Likelihood | str | None = None,
    output_fn: OutputFn | None = None,
    positions: Positions = "each",
    chunk_size: int = 128,
    method: Literal["auto", "func", "loop"] = "auto",
    strategy: Strategy = "auto",
    target_key: str = "labels",
    batch_fn: Callable[[Any], Any] | None = None,
) -> Tensor:
    """||g(x_i, y_i)||^2 for each example, g the gradient of -log p(y_i | f(x_i)) (the
    likelihood's loss; default: cross-entropy) w.r.t. the trainable parameters.

    ``data``: ``(model, inputs, targets)``, an ``(inputs, targets)`` pair, a mapping with
    a ``target_key`` entry, or an iterable of such batches (:mod:`fisherlab.batches`);
    the targets are required. An output (N, *P, C) with ``positions="each"`` gives one
    value per position, (N, *P): the gradient of the loss at that position alone.

    Computed layer by layer (ghost norm or materialised per-example gradients, whichever
    is cheaper per layer), ``chunk_size`` examples at a time. The model's train/eval
    mode is used as it is; per-example gradients need BatchNorm in eval mode.

    Returns a (N,) tensor (N, *P per position), concatenated over the batches.
    """
    lik = get_likelihood(likelihood)
    out = []
    for batch in iter_batches(data, targets, target_key=target_key, batch_fn=batch_fn, device=model_device(model)):
        if batch.targets is None:
            raise ValueError("per_example_grad_sq_norms needs targets: pass (inputs, targets) or targets=")
        ys = batch.targets.split(chunk_size)
        for xc, yc in zip(split_inputs(batch.inputs, chunk_size), ys):
            shape: list = []

            def terms_fn(o, yc=yc, shape=shape):
                shape[:] = [o.shape[0], *o.shape[1:-1]] if event_positions(o, positions) > 1 else [o.shape[0]]
                return likelihood_terms(lik, o, yc, positions)

            sq, _ = chunk_sq_norms(model, xc, terms_fn, output_fn=output_fn, method=method, strategy=strategy)
            out.append(sq.reshape(shape))
    return torch.cat(out)
