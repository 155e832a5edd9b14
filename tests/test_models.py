"""Tests for the paper's residual and dense models (fisherlab.models): parameter counts
against the published architectures, forward shapes, the absence of normalisation
layers in the BN-free variants, each paper's initialisation rule, and per-example
squared gradient norms (the engine behind Tr(F)) against a brute-force loop of ordinary
backward passes, in float64, on reduced-size versions built from the same layer types.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import randn, seeded
from torch import nn

from fisherlab import build_model, per_example, per_example_grad_sq_norms, trace_fisher
from fisherlab.models.densenet import DenseNet
from fisherlab.models.fixup import FixupBasicBlock, FixupResNet
from fisherlab.models.layers import Bias, Scale
from fisherlab.models.resnet import CifarResNet, ResidualBlock
from fisherlab.models.wrn import WideBlock, WideResNet

DT = torch.float64
NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
NEW_MODELS = {
    "wrn44_3": 100,
    "wrn44_3_skipinit": 100,
    "densenet40_12": 100,
    "resnet26": 10,
    "resnet32": 10,
    "resnet52": 100,
    "resnet56": 100,
    "resnet18_fixup": 1000,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =========================================================================== counts


def he_cifar_resnet_bn(n: int, classes: int = 10) -> int:
    """He et al. 2016 CIFAR ResNet-(6n+2) with BN and zero-padding (option A) shortcuts,
    as in their Table 6: conv3x3 weights, one BN (gamma, beta) per conv, linear."""
    convs = 3 * 16 * 9 + 2 * n * 16 * 16 * 9
    convs += 16 * 32 * 9 + (2 * n - 1) * 32 * 32 * 9
    convs += 32 * 64 * 9 + (2 * n - 1) * 64 * 64 * 9
    return convs + 2 * bn_channels(n) + 64 * classes + classes


def bn_channels(n: int) -> int:
    """Sum of output channels over the 6n+1 convolutions (one BN after each)."""
    return 16 * (2 * n + 1) + 32 * 2 * n + 64 * 2 * n


PROJECTIONS = (16 * 32 + 32) + (32 * 64 + 64)  # two strided 1x1 convs with bias: 2,656


@pytest.mark.parametrize("name, n, published", [("resnet32", 5, 0.46), ("resnet56", 9, 0.85)])
def test_resnet_counts_against_he_et_al(name, n, published):
    """He et al. 2016, Table 6: ResNet-32 0.46M, ResNet-56 0.85M (with BN, option A).

    Removing BN takes away 2 parameters per BN channel and gives each conv a bias
    (1 per channel); Arpit et al.'s 1x1 projection shortcuts add 2,656:
      ResNet-32: 464,154 - 2,272 + 1,136 + 2,656 = 465,674
      ResNet-56: 853,018 - 4,064 + 2,032 + 2,656 = 853,642
    """
    he = he_cifar_resnet_bn(n)
    assert round(he / 1e6, 2) == published
    assert he == {5: 464_154, 9: 853_018}[n]
    ours = he - 2 * bn_channels(n) + bn_channels(n) + PROJECTIONS
    assert ours == {5: 465_674, 9: 853_642}[n]
    assert n_params(build_model(name, num_classes=10)) == ours


@pytest.mark.parametrize("name, n", [("resnet26", 4), ("resnet52", 8)])
def test_resnet26_52_counts(name, n):
    """Same formula; ResNet-52 is n = 8 (6n+2 = 50 layers + 2 projection convs)."""
    expected = he_cifar_resnet_bn(n) - bn_channels(n) + PROJECTIONS
    assert expected == {4: 368_682, 8: 756_650}[n]
    model = build_model(name, num_classes=10)
    assert model.blocks_per_stage == n
    assert n_params(model) == expected


def test_densenet_count_against_huang_et_al():
    """Huang et al. 2017, Table 2: DenseNet (L=40, k=12) has 1.0M parameters.

    Stem 3*16*9 = 432; dense layer i of a block with c0 input channels has a
    (c0 + 12i) -> 12 conv3x3 and a BN on c0 + 12i channels; transitions c -> c conv1x1
    with a BN; final BN on 448 channels; linear 448 -> 10."""
    total, c = 3 * 16 * 9, 16
    for b in range(3):
        for _ in range(12):
            total += c * 12 * 9 + 2 * c
            c += 12
        if b < 2:
            total += c * c + 2 * c
    total += 2 * c + c * 10 + 10
    assert c == 448 and total == 1_019_722
    assert round(total / 1e6, 1) == 1.0
    assert n_params(build_model("densenet40_12", num_classes=10)) == total
    assert n_params(build_model("densenet40_12", num_classes=100)) == total + 90 * 449


def wrn_count(n: int, k: int, classes: int, bn: bool) -> int:
    """WRN-(6n+2)-k: stem conv3x3 3->16, per block two conv3x3 (+ a 1x1 shortcut where
    the width or resolution changes); with BN: BN before each block conv and one at the
    end, convs without bias; without: a bias per conv and one SkipInit scalar per block."""
    widths, cin = (16 * k, 32 * k, 64 * k), 16
    weights, biases, bns = 3 * 16 * 9, 16, 0
    for s, cout in enumerate(widths):
        for j in range(n):
            weights += cin * cout * 9 + cout * cout * 9
            biases += 2 * cout
            bns += cin + cout
            if cin != cout or (s > 0 and j == 0):
                weights += cin * cout
                biases += cout
            cin = cout
    bns += cin
    extra = 2 * bns if bn else biases + 3 * n
    return weights + extra + cin * classes + classes


def test_wrn_counts():
    """WRN-44-3 (n = 7, widths 48/96/192): no published count; the formula above."""
    assert wrn_count(7, 3, 100, bn=True) == 5_928_180
    assert wrn_count(7, 3, 100, bn=False) == 5_923_817
    assert n_params(build_model("wrn44_3", num_classes=100)) == 5_928_180
    assert n_params(build_model("wrn44_3", num_classes=200)) == wrn_count(7, 3, 200, bn=True)
    assert n_params(build_model("wrn44_3_skipinit", num_classes=100)) == 5_923_817
    assert build_model("wrn44_3", num_classes=10).blocks_per_stage == 7
    with pytest.raises(ValueError):
        WideResNet(depth=40, width=3)  # 40 is not 6n + 2


def test_fixup_resnet18_count():
    """torchvision resnet18 (He et al. 2016, ImageNet) has 11,689,512 parameters at 1000
    classes. Its BNs: stem 64, 2 per block (2*2*(64+128+256+512) = 3,840), downsample
    128+256+512 = 896: 4,800 channels, 9,600 affine parameters. Fixup adds 5 scalars per
    block (4 biases, 1 multiplier) and 2 outside (before the stem ReLU and before fc):
    42. 11,689,512 - 9,600 + 42 = 11,679,954. The 32x32 stem conv3x3 has 3*64*9 = 1,728
    weights instead of 3*64*49 = 9,408."""
    assert 11_689_512 - 9_600 + 42 == 11_679_954
    model = build_model("resnet18_fixup", num_classes=1000)
    assert n_params(model) == 11_679_954
    scalars = [m for m in model.modules() if isinstance(m, (Scale, Bias))]
    assert len(scalars) == 42
    small = build_model("resnet18_fixup", num_classes=1000, small_input=True)
    assert n_params(small) == 11_679_954 - 9_408 + 1_728
    tv = pytest.importorskip("torchvision")
    ref = tv.models.resnet18(num_classes=1000)
    assert n_params(ref) == 11_689_512
    bn = sum(p.numel() for m in ref.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert bn == 9_600


# =========================================================================== shapes, norms


@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_forward_shapes_32(name):
    classes = NEW_MODELS[name]
    model = seeded(0, build_model, name, num_classes=classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("size, small", [(224, False), (32, True), (64, True)])
def test_fixup_forward_shapes(size, small):
    model = seeded(0, build_model, "resnet18_fixup", num_classes=1000, small_input=small)
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 1000)


@pytest.mark.parametrize(
    "name", ["wrn44_3_skipinit", "resnet26", "resnet32", "resnet52", "resnet56", "resnet18_fixup"]
)
def test_bn_free_models_have_no_normalisation(name):
    model = build_model(name, num_classes=10)
    assert not [m for m in model.modules() if isinstance(m, NORMS)]


@pytest.mark.parametrize("name, count", [("wrn44_3", 2 * 21 + 1), ("densenet40_12", 36 + 2 + 1)])
def test_bn_models_have_batchnorm(name, count):
    model = build_model(name, num_classes=10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == count


# =========================================================================== init


def he_std(w: torch.Tensor) -> float:
    """He et al. 2015, fan-out: sqrt(2 / (out_channels * k * k))."""
    return math.sqrt(2.0 / (w.shape[0] * w[0, 0].numel()))


def test_fixup_init():
    """Zhang et al. 2019: last conv of each branch and fc zero; other branch convs He
    scaled by L^(-1/(2m-2)) = 8^(-1/2) (std ratio checked on the sample); shortcut
    and stem convs plain He; scalar biases 0, multipliers 1."""
    model = seeded(1, build_model, "resnet18_fixup", num_classes=1000)
    blocks = [m for m in model.modules() if isinstance(m, FixupBasicBlock)]
    assert len(blocks) == 8 == model.num_branches
    assert torch.all(model.fc.weight == 0) and torch.all(model.fc.bias == 0)
    for b in blocks:
        assert torch.all(b.conv2.weight == 0)
        ratio = b.conv1.weight.std().item() / he_std(b.conv1.weight)
        assert ratio == pytest.approx(8 ** -0.5, rel=0.03)
        assert abs(b.conv1.weight.mean().item()) < 0.05 * b.conv1.weight.std().item()
        if b.downsample is not None:
            assert b.downsample.weight.std().item() / he_std(b.downsample.weight) == pytest.approx(1, rel=0.05)
    assert model.conv1.weight.std().item() / he_std(model.conv1.weight) == pytest.approx(1, rel=0.05)
    for m in model.modules():
        if isinstance(m, Bias):
            assert m.bias.item() == 0
        if isinstance(m, Scale):
            assert m.weight.item() == 1
    # at init every block outputs ReLU(shortcut) and the logits are all zero
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h = F.max_pool2d(F.relu(model.conv1(x)), 3, 2, 1)
        for b in blocks:
            short = h if b.downsample is None else b.downsample(h)
            out = b(h)
            torch.testing.assert_close(out, F.relu(short), rtol=0, atol=0)
            h = out
        assert torch.all(model(x) == 0)


def test_skipinit_blocks_are_their_shortcut_at_init():
    """De & Smith 2020: alpha = 0 in every branch, so each block's output equals its
    shortcut branch, and identity-shortcut blocks are exactly the identity."""
    model = seeded(2, build_model, "wrn44_3_skipinit", num_classes=100)
    blocks = [m for m in model.modules() if isinstance(m, WideBlock)]
    assert len(blocks) == 21
    assert all(b.skipinit.weight.item() == 0 for b in blocks)
    with torch.no_grad():
        h = model.conv1(torch.randn(2, 3, 32, 32))
        identity = 0
        for b in blocks:
            out = b(h)
            torch.testing.assert_close(out, b.shortcut_path(h), rtol=0, atol=0)
            if b.shortcut is None:
                identity += 1
                torch.testing.assert_close(out, h, rtol=0, atol=0)
            h = out
    assert identity == 21 - 3  # the first block of each stage changes width (16 -> 48 too)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.all(c.bias == 0) for c in convs)


@pytest.mark.parametrize("name", ["wrn44_3", "densenet40_12"])
def test_bn_models_init(name):
    """He (fan-out) convolutions, BN weight 1 / bias 0, zero linear bias."""
    model = seeded(3, build_model, name, num_classes=100)
    big = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    for c in big:
        assert c.weight.std().item() / he_std(c.weight) == pytest.approx(1, rel=0.1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.fc.bias == 0)


def _arpit_gamma(model: CifarResNet):
    """(conv, gamma) for every conv: 2 for the stem and first block convs, 1/N for the
    last conv of each block, 1 for projection shortcuts (Arpit et al. 2019)."""
    out = [(model.conv1, 2.0)]
    for b in model.modules():
        if isinstance(b, ResidualBlock):
            out += [(b.conv1, 2.0), (b.conv2, 1.0 / model.blocks_per_stage)]
            if b.shortcut is not None:
                out.append((b.shortcut, 1.0))
    return out


@pytest.mark.parametrize("name", ["resnet26", "resnet56"])
def test_arpit_init(name):
    """Every conv row (an output channel's filter, fan_in numbers) has norm
    g = sqrt(gamma * fan_in / fan_out); rows are orthogonal when out_channels <= fan_in;
    biases are 0."""
    model = seeded(4, build_model, name, num_classes=10)
    pairs = _arpit_gamma(model)
    assert len(pairs) == 1 + 2 * 3 * model.blocks_per_stage + 2
    for conv, gamma in pairs:
        w = conv.weight.detach().double().reshape(conv.out_channels, -1)
        fan_in, fan_out = w.shape[1], conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        g2 = gamma * fan_in / fan_out
        torch.testing.assert_close(w.pow(2).sum(1), torch.full((w.shape[0],), g2, dtype=DT), rtol=1e-5, atol=0)
        if w.shape[0] <= fan_in:
            torch.testing.assert_close(w @ w.T, g2 * torch.eye(w.shape[0], dtype=DT), rtol=0, atol=1e-5 * g2)
        assert torch.all(conv.bias == 0)


def _stage_growth(model: CifarResNet, x: torch.Tensor) -> float:
    with torch.no_grad():
        h = model.conv1(x)
        return (model.stage1(h).pow(2).mean() / h.pow(2).mean()).item()


def test_arpit_init_keeps_the_residual_stack_bounded():
    """With the 1/N gain each block adds ~1/N of its input's second moment: a stage of
    N = 9 identity blocks grows it by about (1 + 1/9)^9 = 2.58 < e. The same network
    with gain 2 on every conv (He init) grows it by about 2^9 = 512."""
    model = seeded(5, build_model, "resnet56", num_classes=10).double()
    x = randn(8, 3, 32, 32, seed=5)
    growth = _stage_growth(model, x)
    assert 1.5 < growth < math.e * 1.25
    from fisherlab.models.resnet import arpit_init_

    seeded(6, lambda: [arpit_init_(b.conv2, 2.0) for b in model.stage1])
    assert _stage_growth(model, x) > 100


# =========================================================================== curvature


def _perturb(model: nn.Module, seed: int) -> nn.Module:
    """Move every parameter off its initial value (zero-initialised layers would make
    most per-example gradients vanish) and give BN random running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p[0].numel()))
            else:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g, dtype=DT))
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=DT) + 0.5)
    return model.eval()


