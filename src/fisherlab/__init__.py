"""fisherlab: the mathematics and the training loop of "Catastrophic Fisher Explosion:
Early Phase Fisher Matrix Impacts Generalization" (Jastrzebski et al., ICML 2021)."""

from .curvature import (
    HutchinsonEstimate,
    eval_mode,
    gradient_cosine,
    mean_gradient,
    mean_gradient_sq_norm,
    sample_labels,
    trace_fisher,
    trace_fisher_batch,
    trace_hessian,
)
from .models import MODELS, build_model, register
from .per_example import per_example_grad_sq_norms

__version__ = "0.1.0"
from .penalties import (
    REGULARIZERS,
    FisherPenalty,
    FisherPenaltyExact,
    GradientNormPenalty,
    GradientPenalty,
    InputGradientPenalty,
    Mixup,
    NoRegularizer,
    RandomLabelGradientPenalty,
    Regularizer,
    StepOutput,
    build_regularizer,
)
from .schedule import every_n_epochs, multistep_lr
from .trainer import TrainConfig, TrainData, TrainResult, evaluate, train
from .data import (
    DatasetFormatError,
    DeviceData,
    ImageDataset,
    augment_batch,
    channel_stats,
    load_dataset,
    make_synthetic,
    save_dataset,
    split_validation,
)
from .report import fig4, fig4_multi, load_summaries, select_alpha, select_lr, table1, table4, table5, table6
from .runio import write_run


__all__ = [
    "DatasetFormatError",
    "DeviceData",
    "FisherPenalty",
    "FisherPenaltyExact",
    "GradientNormPenalty",
    "GradientPenalty",
    "HutchinsonEstimate",
    "ImageDataset",
    "InputGradientPenalty",
    "MODELS",
    "Mixup",
    "NoRegularizer",
    "REGULARIZERS",
    "RandomLabelGradientPenalty",
    "Regularizer",
    "StepOutput",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "augment_batch",
    "build_model",
    "build_regularizer",
    "channel_stats",
    "eval_mode",
    "evaluate",
    "every_n_epochs",
    "fig4",
    "fig4_multi",
    "gradient_cosine",
    "load_dataset",
    "load_summaries",
    "make_synthetic",
    "mean_gradient",
    "mean_gradient_sq_norm",
    "multistep_lr",
    "per_example_grad_sq_norms",
    "register",
    "sample_labels",
    "save_dataset",
    "select_alpha",
    "select_lr",
    "split_validation",
    "table1",
    "table4",
    "table5",
    "table6",
    "trace_fisher",
    "trace_fisher_batch",
    "trace_hessian",
    "train",
    "write_run",
]
