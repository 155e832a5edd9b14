# Noisy labels (Section 4.1, Supplement I.3): per noisy setting and noise fraction, the
# baseline at every seed; per regularizer, its grid at the search seed, the selection on
# the (noisy) validation split, and the selected strength at the other seeds. The search
# seed's selected run is the grid run itself, copied (not retrained).


localrules:
    select_noisy,
    adopt_selected_run,
    noisy_tables,


ruleorder: adopt_selected_run > train_noisy_selected


rule train_noisy_baseline:
    input:
        unpack(noisy_inputs),
    output:
        **run_outputs(f"{NRUN}/baseline/seed{{seed}}/"),
    params:
        setting=noisy_setting,
        role="noisy",
        regularizer="none",
        checkpoint=f"results/checkpoints/{{setting}}/noise{{noise}}/baseline/seed{{seed}}/checkpoint.pt",
        device=config["device"],
    log:
        f"{NRUN}/baseline/seed{{seed}}/train.log",
    benchmark:
        f"{NRUN}/baseline/seed{{seed}}/benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=NOISY_RUNTIME,
        mem_mb=NOISY_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/train.py"


rule train_noisy_grid:
    # one strength of one regularizer's grid (alpha, or beta for mixup), search seed
    input:
        unpack(noisy_inputs),
    output:
        **run_outputs(f"{NRUN}/{{nreg}}/{{hyper}}/seed{{seed}}/"),
    params:
        setting=noisy_setting,
        role="noisy",
        regularizer=lambda wc: wc.nreg,
        checkpoint=f"results/checkpoints/{{setting}}/noise{{noise}}/{{nreg}}/{{hyper}}/seed{{seed}}/checkpoint.pt",
        device=config["device"],
    log:
        f"{NRUN}/{{nreg}}/{{hyper}}/seed{{seed}}/train.log",
    benchmark:
        f"{NRUN}/{{nreg}}/{{hyper}}/seed{{seed}}/benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=NOISY_RUNTIME,
        mem_mb=NOISY_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/train.py"


rule select_noisy:
    # the strength with the best (noisy) validation accuracy at its best epoch
    input:
        noisy_grid_summaries,
    output:
        "results/selection/{setting}/noise{noise}/{nreg}.json",
    params:
        key=lambda wc: hyper_name(wc.nreg),
    log:
        "results/logs/select/{setting}/noise{noise}/{nreg}.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/select_noisy.py"


rule adopt_selected_run:
    # the search seed's selected run is its grid run: copy it
    input:
        choice="results/selection/{setting}/noise{noise}/{nreg}.json",
        grid=noisy_grid_summaries,
    output:
        **run_outputs(f"{NRUN}/{{nreg}}/selected/seed{{seed}}/"),
    wildcard_constraints:
        seed=str(SEARCH_SEED),
    log:
        "results/logs/select/{setting}/noise{noise}/{nreg}_seed{seed}_adopt.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/adopt_selected_run.py"


rule train_noisy_selected:
    # the selected strength at the other seeds
    input:
        unpack(noisy_inputs),
        choice="results/selection/{setting}/noise{noise}/{nreg}.json",
    output:
        **run_outputs(f"{NRUN}/{{nreg}}/selected/seed{{seed}}/"),
    params:
        setting=noisy_setting,
        role="noisy",
        regularizer=lambda wc: wc.nreg,
        checkpoint=f"results/checkpoints/{{setting}}/noise{{noise}}/{{nreg}}/selected/seed{{seed}}/checkpoint.pt",
        device=config["device"],
    log:
        f"{NRUN}/{{nreg}}/selected/seed{{seed}}/train.log",
    benchmark:
        f"{NRUN}/{{nreg}}/selected/seed{{seed}}/benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=NOISY_RUNTIME,
        mem_mb=NOISY_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/train.py"


rule noisy_tables:
    input:
        noisy_final_runs(),
    output:
        **{
            f"{t}_{ext}": report(f"results/{t}.{ext}", caption=f"../report/{t}.rst", category="Tables")
            for t in ["table3", "table8", "table9"]
            for ext in ["csv", "md"]
        },
    params:
        fractions=NOISY["fractions"],
        settings=NOISY_SETTINGS,
    log:
        "results/logs/report/noisy_tables.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/report_noisy_tables.py"


FIGURE_REGS = {"fig5": ["fp"], "fig11": ["fp"], "fig12": ["fp", "gpr"]}

for _fig in FIGURES:

    rule:
        name:
            _fig
        localrule: True
        input:
            noisy_figure_runs(NOISY["figures"][_fig], FIGURE_REGS[_fig]),
        output:
            report(f"results/{_fig}.png", caption=f"../report/{_fig}.rst", category="Figures"),
        params:
            setting=NOISY["figures"][_fig],
            figure=_fig,
        log:
            f"results/logs/report/{_fig}.log",
        conda:
            "../../envs/fisherlab.yaml"
        script:
            "../scripts/report_noisy_figure.py"
