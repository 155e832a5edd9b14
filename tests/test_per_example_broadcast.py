"""Per-example norms of layers whose output is not one row per example: a layer applied
once to a batch of one and broadcast to all examples (BERT's position embedding of
arange(L)[None]), and a layer that sees the examples along another dimension
(sequence-first). Checked against one backward pass per example."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fisherlab.per_example import per_example_grad_sq_norms

L, V, H, C = 5, 11, 6, 3


class TokenModel(nn.Module):
    """Token ids -> token + position embeddings (the latter broadcast) -> mean -> logits."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos, self.head = nn.Embedding(V, H), nn.Embedding(L, H), nn.Linear(H, C)
        self.register_buffer("positions", torch.arange(L)[None])

    def forward(self, ids):
        return self.head(torch.tanh(self.tok(ids) + self.pos(self.positions)).mean(1))


class FloatModel(nn.Module):
    """Float inputs (N, L, H) plus a learned positional code pos(eye)[None] (1, L, H)."""

    def __init__(self):
        super().__init__()
        self.pos, self.body, self.head = nn.Linear(L, H), nn.Linear(H, H), nn.Linear(H, C)
        self.register_buffer("eye", torch.eye(L)[None])

    def forward(self, x):
        return self.head(torch.tanh(self.body(x + self.pos(self.eye))).mean(1))


class SequenceFirst(nn.Module):
    """A layer applied to (L, N, H): its leading dimension is not the examples'."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(H, H), nn.Linear(H, C)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x.transpose(0, 1))).mean(0))


def _loop(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(len(x)):
        g = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        out.append(sum(t.pow(2).sum() for t in g))
    return torch.stack(out)


@pytest.mark.parametrize("make", [TokenModel, FloatModel, SequenceFirst])
def test_broadcast_and_sequence_first_layers_match_a_loop_over_examples(make):
    torch.manual_seed(0)
    model = make().double()
    n = 7
    x = torch.randint(0, V, (n, L)) if make is TokenModel else torch.randn(n, L, H, dtype=torch.float64)
    y = torch.randint(0, C, (n,))
    got = per_example_grad_sq_norms(model, x, y, chunk_size=4)  # chunks of 4 and 3
    torch.testing.assert_close(got, _loop(model, x, y), rtol=1e-10, atol=1e-12)
