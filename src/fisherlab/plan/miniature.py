"""Miniature mode: any config's whole DAG at toy size, to check it before a cluster run.

``shrink(config)`` maps a validated pipeline config (config.yaml plus overlays, defaults
filled in) with ``miniature.enabled`` to the same config at toy size. It keeps every
family, setting, sweep, intervention, noisy setting, table and figure, and changes only
sizes, by rules that read the config rather than a list of the paper's settings, so a
setting a user adds is shrunk like the paper's:

- data: every dataset (built in or ``data.local``) becomes synthetic data
  (:func:`fisherlab.data.make_synthetic`) of its image side, channels and class count
  (:data:`~fisherlab.plan.settings.DATASETS`, or ``miniature.local_shapes``), with
  ``examples`` training and ``test_examples`` test images, under ``data_root``;
  every ``val_size`` is capped at ``val_examples``;
- epochs: every run's epochs E become E' = min(E, ``epochs``); an epoch count t within
  them (milestone, start epoch of Fig. 3, phase-1 length, Tr(H) cadence) becomes
  round(t E' / E), kept inside the run (milestones and start epochs in [1, E' - 1] and
  [0, E' - 1], deduplicated; a two-phase run's phase 1 in [1, E' - 1]);
- seeds: every seed list keeps its first ``seeds`` (Fig. 3's those among the final
  seeds), a sweep runs at most ``seeds`` per value;
- grids and list axes keep ``grid`` values, evenly spaced from the first to the last (the
  α grid counts are capped instead); the noise fraction the figures draw is kept;
- batch sizes: each b becomes max(1, round(B (b / b_max)^g)), B = ``batch_size``, b_min
  and b_max the config's smallest and largest, g = min(1, ln(B / ``min_batch_size``) /
  ln(b_max / b_min)): the largest becomes B, the smallest ``min_batch_size``, their order
  holds and their ratios shrink by one power (values that then coincide in a list are
  merged). With config.yaml's 80 to 2048, a plain ratio (g = 1) would train most runs at
  batch 1, where the BN-free ResNets diverge at the paper's lrs (ResNet-26 at lr 0.05
  does at 7, not at 10); g = ln 2 / ln 25.6 keeps them at 8 to 10. FP's ``examples``
  (Fig. 20) are mapped the same way; ``batch_size`` is at most the training examples
  (``examples - val_examples``), so every run has a full batch;
- step cadences (Tr(F) every n steps, the penalty's recomputation every f steps) are
  capped at the steps of one miniature epoch, BN recalibration batches at
  ``bn_update_batches``;
- Tr(F), Tr(F_B), the noisy groups' mean gradients and Tr(H) use at most
  ``fisher_examples`` / ``hessian_examples`` examples and ``hessian_num_probes`` products;
- Tr(F_i)'s loss threshold ``epsilon`` (settings and sweeps) is raised to ``epsilon``
  (1000: above any finite loss): a few steps reach no real threshold, so Tr(F_i) is taken
  at the first measurement with a running loss and Figs. 1, 2, 7-9 draw points (their
  crossing path is exercised; the numbers mean nothing);
- every table and figure's ``report_notes`` entry says that it is a miniature.

``shrink`` is pure (a new config; the argument is not changed) and idempotent. It is
applied in workflow/rules/common.smk right after validation, so that the plan, the rules
and the report all see the shrunk config.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .core import PlanError
from .settings import DATASETS, dataset_shape

#: Every table and figure name that report_notes may hold (the schema's pattern).
TARGETS = (*(f"table{i}" for i in range(1, 10)), *(f"fig{i}" for i in range(1, 22)), "early_phase", "hessian",
           "paper_comparison")


def enabled(config: Mapping[str, Any]) -> bool:
    return bool((config.get("miniature") or {}).get("enabled"))


def pick(values: Sequence, count: int) -> list:
    """``count`` items of ``values`` evenly spaced from the first to the last (all of them
    when there are at most ``count``; the first when ``count`` is 1)."""
    values = list(values)
    if len(values) <= count:
        return values
    if count == 1:
        return values[:1]
    return [values[round(i * (len(values) - 1) / (count - 1))] for i in range(count)]


def scale_epoch(t: int, full: int, mini: int) -> int:
    """An epoch count ``t`` of a run of ``full`` epochs, in the run's ``mini`` epochs."""
    return int(round(t * mini / full)) if full else t


