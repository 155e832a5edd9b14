# Training runs: the lr search (eta*), the alpha search at the small lr, the final runs.
# Each writes results/runs/<...>/{summary.json,metrics.csv,curvature.csv,model.pt} and
# resumes from results/checkpoints/<...>/checkpoint.pt, kept outside the declared outputs.


localrules:
    select_lr,
    select_alpha,


rule train_lr_grid:
    # eta* search: plain training (no regularizer) at each lr of the grid, first seed.
    input:
        unpack(dataset_files),
    output:
        **run_outputs(f"{RUN}/lrgrid/lr{{lr}}/seed{{seed}}/"),
    params:
        setting=setting,
        role="lrgrid",
        regularizer="none",
        checkpoint=f"results/checkpoints/{{setting}}/lrgrid/lr{{lr}}/seed{{seed}}/checkpoint.pt",
        device=config["device"],
    log:
        f"{RUN}/lrgrid/lr{{lr}}/seed{{seed}}/train.log",
    benchmark:
        f"{RUN}/lrgrid/lr{{lr}}/seed{{seed}}/benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=TRAIN_RUNTIME,
        mem_mb=TRAIN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/train.py"


rule select_lr:
    # eta* = the lr with the best validation accuracy; a number in config skips the search.
    input:
        lr_grid_summaries,
    output:
        "results/selection/{setting}/lr_star.json",
    params:
        setting=setting,
    log:
        "results/logs/select/{setting}/lr_star.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/select_lr.py"


rule train_alpha_grid:
    # alpha search: each regularizer at lr = eta* / small_lr_factor, first seed.
    input:
        unpack(dataset_files),
        lr=f"results/selection/{{setting}}/lr_star.json",
    output:
        **run_outputs(f"{RUN}/alphagrid/{{reg}}/alpha{{alpha}}/seed{{seed}}/"),
    params:
        setting=setting,
        role="alphagrid",
        checkpoint=f"results/checkpoints/{{setting}}/alphagrid/{{reg}}/alpha{{alpha}}/seed{{seed}}/checkpoint.pt",
        device=config["device"],
    log:
        f"{RUN}/alphagrid/{{reg}}/alpha{{alpha}}/seed{{seed}}/train.log",
    benchmark:
        f"{RUN}/alphagrid/{{reg}}/alpha{{alpha}}/seed{{seed}}/benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=TRAIN_RUNTIME,
        mem_mb=TRAIN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/train.py"


rule select_alpha:
    # alpha* = the alpha with the best validation accuracy; a number in config skips it.
    input:
        alpha_grid_summaries,
    output:
        "results/selection/{setting}/{reg}/alpha_star.json",
    params:
        setting=setting,
    log:
        "results/logs/select/{setting}/{reg}/alpha_star.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/select_alpha.py"


rule train_final:
    # The Table 1 runs: eta* (plain, at eta*), baseline (plain, at eta*/factor) and each
    # regularizer at eta*/factor with its alpha*, for every seed.
    input:
        unpack(dataset_files),
        unpack(selections),
    output:
        **run_outputs(f"{RUN}/final/{{role}}/seed{{seed}}/"),
    params:
        setting=setting,
        checkpoint=f"results/checkpoints/{{setting}}/final/{{role}}/seed{{seed}}/checkpoint.pt",
        device=config["device"],
    log:
        f"{RUN}/final/{{role}}/seed{{seed}}/train.log",
    benchmark:
        f"{RUN}/final/{{role}}/seed{{seed}}/benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=TRAIN_RUNTIME,
        mem_mb=TRAIN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/train.py"
