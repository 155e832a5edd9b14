# Every training run of every family, by the run plan (fisherlab.plan): one rule trains,
# one copies a selected grid run, one makes each selection (eta*, alpha*, ...). A run
# writes results/runs/<run>/{summary.json,metrics.csv,curvature.csv,model.pt} and resumes
# from results/checkpoints/<run>/checkpoint.pt, kept outside the declared outputs.


localrules:
    select,
    adopt,


ruleorder: adopt > train


rule train:
    input:
        unpack(lambda wc: PLAN.inputs(wc.run)),
    output:
        **RUN.outputs(),
    params:
        spec=lambda wc: PLAN.run(wc.run).to_dict(),
        device=config["device"],
    log:
        RUN.file(RunDir.TRAIN_LOG),
    benchmark:
        RUN.file(RunDir.TRAIN_BENCHMARK)
    threads: config["threads"]
    group: gpu_share
    resources:
        runtime=RUN_RUNTIME,
        mem_mb=RUN_MEM,
        **SLURM_TRAIN,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/train.py"


rule adopt:
    # the search seed's run at the selected strength is its grid run: copy its files
    input:
        unpack(lambda wc: PLAN.adoption_inputs(wc.run)),
    output:
        **RUN.outputs(),
    wildcard_constraints:
        run="|".join(map(re.escape, ADOPTED)) or "(?!)",
    log:
        RUN.file(RunDir.ADOPT_LOG),
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/adopt_selected_run.py"


rule select:
    # the value (lr, alpha, beta) whose run has the best validation accuracy at its best
    # epoch; a number in config.yaml skips the search (source: config)
    input:
        lambda wc: PLAN.selection(wc.selection).inputs(),
    output:
        f"{SELECTIONS}/{{selection}}.json",
    params:
        key=lambda wc: PLAN.selection(wc.selection).key,
        fixed=lambda wc: PLAN.selection(wc.selection).fixed,
    log:
        f"results/logs/select/{{selection}}.log",
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/select.py"
