"""Per-example squared gradient norms ||g(x_i, y_i)||^2, computed layer by layer.

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
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .models.layers import Bias, Scale

Strategy = Literal["auto", "ghost", "materialise"]
LabelSets = Sequence[tuple[Tensor, Tensor | None]]
"""A list of (labels (B,), weights (B,) or None): the per-example norms are summed over
the list, each weighted per example."""


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

    def hook(self, module, args, kwargs, output):
        if (
            not isinstance(output, Tensor)
            or not output.requires_grad
            or any(c.module is module for c in self.calls)
        ):
            self.usable = False
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

    def changed(self) -> bool:
        """Whether an input (or a held output) of a recorded module changed in place."""
        for c in self.calls:
            now = tuple(a._version for a in c.args if isinstance(a, Tensor))
            if now != c.versions or (c.output is not None and c.output._version != c.version):
                return True
        return False

    def on_grad(self, call: _Call, g: Tensor) -> None:
        self.fired += 1
        self.sq = self.sq + _layer_sq_norms(call, g.detach(), self.strategy, self.cache)


def parameterised_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that own trainable parameters directly (``recurse=False``)."""
    return [
        m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))
    ]


@contextlib.contextmanager
def _recording(
    model: nn.Module, keep_outputs: bool = False, strategy: Strategy = "auto"
) -> Iterator[_Recorder]:
    rec = _Recorder(parameterised_modules(model), keep_outputs, strategy)
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


def _per_layer_sq_norms(
    model: nn.Module, x: Tensor, label_fn: Callable[[Tensor], LabelSets], strategy: Strategy
) -> Tensor | None:
    """One forward, one backward per label set; None if the model is not decomposable.

    Each backward computes the gradient w.r.t. the (floating-point) input only, so
    autograd skips every weight gradient, and a hook on each layer output turns
    d loss / d output into that layer's per-example squared norms as soon as it exists.
    With a non-float input (token ids) the gradients are taken w.r.t. the layer outputs
    instead, which then stay alive until the end.
    """
    xg = x.detach().requires_grad_() if x.is_floating_point() else None
    with _recording(model, keep_outputs=xg is None, strategy=strategy) as rec:
        _check_batchnorm(rec.modules)
        logits = model(x if xg is None else xg.clone())  # clone: the model may edit x in place
    try:
        return _backward_sq_norms(rec, x, xg, logits, label_fn, strategy)
    finally:
        # The output hooks hold the recorder, and the recorder holds the layers' inputs,
        # which are the hooked outputs of earlier layers: a reference cycle through the
        # autograd graph that the garbage collector cannot see. Break it, or every call
        # leaks its activations.
        rec.calls.clear()
        rec.cache.clear()


def _backward_sq_norms(
    rec: _Recorder,
    x: Tensor,
    xg: Tensor | None,
    logits: Tensor,
    label_fn: Callable[[Tensor], LabelSets],
    strategy: Strategy,
) -> Tensor | None:
    if not rec.usable or not rec.calls or rec.changed():
        return None
    if max(_parameter_uses(logits).values(), default=0) > 1:
        return None  # a parameter enters the graph twice (weight tying): not decomposable
    label_sets = label_fn(logits.detach())
    total = torch.zeros(x.shape[0], dtype=logits.dtype, device=logits.device)
    for k, (y, w) in enumerate(label_sets):
        loss = F.cross_entropy(logits, y, reduction="sum")
        last = k == len(label_sets) - 1
        if xg is None:
            outputs = [c.output for c in rec.calls]
            deltas = torch.autograd.grad(loss, outputs, retain_graph=not last, allow_unused=True)
            sq = sum(
                _layer_sq_norms(c, dl.detach(), strategy, rec.cache)
                for c, dl in zip(rec.calls, deltas)
                if dl is not None
            )
        else:
            rec.sq, rec.fired = 0.0, 0
            torch.autograd.grad(loss, xg, retain_graph=not last, allow_unused=True)
            if rec.fired != len(rec.calls):
                # a layer the input does not reach, or whose output the loss does not use:
                # the two cannot be told apart here, so take the whole-model path
                return None
            sq = rec.sq
        total += sq if w is None else w * sq
    return total


def _func_sq_norms(
    model: nn.Module, x: Tensor, label_fn: Callable[[Tensor], LabelSets]
) -> Tensor:
    """The always-correct path: vmap(grad) over the whole model (torch.func)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_i(p, x_i, y_i):
        out = functional_call(model, (p, buffers), (x_i.unsqueeze(0),))
        return F.cross_entropy(out, y_i.unsqueeze(0), reduction="sum")

    with torch.no_grad():
        logits = model(x)
    total = torch.zeros(x.shape[0], dtype=logits.dtype, device=logits.device)
    for y, w in label_fn(logits):
        per = vmap(grad(loss_i), in_dims=(None, 0, 0))(params, x, y)
        sq = sum(v.reshape(v.shape[0], -1).pow(2).sum(1) for v in per.values())
        total += sq if w is None else w * sq
    return total


def chunk_sq_norms(
    model: nn.Module,
    x: Tensor,
    label_fn: Callable[[Tensor], LabelSets],
    *,
    method: Literal["auto", "func"] = "auto",
    strategy: Strategy = "auto",
) -> Tensor:
    """sum_k w_k * ||g(x_i, y_k,i)||^2 for one chunk, over the label sets from ``label_fn``.

    ``label_fn`` receives the detached logits of the chunk, so labels can be sampled
    from p(y|x) (Eq. 2) or enumerated with weights p(y|x).
    """
    with torch.enable_grad():
        if method == "auto":
            sq = _per_layer_sq_norms(model, x, label_fn, strategy)
            if sq is not None:
                return sq.detach()
        return _func_sq_norms(model, x, label_fn).detach()


def per_example_grad_sq_norms(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 128,
    method: Literal["auto", "func"] = "auto",
    strategy: Strategy = "auto",
) -> Tensor:
    """||g(x_i, y_i)||^2 for each example, with g the gradient of the cross-entropy loss.

    Computed layer by layer (ghost norm or materialised per-example gradients, whichever
    is cheaper per layer), ``chunk_size`` examples at a time. The model's train/eval
    mode is used as it is; per-example gradients need BatchNorm in eval mode.

    Returns a (N,) tensor.
    """
    out = [
        chunk_sq_norms(model, xc, lambda _l, yc=yc: [(yc, None)], method=method, strategy=strategy)
        for xc, yc in zip(inputs.split(chunk_size), targets.split(chunk_size))
    ]
    return torch.cat(out)
