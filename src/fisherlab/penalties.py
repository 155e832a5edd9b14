"""The regularizers of the paper, one small class each, behind one interface.

Every regularizer does the backward pass of one training step:

    out = reg.backward(model, x, y, step=step, epoch=epoch)   # fills p.grad
    optimizer.step()

and returns a :class:`StepOutput`. Before ``start_epoch`` each one is plain
cross-entropy training (Fig. 3 switches the Fisher penalty on from a given epoch).

The gradient-norm penalties add ``alpha * ||v||^2`` to the mini-batch loss, where ``v``
is a gradient computed with ``create_graph=True``; the penalty's gradient is then the
double-backprop Hessian-vector product ``2 alpha H v``. As the paper prescribes for FP
(Section 2, after Eq. 3), it is recomputed every ``every`` steps and the most recently
computed one is added in between. The penalty shares the step's forward pass: one set
of logits serves the loss with the true labels and the penalised gradient.
(To add FP to a loss of one's own instead, with AMP, accumulation or DDP, see
:mod:`fisherlab.penalty_term`: ``fisher_penalty`` and ``FisherPenaltyTerm``; ``fp``
below samples and differentiates through the same ``sampled_fisher_gradient``.)

===========  =================================================================  =====
name         penalty                                                            paper
===========  =================================================================  =====
``none``     0                                                                  -
``fp``       alpha ||(1/B) sum_i g(x_i, yhat_i)||^2,  yhat_i ~ p(y|x_i)          Eq. 3
             (``examples=m``: the mean over the first m examples only)          E
``fp_exact`` alpha ||g(x_1, yhat_1)||^2 (first example), every step             Eq. 6
``gp``       alpha ||(1/B) sum_i g(x_i, y_i)||^2 (true labels)                  Sec. 4
``gpx``      alpha (1/B) sum_i ||d/dx_i loss(x_i, y_i)||^2 (input gradient)     Sec. 4
             (``reduction="batch_mean"``: alpha ||d/dx (1/B) sum_i loss||^2)
``gpr``      alpha ||(1/B) sum_i g(x_i, u_i)||^2,  u_i ~ Uniform(labels)        Sec. 4
``mixup``    mixup of inputs and labels with lambda ~ Beta(beta, beta)           I.3
``sam``      gradient at w + rho g/||g|| applied at w (Foret et al. 2021)        -
===========  =================================================================  =====
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .curvature import sample_labels, trainable_parameters
from .penalty_term import _LazyGenerator, sampled_fisher_gradient
from .training.train_config import GPX_REDUCTIONS


@dataclass
class StepOutput:
    """What one step's backward pass saw. Tensors are detached and stay on the device."""

    loss: Tensor  # the mini-batch cross-entropy (the data term), a scalar
    logits: Tensor  # (B, C)
    penalty: Tensor | None = None  # ||v||^2 (without alpha) when recomputed this step


