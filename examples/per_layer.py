"""Tr(F) per layer (which layers carry the curvature), for a classifier and for a
regression model with a Gaussian likelihood; the layers' values sum to the total.

    python examples/per_layer.py           # a few seconds on a CPU
"""

import torch
from torch import nn

from fisherlab import Gaussian, build_model, trace_fisher

torch.manual_seed(0)
model = build_model("simple_cnn", num_classes=10, image_size=16, in_channels=1)
x = torch.randn(128, 1, 16, 16)

layers = trace_fisher(model, x, per_layer=True, generator=0)  # {module name: Estimate}
total = trace_fisher(model, x, generator=0)
for name, value in layers.items():
    print(f"{name:12s} {value:10.4g}  ({100 * value / total:5.1f}%)")
print(f"{'sum':12s} {sum(layers.values()):10.4g}  = Tr(F) {total:.4g}")

# a regression model: p(y|x) = N(f(x), sigma^2 I), Tr(F) = E ||J||_F^2 / sigma^2 (exact=True: no sampling)
regressor = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
u = torch.randn(256, 8)
exact = trace_fisher(regressor, u, likelihood=Gaussian(sigma=0.5), exact=True)
by_layer = trace_fisher(regressor, u, likelihood=Gaussian(sigma=0.5), exact=True, per_layer=True)
print("regression:", exact.describe(), {k: round(float(v), 4) for k, v in by_layer.items()})