def scale_milestones(milestones: Sequence[int], full: int, mini: int) -> list[int]:
    """Milestones scaled to ``mini`` epochs, those inside [1, mini - 1], deduplicated."""
    out = sorted({min(max(scale_epoch(m, full, mini), 1), mini) for m in milestones})
    return [m for m in out if m < mini]


def _unique(values: Sequence) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


class _Shrink:
    """The rules of one shrink, with the config's knobs and its batch-size ratio."""

    def __init__(self, config: Mapping[str, Any]):
        m = config["miniature"]
        if m["val_examples"] >= m["examples"]:
            raise PlanError(f"miniature.val_examples ({m['val_examples']}) must be below miniature.examples "
                            f"({m['examples']})")  # fmt: skip
        if m["batch_size"] > m["examples"] - m["val_examples"]:
            raise PlanError(f"miniature.batch_size ({m['batch_size']}) must be at most the training examples, "
                            f"miniature.examples - miniature.val_examples "
                            f"({m['examples'] - m['val_examples']})")  # fmt: skip
        if m["min_batch_size"] > m["batch_size"]:
            raise PlanError(f"miniature.min_batch_size ({m['min_batch_size']}) must be at most miniature.batch_size "
                            f"({m['batch_size']})")  # fmt: skip
        self.m, self.config = m, config
        sizes = _batch_sizes(config) or [m["batch_size"]]
        self.largest = max(sizes)
        spread = math.log(self.largest / min(sizes))
        self.power = min(1.0, math.log(m["batch_size"] / m["min_batch_size"]) / spread) if spread > 0 else 1.0

    def epochs(self, e: int) -> int:
        return min(e, self.m["epochs"])

    def batch(self, b: int) -> int:
        """``b`` mapped onto the miniature's batch sizes: B (b / b_max)^g (module docstring)."""
        return max(1, int(round(self.m["batch_size"] * (b / self.largest) ** self.power)))

    def batches(self, values: Sequence[int]) -> list[int]:
        return _unique([self.batch(b) for b in pick(values, self.m["grid"])])

    def steps(self, batch_size: int, val_size: int) -> int:
        """Optimisation steps of one miniature epoch at ``batch_size``."""
        return max(1, math.ceil((self.m["examples"] - min(val_size, self.m["val_examples"])) / batch_size))

    def seeds(self, seeds: Sequence[int]) -> list[int]:
        return list(seeds)[: self.m["seeds"]]

    def grid(self, values: Sequence) -> list:
        return pick(values, self.m["grid"])

    # ------------------------------------------------------------------ blocks

    def setting(self, s: dict[str, Any]) -> None:
        full, mini = s["epochs"], self.epochs(s["epochs"])
        s["epochs"] = mini
        s["milestones"] = scale_milestones(s["milestones"], full, mini)
        s["batch_size"] = self.batch(s["batch_size"])
        s["val_size"] = min(s["val_size"], self.m["val_examples"])
        s["lr_grid"] = self.grid(s["lr_grid"])
        s["epsilon"] = max(s["epsilon"], self.m["epsilon"])  # reached within the miniature's few steps
        s["fisher_examples"] = min(s["fisher_examples"], self.m["fisher_examples"])
        steps = self.steps(s["batch_size"], s["val_size"])
        for k in ("fisher_every", "fisher_every_early"):
            s[k] = min(s[k], steps)
        s["bn_update_batches"] = min(s["bn_update_batches"], steps, self.m["bn_update_batches"])
        if s["train_eval_examples"]:  # 0: the whole split, already small
            s["train_eval_examples"] = min(s["train_eval_examples"], self.m["examples"])
        for r in s["regularizers"].values():
            r["count"] = min(r["count"], self.m["grid"])
            r["every"] = min(r["every"], steps)

    def sweep(self, sw: dict[str, Any], recipe: Mapping[str, Any]) -> None:
        """A sweep of ``recipe`` (the recipe as shrunk)."""
        if isinstance(sw["lr"], list):
            sw["lr"] = self.grid(sw["lr"])
        if isinstance(sw["batch_size"], list):
            sw["batch_size"] = self.batches(sw["batch_size"])
        elif sw["batch_size"] is not None:
            sw["batch_size"] = self.batch(sw["batch_size"])
        sw["seeds"] = min(sw["seeds"], self.m["seeds"])
        if sw["epsilon"] is not None:
            sw["epsilon"] = max(sw["epsilon"], self.m["epsilon"])
        if sw["epochs"] is not None:
            sw["epochs"] = self.epochs(sw["epochs"])
        if sw["fisher_examples"] is not None:
            sw["fisher_examples"] = min(sw["fisher_examples"], self.m["fisher_examples"])
        bs = sw["batch_size"] if sw["batch_size"] is not None else recipe["batch_size"]
        steps = self.steps(max(bs) if isinstance(bs, list) else bs, recipe["val_size"])
        for k in ("fisher_every", "fisher_every_early"):
            if sw[k] is not None:
                sw[k] = min(sw[k], steps)

    def noisy(self, noisy: dict[str, Any], settings: Mapping[str, Any]) -> None:
        fractions, keep = noisy["fractions"], noisy["figures"]["noise"]
        picked = self.grid(fractions)
        if keep in fractions and keep not in picked:  # the figures' noise stays
            picked = sorted(pick([f for f in picked if f != keep], self.m["grid"] - 1) + [keep],
                            key=fractions.index)  # fmt: skip
        noisy["fractions"] = picked
        for ns in noisy["settings"].values():
            base = settings.get(ns["base"])
            if ns["epochs"] is not None:
                ns["epochs"] = self.epochs(ns["epochs"])
            if base is not None:
                ns["every"] = min(ns["every"], self.steps(base["batch_size"], base["val_size"]))
            ns["group_examples"] = min(ns["group_examples"], self.m["fisher_examples"])
            ns["regularizers"] = {r: self.grid(v) for r, v in ns["regularizers"].items()}

    def fig3(self, b: dict[str, Any], full_settings: Mapping[str, Any], seeds: list[int]) -> None:
        epochs = [full_settings[n]["epochs"] for n in b["settings"] if n in full_settings]
        if epochs:
            full = min(epochs)
            mini = self.epochs(full)
            starts = sorted({min(scale_epoch(e, full, mini), mini - 1) for e in b["start_epochs"]})
            if len(starts) == 1 and len(b["start_epochs"]) > 1 and mini > 1:  # keep a late start
                starts = sorted({*starts, mini - 1})
            b["start_epochs"] = self.grid(starts)
        if b["seeds"] is not None:
            b["seeds"] = [s for s in b["seeds"] if s in seeds][: self.m["seeds"]] or None

    def two_phase(self, b: dict[str, Any]) -> None:
        full, mini = b["epochs"], self.epochs(b["epochs"])
        b["phase1_epochs"] = min(max(scale_epoch(b["phase1_epochs"], full, mini), 1), mini - 1)
        b["epochs"] = mini
        b["milestones"] = scale_milestones(b["milestones"], full, mini)
        b["seeds"] = self.seeds(b["seeds"])
        for level in ("high", "low"):
            if b[level].get("batch_size") is not None:
                b[level]["batch_size"] = self.batch(b[level]["batch_size"])

    def hessian_along(self, b: dict[str, Any], fig: str, full_settings: Mapping[str, Any]) -> None:
        panel_epochs = [full_settings[n]["epochs"] for n in b["panels"] if n in full_settings]
        full = b["epochs"] or max(panel_epochs, default=1)
        mini = self.epochs(full)
        if b["epochs"] is not None:
            b["epochs"] = mini
        b["hessian_every"] = max(1, min(scale_epoch(b["hessian_every"], full, mini), mini))
        if fig == "fig14":
            b["milestones"] = scale_milestones(b["milestones"], full, mini)
            if b["seeds"] is not None:
                b["seeds"] = self.seeds(b["seeds"])
            for panel in b["panels"].values():
                if panel.get("batch_size") is not None:
                    panel["batch_size"] = self.batch(panel["batch_size"])
                shrink_set = self.batches if panel["vary"] == "batch_size" else self.grid
                panel["sets"] = {k: shrink_set(v) for k, v in panel["sets"].items()}
        else:
            b["panels"] = {k: self.grid(v) for k, v in b["panels"].items()}

    def alpha_sweep(self, b: dict[str, Any], settings: Mapping[str, Any]) -> None:
        b["alphas"]["count"] = min(b["alphas"]["count"], self.m["grid"])
        if b["batch_size"] is not None:
            b["batch_size"] = self.batch(b["batch_size"])
        if b["examples"] is not None:
            b["examples"] = self.batch(b["examples"])
        s = settings.get(b["setting"])
        if s is not None:
            steps = self.steps(b["batch_size"] or s["batch_size"], s["val_size"])
            b["every"] = _unique([min(f, steps) for f in self.grid(b["every"])])
        b["references"] = self.grid(b["references"])

    def data(self, data: dict[str, Any]) -> None:
        root = data["root"] = self.m["data_root"]
        data["synthetic"].update(n_train=self.m["examples"], n_test=self.m["test_examples"])
        for name in data["local"]:
            data["local"][name] = {split: f"{root}/{name}/{split}.npz" for split in ("train", "test")}

    def notes(self) -> dict[str, str]:
        m = self.m
        note = (f"Miniature (configs/miniature.yaml): synthetic data of each dataset's shape, {m['examples']} training "
                f"examples, at most {m['epochs']} epochs, {m['seeds']} seed(s), {m['grid']} values per grid. It checks "
                "that the pipeline makes this artifact; its numbers mean nothing about the paper.")  # fmt: skip
        return dict.fromkeys(TARGETS, note)


