# fisherlab: the Snakemake pipeline from data to the paper's tables and figures.
# snakemake --cores 2 results/table1.csv                       (one machine)
# snakemake --profile slurm results/table3.csv                 (a SLURM cluster)
# snakemake --configfile configs/demo.yaml --cores 2 all        (the offline demo)
# Which runs exist, what each trains and reads: the run plan (src/fisherlab/plan).
from snakemake.utils import min_version

min_version("9.0")


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
        "results/fig4.png" if fisher_penalty.settings_of(config, 1) else [],
        "results/hessian.csv",
        [f"results/{t}.{ext}" for t in NOISY_TABLES for ext in ("csv", "md")],
        [f"results/{fig}.png" for fig in NOISY_FIGURES],
        ["results/early_phase.csv", "results/early_phase.md"] if sweeps.sweep_names(config) else [],
        [f"results/{fig}.png" for fig in EARLY_FIGURES],
        [f"results/{fig}.png" for fig in INTERVENTION_FIGURES],
    default_target: True
