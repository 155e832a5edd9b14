# fisherlab: the Snakemake pipeline from data to the paper's tables and figures.
# snakemake --cores 2 results/table1.csv                       (one machine)
# snakemake --profile slurm results/table3.csv                 (a SLURM cluster)
# snakemake --configfile configs/demo.yaml --cores 2 all        (the offline demo)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/noisy.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        TABLES if table_settings(1) else [],
        "results/fig4.png" if table_settings(1) else [],
        TABLES2 if table_settings(2) else [],
        "results/hessian.csv",
        NOISY_TABLES,
        NOISY_FIGURES,
    default_target: True