def _graph_grad(loss: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
    """d loss / d inputs, differentiable again (create_graph), zeros where unused."""
    return torch.autograd.grad(loss, inputs, create_graph=True, materialize_grads=True)


def _accumulate(params: list[Tensor], grads) -> None:
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad.add_(g)


class Regularizer:
    """The shared interface. Subclasses override :meth:`_active_backward`."""

    name = "none"

    def __init__(self, start_epoch: int = 0, seed: int = 0):
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.start_epoch = start_epoch
        self.seed = seed

    def backward(self, model: nn.Module, x: Tensor, y: Tensor, *, step: int, epoch: int) -> StepOutput:
        """Accumulate the gradient of (loss + penalty) into ``p.grad`` of every parameter."""
        if epoch < self.start_epoch:
            return plain_backward(model, x, y)
        return self._active_backward(model, x, y, step)

    def _active_backward(self, model, x, y, step) -> StepOutput:
        return plain_backward(model, x, y)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (RNG states, cached gradients)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class NoRegularizer(Regularizer):
    """Plain cross-entropy training: no penalty."""


def plain_backward(model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return StepOutput(loss.detach(), logits.detach())


class GradientNormPenalty(Regularizer):
    """alpha * ||v||^2 for a gradient ``v`` (see the subclasses), with the penalty's
    gradient 2 alpha H v recomputed every ``every`` steps and reused in between."""

    def __init__(self, alpha: float, every: int = 10, start_epoch: int = 0, seed: int = 0):
        super().__init__(start_epoch, seed)
        if not alpha >= 0:  # also refuses NaN
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.alpha, self.every = float(alpha), int(every)
        self._cache: list[Tensor] | None = None  # the most recent penalty gradient
        self._age = 0  # steps since it was computed
        self._rng = _LazyGenerator(seed)

    def penalised_gradient(
        self, model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor, logits: Tensor, loss: Tensor
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """Return ``v`` (with graph) and, when it comes for free, the gradient of ``loss``."""
        raise NotImplementedError

    def needs_input_grad(self) -> bool:
        return False

    def _active_backward(self, model, x, y, step) -> StepOutput:
        params = trainable_parameters(model)
        if self._cache is not None and self._age < self.every:
            out = plain_backward(model, x, y)
            _accumulate(params, self._cache)
            self._age += 1
            return out
        if self.needs_input_grad():
            x = x.detach().requires_grad_(True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        v, grad_loss = self.penalised_gradient(model, params, x, y, logits, loss)
        penalty = sum(vi.pow(2).sum() for vi in v)
        grad_pen = torch.autograd.grad(
            self.alpha * penalty, params, retain_graph=grad_loss is None, allow_unused=True
        )
        if grad_loss is None:
            grad_loss = torch.autograd.grad(loss, params, allow_unused=True)
        self._cache = [
            torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grad_pen)
        ]
        self._age = 1
        _accumulate(params, grad_loss)
        _accumulate(params, self._cache)
        return StepOutput(loss.detach(), logits.detach(), penalty.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"cache": self._cache, "age": self._age, "rng": self._rng.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cache, self._age = state["cache"], state["age"]
        self._rng.load(state["rng"])


class FisherPenalty(GradientNormPenalty):
    """FP (Eq. 3): alpha * Tr(F_B) = alpha * || (1/B) sum_i g(x_i, yhat_i) ||^2, with
    yhat_i ~ p(y|x_i) sampled from the model and no gradient through the sampling.
    ``every=1`` is the f = 1 variant of Fig. 16.

    ``examples`` = m: the penalty is taken on the first m examples of the batch only,
    alpha * || (1/m) sum_{i<=m} g(x_i, yhat_i) ||^2 (Supplement E, Fig. 20: "use the
    first 128 examples when computing the penalty" of a 10x larger batch); the data
    term still averages over the whole batch. None (or m >= B): the whole batch."""

    name = "fp"

    def __init__(self, alpha: float, every: int = 10, start_epoch: int = 0, seed: int = 0,
                 examples: int | None = None):  # fmt: skip
        super().__init__(alpha, every, start_epoch, seed)
        if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
            raise ValueError(f"examples must be None or an integer >= 1, got {examples!r}")
        self.examples = examples

    def penalised_gradient(self, model, params, x, y, logits, loss):
        sub = logits if self.examples is None else logits[: self.examples]
        return sampled_fisher_gradient(sub, params, generator=self._rng.get(logits.device)), None


class FisherPenaltyExact(GradientNormPenalty):
    """FP without the mini-batch approximation (Eq. 6, Supplement C):
    alpha * ||g(x_1, yhat_1)||^2 on the first example of the batch, every step."""

    name = "fp_exact"

    def __init__(self, alpha: float, start_epoch: int = 0, seed: int = 0):
        super().__init__(alpha, every=1, start_epoch=start_epoch, seed=seed)

    def penalised_gradient(self, model, params, x, y, logits, loss):
        yhat = sample_labels(logits[:1], self._rng.get(logits.device))
        loss_1 = F.cross_entropy(logits[:1], yhat, reduction="sum")
        return _graph_grad(loss_1, params), None


class GradientPenalty(GradientNormPenalty):
    """GP: alpha * || (1/B) sum_i g(x_i, y_i) ||^2, the mini-batch gradient with the true
    labels (Section 4; Barrett & Dherin 2021)."""

    name = "gp"

    def penalised_gradient(self, model, params, x, y, logits, loss):
        g = _graph_grad(loss, params)
        return g, [gi.detach() for gi in g]


class RandomLabelGradientPenalty(GradientNormPenalty):
    """GPr: GP with labels u_i drawn uniformly from the label set (Section 4)."""

    name = "gpr"

    def penalised_gradient(self, model, params, x, y, logits, loss):
        u = torch.randint(
            0, logits.shape[1], y.shape, generator=self._rng.get(y.device), device=y.device
        )
        return _graph_grad(F.cross_entropy(logits, u), params), None


class InputGradientPenalty(GradientNormPenalty):
    """GPx (Section 4): a penalty on the input gradient of the loss, ``||g_x||^2 =
    ||d/dx l(x, y)||^2`` (Drucker & LeCun 1992; Rifai et al. 2011; Varga et al. 2018).

    ``reduction`` says over what the input gradient is taken (the two readings of the
    paper's formula; ``fisherlab.training.train_config.GPX_REDUCTIONS``):

    ``"per_example"`` (default), the mean over the batch of each example's squared
    input-gradient norm::

        alpha * (1/B) sum_i || d l(x_i, y_i) / d x_i ||^2

    ``"batch_mean"``, the squared norm of the input gradient of the mini-batch mean loss,
    the form GP takes for the parameters::

        alpha * || d/dX (1/B) sum_i l(x_i, y_i) ||^2  =  alpha * (1/B^2) sum_i ||d l_i / d x_i||^2

    which is the per-example penalty divided by B (1/B^2 of the per-example sum): at the
    same alpha it is B times weaker (128x at the paper's batch size).

    Why per-example is the default: the paper defines GPx as ``||d/dx l(x, y)||^2`` with
    ``l(x, y)`` the loss of one example (Section 2), where it calls GP and GPr "the
    mini-batch gradient"; the works it cites for GPx penalise each example's input
    gradient (or input-output Jacobian); and it found larger alphas necessary for GPx
    "in some experiments" (I.2), not the uniform factor B of the mini-batch reading. The
    larger GPx grid of I.3 ({10, ..., 1000}) fits either reading, so ``batch_mean``
    stays available (config key ``gpx_reduction``).

    Examples interact in the forward pass only through BatchNorm in training mode. There
    both readings use the input gradient of the batch's summed loss, whose row i also
    carries the other examples' losses through the batch statistics (the exact diagonal
    d l_i / d x_i would cost B backward passes), so that ``per_example`` is exactly B
    times ``batch_mean`` for every model; without such coupling (no BN, or BN in eval
    mode) row i is exactly d l(x_i, y_i) / d x_i."""

    name = "gpx"

    def __init__(self, alpha: float, every: int = 10, start_epoch: int = 0, seed: int = 0,
                 reduction: str = GPX_REDUCTIONS[0]):  # fmt: skip
        super().__init__(alpha, every, start_epoch, seed)
        if reduction not in GPX_REDUCTIONS:
            raise ValueError(f"reduction must be one of {GPX_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def needs_input_grad(self) -> bool:
        return True

    def penalised_gradient(self, model, params, x, y, logits, loss):
        grads = _graph_grad(loss, [x, *params])
        gx = grads[0]  # d/dX of the batch mean: row i is (1/B) d l_i / d x_i
        if self.reduction == "per_example":
            # (1/B) sum_i ||B gx_i||^2 = ||sqrt(B) gx||^2: the penalty is the sum of squares of v
            gx = gx * math.sqrt(x.shape[0])
        return [gx], [g.detach() for g in grads[1:]]


class Mixup(Regularizer):
    """mixup (Zhang et al. 2018), the noisy-label baseline of Section 4.1: train on
    lambda x_i + (1 - lambda) x_j with loss lambda l(., y_i) + (1 - lambda) l(., y_j),
    lambda ~ Beta(beta, beta) once per batch and j a random permutation of the batch."""

    name = "mixup"

    def __init__(self, beta: float, start_epoch: int = 0, seed: int = 0):
        super().__init__(start_epoch, seed)
        if not beta > 0:  # also refuses NaN
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)
        self._np = np.random.default_rng(seed)
        self._rng = _LazyGenerator(seed)

    def _active_backward(self, model, x, y, step) -> StepOutput:
        lam = float(self._np.beta(self.beta, self.beta))
        perm = torch.randperm(len(x), generator=self._rng.get(x.device), device=x.device)
        logits = model(lam * x + (1 - lam) * x[perm])
        loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
        loss.backward()
        return StepOutput(loss.detach(), logits.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"np": self._np.bit_generator.state, "rng": self._rng.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._np.bit_generator.state = state["np"]
        self._rng.load(state["rng"])


def _batchnorm_running_stats(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(buffer, saved copy) for every running statistic that a train-mode forward pass
    would update: running_mean, running_var and num_batches_tracked of each BatchNorm
    layer in training mode that tracks them."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    saved.append((buf, buf.detach().clone()))
    return saved


class SharpnessAwareMinimization(Regularizer):
    """SAM, sharpness-aware minimization (Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-
    Aware Minimization for Efficiently Improving Generalization", ICLR 2021, Section 2
    and Algorithm 1, with p = 2): the gradient of the worst-case loss within an L2 ball of
    radius ``rho`` around the weights, to first order,

        g      = grad L_B(w)                       (mini-batch cross-entropy)
        e(w)   = rho * g / (||g||_2 + eps)         (||.||_2 over all trainable parameters)
        g_SAM  = grad L_B(w)|_{w + e(w)}

    (the second-order term through e(w) dropped, as in the paper). ``g_SAM`` is
    accumulated into ``p.grad`` and the weights are put back to w exactly (copied back,
    not recomputed as (w + e) - e), so the optimizer steps from w: momentum SGD with
    weight decay then updates w with g_SAM + wd * w, weight decay taken at w and left out
    of e, as in the widely used PyTorch loop (the optimizer owns weight decay).
    ``eps = 1e-12`` guards a zero gradient (then e = 0 and g_SAM = g).

    BatchNorm: both passes run in the model's mode, so in training both normalise with
    their own batch statistics (the gradient at w + e is taken at the same kind of point
    as the one at w). Only the first pass, at w, may update the running statistics:
    running_mean, running_var and num_batches_tracked are saved before the second pass
    and copied back after it (the reference implementations freeze them in the second
    pass, e.g. by momentum 0). The running statistics then see one batch per step, at the
    weights the model actually has, exactly as in plain training.

    Cost: two forward and two backward passes per step (about 2x a plain step), plus
    one copy of the weights. No randomness: ``seed`` is accepted for the shared interface
    and unused; the state to resume is empty. ``StepOutput.loss`` and ``logits`` are those
    at w (the reported training loss is the ordinary one).
    """

    name = "sam"
    eps = 1e-12

    def __init__(self, rho: float, start_epoch: int = 0, seed: int = 0):
        super().__init__(start_epoch, seed)
        if not (rho >= 0 and math.isfinite(rho)):  # also refuses NaN
            raise ValueError(f"rho must be finite and >= 0, got {rho}")
        self.rho = float(rho)

    def _active_backward(self, model, x, y, step) -> StepOutput:
        params = trainable_parameters(model)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        scale = self.rho / (norm + self.eps)
        saved_w = [p.detach().clone() for p in params]
        saved_bn = _batchnorm_running_stats(model)
        try:
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.add_(g * scale)
            perturbed = F.cross_entropy(model(x), y)
            grads_sam = torch.autograd.grad(perturbed, params, allow_unused=True)
        finally:
            with torch.no_grad():
                for p, w in zip(params, saved_w):
                    p.copy_(w)
                for buf, value in saved_bn:
                    buf.copy_(value)
        _accumulate(params, grads_sam)
        return StepOutput(loss.detach(), logits.detach())


REGULARIZERS: dict[str, type[Regularizer]] = {
    cls.name: cls
    for cls in (
        NoRegularizer,
        FisherPenalty,
        FisherPenaltyExact,
        GradientPenalty,
        InputGradientPenalty,
        RandomLabelGradientPenalty,
        Mixup,
        SharpnessAwareMinimization,
    )
}


def build_regularizer(name: str, **kwargs) -> Regularizer:
    """Construct a regularizer by its name in :data:`REGULARIZERS`
    (``none``, ``fp``, ``fp_exact``, ``gp``, ``gpx``, ``gpr``, ``mixup``, ``sam``)."""
    try:
        cls = REGULARIZERS[name]
    except KeyError:
        raise ValueError(f"unknown regularizer {name!r}; known: {sorted(REGULARIZERS)}") from None
    return cls(**kwargs)
