"""fisherlab: the mathematics and the training loop of "Catastrophic Fisher Explosion:
Early Phase Fisher Matrix Impacts Generalization" (Jastrzebski et al., ICML 2021).

The API is flat (``from fisherlab import trace_fisher, FisherPenalty, train``) and
lazy: a name's module is imported on first use, so that the torch-free parts (the run
plan, :mod:`fisherlab.plan`; :class:`TrainConfig`) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

#: Every public name and the submodule that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["HutchinsonEstimate", "eval_mode", "gradient_cosine", "mean_gradient", "mean_gradient_sq_norm",
                     "sample_labels", "trace_fisher", "trace_fisher_batch", "trace_hessian",
                     "hessian_matmat", "hutchinson_trace", "hutchpp_trace"], "curvature"),
    **dict.fromkeys(["MODELS", "build_model", "register"], "models"),
    **dict.fromkeys(["per_example_grad_sq_norms"], "per_example"),
    **dict.fromkeys(["REGULARIZERS", "FisherPenalty", "FisherPenaltyExact", "GradientNormPenalty", "GradientPenalty",
                     "InputGradientPenalty", "Mixup", "NoRegularizer", "RandomLabelGradientPenalty", "Regularizer",
                     "StepOutput", "build_regularizer", "SharpnessAwareMinimization"], "penalties"),
    **dict.fromkeys(["group_metrics"], "memorization"),
    **dict.fromkeys(["Evaluator", "predictions"], "evaluation"),
    **dict.fromkeys(["Preempted", "StopFlag"], "preemption"),
    **dict.fromkeys(["every_n_epochs", "multistep_lr"], "schedule"),
    **dict.fromkeys(["TrainConfig"], "train_config"),
    **dict.fromkeys(["TrainData", "TrainResult", "train"], "trainer"),
    **dict.fromkeys(["DatasetFormatError", "DeviceData", "ImageDataset", "augment_batch", "channel_stats",
                     "load_dataset", "make_synthetic", "save_dataset", "split_validation"], "data"),
    **dict.fromkeys(["fig4", "fig5", "fig12", "load_summaries", "select", "choose", "table1", "table2", "table3",
                     "table4", "table5", "table6", "table7", "table8", "table9"], "report"),
    **dict.fromkeys(["crossing", "max_trace_fisher", "best_epoch"], "measures"),
    **dict.fromkeys(["write_run"], "runio"),
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
