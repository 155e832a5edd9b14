"""Each way per_example computes a convolution's per-example squared gradient norms
(ghost norm, one grouped convolution, the scattered output gradient), forced one at a
time on awkward geometries, against per-example weight gradients taken one example at a
time by autograd (float64). The automatic choice between them depends on the device and
the layer's shape (per_example._scatter_delta_wins), so the model-level brute-force tests
alone need not reach every way on every geometry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fisherlab import per_example as pe

# (in, out, kernel, stride, padding, dilation, input height, width)
GEOMETRIES = [
    (3, 5, 3, 2, 1, 1, 11, 9),
    (5, 4, (3, 2), (1, 2), (2, 0), (2, 1), 11, 9),
    (4, 6, 5, 1, 3, 1, 6, 5),  # padding wider than the kernel's reach
    (6, 3, 1, 2, 0, 1, 7, 7),  # strided 1x1
    (4, 4, 3, 1, 1, 1, 1, 1),  # every tap but the centre in the padding
    (8, 3, 3, 1, 0, 1, 9, 9),  # valid convolution, C >= 2 O
    (16, 16, 3, 1, 1, 1, 8, 8),
    (12, 7, 3, 2, 1, 1, 10, 10),  # stride 2
    (9, 2, 3, 3, 2, 2, 13, 11),
]


def per_example_reference(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """||dL/dW_i||^2 + ||dL/db_i||^2 with dL/d(output_i) = d_i, one example at a time."""
    out = []
    for ai, di in zip(a, d):
        m.zero_grad(set_to_none=True)
        (m(ai[None]) * di[None]).sum().backward()
        out.append(sum(p.grad.pow(2).sum() for p in m.parameters()))
    return torch.stack(out)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[str(g[:4]) for g in GEOMETRIES])
def test_every_conv_method_matches_per_example_autograd(geometry):
    cin, cout, k, s, p, dil, h, w = geometry
    gen = torch.Generator().manual_seed(GEOMETRIES.index(geometry))
    m = nn.Conv2d(cin, cout, k, s, p, dil).double()
    with torch.no_grad():
        for prm in m.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen, dtype=torch.float64))
    a = torch.randn(5, cin, h, w, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        d = torch.randn(m(a).shape, generator=gen, dtype=torch.float64)
    ref = per_example_reference(m, a, d)
    bias = pe._conv_bias_sq_norms(m, d)
    scattered = pe._shifted_delta_sq_norms(m, a, d, {}) + bias
    torch.testing.assert_close(scattered, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(pe._pixel_gram_sq_norms(m, a, d) + bias, ref, rtol=1e-10, atol=0)
    cache = {}
    for _ in range(2):  # the cached scatter buffer is reused, its zeros intact
        torch.testing.assert_close(pe._shifted_delta_sq_norms(m, a, d, cache) + bias, ref, rtol=1e-10, atol=0)
    for strategy in ("ghost", "materialise", "auto"):  # materialise: grouped or scattered, by the rule
        torch.testing.assert_close(pe._conv2d_sq_norms(m, a, d, strategy, {}), ref, rtol=1e-10, atol=0)
    grouped = torch.nn.grad.conv2d_weight(
        a.reshape(1, -1, h, w), (5 * cout, cin, *m.kernel_size), d.reshape(1, -1, *d.shape[2:]),
        m.stride, m.padding, m.dilation, 5,
    )  # fmt: skip
    torch.testing.assert_close(pe._sq_rows(grouped.reshape(5, -1)) + bias, ref, rtol=1e-10, atol=0)


def test_the_cpu_rule_takes_the_scattered_product_where_it_was_measured_faster():
    cpu = torch.device("cpu")

    def wins(cin, cout, hw, stride=1):
        m = nn.Conv2d(cin, cout, 3, stride, 1)
        T = ((hw - 1) // stride + 1) ** 2
        return pe._scatter_delta_wins(m, T, cout, cpu)

    assert wins(148, 12, 32) and wins(64, 64, 8) and wins(96, 96, 16)  # DenseNet, ResNet-26 8x8, WRN 16x16
    assert not wins(16, 16, 32) and not wins(48, 48, 32) and not wins(32, 32, 16)  # grouped: as fast as the batch
    assert not wins(148, 12, 32, stride=2)  # a stride wastes the scattered product's work
    assert pe._scatter_delta_wins(nn.Conv2d(48, 32, 3), 1024, 32, torch.device("cuda"))  # GPU: O <= 32


def test_forced_materialise_matches_brute_force_for_a_strided_few_output_conv():
    """The model-level path with ``strategy="materialise"`` through a conv the GPU rule
    scatters and the CPU rule convolves: the same per-example norms either way."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(40, 8, 3, 2, 1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).double()
    x, y = torch.randn(4, 40, 8, 8, dtype=torch.float64), torch.tensor([0, 2, 1, 1])
    ref = []
    for i in range(4):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        ref.append(sum(p.grad.pow(2).sum() for p in model.parameters()))
    got = pe.per_example_grad_sq_norms(model, x, y, strategy="materialise")
    torch.testing.assert_close(got, torch.stack(ref), rtol=1e-10, atol=0)


@pytest.mark.parametrize("groups, cin, cout, k, s, p", [(2, 4, 6, 3, 1, 1), (6, 6, 6, (2, 3), (1, 2), (1, 0)),
                                                      (3, 6, 9, 3, 2, 2)])  # fmt: skip
def test_grouped_convolutions_every_method(groups, cin, cout, k, s, p):
    gen = torch.Generator().manual_seed(groups)
    m = nn.Conv2d(cin, cout, k, s, p, groups=groups).double()
    with torch.no_grad():
        for prm in m.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen, dtype=torch.float64))
    a = torch.randn(4, cin, 7, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        d = torch.randn(m(a).shape, generator=gen, dtype=torch.float64)
    ref = per_example_reference(m, a, d)
    torch.testing.assert_close(pe._pixel_gram_sq_norms(m, a, d) + pe._conv_bias_sq_norms(m, d), ref, rtol=1e-10, atol=0)
    for strategy in ("ghost", "materialise", "auto"):
        torch.testing.assert_close(pe._conv2d_sq_norms(m, a, d, strategy, {}), ref, rtol=1e-10, atol=0)


def test_the_pixel_gram_in_chunks(monkeypatch):
    """Examples processed a few at a time when the Gram matrices would be large."""
    monkeypatch.setattr(pe, "_PIXEL_GRAM_ELEMS", 3 * 100**2)  # 3 examples of a padded 10x10 map at once
    gen = torch.Generator().manual_seed(1)
    m = nn.Conv2d(5, 4, 3, 1, 1).double()
    a = torch.randn(8, 5, 8, 8, generator=gen, dtype=torch.float64)
    d = torch.randn(8, 4, 8, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(pe._pixel_gram_sq_norms(m, a, d) + pe._conv_bias_sq_norms(m, d),
                               per_example_reference(m, a, d), rtol=1e-10, atol=0)  # fmt: skip