def _small(kind: str):
    """Reduced-size versions (same layer types) in float64: (model, x, classes)."""
    C = 5
    makers = {
        "wrn_bn": lambda: WideResNet(depth=14, width=1, num_classes=C, norm=True),
        "wrn_skipinit": lambda: WideResNet(depth=14, width=1, num_classes=C, norm=False),
        "densenet": lambda: DenseNet(depth=10, growth_rate=4, num_classes=C, stem_channels=6),
        "resnet": lambda: CifarResNet(depth=14, num_classes=C, width=4),
        "fixup": lambda: FixupResNet((2, 1), num_classes=C, width=4),
        "fixup_small": lambda: FixupResNet((1, 2), num_classes=C, width=4, small_input=True),
    }
    seed = sorted(makers).index(kind) + 10
    model = _perturb(seeded(seed, makers[kind]).double(), seed)
    size = 16 if kind != "fixup" else 32
    return model, randn(3, 3, size, size, seed=seed), C


SMALL = ["wrn_bn", "wrn_skipinit", "densenet", "resnet", "fixup", "fixup_small"]


@pytest.fixture
def per_layer_only(monkeypatch):
    """Fail if any layer takes the generic torch.func VJP or the whole model falls back
    to vmap(grad): every layer of these models must have a closed form."""

    def boom(*args, **kwargs):
        raise AssertionError("slow path used")

    monkeypatch.setattr(per_example, "_generic_sq_norms", boom)
    monkeypatch.setattr(per_example, "_func_sq_norms", boom)