def _batch_sizes(config: Mapping[str, Any]) -> list[int]:
    """Every batch size the config names (settings, sweeps, interventions)."""
    out = [s["batch_size"] for s in config["settings"].values()]
    for sw in config["sweeps"]["settings"].values():
        bs = sw["batch_size"]
        out += bs if isinstance(bs, list) else [bs] if bs is not None else []
    iv = config["interventions"]
    for fig in ("fig6", "fig13"):
        if iv.get(fig):
            out += [iv[fig][lvl]["batch_size"] for lvl in ("high", "low") if iv[fig][lvl].get("batch_size")]
    if iv.get("fig14"):
        for panel in iv["fig14"]["panels"].values():
            out += [panel["batch_size"]] if panel.get("batch_size") else []
            if panel["vary"] == "batch_size":
                out += [int(v) for vs in panel["sets"].values() for v in vs]
    for fig in ("fig16", "fig17", "fig20"):
        if iv.get(fig) and iv[fig]["batch_size"]:
            out.append(iv[fig]["batch_size"])
    return out


def shrink(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (validated, defaults filled in) at toy size when ``miniature.enabled``
    (see the module docstring); otherwise a copy of it. Pure and idempotent."""
    out = copy.deepcopy(dict(config))
    if not enabled(config):
        return out
    sh = _Shrink(config)
    full_settings = config["settings"]
    out["seeds"] = sh.seeds(config["seeds"])
    for s in out["settings"].values():
        sh.setting(s)
    for sw in out["sweeps"]["settings"].values():
        recipe = out["settings"].get(sw["recipe"])
        if recipe is not None:  # an unknown recipe: the plan names it
            sh.sweep(sw, recipe)
    sh.noisy(out["noisy"], out["settings"])
    out["sam"]["rho_grid"] = sh.grid(out["sam"]["rho_grid"])
    hess = out["hessian"]
    hess.update(examples=min(hess["examples"], sh.m["hessian_examples"]),
                num_probes=min(hess["num_probes"], sh.m["hessian_num_probes"]))  # fmt: skip
    iv = out["interventions"]
    if iv.get("fig3"):
        sh.fig3(iv["fig3"], full_settings, out["seeds"])
    for fig in ("fig6", "fig13"):
        if iv.get(fig):
            sh.two_phase(iv[fig])
    for fig in ("fig14", "fig21"):
        if iv.get(fig):
            sh.hessian_along(iv[fig], fig, full_settings)
    for fig in ("fig16", "fig17", "fig20"):
        if iv.get(fig):
            sh.alpha_sweep(iv[fig], out["settings"])
    sh.data(out["data"])
    out["report_notes"] = {**out.get("report_notes", {}), **sh.notes()}
    return out


def miniature_shape(config: Mapping[str, Any], dataset: str) -> dict[str, int]:
    """{"image_size", "channels", "num_classes"} of the synthetic stand-in of ``dataset``:
    a built-in dataset's (:data:`~fisherlab.plan.settings.DATASETS`), or a data.local
    one's from ``miniature.local_shapes``."""
    if dataset in DATASETS:
        shape = dataset_shape(config, dataset)
        return {k: shape[k] for k in ("image_size", "channels", "num_classes")}
    shapes = config["miniature"]["local_shapes"]
    if dataset not in shapes:
        raise PlanError(f"miniature: dataset {dataset!r} (data.local) has no shape: set miniature.local_shapes."
                        f"{dataset}: {{image_size: ..., channels: 1 or 3, num_classes: ...}}")  # fmt: skip
    return dict(shapes[dataset])
