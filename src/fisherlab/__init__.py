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
from .runio import write_run
