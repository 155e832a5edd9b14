"""From config.yaml's blocks to the pieces of a run spec: a setting's recipe as
:class:`~fisherlab.training.train_config.TrainConfig` fields, its data files, its cost on a
cluster, and the shared lr search (η*) that several families need."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .core import FamilyPlan, PlanError, RunSpec, SelectionSpec, fmt
from ..training.train_config import GPX_REDUCTIONS

#: The built-in datasets as prepared (<data.root>/<name>/{train,test}.npz): image side,
#: channels, classes and training examples; None: from the config's data.<name> block
#: (:func:`dataset_shape`). The one table of their shapes (miniature mode copies them).
DATASETS: dict[str, dict[str, int | None]] = {
    "cifar10": {"image_size": 32, "channels": 3, "num_classes": 10, "n_train": 50000},
    "cifar100": {"image_size": 32, "channels": 3, "num_classes": 100, "n_train": 50000},
    "tinyimagenet": {"image_size": 32, "channels": 3, "num_classes": 200, "n_train": 100000},  # 64 -> 32 (I.2)
    "imagenet": {"image_size": None, "channels": 3, "num_classes": 1000, "n_train": 1281167},  # data.imagenet.size
    "digits": {"image_size": None, "channels": 1, "num_classes": 10, "n_train": None},  # 8 x data.digits.factor
    "synthetic": {"image_size": None, "channels": 3, "num_classes": None, "n_train": None},  # data.synthetic
}
BUILTIN_DATASETS = tuple(DATASETS)

#: A setting's keys that are TrainConfig fields (the recipe of every run of it).
RECIPE_KEYS = ("model", "model_kwargs", "epochs", "batch_size", "momentum", "weight_decay", "milestones",
               "gamma", "fisher_examples", "fisher_every", "fisher_every_early", "fisher_epoch_end", "bn_update_batches",
               "train_eval_examples")  # fmt: skip

# First-attempt cost of a model (minutes per epoch of 50k 32x32 images on one GPU, with
# the Tr(F) measurements; memory in MB): rough figures that a setting's resources
# override. Retries double both (workflow/rules/common.smk).
MODEL_COST = {
    "simple_cnn": (0.2, 8000),
    "vgg11": (0.4, 12000),
    "wrn44_3": (1.5, 16000),
    "wrn44_3_skipinit": (1.5, 16000),
    "densenet40_12": (2.0, 16000),
    "resnet26": (0.4, 8000),
    "resnet32": (0.5, 8000),
    "resnet52": (0.8, 12000),
    "resnet56": (0.8, 12000),
    "resnet18_fixup": (3.0, 48000),
}


def setting(config: Mapping[str, Any], name: str, where: str = "run_settings") -> dict[str, Any]:
    """The setting ``name`` of config.yaml's ``settings``, its dataset checked."""
    try:
        s = config["settings"][name]
    except KeyError:
        raise PlanError(f"{where} names {name!r}, which is not under settings:") from None
    if s["dataset"] not in (*BUILTIN_DATASETS, *config["data"]["local"]):
        raise PlanError(f"setting {name!r} uses dataset {s['dataset']!r}: not one of "
                        f"{', '.join(BUILTIN_DATASETS)} or a name under data.local")  # fmt: skip
    return s


