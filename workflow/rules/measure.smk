# Tr(H) of a run's final weights (Hutchinson, Supplement B), the model rebuilt from the
# run's own spec in the plan.


rule trace_hessian:
    input:
        unpack(lambda wc: PLAN.inputs(wc.run)),
        model=f"{RUNS}/{{run}}/model.pt",
        summary=f"{RUNS}/{{run}}/summary.json",
    output:
        f"{RUNS}/{{run}}/hessian.json",
    params:
        spec=lambda wc: PLAN.run(wc.run).to_dict(),
        hessian=config["hessian"],
        device=config["device"],
    log:
        f"{RUNS}/{{run}}/hessian.log",
    benchmark:
        f"{RUNS}/{{run}}/hessian-benchmark.tsv"
    threads: config["threads"]
    resources:
        runtime=lambda wc, attempt: 30 * 2 ** (attempt - 1),
        mem_mb=RUN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/trace_hessian.py"
