"""Fixed-seed train/validation split (the paper holds out 5,000 training examples)."""

from __future__ import annotations

import numpy as np


def split_validation(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into ``(train_idx, val_idx)`` by a seeded random permutation.

    ``val_idx`` holds ``n_val`` indices (the paper uses 5,000; Supplement I.2),
    ``train_idx`` the rest. Both are sorted int64 arrays, disjoint, covering
    ``range(n)``; the split depends only on ``(n, n_val, seed)`` via
    ``np.random.default_rng(seed)``. ``n_val = 0`` gives an empty validation set.
    """
    if n_val < 0 or n_val >= n:
        raise ValueError(f"need 0 <= n_val < n, got n_val={n_val}, n={n}")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