def recipe(s: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The TrainConfig fields of a setting (with ``overrides``), epsilon included."""
    out = {k: s[k] for k in RECIPE_KEYS if k in s}
    out["epsilon"] = s["epsilon"]
    out.update(overrides)
    return out


def data_files(config: Mapping[str, Any], dataset: str) -> dict[str, str]:
    """The prepared train and test files of a dataset."""
    local = config["data"]["local"]
    if dataset in local:
        return {"train": local[dataset]["train"], "test": local[dataset]["test"]}
    root = config["data"]["root"]
    return {"train": f"{root}/{dataset}/train.npz", "test": f"{root}/{dataset}/test.npz"}


def dataset_shape(config: Mapping[str, Any], dataset: str) -> dict[str, int]:
    """{"image_size", "channels", "num_classes", "n_train"} of a built-in dataset as
    prepared under ``config`` (:data:`DATASETS`, its None entries from the data block)."""
    if dataset not in DATASETS:
        raise PlanError(f"dataset {dataset!r} is not built in ({', '.join(DATASETS)}): its shape is in its files")
    out, data = dict(DATASETS[dataset]), config["data"]
    if dataset == "imagenet":
        out["image_size"] = data["imagenet"]["size"]
    elif dataset == "digits":
        out.update(image_size=8 * data["digits"]["factor"], n_train=1797 - data["digits"]["n_test"])
    elif dataset == "synthetic":
        syn = data["synthetic"]
        out.update(image_size=syn["image_size"], num_classes=syn["num_classes"], n_train=syn["n_train"])
    return out  # type: ignore[return-value]


def noise_file(config: Mapping[str, Any], dataset: str, fraction: float, seed: int) -> str:
    return f"{config['data']['root']}/{dataset}/noise/frac{fmt(fraction)}_seed{seed}.csv"


def cost(s: Mapping[str, Any], epochs: int | None = None) -> tuple[int, int]:
    """(runtime in minutes, memory in MB) of one run at its first attempt: the setting's
    ``resources``, else 10 + 1.5 x epochs x the model's minutes per epoch."""
    res, (per_epoch, mem) = s.get("resources", {}), MODEL_COST.get(s["model"], (1.0, 16000))
    epochs = s["epochs"] if epochs is None else epochs
    runtime = res.get("runtime") or math.ceil(10 + 1.5 * epochs * (res.get("minutes_per_epoch") or per_epoch))
    return int(runtime), int(res.get("mem_mb") or mem)


def search_seed(config: Mapping[str, Any]) -> int:
    """The lr and α searches run at the first seed (Supplement I.2: "We tune the
    learning rate only once for each configuration")."""
    return config["seeds"][0]


def base_run(config: Mapping[str, Any], name: str, run_id: str, family: str, seed: int, lr, **kw) -> RunSpec:
    """A run of setting ``name``'s recipe: data, recipe, cost and the setting label."""
    s = config["settings"][name]
    train = recipe(s, **kw.pop("train", {}))
    inputs = {**data_files(config, s["dataset"]), **kw.pop("inputs", {})}
    fields = {"setting": name, "epsilon": s["epsilon"], **kw.pop("fields", {})}
    if kw.get("regularizer") == "gpx":  # its reading, always explicit: part of the run's identity
        kw["reg_kwargs"] = {**kw.get("reg_kwargs", {}), "reduction": config.get("gpx_reduction", GPX_REDUCTIONS[0])}
    return RunSpec(run_id, family, seed, train, lr, inputs=inputs, fields=fields,
                   data={"val_size": s["val_size"], "augment": s["augment"]},
                   cost=cost(s, train["epochs"]), tensorboard=bool(config.get("tensorboard", False)), **kw)  # fmt: skip


def lr_selection_id(name: str) -> str:
    return f"{name}/lr_star"


def lr_search(config: Mapping[str, Any], name: str) -> FamilyPlan:
    """η* of setting ``name``: plain training at each lr of its ``lr_grid`` (search
    seed), then the lr with the best validation accuracy (Supplement I.2); a number in
    ``lr_star`` skips the grid. Families that need η* include this plan; identical
    entries from several families are merged."""
    s = setting(config, name)
    seed = search_seed(config)
    runs = []
    if s["lr_star"] is None:
        runs = [base_run(config, name, f"{name}/lrgrid/lr{fmt(lr)}/seed{seed}", "lr_search", seed, float(fmt(lr)),
                         fields={"role": "lrgrid"}) for lr in s["lr_grid"]]  # fmt: skip
    sel = SelectionSpec(lr_selection_id(name), "lr", [r.id for r in runs], s["lr_star"])
    return FamilyPlan(runs, [sel])


def lr_input(name: str) -> dict[str, str]:
    """The input ``lr`` of a run that needs η* of setting ``name`` (see :class:`Ref`)."""
    return {"lr": SelectionSpec(lr_selection_id(name), "lr").path}
