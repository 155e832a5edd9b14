"""fisherlab: the mathematics and the training loop of "Catastrophic Fisher Explosion:
Early Phase Fisher Matrix Impacts Generalization" (Jastrzebski et al., ICML 2021).

The API is flat (``from fisherlab import trace_fisher, FisherPenalty, train``) and
lazy: a name's module is imported on first use, so that the torch-free parts (the run
plan, :mod:`fisherlab.plan`; :class:`TrainConfig`) import without torch.

The modules by layer; an import points down or sideways within a layer, never up:

1. The library, what a researcher imports into their own loop (the top-level modules):
   :mod:`.likelihoods`, :mod:`.batches`, :mod:`.estimate`, :mod:`.per_example`,
   :mod:`.curvature` (Tr(F), Tr(F_B), Tr(H)), :mod:`.penalty_term`, :mod:`.penalties`;
   the packages :mod:`.models`, :mod:`.data`, :mod:`.tracking` and :mod:`.hessian.spec`;
   :mod:`.atomic`, the atomic writes every output goes through. (One arrow still points
   up: :mod:`.penalties` reads GPx's reductions from :mod:`.training.train_config`.)
2. :mod:`.runs`: a run on disk (its directory's files, identity, lock, selection
   files); pure Python.
3. :mod:`.training`: the training loop, its config, checkpoint, schedule, evaluation and
   measurements.
4. :mod:`.plan`: the pipeline's runs as data (torch-free).
5. The glue and the outputs: :mod:`.experiment` (one run from files to its directory),
   :mod:`.hessian.jobs` (Tr(H) of a run), :mod:`.report` (tables and figures),
   :mod:`.integrations`, :mod:`.cli`; :mod:`.config_guard` checks the pipeline's config;
   :mod:`.forkserver` runs the pipeline's jobs in children of one process (standard library only).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

#: Every public name and the submodule that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Estimate", "HutchinsonEstimate"], "estimate"),
    **dict.fromkeys(["Likelihood", "Categorical", "Gaussian", "get_likelihood"], "likelihoods"),
    **dict.fromkeys(["iter_batches"], "batches"),
    **dict.fromkeys(["eval_mode", "gradient_cosine", "mean_gradient", "mean_gradient_sq_norm",
                     "sample_labels", "trace_fisher", "trace_fisher_batch", "trace_hessian",
                     "hessian_matmat", "hutchinson_trace", "hutchpp_trace"], "curvature"),
    **dict.fromkeys(["HessianSpec"], "hessian"),
    **dict.fromkeys(["MODELS", "build_model", "register"], "models"),
    **dict.fromkeys(["per_example_grad_sq_norms"], "per_example"),
    **dict.fromkeys(["REGULARIZERS", "FisherPenalty", "FisherPenaltyExact", "GradientNormPenalty", "GradientPenalty",
                     "InputGradientPenalty", "Mixup", "NoRegularizer", "RandomLabelGradientPenalty", "Regularizer",
                     "StepOutput", "build_regularizer", "SharpnessAwareMinimization"], "penalties"),
    **dict.fromkeys(["FisherPenaltyTerm", "fisher_penalty", "sampled_fisher_gradient"], "penalty_term"),
    **dict.fromkeys(["group_metrics"], "training.memorization"),
    **dict.fromkeys(["Evaluator", "predictions"], "training.evaluation"),
    **dict.fromkeys(["Preempted", "StopFlag"], "training.preemption"),
    **dict.fromkeys(["every_n_epochs", "multistep_lr"], "training.schedule"),
    **dict.fromkeys(["TrainConfig"], "training.train_config"),
    **dict.fromkeys(["TrainData", "TrainResult", "train"], "training.trainer"),
    **dict.fromkeys(["DatasetFormatError", "DeviceData", "ImageDataset", "augment_batch", "channel_stats",
                     "load_dataset", "make_synthetic", "save_dataset", "split_validation"], "data"),
    **dict.fromkeys(["fig4", "fig5", "fig12", "load_summaries", "select", "choose", "table1", "table2", "table3",
                     "table4", "table5", "table6", "table7", "table8", "table9"], "report"),
    **dict.fromkeys(["crossing", "max_trace_fisher", "best_epoch"], "training.measures"),
    **dict.fromkeys(["write_run"], "runs.runio"),
    **dict.fromkeys(["Plan", "RunSpec", "build_plan"], "plan"),
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fisherlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