def brute_grad_sq_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||g(x_i, y_i)||^2 from one ordinary backward pass per example."""
    out = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        out.append(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


@pytest.mark.parametrize("kind", SMALL)
@pytest.mark.parametrize("strategy", ["auto", "ghost", "materialise"])
def test_per_example_norms_match_brute_force(kind, strategy, per_layer_only):
    model, x, _ = _small(kind)
    y = torch.tensor([0, 3, 4])
    ref = brute_grad_sq_norm(model, x, y)
    assert torch.all(ref > 0)
    got = per_example_grad_sq_norms(model, x, y, strategy=strategy)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", SMALL)
def test_exact_trace_fisher_matches_brute_force(kind, per_layer_only):
    """trace_fisher(exact=True): sum_c p(c|x_i) ||g(x_i, c)||^2 per example."""
    model, x, C = _small(kind)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    ref = sum(
        probs[:, c] * brute_grad_sq_norm(model, x, torch.full((len(x),), c)) for c in range(C)
    )
    got = trace_fisher(model, x, exact=True, return_per_example=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


def _conv_geometry_model() -> nn.Module:
    """Convs with few output channels (the scattered-delta materialisation) in awkward
    geometries: odd sizes with stride 2, dilation, rectangular kernels, padding wider
    than the kernel reach, a 3x3 conv on a 1x1 map (taps that fall entirely in the
    padding), strided and plain 1x1 convolutions."""
    feats = nn.Sequential(
        nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv2d(5, 4, (3, 2), stride=(1, 2), padding=(2, 0), dilation=(2, 1)), nn.Tanh(),
        nn.Conv2d(4, 6, 5, padding=3, bias=False), nn.Tanh(),
        nn.Conv2d(6, 3, 1, stride=2), nn.Tanh(),
        nn.Conv2d(3, 4, 1), Scale(1.5), Bias(0.2), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
    )  # fmt: skip
    with torch.no_grad():
        n = feats(torch.zeros(1, 3, 11, 9)).numel()
    return nn.Sequential(feats, nn.Flatten(), nn.Linear(n, 3))


@pytest.mark.parametrize("strategy", ["auto", "ghost", "materialise"])
def test_per_example_norms_conv_geometries(strategy, per_layer_only):
    model = seeded(20, _conv_geometry_model).double()
    x, y = randn(4, 3, 11, 9, seed=20), torch.tensor([0, 1, 2, 1])
    ref = brute_grad_sq_norm(model, x, y)
    got = per_example_grad_sq_norms(model, x, y, strategy=strategy)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


def test_per_example_norms_with_an_inplace_edited_output(per_layer_only):
    """A layer output modified in place afterwards (ReLU(inplace=True) after a conv, as in
    torchvision models): the layer's hook sees d loss / d (the value it returned)."""
    model = seeded(21, lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    )).double()  # fmt: skip
    x, y = randn(3, 3, 6, 6, seed=21), torch.tensor([0, 1, 2])
    got = per_example_grad_sq_norms(model, x, y)
    torch.testing.assert_close(got, brute_grad_sq_norm(model, x, y), rtol=1e-10, atol=0)


class _Unreached(nn.Module):
    """A layer whose output does not depend on the input (a learned offset map)."""

    def __init__(self):
        super().__init__()
        self.conv, self.offset, self.fc = nn.Conv2d(2, 3, 3), Bias(0.3), nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.fc((h + self.offset(torch.zeros_like(h))).flatten(1))


def test_layer_not_reached_from_the_input_falls_back_correctly():
    """Gradients are taken w.r.t. the input, so a hook on a layer the input does not reach
    never fires: the whole-model path takes over, and the values stay exact."""
    model = seeded(22, _Unreached).double()
    x, y = randn(3, 2, 6, 6, seed=22), torch.tensor([0, 1, 2])
    got = per_example_grad_sq_norms(model, x, y)
    torch.testing.assert_close(got, brute_grad_sq_norm(model, x, y), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_full_models_take_the_per_layer_path(name, per_layer_only):
    """The registered full-size models are measured layer by layer (float32, 2 examples)."""
    model = seeded(7, build_model, name, num_classes=NEW_MODELS[name]).eval()
    sq = per_example_grad_sq_norms(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    assert sq.shape == (2,) and torch.all(torch.isfinite(sq)) and torch.all(sq > 0)
