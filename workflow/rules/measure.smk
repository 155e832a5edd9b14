# Tr(H) of a run's final weights (Hutchinson, Supplement B), the model rebuilt from the
# run's own spec in the plan; the estimator's settings are the config's hessian block
# (fisherlab.hessian.HessianSpec).


rule trace_hessian:
    input:
        unpack(lambda wc: PLAN.inputs(wc.run)),
        model=RUN.model,
        summary=RUN.summary,
    output:
        RUN.hessian,
    params:
        spec=lambda wc: PLAN.run(wc.run).to_dict(),
        hessian=config["hessian"],
        snapshots=False,  # Tr(H) of the final weights
        device=config["device"],
    log:
        RUN.file(RunDir.HESSIAN_LOG),
    benchmark:
        RUN.file(RunDir.HESSIAN_BENCHMARK)
    threads: config["threads"]
    resources:
        runtime=lambda wc, attempt: 30 * 2 ** (attempt - 1),
        mem_mb=RUN_MEM,
        **SLURM_GPU,
    conda:
        "../../envs/fisherlab.yaml"
    script:
        "../scripts/trace_hessian.py"
