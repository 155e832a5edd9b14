# fisherlab: the Snakemake pipeline from data to the paper's tables and figures.
# snakemake --cores 2 results/table1.csv                       (one machine)
# snakemake --profile slurm results/table3.csv                 (a SLURM cluster)
# snakemake --configfile configs/demo.yaml --cores 2 all        (the offline demo)
# Which runs exist, what each trains and reads: the run plan (src/fisherlab/plan).
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# No config file may be a YTE template (a top-level __use_yte__: Snakemake would run its
# Python expressions). config.yaml is checked before `configfile:` loads it; the overlays
# of --configfile were loaded, and any YTE in them evaluated, by Snakemake's command line
# before this file runs: the run still stops here (README, Security).
sys.path.insert(0, os.path.join(workflow.basedir, "src"))  # this checkout's fisherlab (torch-free import)
from fisherlab.config_guard import ConfigError, refuse_yte  # noqa: E402

try:
    refuse_yte(["config.yaml", *workflow.overwrite_configfiles])
except ConfigError as e:
    raise WorkflowError(str(e)) from None


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/early_phase.smk"
include: "workflow/rules/interventions.smk"


rule all:
    input:
        [f"results/{t}.{ext}" for table, names in TABLES.items() if fisher_penalty.settings_of(config, table)
         for t in names for ext in ("csv", "md")],
        "results/hessian.csv",
        [f"results/{t}.{ext}" for t in NOISY_TABLES for ext in ("csv", "md")],
        ["results/early_phase.csv", "results/early_phase.md"] if sweeps.sweep_names(config) else [],
        [f"results/{fig}.{ext}" for fig in FIGURES for ext in ("png", "csv")],
        ["results/paper_comparison.md", "results/paper_comparison.csv"],
    default_target: True
