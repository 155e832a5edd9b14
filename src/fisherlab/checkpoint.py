"""Atomic checkpoints: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (see :mod:`fisherlab.atomic`)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict | None:
    """The checkpoint at ``path``, or None if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)
