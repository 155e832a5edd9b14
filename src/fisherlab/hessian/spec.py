"""What a Tr(H) measurement is, and the names of its files: pure Python (no torch), so
that the run plan, the config guard and the rules can read it.

:class:`HessianSpec` holds the one set of defaults of a Tr(H) measurement (Hutchinson's
estimator, Supplement B; M = 30 probes as in the paper). The pipeline's ``hessian:``
config block has exactly its fields (workflow/schemas/config.schema.yaml repeats the
defaults; a test checks that they agree), :func:`fisherlab.trace_hessian` takes its
defaults from it, and the jobs (:mod:`fisherlab.hessian.jobs`) take one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

#: Probe distributions of Hutchinson's estimator: z_i = +-1 with probability 1/2, or z ~ N(0, I).
Distribution = Literal["rademacher", "gaussian"]
#: Trace estimators: Hutchinson (Supplement B), or Hutch++ (Meyer et al. 2021) with the same budget.
Method = Literal["hutchinson", "hutchpp"]
DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)
METHODS: tuple[str, ...] = get_args(Method)
#: Config keys that were renamed (dotted paths, old -> new): the config says what the
#: library says, num_probes (a count) and distribution (rademacher or gaussian).
RENAMED = {
    "hessian.queries": "hessian.num_probes",
    "hessian.probes": "hessian.distribution",
    "miniature.hessian_queries": "miniature.hessian_num_probes",
}

#: Tr(H) of a run's final weights, beside its summary.json (:func:`fisherlab.hessian.jobs.trace_hessian_of_run`).
HESSIAN_JSON = "hessian.json"
#: Tr(H) of each weights file a run kept, beside its summary.json
#: (:func:`fisherlab.hessian.jobs.trace_hessian_of_snapshots`; Figs. 6, 13, 14, 21).
SNAPSHOT_HESSIAN = "hessian_snapshots.csv"


def _count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"HessianSpec.{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"HessianSpec.{name} must be >= 1, got {value}")


def _choice(name: str, value: Any, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"HessianSpec.{name} must be one of {list(known)}, got {value!r}")


@dataclass(frozen=True)
class HessianSpec:
    """One Tr(H) measurement (Supplement B):

        Tr(H) ~= (1/M) sum_{m=1}^{M} z_m^T H z_m ,   M = ``num_probes``,

    H the Hessian of the mean cross-entropy loss over ``examples`` fixed training
    examples with their labels, z_m drawn from ``distribution`` (``rademacher`` or
    ``gaussian``); ``method="hutchpp"`` spends the same M Hessian-vector products on
    Hutch++ instead. Frozen; bad values raise TypeError/ValueError naming the field."""

    num_probes: int = 30
    distribution: Distribution = "rademacher"
    method: Method = "hutchinson"
    examples: int = 1000

    def __post_init__(self) -> None:
        _count("num_probes", self.num_probes)
        _count("examples", self.examples)
        _choice("distribution", self.distribution, DISTRIBUTIONS)
        _choice("method", self.method, METHODS)

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> HessianSpec:
        """The spec of the pipeline's ``hessian:`` config block (missing keys: the
        defaults). A renamed key (:data:`RENAMED`) or an unknown one is a ValueError
        naming it and the keys accepted."""
        block = dict(block or {})
        refuse_renamed({"hessian": block})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(block) - set(known))
        if unknown:
            raise ValueError(f"hessian: unknown key(s) {unknown}; accepted: {known}")
        return cls(**block)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict: the ``hessian:`` config block of this spec."""
        return dataclasses.asdict(self)


def renamed_keys(config: Mapping[str, Any]) -> list[str]:
    """One message per renamed key (:data:`RENAMED`) that ``config`` (the whole pipeline
    config) still holds, e.g. ``"hessian.queries was renamed hessian.num_probes"``."""
    out = []
    for old, new in RENAMED.items():
        block, _, key = old.partition(".")
        if isinstance(config, Mapping) and isinstance(config.get(block), Mapping) and key in config[block]:
            out.append(f"{old} was renamed {new}")
    return out


def refuse_renamed(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming each renamed key of ``config`` and its new name
    (``hessian.probes was renamed hessian.distribution``)."""
    messages = renamed_keys(config)
    if messages:
        raise ValueError("; ".join(messages) + " (see config.yaml's hessian block)")
