"""Per-group training statistics for the noisy-label experiments (Section 4.1, Fig. 5,
Fig. 12, Supplement H).

The training set is split into groups, e.g. ``clean`` (labels untouched) and ``noisy``
(labels replaced). Each epoch, :func:`group_metrics` records per group ``g``:

- ``train_acc_<g>``: accuracy on all of the group's training examples, against the
  labels trained on (for the noisy group: the fraction memorised);
- ``grad_sq_norm_<g>``: ||g_bar_g||^2 with g_bar_g = (1/|S_g|) sum_{i in S_g} g(x_i, y_i),
  the mean gradient over a fixed sample S_g of the group (the gradient norms of Fig. 5,
  top; Supplement H relates them to the group's learning speed);

and, for two groups ``a`` and ``b``, ``grad_cosine_<a>_<b>`` = cos(g_bar_a, g_bar_b)
(Fig. 12: negative early in training). Gradients are taken in eval mode with the
training labels, without augmentation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..curvature import mean_gradient


def group_samples(groups: Mapping[str, Tensor], size: int, seed: int) -> dict[str, Tensor]:
    """A fixed sample of at most ``size`` indices per group, drawn without replacement by
    ``numpy.random.default_rng(seed)`` (sorted)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, idx in groups.items():
        idx_np = idx.cpu().numpy()
        pick = np.sort(rng.choice(len(idx_np), min(size, len(idx_np)), replace=False))
        out[name] = idx[torch.as_tensor(pick, dtype=torch.long, device=idx.device)]
    return out


def group_metrics(
    model: nn.Module,
    correct: Tensor,
    groups: Mapping[str, Tensor],
    samples: Mapping[str, tuple[Tensor, Tensor]],
) -> dict[str, float]:
    """The statistics of the module docstring.

    ``correct``: bool (N,), whether the model classifies each training example as its
    training label (from one evaluation pass); ``groups``: name -> indices into the
    training set; ``samples``: name -> (inputs, labels) of the group's fixed sample.
    """
    row: dict[str, float] = {}
    grads = {}
    for name, idx in groups.items():
        row[f"train_acc_{name}"] = correct[idx].sum().item() / len(idx) if len(idx) else float("nan")
        x, y = samples[name]
        if len(y):
            grads[name] = mean_gradient(model, x, y)
            row[f"grad_sq_norm_{name}"] = grads[name].pow(2).sum().item()
        else:
            row[f"grad_sq_norm_{name}"] = float("nan")
    names = list(groups)
    if len(names) == 2:
        a, b = names
        cos = F.cosine_similarity(grads[a], grads[b], dim=0).item() if a in grads and b in grads else float("nan")
        row[f"grad_cosine_{a}_{b}"] = cos
    return row
